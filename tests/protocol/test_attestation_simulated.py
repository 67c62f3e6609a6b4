"""The simulated evidence kind: format, refusals, labelling, and that it can never pass as a real quote."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol
from protocol import codec
from protocol.attestation.evidence import Evidence, Reason
from protocol.attestation.evidence_files import detect_kind
from protocol.attestation.simulated import (
    LABEL,
    MAGIC,
    SimulatedEvidenceError,
    SimulatedPlatform,
    SimulatedVerifier,
    check_policy_section,
    measure_package_sources,
    parse_simulated_evidence,
    source_measurement,
)
from protocol.attestation.snp_report import ReportFormatError, parse_report
from protocol.attestation.spdm import SpdmFormatError, parse_transcript
from protocol.attestation.tdx_quote import QuoteFormatError, parse_quote
from protocol.identity import Domain, Identity
from tests.conftest import decoder_settings
from tests.vectors import VECTORS

PLATFORM = SimulatedPlatform(bytes([21]) * 32, testnet="tn")
MEASUREMENT = hashlib.sha256(b"code").digest()
RD = hashlib.sha512(b"binding").digest()
NOW = 1_700_000_000
POLICY: dict[str, Any] = {"platform_keys": [PLATFORM.public_key_hex], "measurements": [MEASUREMENT.hex()]}


def verify(evidence: Evidence, policy: dict[str, Any] | None = None, rd: bytes = RD, now: int = NOW) -> Any:
    return SimulatedVerifier().verify(
        evidence, expected_report_data=rd, policy=POLICY if policy is None else policy, now=now
    )


def issue(**kwargs: Any) -> Evidence:
    args: dict[str, Any] = {"measurement": MEASUREMENT, "issued_at": NOW}
    args.update(kwargs)
    return PLATFORM.issue(RD, **args)


def rebuild(evidence: Evidence, **claim_changes: Any) -> Evidence:
    """Alter claims but keep the platform's original signature (a forgery attempt)."""
    body = codec.decode(evidence.data[len(MAGIC) :])
    body["claims"].update(claim_changes)
    return Evidence("simulated", MAGIC + codec.encode(body))


def test_issue_and_verify() -> None:
    verdict = verify(issue())
    assert verdict.ok and verdict.reasons == ()
    assert verdict.label == LABEL == "SIMULATED — not secure"
    assert verdict.measurements == {"measurement": MEASUREMENT.hex()}
    assert verdict.report_data == RD and verdict.debug is False
    assert verdict.extra["platform_key"] == PLATFORM.public_key_hex and verdict.extra["testnet"] == "tn"


def test_exact_format() -> None:
    evidence = issue()
    assert evidence.kind == "simulated" and evidence.endorsements == {}
    assert evidence.data.startswith(b"VEILNET-SIMULATED-EVIDENCE\x00")
    body = codec.decode(evidence.data[len(MAGIC) :])
    claims = {
        "measurement": MEASUREMENT,
        "report_data": RD,
        "debug": False,
        "issued_at": NOW,
        "testnet": "tn",
    }
    assert body == {"v": 1, "claims": claims, "platform_key": PLATFORM.public_key, "sig": body["sig"]}
    expected_sig = Identity(PLATFORM.seed).sign(Domain.SIMULATED_EVIDENCE, codec.encode(claims))
    assert body["sig"] == expected_sig
    assert parse_simulated_evidence(evidence.data).signed_claims == codec.encode(claims)


# -- never a real quote ---------------------------------------------------------------------------


def test_magic_is_no_tdx_quote_or_snp_report_header() -> None:
    data = issue().data
    (u16,) = struct.unpack_from("<H", data, 0)
    (u32,) = struct.unpack_from("<I", data, 0)
    assert u16 not in (3, 4, 5)  # DCAP quote versions (SGX 3, TDX 4 and 5)
    assert not 2 <= u32 <= 5  # SNP attestation report versions
    assert data[0] not in (0x10, 0x11, 0x12, 0x13)  # SPDM versions 1.0..1.3


