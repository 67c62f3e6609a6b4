"""GPU and SEV-SNP verifier defects found with real evidence (issue 10).

Genuine vectors: NVIDIA's Blackwell sample (NVAT ``blackwellAttestationReport.txt`` and its
chain), the nvtrust H100 sample, go-sev-guest's Milan report. Two GPU cases have no genuine vector
(a device certificate without its FWID extension, a report without the FWID field): they are built
with a *test CA* pinned into a verifier instance and the real transcript re-signed by a test leaf
key. Those prove how the verifier classifies the case, not that such evidence exists.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from protocol.attestation import nvidia_gpu, sev_snp
from protocol.attestation.evidence import Evidence, Reason
from protocol.attestation.spdm import NONCE_SIZE, OPAQUE_FWID, SIGNATURE_SIZE, parse_transcript
from tests.conftest import decoder_settings
from tests.vectors import vector

BLACKWELL = bytes.fromhex(
    vector("nvidia-gpu", "nvat-sdk", "blackwellAttestationReport.txt").read_text().strip()
)
BLACKWELL_CHAIN = vector("nvidia-gpu", "nvat-sdk", "blackwellCertChain.txt").read_bytes()
HOPPER = bytes.fromhex(vector("nvidia-gpu", "nvtrust", "hopperAttestationReport.txt").read_text().strip())
HOPPER_CHAIN = vector("nvidia-gpu", "nvtrust", "hopperCertChain.txt").read_bytes()
OFFLINE: dict[str, Any] = {"require_ocsp": False, "allow_any_measurement": True}
NOW = 1764460800  # 2025-11-30; device certificates are valid until 9999-12-31
SNP_REPORT = vector("sev-snp", "go-sev-guest", "attestation.bin").read_bytes()
VCEK = vector("sev-snp", "go-sev-guest", "vcek.testcer").read_bytes()
SNP_POLICY: dict[str, Any] = {"allow_debug": True, "allow_any_measurement": True}
NOW_SNP = 1752919234


def gpu_verify(
    data: bytes, chain: bytes, verifier: nvidia_gpu.NvidiaGpuVerifier = nvidia_gpu.VERIFIER, **kw: Any
) -> Any:
    args: dict[str, Any] = {
        "expected_report_data": parse_transcript(data).nonce,
        "policy": OFFLINE,
        "now": NOW,
    }
    args.update(kw)
    return verifier.verify(Evidence("nvidia-gpu", data, {"cert_chain": chain}), **args)


# -- item 1: Blackwell ------------------------------------------------------------------------------


def test_genuine_blackwell_evidence_verifies_with_its_fwid_from_oid_2_23_133_5_4_1_1() -> None:
    verdict = gpu_verify(BLACKWELL, BLACKWELL_CHAIN)
    assert verdict.ok, verdict.detail
    assert verdict.extra["arch"] == "BLACKWELL"
    assert verdict.extra["fwid_check"] == "matched the leaf certificate"
    leaf = x509.load_pem_x509_certificates(BLACKWELL_CHAIN)[0]
    assert nvidia_gpu.leaf_fwid(leaf, "BLACKWELL") == parse_transcript(BLACKWELL).opaque[OPAQUE_FWID]


def test_genuine_blackwell_nonce_bit_flip_breaks_the_signature() -> None:
    tampered = BLACKWELL[:4] + bytes([BLACKWELL[4] ^ 1]) + BLACKWELL[5:]
    assert gpu_verify(tampered, BLACKWELL_CHAIN).reasons == (Reason.BAD_SIGNATURE,)


def test_genuine_certificates_read_with_the_other_architectures_oid_lack_the_extension() -> None:
    """The Blackwell leaf has no Hopper 2.23.133.5.4.1 extension and vice versa: missing, not broken."""
    blackwell_leaf = x509.load_pem_x509_certificates(BLACKWELL_CHAIN)[0]
    hopper_leaf = x509.load_pem_x509_certificates(HOPPER_CHAIN)[0]
    with pytest.raises(nvidia_gpu.MissingExtension, match=r"2\.23\.133\.5\.4\.1 "):
        nvidia_gpu.leaf_fwid(blackwell_leaf, "HOPPER")
    with pytest.raises(nvidia_gpu.MissingExtension, match=r"2\.23\.133\.5\.4\.1\.1"):
        nvidia_gpu.leaf_fwid(hopper_leaf, "BLACKWELL")
    assert nvidia_gpu.leaf_fwid(hopper_leaf, "HOPPER") == parse_transcript(HOPPER).opaque[OPAQUE_FWID]


class DeviceTestCa:
    """A test root and leaf (P-384) standing in for NVIDIA's; NOT genuine evidence."""

    def __init__(self, leaf_cn: str, fwid_extension: tuple[str, bytes] | None) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        start = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)
        end = datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)
        root_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Veilnet test device CA")])
        self.root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(self.root_key.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.root_key, hashes.SHA384())
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, leaf_cn)]))
            .issuer_name(root_name)
            .public_key(self.leaf_key.public_key())
            .serial_number(2)
            .not_valid_before(start)
            .not_valid_after(end)
        )
        if fwid_extension is not None:
            oid, value = fwid_extension
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
            )
        self.leaf = builder.sign(self.root_key, hashes.SHA384())
        self.verifier = nvidia_gpu.NvidiaGpuVerifier(root=self.root)
        self.chain = self.leaf.public_bytes(serialization.Encoding.PEM)

    def resign(self, transcript: bytes, drop_opaque: int | None = None) -> bytes:
        """The real transcript, optionally without one opaque TLV, signed by the test leaf key."""
        parsed = parse_transcript(transcript)
        response = parsed.response
        record_end = 8 + int.from_bytes(response[5:8], "little")
        fields = b"".join(
            struct.pack("<HH", t, len(v)) + v for t, v in parsed.opaque.items() if t != drop_opaque
        )
        body = response[: record_end + NONCE_SIZE] + struct.pack("<H", len(fields)) + fields
        der_sig = self.leaf_key.sign(parsed.request + body, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der_sig)
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        assert len(signature) == SIGNATURE_SIZE
        return parsed.request + body + signature


