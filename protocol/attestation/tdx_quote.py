"""Strict parser for Intel DCAP quotes (SGX v3, TDX v4, TDX v5) and the attestation-key check.

Why our own parser beside dcap-qvl: appraisal needs the TD report fields with their exact
offsets, kind detection needs to tell SGX from TDX without collateral, and checking the
attestation-key signature ourselves gives a precise "tampered" answer even when no collateral
is at hand. Layout: docs/protocol/tee-evidence.md; all integers little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

HEADER_SIZE = 48
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
SGX_BODY_SIZE = 384
MAX_QUOTE_SIZE = 64 * 1024
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
TD_ATTRIBUTES_DEBUG = 1 << 0
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
QE_REPORT_SIZE = 384

# (name, offset in the TD report body, size)
TD_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("tee_tcb_svn", 0, 16),
    ("mrseam", 16, 48),
    ("mrsignerseam", 64, 48),
    ("seam_attributes", 112, 8),
    ("td_attributes", 120, 8),
    ("xfam", 128, 8),
    ("mrtd", 136, 48),
    ("mrconfigid", 184, 48),
    ("mrowner", 232, 48),
    ("mrownerconfig", 280, 48),
    ("rtmr0", 328, 48),
    ("rtmr1", 376, 48),
    ("rtmr2", 424, 48),
    ("rtmr3", 472, 48),
    ("report_data", 520, 64),
)
TD15_FIELDS: tuple[tuple[str, int, int], ...] = (("tee_tcb_svn2", 584, 16), ("mrservicetd", 600, 48))


class QuoteFormatError(ValueError):
    """The bytes are not a well-formed DCAP quote."""


@dataclass(frozen=True)
class DcapQuote:
    version: int
    tee_type: int
    att_key_type: int
    qe_vendor_id: bytes
    body_type: int  # 1 = SGX, 2 = TD 1.0, 3 = TD 1.5 (v4 quotes are always 2, v3 always 1)
    body: bytes
    signed_region: bytes
    signature: bytes  # r‖s, big-endian, 64 bytes
    attestation_key: bytes  # x‖y, 64 bytes
    cert_data_type: int
    cert_data: bytes
    trailing_bytes: int = 0  # bytes after the signature data (ignored, reported)

    @property
    def is_tdx(self) -> bool:
        return self.tee_type == TEE_TYPE_TDX

    def td_fields(self) -> dict[str, bytes]:
        """The TD report fields by name (TDX quotes only)."""
        if not self.is_tdx:
            raise QuoteFormatError("not a TDX quote")
        fields = TD_FIELDS + (TD15_FIELDS if self.body_type == 3 else ())
        return {name: self.body[off : off + size] for name, off, size in fields}

    @property
    def report_data(self) -> bytes:
        if self.is_tdx:
            return self.body[520:584]
        return self.body[320:384]  # SGX enclave report: REPORTDATA is the last 64 bytes

    def pck_chain_pem(self) -> bytes | None:
        """The PEM PCK certificate chain the quote carries (certification data type 5), if any.

        TDX quotes wrap it in type 6 (QE report certification data); SGX v3 quotes carry it directly.
        """
        cert_type, data = self.cert_data_type, self.cert_data
        if cert_type == CERT_TYPE_QE_REPORT:
            pos = QE_REPORT_SIZE + 64
            if pos + 2 > len(data):
                return None
            (auth_len,) = struct.unpack_from("<H", data, pos)
            pos += 2 + auth_len
            if pos + 6 > len(data):
                return None
            cert_type, size = struct.unpack_from("<HI", data, pos)
            data = data[pos + 6 : pos + 6 + size]
        if cert_type != CERT_TYPE_PCK_CHAIN:
            return None
        return data.rstrip(b"\x00")

    @property
    def td_debug(self) -> bool:
        attributes = int.from_bytes(self.body[120:128], "little")
        return bool(attributes & TD_ATTRIBUTES_DEBUG)


def parse_quote(raw: bytes) -> DcapQuote:
    """Parse header, body and signature data; raise ``QuoteFormatError`` on any inconsistency."""
    if len(raw) > MAX_QUOTE_SIZE:
        raise QuoteFormatError(f"quote is {len(raw)} bytes, limit {MAX_QUOTE_SIZE}")
    if len(raw) < HEADER_SIZE + 4:
        raise QuoteFormatError("quote shorter than its header")
    version, att_key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
    qe_vendor_id = raw[12:28]
    if version == 3:
        if tee_type != TEE_TYPE_SGX:
            raise QuoteFormatError("v3 quote with a non-SGX TEE type")
        body_type, body_start, body_size = 1, HEADER_SIZE, SGX_BODY_SIZE
    elif version == 4:
        if tee_type != TEE_TYPE_TDX:
            raise QuoteFormatError("v4 quote with a non-TDX TEE type")
        body_type, body_start, body_size = 2, HEADER_SIZE, TD10_BODY_SIZE
    elif version == 5:
        if len(raw) < HEADER_SIZE + 6:
            raise QuoteFormatError("truncated v5 body descriptor")
        body_type, body_size = struct.unpack_from("<HI", raw, HEADER_SIZE)
        body_start = HEADER_SIZE + 6
        expected = {1: SGX_BODY_SIZE, 2: TD10_BODY_SIZE, 3: TD15_BODY_SIZE}.get(body_type)
        if expected is None or body_size != expected:
            raise QuoteFormatError(f"unsupported v5 body type {body_type} / size {body_size}")
        if (body_type == 1) != (tee_type == TEE_TYPE_SGX):
            raise QuoteFormatError("v5 body type does not match the TEE type")
    else:
        raise QuoteFormatError(f"unsupported quote version {version}")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise QuoteFormatError(f"unsupported attestation key type {att_key_type}")
    signed_end = body_start + body_size
    if len(raw) < signed_end + 4:
        raise QuoteFormatError("quote truncated inside its body")
    (sig_len,) = struct.unpack_from("<I", raw, signed_end)
    sig_start = signed_end + 4
    sig_end = sig_start + sig_len
    if sig_end > len(raw):
        raise QuoteFormatError("signature data runs past the end of the quote")
    # Bytes after the signature data are ignored, as Intel's QVL parser and dcap-qvl do (zero
    # padding is common); they are outside every signature, so the verdict reports their count.
    if version == 3:  # SGX: QE report, its signature and auth data come before the cert data
        cert_hdr = sig_start + 128 + 384 + 64
        if cert_hdr + 2 > sig_end:
            raise QuoteFormatError("signature data too short")
        (auth_len,) = struct.unpack_from("<H", raw, cert_hdr)
        cert_hdr += 2 + auth_len
    else:
        cert_hdr = sig_start + 128
    if cert_hdr + 6 > sig_end:
        raise QuoteFormatError("signature data too short")
    cert_type, cert_size = struct.unpack_from("<HI", raw, cert_hdr)
    cert_start = cert_hdr + 6
    if cert_start + cert_size != sig_end:
        raise QuoteFormatError("certification data size does not match the signature data length")
    return DcapQuote(
        version=version,
        tee_type=tee_type,
        att_key_type=att_key_type,
        qe_vendor_id=qe_vendor_id,
        body_type=body_type,
        body=raw[body_start:signed_end],
        signed_region=raw[:signed_end],
        signature=raw[sig_start : sig_start + 64],
        attestation_key=raw[sig_start + 64 : sig_start + 128],
        cert_data_type=cert_type,
        cert_data=raw[cert_start:sig_end],
        trailing_bytes=len(raw) - sig_end,
    )


def attestation_key_signature_valid(quote: DcapQuote) -> bool:
    """True when the quote's ECDSA-P256 signature verifies under its embedded attestation key.

    This proves only integrity of header and body; who holds the attestation key is proven by
    the QE report and the PCK chain, which dcap-qvl checks against the collateral.
    """
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + quote.attestation_key)
    except ValueError:
        return False
    r = int.from_bytes(quote.signature[:32], "big")
    s = int.from_bytes(quote.signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), quote.signed_region, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
