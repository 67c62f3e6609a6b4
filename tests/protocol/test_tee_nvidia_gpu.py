"""NVIDIA GPU (Hopper) SPDM evidence against the real nvtrust / NVAT vectors."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from protocol.attestation import nvidia_gpu
from protocol.attestation.evidence import Evidence, Reason
from protocol.attestation.nvidia_rim import RimError, parse_rim
from protocol.attestation.roots import NVIDIA_DEVICE_ROOT_SHA256, fingerprint, nvidia_device_root
from protocol.attestation.spdm import SpdmFormatError, parse_transcript
from tests.vectors import VECTORS as TREE

VECTORS = TREE / "nvidia-gpu"
NVTRUST = VECTORS / "nvtrust"
NOW = 1752919234  # device certificates are valid until 9999-12-31
SAMPLE = bytes.fromhex((NVTRUST / "hopperAttestationReport.txt").read_text().strip())
CHAIN = (NVTRUST / "hopperCertChain.txt").read_bytes()
PPCIE = json.loads((NVTRUST / "ppcie_gpu_evidence.json").read_text())
RIMS = {
    "rim_driver": (NVTRUST / "Driver_RIM_test_no_gpu.swidtag").read_bytes(),
    "rim_vbios": (NVTRUST / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes(),
}
OFFLINE: dict[str, Any] = {"require_ocsp": False, "allow_any_measurement": True}


def nonce_of(evidence: bytes) -> bytes:
    return parse_transcript(evidence).nonce


def verify(data: bytes = SAMPLE, endorsements: dict[str, bytes] | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {"expected_report_data": nonce_of(SAMPLE), "policy": OFFLINE, "now": NOW}
    args.update(kw)
    ends = {"cert_chain": CHAIN} if endorsements is None else endorsements
    return nvidia_gpu.VERIFIER.verify(Evidence("nvidia-gpu", data, ends), **args)


def ppcie(i: int) -> tuple[bytes, bytes, bytes]:
    entry = PPCIE[i]
    return (
        base64.b64decode(entry["evidence"]),
        base64.b64decode(entry["certificate"]),
        bytes.fromhex(entry["nonce"]),
    )


def test_pinned_root_is_vector_root() -> None:
    from cryptography import x509

    shipped = x509.load_pem_x509_certificate((NVTRUST / "verifier_device_root.pem").read_bytes())
    assert fingerprint(nvidia_device_root()) == fingerprint(shipped) == NVIDIA_DEVICE_ROOT_SHA256


def test_sample_evidence_verifies() -> None:
    verdict = verify()
    assert verdict.ok, verdict.detail
    assert verdict.extra["arch"] == "HOPPER"
    assert verdict.extra["driver_version"] == "550.90.07"
    assert verdict.extra["vbios_version"] == "96.00.9F.00.01"
    assert verdict.revocation == "not checked"
    assert len(verdict.measurements) == 64


@pytest.mark.parametrize("index", range(8))
def test_all_ppcie_evidences_verify(index: int) -> None:
    evidence, chain, nonce = ppcie(index)
    verdict = verify(evidence, {"cert_chain": chain}, expected_report_data=nonce)
    assert verdict.ok, verdict.detail
    assert verdict.extra["driver_version"] == "590.12"
    assert verdict.extra["vbios_version"] == PPCIE[index]["vbios_version"]


def test_swapped_gpu_evidence_refused() -> None:
    """Binding: GPU evidence only verifies against the nonce it was produced for.

    The 8 PPCIE evidences come from one host in one session, so they share one nonce; evidence
    from another host (the nvtrust sample) carries a different nonce. Swapping either way is
    refused, and re-nonce-ing evidence breaks its signature.
    """
    sample_nonce = nonce_of(SAMPLE)
    for i in range(8):
        evidence, chain, nonce = ppcie(i)
        assert nonce != sample_nonce
        assert verify(evidence, {"cert_chain": chain}, expected_report_data=sample_nonce).reasons == (
            Reason.REPORT_DATA_MISMATCH,
        )
        assert verify(expected_report_data=nonce).reasons == (Reason.REPORT_DATA_MISMATCH,)
        renonced = bytearray(evidence)
        renonced[4:36] = sample_nonce
        assert verify(bytes(renonced), {"cert_chain": chain}, expected_report_data=sample_nonce).reasons == (
            Reason.BAD_SIGNATURE,
        )


def test_same_host_gpus_are_distinguishable() -> None:
    """Within one host the nonce is shared, so a bundle tells GPUs apart by evidence hash and device id."""
    import hashlib

    verdicts = []
    for i in range(8):
        evidence, chain, nonce = ppcie(i)
        verdicts.append(verify(evidence, {"cert_chain": chain}, expected_report_data=nonce))
    assert len({v.extra["device_id"] for v in verdicts}) == 8
    assert all(v.extra["device_id"].startswith("NVIDIA:GH100:") for v in verdicts)
    assert len({hashlib.sha256(ppcie(i)[0]).digest() for i in range(8)}) == 8


def test_chain_of_another_gpu_refused() -> None:
    evidence, _, nonce = ppcie(0)
    _, other_chain, _ = ppcie(1)
    verdict = verify(evidence, {"cert_chain": other_chain}, expected_report_data=nonce)
    assert verdict.reasons[0] in (Reason.BAD_SIGNATURE, Reason.WRONG_SIGNER)


def test_invalid_signature_vector_refused() -> None:
    bad = bytes.fromhex(
        (VECTORS / "nvat-sdk" / "hopperAttestationReportInvalidSignature.txt").read_text().strip()
    )
    verdict = verify(bad, expected_report_data=nonce_of(bad))
    assert verdict.reasons == (Reason.BAD_SIGNATURE,)


@pytest.mark.parametrize("offset", [4, 20, 40, 100, 2000, 4000])
def test_tampered_transcript_refused(offset: int) -> None:
    data = bytearray(SAMPLE)
    data[offset] ^= 0x01
    verdict = verify(bytes(data), expected_report_data=bytes(data[4:36]))
    assert not verdict.ok
    assert verdict.reasons[0] in (Reason.BAD_SIGNATURE, Reason.MALFORMED)


def test_mismatched_reference_measurements_refused() -> None:
    verdict = verify(endorsements={"cert_chain": CHAIN, **RIMS}, policy={"require_ocsp": False})
    assert verdict.reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)
    assert verdict.detail.count("does not match the") == 20
    assert "RIM is for version 545.00" in verdict.detail
    assert verdict.extra["reference_measurements"] == "mismatch"


def test_rim_parse() -> None:
    driver = parse_rim(RIMS["rim_driver"])
    vbios = parse_rim(RIMS["rim_vbios"])
    assert (driver.component, driver.version) == ("driver", "545.00")
    assert (vbios.component, vbios.version) == ("vbios", "96.00.5E.00.01")
    assert len(driver.measurements) + len(vbios.measurements) == 33
    with pytest.raises(RimError):
        parse_rim(b"<!DOCTYPE x [<!ENTITY a 'b'>]><x/>")
    with pytest.raises(RimError):
        parse_rim(b"<notswid/>")


def test_measurements_required_by_default() -> None:
    verdict = verify(policy={"require_ocsp": False})
    assert verdict.reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)


def test_revocation_policy() -> None:
    verdict = verify(policy={"allow_any_measurement": True})
    assert verdict.reasons == (Reason.UNTRUSTED_PLATFORM,)
    assert "OCSP" in verdict.detail and verdict.revocation == "not checked"


def test_version_allow_lists() -> None:
    assert verify(policy={**OFFLINE, "allowed_driver_versions": ["550.90.07"]}).ok
    refused = verify(policy={**OFFLINE, "allowed_vbios_versions": ["96.00.5E.00.01"]})
    assert refused.reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)


def test_chain_problems_refused() -> None:
    assert verify(endorsements={}).reasons == (Reason.COLLATERAL_INVALID,)
    from cryptography import x509

    certs = x509.load_pem_x509_certificates(CHAIN)
    from cryptography.hazmat.primitives.serialization import Encoding

    truncated = b"".join(c.public_bytes(Encoding.PEM) for c in certs[:2])  # no path to the root
    assert verify(endorsements={"cert_chain": truncated}).reasons == (Reason.CHAIN_INVALID,)
    without_root = b"".join(c.public_bytes(Encoding.PEM) for c in certs[:-1])
    assert verify(endorsements={"cert_chain": without_root}).ok


def test_wrong_nonce_length_refused() -> None:
    assert verify(expected_report_data=nonce_of(SAMPLE) + bytes(32)).reasons == (Reason.REPORT_DATA_MISMATCH,)


def test_malformed_refused() -> None:
    for data in (b"", SAMPLE[:37], SAMPLE[:-1], b"\x11\xe1" + SAMPLE[2:]):
        assert verify(data).reasons == (Reason.MALFORMED,)
    with pytest.raises(SpdmFormatError):
        parse_transcript(bytes(70_000))
