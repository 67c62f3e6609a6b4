"""NVIDIA GPU evidence collection through NVML (the ``pynvml`` module of ``nvidia-ml-py``).

``pynvml`` is imported lazily and is not a dependency: only GPU hosts need it, and
``veilnet tee detect`` explains how to get it when it is missing. Each GPU answers
GET_MEASUREMENTS with our 32-byte nonce; its certificate chain comes with it.
Blocking calls: run from a worker thread.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from node.attest.tee.configfs import TeeUnavailable
from protocol.attestation.evidence import Evidence, EvidenceKind

NONCE_SIZE = 32
ARCH_NAMES = {9: "HOPPER", 10: "BLACKWELL"}  # nvmlDeviceGetArchitecture values


def load_nvml() -> ModuleType:
    """``pynvml``, initialised; ``TeeUnavailable`` with the reason otherwise."""
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError as exc:
        raise TeeUnavailable(
            "NVML bindings not installed (the pip package nvidia-ml-py provides module pynvml)"
        ) from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses vary by driver; all mean "no usable NVML"
        raise TeeUnavailable(f"NVML did not initialise (no NVIDIA driver?): {exc}") from exc
    return pynvml


def _cc_enabled(pynvml: Any) -> bool:
    state = pynvml.nvmlSystemGetConfComputeState()
    return bool(getattr(state, "ccFeature", 0))


def gpu_status() -> str:
    """A one-line description of what NVML reports, or raise ``TeeUnavailable``."""
    pynvml = load_nvml()
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise TeeUnavailable("NVML sees no GPU")
        if not _cc_enabled(pynvml):
            raise TeeUnavailable(f"{count} GPU(s), but confidential computing is not enabled")
        return f"{count} GPU(s) with confidential computing enabled"
    finally:
        pynvml.nvmlShutdown()


def collect_gpu_evidence(nonce: bytes) -> list[Evidence]:
    """SPDM evidence from every GPU, each bound to ``nonce`` (our GPU binding)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError("the GPU nonce is exactly 32 bytes")
    pynvml = load_nvml()
    try:
        if not _cc_enabled(pynvml):
            raise TeeUnavailable("GPU confidential computing is not enabled")
        out: list[Evidence] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            arch = ARCH_NAMES.get(pynvml.nvmlDeviceGetArchitecture(handle))
            if arch is None:
                raise TeeUnavailable(f"GPU {index} has no confidential-computing attestation")
            report = pynvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            cert = pynvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            evidence = bytes(report.attestationReport[: report.attestationReportSize])
            chain = bytes(cert.attestationCertChain[: cert.attestationCertChainSize])
            out.append(
                Evidence(
                    EvidenceKind.NVIDIA_GPU.value, evidence, {"cert_chain": chain, "arch": arch.encode()}
                )
            )
        return out
    finally:
        pynvml.nvmlShutdown()
