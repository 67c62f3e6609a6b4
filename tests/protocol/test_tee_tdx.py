"""Intel TDX evidence against the real vectors in tests/vectors/tdx at their pinned times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dcap_qvl
import pytest

from protocol.attestation import tdx
from protocol.attestation.ccel import EventLogError, parse_event_log, replay_rtmrs
from protocol.attestation.evidence import Evidence, Reason
from protocol.attestation.roots import INTEL_SGX_ROOT_SHA256, fingerprint, intel_sgx_root_der
from protocol.attestation.tdx_collateral import CollateralError, parse_collateral
from protocol.attestation.tdx_quote import QuoteFormatError, attestation_key_signature_valid, parse_quote
from tests.vectors import VECTORS as TREE

VECTORS = TREE / "tdx"
DCAP = VECTORS / "dcap-qvl"
CCEL = VECTORS / "go-tdx-guest" / "ccel"
NOW_TDX = 1752919234
NOW_OUTDATED = 1774003274
NOW_SGX = 1752919277

CLOUD_POLICY: dict[str, Any] = {
    "allow_dynamic_platform": True,
    "allow_cached_keys": True,
    "allow_smt": True,
}


def read(path: Path) -> bytes:
    return path.read_bytes()


def quote_evidence(name: str = "tdx_quote", collateral: str = "tdx_quote_collateral.json") -> Evidence:
    return Evidence("tdx", read(DCAP / name), {"collateral": read(DCAP / collateral)})


def measured_policy(quote: bytes, **overrides: Any) -> dict[str, Any]:
    """A production-shaped policy that allow-lists exactly this quote's measurements."""
    fields = parse_quote(quote).td_fields()
    policy = dict(CLOUD_POLICY)
    policy.update({k: [fields[k].hex()] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")})
    policy.update(overrides)
    return policy


def own_report_data(quote: bytes) -> bytes:
    return parse_quote(quote).report_data


def test_vector_expectation_dcap_qvl_directly() -> None:
    coll = dcap_qvl.QuoteCollateralV3.from_json((DCAP / "tdx_quote_collateral.json").read_text())
    assert dcap_qvl.verify(read(DCAP / "tdx_quote"), coll, NOW_TDX).status == "UpToDate"
    sgx_coll = dcap_qvl.QuoteCollateralV3.from_json((DCAP / "sgx_quote_collateral.json").read_text())
    report = dcap_qvl.verify(read(DCAP / "sgx_quote"), sgx_coll, NOW_SGX)
    assert report.status == "ConfigurationAndSWHardeningNeeded"
    assert sorted(report.advisory_ids) == ["INTEL-SA-00289", "INTEL-SA-00615"]


def test_pinned_intel_root_matches_vector_root() -> None:
    assert intel_sgx_root_der() == read(DCAP / "TrustedRootCA.der")
    from cryptography import x509

    assert fingerprint(x509.load_der_x509_certificate(intel_sgx_root_der())) == INTEL_SGX_ROOT_SHA256


def test_tdx_v4_quote_accepted_with_measured_policy() -> None:
    ev = quote_evidence()
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=own_report_data(ev.data), policy=measured_policy(ev.data), now=NOW_TDX
    )
    assert verdict.ok, verdict.detail
    assert verdict.reasons == ()
    assert verdict.tcb_status == "UpToDate"
    assert verdict.advisories == ()
    assert verdict.debug is False
    assert verdict.measurements["mrtd"].startswith("91eb2b44d141d4ec")
    assert verdict.extra["fmspc"] == "B0C06F000000"
    assert verdict.extra["collateral_expires_at"] == NOW_TDX + 1


def test_report_data_mismatch_refused() -> None:
    ev = quote_evidence()
    other = bytes(64)
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=other, policy=measured_policy(ev.data), now=NOW_TDX
    )
    assert not verdict.ok
    assert verdict.reasons == (Reason.REPORT_DATA_MISMATCH,)
    short = tdx.VERIFIER.verify(
        ev, expected_report_data=own_report_data(ev.data)[:32], policy=measured_policy(ev.data), now=NOW_TDX
    )
    assert short.reasons == (Reason.REPORT_DATA_MISMATCH,)


def test_unknown_measurements_refused_by_default() -> None:
    ev = quote_evidence()
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=own_report_data(ev.data), policy=CLOUD_POLICY, now=NOW_TDX
    )
    assert verdict.reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)
    assert "not appraised" in verdict.detail
    relaxed = tdx.VERIFIER.verify(
        ev,
        expected_report_data=own_report_data(ev.data),
        policy={**CLOUD_POLICY, "allow_any_measurement": True},
        now=NOW_TDX,
    )
    assert relaxed.ok