def blackwell_extension() -> tuple[str, bytes]:
    leaf = x509.load_pem_x509_certificates(BLACKWELL_CHAIN)[0]
    ext = leaf.extensions.get_extension_for_oid(nvidia_gpu.OID_TCG_DICE_TCB_INFO_BLACKWELL).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    return nvidia_gpu.OID_TCG_DICE_TCB_INFO_BLACKWELL.dotted_string, ext.value


def test_resigned_control_case_verifies_under_the_test_ca() -> None:
    """Control for the two constructed cases below: the re-signed transcript with the genuine
    Blackwell DiceTcbInfo extension verifies under the test CA."""
    ca = DeviceTestCa("GB100 A01 GSP FMC LF", blackwell_extension())
    verdict = gpu_verify(ca.resign(BLACKWELL), ca.chain, ca.verifier)
    assert verdict.ok, verdict.detail


def test_leaf_without_its_fwid_extension_has_its_own_reason() -> None:
    """Constructed (test CA): a valid chain whose leaf lacks the FWID extension is ``missing_extension``,
    not ``chain_invalid``: the chain itself verifies."""
    ca = DeviceTestCa("GB100 A01 GSP FMC LF", None)
    verdict = gpu_verify(ca.resign(BLACKWELL), ca.chain, ca.verifier)
    assert verdict.reasons == (Reason.MISSING_EXTENSION,)
    assert "2.23.133.5.4.1.1" in verdict.detail


def test_report_without_fwid_field_skips_the_check_and_says_so() -> None:
    """Constructed (test CA): as NVIDIA's verifier does, no opaque FWID field means no FWID comparison;
    before, this was refused as ``malformed``. The verdict records that the check was skipped."""
    ca = DeviceTestCa("GB100 A01 GSP FMC LF", blackwell_extension())
    verdict = gpu_verify(ca.resign(BLACKWELL, drop_opaque=OPAQUE_FWID), ca.chain, ca.verifier)
    assert verdict.ok, verdict.detail
    assert verdict.extra["fwid_check"].startswith("skipped")
    assert verdict.extra["fwid"] == ""


def test_policy_fwids_pin_the_gpu_firmware() -> None:
    fwid = parse_transcript(BLACKWELL).opaque[OPAQUE_FWID].hex()
    assert gpu_verify(BLACKWELL, BLACKWELL_CHAIN, policy={**OFFLINE, "fwids": [fwid]}).ok
    other = gpu_verify(BLACKWELL, BLACKWELL_CHAIN, policy={**OFFLINE, "fwids": ["00" * 48]})
    assert other.reasons == (Reason.MEASUREMENT_NOT_ALLOWED,) and "fwids" in other.detail


def test_gpu_nonce_of_the_wrong_length_is_named() -> None:
    verdict = gpu_verify(BLACKWELL, BLACKWELL_CHAIN, expected_report_data=bytes(64))
    assert verdict.reasons == (Reason.REPORT_DATA_MISMATCH,)
    assert "is 64 bytes but the SPDM nonce is 32 bytes" in verdict.detail


