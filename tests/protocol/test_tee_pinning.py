"""Pinning policies from verified genuine evidence, policy additions, and hash binding schemes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.attestation import nvidia_gpu, sev_snp, tdx
from protocol.attestation.binding_schemes import BindingSchemeError, decode_key, hashed_report_data
from protocol.attestation.evidence import Evidence, EvidenceVerdict, Reason
from protocol.attestation.pinning import permissive_section, pinning_section, policy_additions
from protocol.attestation.policy import Policy
from protocol.attestation.spdm import parse_transcript
from protocol.attestation.tdx_quote import parse_quote
from tests.conftest import decoder_settings
from tests.vectors import vector

NEAR = Evidence(
    "tdx",
    bytes(json.loads(vector("tdx", "near-mpc", "quote.json").read_text())),
    {"collateral": vector("tdx", "near-mpc", "collateral.json").read_bytes()},
)
NOW_NEAR = 1786618038
RD = parse_quote(NEAR.data).report_data
SNP = Evidence(
    "sev-snp",
    vector("sev-snp", "go-sev-guest", "attestation.bin").read_bytes(),
    {"vcek": vector("sev-snp", "go-sev-guest", "vcek.testcer").read_bytes()},
)
GPU = Evidence(
    "nvidia-gpu",
    bytes.fromhex(vector("nvidia-gpu", "nvat-sdk", "blackwellAttestationReport.txt").read_text().strip()),
    {"cert_chain": vector("nvidia-gpu", "nvat-sdk", "blackwellCertChain.txt").read_bytes()},
)


def tdx_verdict(policy: dict[str, Any], expected: bytes = RD) -> EvidenceVerdict:
    return tdx.VERIFIER.verify(NEAR, expected_report_data=expected, policy=policy, now=NOW_NEAR)


def test_tdx_pinning_policy_accepts_exactly_this_evidence_and_survives_toml() -> None:
    claims = tdx_verdict(permissive_section("tdx"))
    assert claims.ok, claims.detail
    section = pinning_section(claims)
    assert section["mrtd"] == [claims.measurements["mrtd"]] and section["allowed_tcb_statuses"] == [
        "UpToDate"
    ]
    assert "allow_any_measurement" not in section and "allow_debug" not in section
    policy = Policy.from_toml(Policy(allowed_kinds=("tdx",), sections={"tdx": section}).to_toml())
    assert tdx_verdict(dict(policy.section("tdx"))).ok
    other = {**section, "rtmr3": ["00" * 48]}
    assert tdx_verdict(other).reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)


def test_additions_name_what_a_refused_verdict_lacks_and_applying_them_accepts() -> None:
    section = {**pinning_section(tdx_verdict(permissive_section("tdx"))), "rtmr3": ["00" * 48]}
    del section["allow_smt"]
    refused = tdx_verdict(section)
    additions = policy_additions(refused, section)
    assert additions == {"rtmr3": [refused.measurements["rtmr3"]], "allow_smt": True}
    merged = {**section, "rtmr3": section["rtmr3"] + additions["rtmr3"], "allow_smt": True}
    assert tdx_verdict(merged).ok


def test_no_additions_when_no_policy_can_accept() -> None:
    section = pinning_section(tdx_verdict(permissive_section("tdx")))
    assert policy_additions(tdx_verdict(section, expected=bytes(64)), section) is None  # wrong binding
    debug_snp = sev_snp.VERIFIER.verify(
        SNP, expected_report_data=SNP.data[0x50:0x90], policy={"allow_any_measurement": True}, now=1752919234
    )
    assert debug_snp.reasons == (Reason.DEBUG,)
    assert policy_additions(debug_snp, {}) is None  # the debug bit is never suggested away


def test_snp_pin_keeps_the_debug_refusal_and_pins_the_tcb() -> None:
    claims = sev_snp.VERIFIER.verify(
        SNP,
        expected_report_data=SNP.data[0x50:0x90],
        policy={**permissive_section("sev-snp"), "allow_debug": True},
        now=1752919234,
    )
    section = pinning_section(claims)
    assert section["min_tcb"] == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    pinned = sev_snp.VERIFIER.verify(
        SNP, expected_report_data=SNP.data[0x50:0x90], policy=section, now=1752919234
    )
    assert pinned.reasons == (Reason.DEBUG,)


def test_gpu_pin_uses_the_certified_fwid_and_additions_name_ocsp() -> None:
    nonce = parse_transcript(GPU.data).nonce
    claims = nvidia_gpu.VERIFIER.verify(
        GPU, expected_report_data=nonce, policy=permissive_section("nvidia-gpu"), now=1764460800
    )
    section = pinning_section(claims)
    assert section["fwids"] == [claims.extra["fwid"]] and section["allowed_archs"] == ["BLACKWELL"]
    refused = nvidia_gpu.VERIFIER.verify(GPU, expected_report_data=nonce, policy=section, now=1764460800)
    assert refused.reasons == (Reason.UNTRUSTED_PLATFORM,)
    assert policy_additions(refused, section) == {"require_ocsp": False}


def test_near_binding_from_its_published_keys() -> None:
    """NEAR MPC: REPORTDATA = 0x0001 ‖ SHA3-384(p2p key ‖ account key) ‖ 0^14, from the .pub files."""
    keys = [
        decode_key(vector("tdx", "near-mpc", f).read_text())
        for f in ("near_p2p_public_key.pub", "near_account_public_key.pub")
    ]
    assert hashed_report_data("sha3-384", keys, bytes.fromhex("0001"), 64) == RD
    assert hashed_report_data("sha3-384", keys[::-1], bytes.fromhex("0001"), 64) != RD


def test_scheme_errors_are_typed() -> None:
    with pytest.raises(BindingSchemeError, match="unknown hash"):
        hashed_report_data("md5", [b"k"], b"", 64)
    with pytest.raises(BindingSchemeError, match="more than the 32-byte"):
        hashed_report_data("sha512", [b"k"], b"", 32)
    with pytest.raises(BindingSchemeError, match="decodes to"):
        decode_key("ed25519:1111")
    with pytest.raises(BindingSchemeError, match="not hex"):
        decode_key("zz")
    assert decode_key("text:ratls-cert:") == b"ratls-cert:"
    assert hashed_report_data("sha256", [b"abc"], b"", 64)[32:] == bytes(32)


@decoder_settings()
@given(text=st.text(max_size=80))
def test_decode_key_raises_only_its_typed_error(text: str) -> None:
    try:
        decode_key(text)
    except BindingSchemeError:
        return