def test_measurement_not_in_allow_list_refused() -> None:
    ev = quote_evidence()
    policy = measured_policy(ev.data, rtmr2=["00" * 48])
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=own_report_data(ev.data), policy=policy, now=NOW_TDX
    )
    assert verdict.reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)
    assert "rtmr2" in verdict.detail


def test_dynamic_platform_needs_explicit_policy() -> None:
    ev = quote_evidence()
    policy = measured_policy(ev.data, allow_dynamic_platform=False)
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=own_report_data(ev.data), policy=policy, now=NOW_TDX
    )
    assert verdict.reasons == (Reason.UNTRUSTED_PLATFORM,)


def test_tcb_status_must_be_allowed() -> None:
    ev = quote_evidence()
    policy = measured_policy(ev.data, allowed_tcb_statuses=["SWHardeningNeeded"])
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=own_report_data(ev.data), policy=policy, now=NOW_TDX
    )
    assert verdict.reasons == (Reason.TCB_NOT_ALLOWED,)


def test_outdated_tcb_v5_quote_refused() -> None:
    ev = quote_evidence("tdx_quote_outdated", "tdx_quote_outdated_collateral.json")
    quote = parse_quote(ev.data)
    assert (quote.version, quote.body_type) == (5, 3)
    assert attestation_key_signature_valid(quote)
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=own_report_data(ev.data), policy=measured_policy(ev.data), now=NOW_OUTDATED
    )
    assert verdict.reasons == (Reason.TCB_NOT_ALLOWED,)
    assert "No matching TCB level" in verdict.detail


def test_sgx_quote_refused_as_cpu_evidence() -> None:
    ev = quote_evidence("sgx_quote", "sgx_quote_collateral.json")
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=bytes(64), policy={"allow_any_measurement": True}, now=NOW_SGX
    )
    assert verdict.reasons == (Reason.NOT_CPU_EVIDENCE,)
    assert "SGX" in verdict.detail
    assert verdict.report_data.startswith(b"Hello, world!")


def test_expired_collateral_refused() -> None:
    ev = quote_evidence()
    rd = own_report_data(ev.data)
    policy = measured_policy(ev.data)
    for now in (NOW_TDX + 1, NOW_TDX + 86400 * 60):
        verdict = tdx.VERIFIER.verify(ev, expected_report_data=rd, policy=policy, now=now)
        assert verdict.reasons == (Reason.EXPIRED,), verdict.detail


def test_not_yet_valid_collateral_refused() -> None:
    ev = quote_evidence()
    verdict = tdx.VERIFIER.verify(
        ev,
        expected_report_data=own_report_data(ev.data),
        policy=measured_policy(ev.data),
        now=NOW_TDX - 86400 * 60,
    )
    assert verdict.reasons == (Reason.FUTURE_DATED,)


@pytest.mark.parametrize("offset", [0, 2, 12, 48, 120, 184, 328, 520, 568, 600, 631])
def test_tampered_byte_in_signed_region_refused(offset: int) -> None:
    ev = quote_evidence()
    data = bytearray(ev.data)
    data[offset] ^= 0x01
    tampered = Evidence("tdx", bytes(data), ev.endorsements)
    verdict = tdx.VERIFIER.verify(
        tampered, expected_report_data=own_report_data(ev.data), policy=measured_policy(ev.data), now=NOW_TDX
    )
    assert not verdict.ok
    assert verdict.reasons[0] in (Reason.BAD_SIGNATURE, Reason.MALFORMED, Reason.WRONG_SIGNER)


@pytest.mark.parametrize("offset", [700, 1000, 1500, 3000])
def test_tampered_signature_data_refused(offset: int) -> None:
    ev = quote_evidence()
    data = bytearray(ev.data)
    data[offset] ^= 0x01
    verdict = tdx.VERIFIER.verify(
        Evidence("tdx", bytes(data), ev.endorsements),
        expected_report_data=own_report_data(ev.data),
        policy=measured_policy(ev.data),
        now=NOW_TDX,
    )
    assert not verdict.ok
    assert verdict.reasons[0] in (Reason.BAD_SIGNATURE, Reason.CHAIN_INVALID)


def test_tampered_collateral_refused() -> None:
    import json

    ev = quote_evidence()
    coll = json.loads(ev.endorsements["collateral"])
    sig = coll["tcb_info_signature"]
    coll["tcb_info_signature"] = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    verdict = tdx.VERIFIER.verify(
        Evidence("tdx", ev.data, {"collateral": json.dumps(coll).encode()}),
        expected_report_data=own_report_data(ev.data),
        policy=measured_policy(ev.data),
        now=NOW_TDX,
    )
    assert verdict.reasons == (Reason.COLLATERAL_INVALID,)