# -- item 6: any time, never an exception -------------------------------------------------------


@decoder_settings()
@given(now=st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.sampled_from([-1, 253402300800])))
def test_gpu_and_snp_give_verdicts_for_any_time(now: int) -> None:
    gpu = gpu_verify(BLACKWELL, BLACKWELL_CHAIN, now=now)
    assert gpu.ok or gpu.reasons[0] in (Reason.EXPIRED, Reason.FUTURE_DATED)
    snp = sev_snp.VERIFIER.verify(
        Evidence("sev-snp", SNP_REPORT, {"vcek": VCEK}),
        expected_report_data=SNP_REPORT[0x50:0x90],
        policy=SNP_POLICY,
        now=now,
    )
    assert snp.ok or snp.reasons[0] in (Reason.EXPIRED, Reason.FUTURE_DATED)


# -- item 7: SEV-SNP reasons --------------------------------------------------------------------


def snp_verify(**endorsements: bytes) -> Any:
    return sev_snp.VERIFIER.verify(
        Evidence("sev-snp", SNP_REPORT, {"vcek": VCEK, **endorsements}),
        expected_report_data=SNP_REPORT[0x50:0x90],
        policy=SNP_POLICY,
        now=NOW_SNP,
    )


def test_amd_chain_given_ark_first_is_accepted() -> None:
    """Before: ARK-then-ASK was reported as "supplied ARK is not the pinned ARK"."""
    ask, ark = x509.load_pem_x509_certificates(
        vector("sev-snp", "go-sev-guest", "ask_ark_milan.pem").read_bytes()
    )
    reversed_chain = ark.public_bytes(serialization.Encoding.PEM) + ask.public_bytes(
        serialization.Encoding.PEM
    )
    verdict = snp_verify(cert_chain=reversed_chain)
    assert verdict.ok, verdict.detail


def test_vcek_not_signed_by_the_ask_says_why() -> None:
    """Before: "VCEK not signed by the ASK: " with nothing after it (``InvalidSignature`` has no text).
    The genuine VCEK with one bit of its signature flipped: same issuer name, signature invalid."""
    tampered = VCEK[:-1] + bytes([VCEK[-1] ^ 1])
    verdict = sev_snp.VERIFIER.verify(
        Evidence("sev-snp", SNP_REPORT, {"vcek": tampered}),
        expected_report_data=SNP_REPORT[0x50:0x90],
        policy=SNP_POLICY,
        now=NOW_SNP,
    )
    assert verdict.reasons == (Reason.CHAIN_INVALID,)
    assert verdict.detail == "VCEK not signed by the ASK: the signature does not verify"


def test_foreign_root_names_both_fingerprints() -> None:
    genoa_ask, genoa_ark = x509.load_pem_x509_certificates(
        vector("sev-snp", "go-sev-guest", "ask_ark_genoa.pem").read_bytes()
    )
    chain = genoa_ask.public_bytes(serialization.Encoding.PEM) + genoa_ark.public_bytes(
        serialization.Encoding.PEM
    )
    verdict = snp_verify(cert_chain=chain)
    assert verdict.reasons == (Reason.WRONG_SIGNER,)
    assert "CN=ARK-Genoa" in verdict.detail and "is not the pinned ARK-Milan" in verdict.detail


def test_snp_report_data_of_the_wrong_length_is_named() -> None:
    verdict = sev_snp.VERIFIER.verify(
        Evidence("sev-snp", SNP_REPORT, {"vcek": VCEK}),
        expected_report_data=bytes(32),
        policy=SNP_POLICY,
        now=NOW_SNP,
    )
    assert verdict.reasons == (Reason.REPORT_DATA_MISMATCH,) and "is 32 bytes" in verdict.detail


def test_unreadable_certificates_are_named_without_rust_debug_text() -> None:
    snp = sev_snp.VERIFIER.verify(
        Evidence("sev-snp", SNP_REPORT, {"vcek": b"\x30\x03\x02\x01"}),
        expected_report_data=SNP_REPORT[0x50:0x90],
        policy=SNP_POLICY,
        now=NOW_SNP,
    )
    assert snp.reasons == (Reason.MALFORMED,) and "not valid DER" in snp.detail
    assert "ParseError" not in snp.detail
    bad_pem = b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n"
    gpu = gpu_verify(BLACKWELL, bad_pem)
    assert gpu.reasons == (Reason.MALFORMED,) and "ParseError" not in gpu.detail
