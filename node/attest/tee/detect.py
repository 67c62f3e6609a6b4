"""Which evidence kinds this machine can produce, and why not the others.

Looks only at local facts: configfs-tsm presence, guest device nodes, CPU flags and NVML.
Creating a configfs-tsm entry is the only way to learn its provider for sure, so when the
interface exists we ask it (an empty report costs one quote).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from node.attest.tee import nvml
from node.attest.tee.configfs import PROVIDER_KINDS, TSM_REPORT_ROOT, TeeUnavailable, collect_tsm_report
from protocol.attestation.evidence import EvidenceKind


@dataclass(frozen=True)
class KindAvailability:
    kind: EvidenceKind
    available: bool
    reason: str


def _cpu_flags(cpuinfo: Path) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def detect(
    *,
    tsm_root: Path = TSM_REPORT_ROOT,
    dev: Path = Path("/dev"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    probe_tsm: bool = True,
) -> list[KindAvailability]:
    flags = _cpu_flags(cpuinfo)
    provider: str | None = None
    tsm_problem = ""
    if not tsm_root.is_dir():
        tsm_problem = f"{tsm_root} missing (needs Linux >= 6.7 with CONFIG_TSM_REPORTS and configfs mounted)"
    elif probe_tsm:
        try:
            provider = collect_tsm_report(bytes(64), root=tsm_root).provider
        except (TeeUnavailable, OSError) as exc:
            tsm_problem = f"configfs-tsm present but no report: {exc}"
    out: list[KindAvailability] = []
    for kind, device, flag, label in (
        (EvidenceKind.TDX, "tdx_guest", "tdx_guest", "not a TDX guest"),
        (EvidenceKind.SEV_SNP, "sev-guest", "sev_snp", "not an SEV-SNP guest"),
    ):
        if provider is not None and PROVIDER_KINDS.get(provider) is kind:
            out.append(KindAvailability(kind, True, f"configfs-tsm provider {provider}"))
            continue
        hints = [
            h
            for h, present in (
                (f"/dev/{device}", (dev / device).exists()),
                (f"cpu flag {flag}", flag in flags),
            )
            if present
        ]
        if hints and tsm_problem:
            reason = f"{', '.join(hints)} present, but {tsm_problem}"
        elif hints:
            reason = f"{', '.join(hints)} present, but configfs-tsm reports provider {provider!r}"
        else:
            reason = f"{label} (no /dev/{device}, no cpu flag {flag})"
        out.append(KindAvailability(kind, False, reason))
    try:
        out.append(KindAvailability(EvidenceKind.NVIDIA_GPU, True, nvml.gpu_status()))
    except TeeUnavailable as exc:
        out.append(KindAvailability(EvidenceKind.NVIDIA_GPU, False, str(exc)))
    return out
