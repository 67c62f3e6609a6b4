"""Which evidence this node presents: simulated or real TEE evidence, and the one bundle builder.

Evidence sources, chosen by ``evidence`` in the node config:

* real TEE evidence (TDX or SEV-SNP through configfs-tsm, plus NVIDIA GPU evidence when a
  confidential-computing GPU is present) when the hardware is there (``auto``);
* ``simulated`` evidence signed by the testnet's platform key, only when the testnet's policy
  allows the simulated kind. The measurement is a digest of this node's own source files.

An executor (a node that declares models) with neither refuses to start: serving jobs without
attestation would ask clients to trust keys nothing vouches for.

The test-only faults (``test_evidence_fault``) make a node present bad simulated evidence so tests
can check that honest peers refuse it. They are refused unless the evidence is simulated.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from node.config import ConfigError, EvidenceMode, NodeConfig, TestEvidenceFault, TestnetConfig
from protocol.attestation import simulated
from protocol.attestation.appraisal import default_verifiers
from protocol.attestation.bundle import AttestationBundle, build_bundle
from protocol.attestation.evidence import Evidence, EvidenceKind
from protocol.identity import Identity
from protocol.numerics import EngineEntry

__all__ = [
    "EvidenceSource",
    "SimulatedEvidence",
    "TeeEvidence",
    "build_signed_bundle",
    "make_evidence_source",
    "measurement_of",
    "own_measurement",
    "platform_public_key",
]

log = logging.getLogger("veilnet.attest")

_PACKAGES = ("protocol", "node")


# ------------------------------------------------------------------------------ measurement


@functools.cache
def own_measurement_bytes() -> bytes:
    """Digest of this node's own code (the ``protocol`` and ``node`` packages' ``*.py`` files)."""
    repo = Path(__file__).resolve().parents[2]
    return simulated.measure_package_sources([repo / name for name in _PACKAGES])


def own_measurement() -> str:
    return own_measurement_bytes().hex()


def measurement_of(code_root: Path | None = None) -> str:
    """The measurement a node running the packages under ``code_root`` (default: this one) reports."""
    if code_root is None:
        return own_measurement()
    return simulated.measure_package_sources([code_root / name for name in _PACKAGES]).hex()


def platform_public_key(seed: bytes) -> str:
    return simulated.SimulatedPlatform(seed).public_key_hex


# ---------------------------------------------------------------------------------- sources


class EvidenceSource(Protocol):
    """Where this node's evidence comes from. Bundles are built from it in one place only
    (:func:`build_signed_bundle`); a source only collects evidence and says what it is."""

    kind: str
    label: str
    measurement: str

    def collect_cpu(self, report_data: bytes, now: int) -> Evidence:
        """CPU evidence over ``report_data`` (blocking I/O for real TEEs: call from a worker thread)."""
        ...

    def gpu_collector(self) -> Callable[[bytes], Sequence[Evidence]] | None:
        """GPU evidence over a nonce, or None when this node has no confidential GPUs."""
        ...

    def finish(self, bundle: AttestationBundle) -> AttestationBundle:
        """Last look at the signed bundle (a test fault may forge it; a TEE learns its measurement)."""
        ...


def build_signed_bundle(
    source: EvidenceSource,
    identity: Identity,
    enc_pubkey: bytes,
    *,
    epoch: int,
    issued_at: int,
    expires_at: int,
    epoch_seconds: int,
    models: Sequence[str],
    addrs: Sequence[str],
    engines: Sequence[EngineEntry] = (),
) -> bytes:
    """The node's bundle for ``enc_pubkey``: the one place the bundle-building sequence lives.

    ``engines`` (one entry per served model: engine family and version, dtype, device, whether it
    scores) are bound next to the model ids, so a node cannot claim to run what it does not."""
    bundle = build_bundle(
        identity,
        enc_pubkey,
        issued_at=issued_at,
        epoch_seconds=epoch_seconds,
        collect_cpu_evidence=lambda report_data: source.collect_cpu(report_data, issued_at),
        collect_gpu_evidence=source.gpu_collector(),
        models=models,
        addrs=addrs,
        expires_at=expires_at,
        engines=engines,
    )
    if bundle.epoch != epoch:
        raise RuntimeError(f"bundle epoch {bundle.epoch} differs from the key's epoch {epoch}")
    return source.finish(bundle).to_wire()


class SimulatedEvidence:
    """Simulated evidence signed by the testnet platform key (NOT SECURE)."""

    kind = EvidenceKind.SIMULATED.value
    label = simulated.LABEL

    def __init__(self, testnet: TestnetConfig, *, fault: TestEvidenceFault | None = None) -> None:
        if testnet.platform_seed is None:
            raise ConfigError("the testnet config has no platform_key, so simulated evidence is impossible")
        self.fault = fault
        measurement = own_measurement_bytes()
        platform = simulated.SimulatedPlatform(testnet.platform_seed, testnet.testnet_id)
        if fault is TestEvidenceFault.MEASUREMENT_OUTSIDE_POLICY:
            measurement = hashlib.sha256(b"veilnet/test-fault/tampered-sources" + measurement).digest()
        elif fault is TestEvidenceFault.WRONG_PLATFORM_KEY:
            platform = simulated.SimulatedPlatform.generate(testnet.testnet_id)
        self._measurement = measurement
        self._platform = platform
        self.measurement = measurement.hex()
        if fault is not None:
            log.warning(
                "TEST-ONLY EVIDENCE FAULT %r: this node presents bad evidence on purpose", fault.value
            )

    def collect_cpu(self, report_data: bytes, now: int) -> Evidence:
        return self._platform.issue(report_data, measurement=self._measurement, issued_at=now)

    def gpu_collector(self) -> None:
        return None

    def finish(self, bundle: AttestationBundle) -> AttestationBundle:
        if self.fault is TestEvidenceFault.FORGED_SIGNATURE:
            return replace(bundle, sig=bytes([bundle.sig[0] ^ 0x01]) + bundle.sig[1:])
        return bundle


class TeeEvidence:
    """Real CPU evidence from configfs-tsm, plus NVIDIA GPU evidence when present.

    Collection is blocking file and driver I/O; the attestation service builds bundles in a
    worker thread.
    """

    def __init__(self, cpu_kind: EvidenceKind, with_gpus: bool) -> None:
        from node.attest.tee.collateral import CollateralCache

        self.kind = cpu_kind.value
        self.label = {EvidenceKind.TDX: "Intel TDX", EvidenceKind.SEV_SNP: "AMD SEV-SNP"}[cpu_kind]
        if with_gpus:
            self.label += " + NVIDIA GPU"
        self.with_gpus = with_gpus
        self.measurement = ""  # known after the first collection
        self._collateral = CollateralCache()

    def collect_cpu(self, report_data: bytes, now: int) -> Evidence:
        from node.attest.tee.configfs import collect_tsm_report, tsm_evidence

        report = collect_tsm_report(report_data)
        endorsements: dict[str, bytes] = {}
        if self.kind == EvidenceKind.TDX.value:
            collateral = self._collateral.for_quote(report.outblob)
            if collateral is not None:
                endorsements["collateral"] = collateral
        return tsm_evidence(report, endorsements)

    def gpu_collector(self) -> Callable[[bytes], Sequence[Evidence]] | None:
        from node.attest.tee import nvml

        return nvml.collect_gpu_evidence if self.with_gpus else None

    def finish(self, bundle: AttestationBundle) -> AttestationBundle:
        verdict = default_verifiers()[self.kind].verify(
            bundle.cpu, expected_report_data=bundle.expected_report_data(), policy={}, now=bundle.issued_at
        )
        self.measurement = next(iter(verdict.measurements.values()), "")
        return bundle


def _real_tee() -> tuple[EvidenceKind | None, bool]:
    """The CPU TEE kind this machine can attest with (if any) and whether CC GPUs are present."""
    from node.attest.tee.detect import detect

    cpu: EvidenceKind | None = None
    gpus = False
    for availability in detect():
        if not availability.available:
            continue
        if availability.kind is EvidenceKind.NVIDIA_GPU:
            gpus = True
        elif cpu is None:
            cpu = availability.kind
    return cpu, gpus


def make_evidence_source(config: NodeConfig, testnet: TestnetConfig) -> EvidenceSource | None:
    """This node's evidence source, or None for a node that does not attest. Raises ConfigError when
    the node must attest (it serves models, or asked for evidence) but cannot."""
    from node.attest.appraisal import load_policy

    policy = load_policy(testnet)
    simulated_ok = policy.kind_allowed(EvidenceKind.SIMULATED.value) and testnet.platform_seed is not None
    mode = config.evidence
    fault = config.test_evidence_fault
    if fault is not None and mode is not EvidenceMode.SIMULATED:
        raise ConfigError("test_evidence_fault is a test-only switch and needs evidence = 'simulated'")
    if mode is EvidenceMode.NONE:
        if config.models:
            raise ConfigError("a node that serves models must attest (evidence = 'none' was given)")
        return None
    if mode is EvidenceMode.AUTO:
        cpu_kind, gpus = _real_tee()
        if cpu_kind is not None:
            log.info(
                "attesting with real %s evidence%s",
                cpu_kind.value,
                " and NVIDIA GPU evidence" if gpus else "",
            )
            return TeeEvidence(cpu_kind, gpus)
        if not simulated_ok:
            if config.models:
                raise ConfigError(
                    "this executor has no TEE evidence (no TDX/SEV-SNP guest found) and the testnet"
                    " policy does not allow simulated evidence: refusing to start"
                )
            log.info("no TEE found and simulated evidence not allowed: running as a client-only node")
            return None
    elif not simulated_ok:
        raise ConfigError(
            "evidence = 'simulated' but the testnet does not allow it (policy allow_simulated and a"
            " platform_key are both needed): refusing to start"
        )
    return SimulatedEvidence(testnet, fault=fault)


