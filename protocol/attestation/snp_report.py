"""AMD SEV-SNP attestation report (v2+) and extended-report certificate table parsing.

Layout: AMD SEV-SNP ABI spec, ``ATTESTATION_REPORT`` (0x4A0 bytes, little-endian), summarised
in docs/protocol/tee-evidence.md. The signed region is ``report[0x000:0x2A0]``; the signature is
ECDSA P-384 / SHA-384 with R and S stored as 72-byte little-endian integers.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIG_ALGO_ECDSA_P384_SHA384 = 1
POLICY_DEBUG_BIT = 19
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
MAX_CERT_TABLE_SIZE = 64 * 1024
MAX_CERT_TABLE_ENTRIES = 32

CERT_TABLE_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark",
}


class ReportFormatError(ValueError):
    """The bytes are not a well-formed SEV-SNP attestation report."""


@dataclass(frozen=True)
class TcbVersion:
    """One TCB_VERSION, decoded with the layout of the product line it came from."""

    raw: bytes
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None  # Turin only

    @classmethod
    def decode(cls, raw: bytes, product: str) -> TcbVersion:
        if product == "Turin":
            return cls(raw, bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(raw, bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7], fmc=None)

    def components(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclass(frozen=True)
class SnpReport:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    vmpl: int
    signature_algo: int
    signing_key: int
    mask_chip_key: bool
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    reported_tcb_raw: bytes
    cpuid: bytes  # family, model, stepping (v3+), zeros before
    chip_id: bytes

    @property
    def debug(self) -> bool:
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def signed_region(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signature_rs(self) -> tuple[int, int]:
        r = int.from_bytes(self.raw[0x2A0:0x2E8], "little")
        s = int.from_bytes(self.raw[0x2E8:0x330], "little")
        return r, s


def parse_report(raw: bytes) -> SnpReport:
    if len(raw) != REPORT_SIZE:
        raise ReportFormatError(f"report is {len(raw)} bytes, expected {REPORT_SIZE}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
    if version < 2 or version > 5:
        raise ReportFormatError(f"unsupported report version {version}")
    vmpl, sig_algo = struct.unpack_from("<II", raw, 0x30)
    (signer,) = struct.unpack_from("<I", raw, 0x48)
    if raw[0x330:].strip(b"\x00"):
        raise ReportFormatError("non-zero bytes in the reserved part of the signature")
    return SnpReport(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        vmpl=vmpl,
        signature_algo=sig_algo,
        signing_key=(signer >> 2) & 0x7,
        mask_chip_key=bool(signer & 0x2),
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        reported_tcb_raw=raw[0x180:0x188],
        cpuid=raw[0x188:0x18B],
        chip_id=raw[0x1A0:0x1E0],
    )


def parse_cert_table(aux: bytes) -> dict[str, bytes]:
    """Certificates of an extended report (configfs-tsm ``auxblob``), by role: vcek/vlek/ask/ark.

    Entries are ``GUID(16) ‖ offset u32 ‖ length u32`` with offsets from the table start, ended
    by an all-zero entry. GUIDs are accepted in either byte order (RFC 4122 or mixed-endian).
    """
    if len(aux) > MAX_CERT_TABLE_SIZE:
        raise ReportFormatError("certificate table too large")
    out: dict[str, bytes] = {}
    pos = 0
    for _ in range(MAX_CERT_TABLE_ENTRIES + 1):
        if pos + 24 > len(aux):
            raise ReportFormatError("certificate table not terminated")
        guid_bytes = aux[pos : pos + 16]
        offset, length = struct.unpack_from("<II", aux, pos + 16)
        pos += 24
        if not guid_bytes.strip(b"\x00") and offset == 0 and length == 0:
            return out
        role = CERT_TABLE_GUIDS.get(uuid.UUID(bytes=guid_bytes)) or CERT_TABLE_GUIDS.get(
            uuid.UUID(bytes_le=guid_bytes)
        )
        if offset + length > len(aux) or offset < pos:
            raise ReportFormatError("certificate table entry points outside the table")
        if role is not None:
            out[role] = aux[offset : offset + length]
    raise ReportFormatError("too many certificate table entries")


def build_cert_table(certs: dict[str, bytes]) -> bytes:
    """Inverse of ``parse_cert_table`` (RFC 4122 GUID byte order), for tests and re-export."""
    roles = {role: guid for guid, role in CERT_TABLE_GUIDS.items()}
    header_size = 24 * (len(certs) + 1)
    entries, blobs, offset = b"", b"", header_size
    for role, der in certs.items():
        entries += roles[role].bytes + struct.pack("<II", offset, len(der))
        blobs += der
        offset += len(der)
    return entries + bytes(24) + blobs