def test_real_parsers_refuse_simulated_evidence() -> None:
    data = issue().data
    with pytest.raises(QuoteFormatError):
        parse_quote(data)
    with pytest.raises(ReportFormatError):
        parse_report(data)
    with pytest.raises(SpdmFormatError):
        parse_transcript(data)
    assert detect_kind(data) is None
    padded = data + bytes(8192)  # even at the sizes real quotes and reports have
    assert detect_kind(padded) is None


@pytest.mark.parametrize(
    "vector", ["tdx/dcap-qvl/tdx_quote", "tdx/dcap-qvl/sgx_quote", "sev-snp/go-sev-guest/attestation.bin"]
)
def test_real_evidence_is_not_simulated_evidence(vector: str) -> None:
    data = (VECTORS / vector).read_bytes()
    with pytest.raises(SimulatedEvidenceError):
        parse_simulated_evidence(data)
    verdict = verify(Evidence("simulated", data))
    assert verdict.reasons == (Reason.MALFORMED,) and verdict.label == LABEL


# -- refusals (each labelled) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("evidence", "policy", "reason"),
    [
        (lambda: issue(), {**POLICY, "platform_keys": []}, Reason.UNTRUSTED_PLATFORM),
        (lambda: issue(), {"measurements": [MEASUREMENT.hex()]}, Reason.UNTRUSTED_PLATFORM),
        (
            lambda: SimulatedPlatform(bytes([22]) * 32, "tn").issue(
                RD, measurement=MEASUREMENT, issued_at=NOW
            ),
            POLICY,
            Reason.UNTRUSTED_PLATFORM,
        ),
        (lambda: issue(), {**POLICY, "testnet": "other"}, Reason.UNTRUSTED_PLATFORM),
        (lambda: rebuild(issue(), debug=True), POLICY, Reason.BAD_SIGNATURE),
        (lambda: rebuild(issue(), measurement=bytes(32)), POLICY, Reason.BAD_SIGNATURE),
        (lambda: rebuild(issue(), report_data=bytes(64)), POLICY, Reason.BAD_SIGNATURE),
        (lambda: issue(debug=True), POLICY, Reason.DEBUG),
        (lambda: issue(debug=True), {**POLICY, "allow_any_measurement": True}, Reason.DEBUG),
        (lambda: issue(measurement=bytes(32)), POLICY, Reason.MEASUREMENT_NOT_ALLOWED),
        (lambda: issue(), {"platform_keys": POLICY["platform_keys"]}, Reason.MEASUREMENT_NOT_ALLOWED),
        (
            lambda: PLATFORM.issue(bytes(64), measurement=MEASUREMENT, issued_at=NOW),
            POLICY,
            Reason.REPORT_DATA_MISMATCH,
        ),
        (lambda: issue(issued_at=NOW + 31), POLICY, Reason.FUTURE_DATED),
        (lambda: issue(issued_at=NOW - 101), {**POLICY, "max_age": 100}, Reason.EXPIRED),
        (lambda: Evidence("simulated", b"VEILNET"), POLICY, Reason.MALFORMED),
        (lambda: Evidence("tdx", issue().data), POLICY, Reason.MALFORMED),
        (lambda: issue(), {**POLICY, "unknown": 1}, Reason.POLICY_VIOLATION),
        (lambda: issue(), {**POLICY, "platform_keys": "abc"}, Reason.POLICY_VIOLATION),
        (lambda: issue(), {**POLICY, "platform_keys": ["abcd"]}, Reason.POLICY_VIOLATION),
        (lambda: issue(), {**POLICY, "measurements": ["zz"]}, Reason.POLICY_VIOLATION),
        (lambda: issue(), {**POLICY, "max_clock_skew": "30"}, Reason.POLICY_VIOLATION),
    ],
)
def test_refusals_are_typed_and_labelled(evidence: Any, policy: dict[str, Any], reason: Reason) -> None:
    verdict = verify(evidence(), policy)
    assert not verdict.ok
    assert verdict.reasons == (reason,)
    assert verdict.label == LABEL


def test_allow_any_measurement_and_matching_testnet() -> None:
    policy = {"platform_keys": [PLATFORM.public_key_hex], "allow_any_measurement": True, "testnet": "tn"}
    assert verify(issue(measurement=bytes(32)), policy).ok
    assert verify(issue(issued_at=NOW + 30), POLICY).ok  # within the default skew
    assert verify(issue(issued_at=NOW - 100), {**POLICY, "max_age": 100}).ok


