"""AMD SEV-SNP evidence against the real go-sev-guest vectors."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from cryptography import x509

from protocol.attestation import sev_snp
from protocol.attestation.evidence import Evidence, Reason
from protocol.attestation.roots import AMD_ARK_SHA256, amd_chain, fingerprint
from protocol.attestation.snp_report import (
    ReportFormatError,
    TcbVersion,
    build_cert_table,
    parse_cert_table,
    parse_report,
)
from tests.vectors import VECTORS as TREE

VECTORS = TREE / "sev-snp" / "go-sev-guest"
NOW = 1752919234  # any time inside the VCEK validity (2022-09-24 .. 2029-09-24)
REPORT = (VECTORS / "attestation.bin").read_bytes()
VCEK = (VECTORS / "vcek.testcer").read_bytes()
RD = REPORT[0x50:0x90]
MEASUREMENT = REPORT[0x90:0xC0].hex()
PRODUCTION: dict[str, Any] = {
    "measurements": [MEASUREMENT],
    "min_tcb": {"bootloader": 2, "snp": 5, "microcode": 68},
}
TEST_ONLY = {**PRODUCTION, "allow_debug": True}


def verify(data: bytes = REPORT, endorsements: dict[str, bytes] | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {"expected_report_data": RD, "policy": TEST_ONLY, "now": NOW}
    args.update(kw)
    return sev_snp.VERIFIER.verify(
        Evidence("sev-snp", data, {"vcek": VCEK} if endorsements is None else endorsements), **args
    )


def test_vector_fields() -> None:
    report = parse_report(REPORT)
    assert report.version == 2 and report.policy == 0xB0000 and report.debug
    assert report.report_data == bytes([1, 2, 3, 4, 5]) + bytes(59)
    assert TcbVersion.decode(report.reported_tcb_raw, "Milan").components() == {
        "bootloader": 2,
        "tee": 0,
        "snp": 5,
        "microcode": 68,
    }


def test_debug_report_refused_by_production_policy() -> None:
    verdict = verify(policy=PRODUCTION)
    assert not verdict.ok
    assert verdict.reasons == (Reason.DEBUG,)
    assert verdict.debug is True


def test_test_policy_reaches_report_data_check() -> None:
    accepted = verify()
    assert accepted.ok, accepted.detail
    assert accepted.extra["product"] == "Milan"
    mismatch = verify(expected_report_data=bytes(64))
    assert mismatch.reasons == (Reason.REPORT_DATA_MISMATCH,)


def test_chain_verifies_with_supplied_matching_chain() -> None:
    verdict = verify(endorsements={"vcek": VCEK, "cert_chain": (VECTORS / "ask_ark_milan.pem").read_bytes()})
    assert verdict.ok, verdict.detail


def test_other_products_chain_refused() -> None:
    for name in ("ask_ark_genoa.pem", "ask_ark_turin_vcek.pem"):
        verdict = verify(endorsements={"vcek": VCEK, "cert_chain": (VECTORS / name).read_bytes()})
        assert verdict.reasons == (Reason.WRONG_SIGNER,)


@pytest.mark.parametrize(
    "product,file",
    [("Milan", "ask_ark_milan.pem"), ("Genoa", "ask_ark_genoa.pem"), ("Turin", "ask_ark_turin_vcek.pem")],
)
def test_pinned_chains_verify(product: str, file: str) -> None:
    chain = amd_chain(product)
    assert fingerprint(chain.ark) == AMD_ARK_SHA256[product]
    chain.ark.verify_directly_issued_by(chain.ark)
    chain.ask.verify_directly_issued_by(chain.ark)
    ask, ark = x509.load_pem_x509_certificates((VECTORS / file).read_bytes())
    assert fingerprint(ark) == fingerprint(chain.ark) and fingerprint(ask) == fingerprint(chain.ask)


@pytest.mark.parametrize("offset", [0x08, 0x30, 0x50, 0x90, 0x180, 0x1A0, 0x29F])
def test_tampered_signed_region_refused(offset: int) -> None:
    data = bytearray(REPORT)
    data[offset] ^= 0x01
    verdict = verify(bytes(data))
    assert not verdict.ok
    assert verdict.reasons[0] in (Reason.BAD_SIGNATURE, Reason.MALFORMED)


def test_tampered_signature_refused() -> None:
    data = bytearray(REPORT)
    data[0x2A0] ^= 0x01
    assert verify(bytes(data)).reasons == (Reason.BAD_SIGNATURE,)


def test_missing_vcek_refused() -> None:
    assert verify(endorsements={}).reasons == (Reason.COLLATERAL_INVALID,)


def test_vcek_from_certificate_table() -> None:
    chain = amd_chain("Milan")
    from cryptography.hazmat.primitives.serialization import Encoding

    table = build_cert_table(
        {
            "vcek": VCEK,
            "ask": chain.ask.public_bytes(Encoding.DER),
            "ark": chain.ark.public_bytes(Encoding.DER),
        }
    )
    assert parse_cert_table(table)["vcek"] == VCEK
    assert verify(endorsements={"cert_table": table}).ok
    with pytest.raises(ReportFormatError):
        parse_cert_table(table[:30])


def test_policy_checks() -> None:
    assert verify(policy={**TEST_ONLY, "measurements": ["00" * 48]}).reasons == (
        Reason.MEASUREMENT_NOT_ALLOWED,
    )
    assert verify(policy={"allow_debug": True}).reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)
    assert verify(policy={**TEST_ONLY, "min_tcb": {"microcode": 69}}).reasons == (Reason.TCB_NOT_ALLOWED,)
    assert verify(policy={**TEST_ONLY, "allowed_products": ["Genoa"]}).reasons == (Reason.UNTRUSTED_PLATFORM,)
    assert verify(policy={**TEST_ONLY, "host_data": ["11" * 32]}).reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)
    assert verify(policy={**TEST_ONLY, "min_tcb": {"bogus": 1}}).reasons == (Reason.POLICY_VIOLATION,)


def test_vmpl_above_policy_refused() -> None:
    """VMPL is inside the signed region, so check the appraisal step on a parsed report."""
    report = parse_report(REPORT)
    object.__setattr__(report, "vmpl", 2)
    reported = TcbVersion.decode(report.reported_tcb_raw, "Milan")
    verdict = sev_snp.VERIFIER._appraise(report, reported, RD, TEST_ONLY, {"label": sev_snp.LABEL})
    assert verdict.reasons == (Reason.POLICY_VIOLATION,)
    assert sev_snp.VERIFIER._appraise(report, reported, RD, {**TEST_ONLY, "max_vmpl": 2}, {}).ok


def test_vcek_outside_validity_refused() -> None:
    assert verify(now=1600000000).reasons == (Reason.FUTURE_DATED,)
    assert verify(now=1900000000).reasons == (Reason.EXPIRED,)


def test_vcek_serial_zero_warning_does_not_leak() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify().ok


def test_malformed_reports_refused() -> None:
    for data in (b"", REPORT[:-1], REPORT + b"\x00", b"\x09" + REPORT[1:]):
        assert verify(data).reasons == (Reason.MALFORMED,)
