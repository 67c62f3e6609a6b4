"""The contract every TEE evidence kind implements, and the verdict it returns.

A kind verifier does two things with one call: it checks the evidence cryptographically
(signatures, certificate chains, collateral) at a given time, and it appraises the verified
claims against that kind's section of the policy (measurements, debug, TCB). It never does I/O:
endorsements (collateral, VCEK, certificate chains) arrive as bytes, and ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from protocol.attestation import allowlist


class EvidenceKind(StrEnum):
    SIMULATED = "simulated"
    TDX = "tdx"
    SEV_SNP = "sev-snp"
    NVIDIA_GPU = "nvidia-gpu"


CPU_KINDS = frozenset({EvidenceKind.SIMULATED, EvidenceKind.TDX, EvidenceKind.SEV_SNP})
GPU_KINDS = frozenset({EvidenceKind.NVIDIA_GPU})


class Reason(StrEnum):
    """Why something was refused. Stable strings: they appear in metrics, logs and the API."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SIGNER = "wrong_signer"
    EXPIRED = "expired"
    FUTURE_DATED = "future_dated"
    EPOCH_TOO_OLD = "epoch_too_old"
    REPORT_DATA_MISMATCH = "report_data_mismatch"
    MEASUREMENT_NOT_ALLOWED = "measurement_not_allowed"
    DEBUG = "debug"
    KIND_NOT_ALLOWED = "kind_not_allowed"
    CHAIN_INVALID = "chain_invalid"
    MISSING_EXTENSION = "missing_extension"  # a valid certificate lacks an extension a check needs
    COLLATERAL_INVALID = "collateral_invalid"
    TCB_NOT_ALLOWED = "tcb_not_allowed"
    UNTRUSTED_PLATFORM = "untrusted_platform"
    NOT_CPU_EVIDENCE = "not_cpu_evidence"
    NOT_GPU_EVIDENCE = "not_gpu_evidence"
    POLICY_VIOLATION = "policy_violation"


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence as carried in a bundle: its kind, its raw bytes, its endorsements.

    ``endorsements`` maps a kind-specific name (e.g. ``"collateral"``, ``"vcek"``,
    ``"cert_chain"``) to bytes; a verifier may also use endorsements from its own local cache.
    """

    kind: str
    data: bytes
    endorsements: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class EvidenceVerdict:
    """What a kind verifier concluded. ``ok`` is True only with no reasons."""

    kind: str
    ok: bool
    reasons: tuple[Reason, ...] = ()
    detail: str = ""
    label: str = ""  # human-readable, e.g. "Intel TDX" or "SIMULATED — not secure"
    measurements: Mapping[str, str] = field(default_factory=dict)  # name -> hex
    report_data: bytes = b""
    debug: bool = False
    tcb_status: str = ""
    advisories: tuple[str, ...] = ()
    revocation: str = "not checked"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def refused(cls, kind: str, reason: Reason, detail: str, **claims: Any) -> EvidenceVerdict:
        return cls(kind=kind, ok=False, reasons=(reason,), detail=detail, **claims)


def refused_before_reading(
    kind: EvidenceKind, label: str, now: object, policy: Mapping[str, Any], known_keys: frozenset[str]
) -> EvidenceVerdict | None:
    """What every hardware verifier refuses before it reads a byte of evidence: a verification time
    that is not an integer, and a policy key it does not know (a typo in a security policy must not
    silently mean "default")."""
    if isinstance(now, bool) or not isinstance(now, int):
        return EvidenceVerdict.refused(
            kind.value, Reason.MALFORMED, "verification time must be an integer", label=label
        )
    try:
        allowlist.check_keys(policy, known_keys, kind.value)
    except allowlist.PolicyError as exc:
        return EvidenceVerdict.refused(
            kind.value, Reason.POLICY_VIOLATION, f"bad [{kind.value}] policy: {exc}", label=label
        )
    return None


class EvidenceVerifier(Protocol):
    """Implemented once per kind (simulated, tdx, sev-snp, nvidia-gpu)."""

    kind: EvidenceKind

    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes,
        policy: Mapping[str, Any],
        now: int,
    ) -> EvidenceVerdict:
        """Verify ``evidence`` at time ``now`` and appraise it against ``policy``.

        ``expected_report_data`` is the binding the evidence must carry (64 bytes for CPU
        evidence, the 32-byte GPU nonce for GPU evidence); compare in constant time.
        ``policy`` is this kind's section of the appraisal policy TOML (a plain mapping).
        Never raises on bad evidence: returns a refused verdict with a reason.
        """
        ...
