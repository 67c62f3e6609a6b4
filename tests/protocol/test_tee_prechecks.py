"""The checks every hardware verifier makes before it reads evidence (``refused_before_reading``):
the same refusal, with the same reason, from TDX, SEV-SNP and NVIDIA GPU alike."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.attestation import nvidia_gpu, sev_snp, tdx
from protocol.attestation.evidence import Evidence, EvidenceVerifier, Reason

VERIFIERS = [tdx.VERIFIER, sev_snp.VERIFIER, nvidia_gpu.VERIFIER]
NOW = 1_750_000_000


def _verify(verifier: EvidenceVerifier, *, now: Any = NOW, policy: dict[str, Any] | None = None) -> Any:
    evidence = Evidence(kind=verifier.kind.value, data=b"\x00" * 64)
    return verifier.verify(evidence, expected_report_data=b"\x00" * 64, policy=policy or {}, now=now)


@pytest.mark.parametrize("verifier", VERIFIERS, ids=lambda v: v.kind.value)
@pytest.mark.parametrize("now", [float(NOW), True, str(NOW), None])
def test_a_time_that_is_not_an_integer_is_refused_as_malformed(verifier: EvidenceVerifier, now: Any) -> None:
    verdict = _verify(verifier, now=now)
    assert not verdict.ok and verdict.reasons == (Reason.MALFORMED,)
    assert verdict.detail == "verification time must be an integer"
    assert verdict.kind == verifier.kind.value


@pytest.mark.parametrize("verifier", VERIFIERS, ids=lambda v: v.kind.value)
def test_an_unknown_policy_key_is_refused_before_the_evidence_is_read(verifier: EvidenceVerifier) -> None:
    verdict = _verify(verifier, policy={"allowed_measurement": ["00"]})  # a typo of a real key's kind
    assert not verdict.ok and verdict.reasons == (Reason.POLICY_VIOLATION,)
    assert verdict.detail.startswith(f"bad [{verifier.kind.value}] policy: unknown key(s)")
    assert "allowed_measurement" in verdict.detail


@pytest.mark.parametrize("verifier", VERIFIERS, ids=lambda v: v.kind.value)
def test_with_good_inputs_the_evidence_itself_is_judged(verifier: EvidenceVerifier) -> None:
    verdict = _verify(verifier)  # 64 zero bytes: no kind's evidence format
    assert not verdict.ok and verdict.reasons == (Reason.MALFORMED,)
    assert verdict.detail != "verification time must be an integer"