def test_collateral_of_another_platform_refused() -> None:
    ev = Evidence(
        "tdx", read(DCAP / "tdx_quote"), {"collateral": read(DCAP / "tdx_quote_outdated_collateral.json")}
    )
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=own_report_data(ev.data), policy=measured_policy(ev.data), now=NOW_TDX
    )
    assert not verdict.ok


def test_missing_collateral_refused() -> None:
    raw = read(VECTORS / "go-tdx-guest" / "quote_v5_sample.dat")
    quote = parse_quote(raw)
    assert quote.version == 5 and attestation_key_signature_valid(quote)
    verdict = tdx.VERIFIER.verify(
        Evidence("tdx", raw), expected_report_data=quote.report_data, policy={}, now=NOW_TDX
    )
    assert verdict.reasons == (Reason.COLLATERAL_INVALID,)


def test_debug_td_refused_unless_test_policy() -> None:
    """No real debug quote exists in the vectors; appraisal is exercised on the parsed fields."""
    ev = quote_evidence()
    fields = parse_quote(ev.data).td_fields()
    claims: dict[str, Any] = {"label": tdx.LABEL}
    platform = {"dynamic_platform": "False", "cached_keys": "False", "smt_enabled": "False"}
    policy = measured_policy(ev.data)
    refused = tdx.VERIFIER._appraise(
        fields, True, "UpToDate", (), platform, fields["report_data"], policy, claims
    )
    assert refused.reasons == (Reason.DEBUG,)
    allowed = tdx.VERIFIER._appraise(
        fields, True, "UpToDate", (), platform, fields["report_data"], {**policy, "allow_debug": True}, claims
    )
    assert allowed.ok


def test_ccel_event_log_replays_to_quote_rtmrs() -> None:
    quote = parse_quote(read(CCEL / "cos-113-tdx-quote.dat"))
    fields = quote.td_fields()
    events = parse_event_log(read(CCEL / "ccel_data.dat"))
    assert len(events) == 43
    assert replay_rtmrs(events) == [fields[f"rtmr{i}"] for i in range(4)]
    assert quote.report_data == read(CCEL / "nonce.dat")
    assert read(CCEL / "ccel_table.dat")[:4] == b"CCEL"


def test_event_log_mismatch_refused_before_collateral() -> None:
    raw = read(CCEL / "cos-113-tdx-quote.dat")
    log = bytearray(read(CCEL / "ccel_data.dat"))
    events = parse_event_log(bytes(log))
    # flip one byte inside the first extended event's SHA-384 digest
    index = bytes(log).index(events[1].sha384)
    log[index] ^= 0x01
    verdict = tdx.VERIFIER.verify(
        Evidence("tdx", raw, {"event_log": bytes(log)}),
        expected_report_data=bytes(64),
        policy={},
        now=NOW_TDX,
    )
    assert verdict.reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)
    assert "does not replay" in verdict.detail
    good = tdx.VERIFIER.verify(
        Evidence("tdx", raw, {"event_log": read(CCEL / "ccel_data.dat")}),
        expected_report_data=bytes(64),
        policy={},
        now=NOW_TDX,
    )
    assert good.reasons == (Reason.COLLATERAL_INVALID,)  # replay passed; no collateral shipped for it


def test_require_event_log_policy() -> None:
    ev = quote_evidence()
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=own_report_data(ev.data), policy={"require_event_log": True}, now=NOW_TDX
    )
    assert verdict.reasons == (Reason.POLICY_VIOLATION,)


def test_malformed_inputs_refused_not_raised() -> None:
    for data in (b"", b"\x04\x00" + bytes(100), read(DCAP / "tdx_quote")[:700]):
        verdict = tdx.VERIFIER.verify(
            Evidence("tdx", data), expected_report_data=bytes(64), policy={}, now=NOW_TDX
        )
        assert verdict.reasons == (Reason.MALFORMED,)
    with pytest.raises(QuoteFormatError):
        parse_quote(bytes(70_000))
    with pytest.raises(EventLogError):
        parse_event_log(bytes(100))


def test_bad_policy_type_is_a_policy_violation() -> None:
    ev = quote_evidence()
    verdict = tdx.VERIFIER.verify(
        ev, expected_report_data=bytes(64), policy={"mrtd": "not-a-list"}, now=NOW_TDX
    )
    assert verdict.reasons == (Reason.POLICY_VIOLATION,)


def test_collateral_window_matches_vectors() -> None:
    info = parse_collateral(read(DCAP / "tdx_quote_collateral.json"))
    assert (info.tee, info.fmspc) == ("TDX", "B0C06F000000")
    assert info.not_before <= NOW_TDX < info.not_after
    with pytest.raises(CollateralError):
        parse_collateral(b'{"tcb_info": 1}')