def test_parse_rejects_wrong_shapes() -> None:
    good = codec.decode(issue().data[len(MAGIC) :])
    variants: list[dict[str, Any]] = [
        {**good, "v": 2},
        {**good, "extra": 1},
        {**good, "platform_key": b"\x00" * 31},
        {**good, "sig": b"\x00" * 63},
        {**good, "claims": {**good["claims"], "debug": 0}},
        {**good, "claims": {**good["claims"], "issued_at": -1}},
        {**good, "claims": {**good["claims"], "measurement": b"\x00" * 31}},
        {**good, "claims": {**good["claims"], "report_data": b"\x00" * 63}},
        {**good, "claims": {**good["claims"], "testnet": 5}},
        {**good, "claims": {k: v for k, v in good["claims"].items() if k != "testnet"}},
    ]
    for variant in variants:
        with pytest.raises(SimulatedEvidenceError):
            parse_simulated_evidence(MAGIC + codec.encode(variant))
    with pytest.raises(SimulatedEvidenceError):
        parse_simulated_evidence(issue().data + b"\x00")


def test_platform_repr_hides_the_seed() -> None:
    assert PLATFORM.seed.hex() not in repr(PLATFORM)
    with pytest.raises(ValueError):
        PLATFORM.issue(b"short", measurement=MEASUREMENT, issued_at=NOW)
    with pytest.raises(ValueError):
        SimulatedPlatform(bytes(32), testnet="x" * 65)


def test_check_policy_section() -> None:
    check_policy_section(POLICY)
    with pytest.raises(ValueError, match="unknown keys"):
        check_policy_section({"platform_key": []})
    with pytest.raises(ValueError, match="must not be negative"):
        check_policy_section({"max_age": -1})


@decoder_settings()
@given(st.binary(max_size=600))
def test_property_parse_only_raises_its_error(suffix: bytes) -> None:
    for data in (suffix, MAGIC + suffix):
        try:
            parse_simulated_evidence(data)
        except SimulatedEvidenceError:
            continue


# -- measurement of the node's own code ------------------------------------------------------------


def test_source_measurement_exact_bytes() -> None:
    files = [("b/x.py", b"2"), ("a.py", b"1")]
    h = hashlib.sha256(b"veilnet/source/v1\x00")
    for path, content in sorted(files):
        h.update(struct.pack(">I", len(path)) + path.encode() + hashlib.sha256(content).digest())
    assert source_measurement(files) == h.digest()
    assert source_measurement(reversed(files)) == h.digest()  # order of the input does not matter


def test_source_measurement_sensitivity_and_checks() -> None:
    base = source_measurement([("a.py", b"1"), ("b.py", b"2")])
    assert source_measurement([("a.py", b"1"), ("b.py", b"3")]) != base
    assert source_measurement([("a.py", b"1"), ("c.py", b"2")]) != base
    assert source_measurement([("a.py", b"12"), ("b.py", b"")]) != base  # no ambiguity across files
    for bad in ["/abs.py", "../up.py", "a/../b.py", "a//b.py", "", ".", "a\\b.py"]:
        with pytest.raises(ValueError):
            source_measurement([(bad, b"")])
    with pytest.raises(ValueError, match="twice"):
        source_measurement([("a.py", b""), ("a.py", b"")])


def test_measure_package_sources(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__pycache__").mkdir()
    (pkg / "__init__.py").write_bytes(b"")
    (pkg / "sub" / "mod.py").write_bytes(b"x = 1\n")
    (pkg / "data.txt").write_bytes(b"not python")
    (pkg / "__pycache__" / "cached.py").write_bytes(b"ignored")
    expected = source_measurement([("pkg/__init__.py", b""), ("pkg/sub/mod.py", b"x = 1\n")])
    assert measure_package_sources([pkg]) == expected
    (pkg / "sub" / "mod.py").write_bytes(b"x = 2\n")
    assert measure_package_sources([pkg]) != expected
    with pytest.raises(ValueError):
        measure_package_sources([tmp_path / "missing"])


def test_measure_the_real_protocol_package() -> None:
    root = Path(protocol.__file__).parent
    first = measure_package_sources([root])
    assert len(first) == 32 and measure_package_sources([root]) == first
