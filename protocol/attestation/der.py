"""A minimal DER reader for the few vendor certificate extensions ``cryptography`` leaves opaque.

Why not a full ASN.1 library: we read only INTEGERs, strings and FWID sequences out of AMD VCEK
and TCG DICE extensions, and a 60-line strict TLV walker has less attack surface than a new
dependency. Every length is bounds-checked; anything unexpected raises ``DerError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_DEPTH = 16


class DerError(ValueError):
    """The bytes are not the DER we expected."""


@dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


def iter_tlvs(data: bytes) -> Iterator[Tlv]:
    """Yield the consecutive top-level TLVs of ``data`` (single-byte tags only)."""
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise DerError("truncated TLV header")
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise DerError("multi-byte tags are not supported")
        first = data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 4 or pos + count > len(data):
                raise DerError("bad length encoding")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise DerError("TLV runs past the end of its container")
        yield Tlv(tag, data[pos : pos + length])
        pos += length


def single(data: bytes) -> Tlv:
    """The one TLV that ``data`` must consist of."""
    tlvs = list(iter_tlvs(data))
    if len(tlvs) != 1:
        raise DerError(f"expected exactly one TLV, found {len(tlvs)}")
    return tlvs[0]


def read_integer(data: bytes) -> int:
    tlv = single(data)
    if tlv.tag != 0x02 or not tlv.value:
        raise DerError("expected an INTEGER")
    return int.from_bytes(tlv.value, "big", signed=True)


def read_string(data: bytes) -> str:
    tlv = single(data)
    if tlv.tag not in (0x0C, 0x13, 0x16):  # UTF8String, PrintableString, IA5String
        raise DerError("expected a string")
    return tlv.value.decode("utf-8")


def read_octets(data: bytes) -> bytes:
    tlv = single(data)
    if tlv.tag != 0x04:
        raise DerError("expected an OCTET STRING")
    return tlv.value


def decode_oid(value: bytes) -> str:
    if not value:
        raise DerError("empty OID")
    parts = [value[0] // 40, value[0] % 40]
    acc = 0
    for byte in value[1:]:
        acc = (acc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(acc)
            acc = 0
    return ".".join(map(str, parts))


def find_fwids(data: bytes, depth: int = 0) -> list[tuple[str, bytes]]:
    """Every ``FWID ::= SEQUENCE { hashAlg OID, digest OCTET STRING }`` nested in ``data``.

    TCG DICE TcbInfo puts FWIDs under a context tag (Blackwell) or directly in the outer
    sequence (Hopper); walking all constructed TLVs finds them in either layout.
    """
    if depth > MAX_DEPTH:
        raise DerError("DER nesting too deep")
    found: list[tuple[str, bytes]] = []
    for tlv in iter_tlvs(data):
        if not tlv.constructed:
            continue
        children = list(iter_tlvs(tlv.value))
        if tlv.tag == 0x30 and len(children) == 2 and children[0].tag == 0x06 and children[1].tag == 0x04:
            found.append((decode_oid(children[0].value), children[1].value))
        else:
            found.extend(find_fwids(tlv.value, depth + 1))
    return found


def dice_tcb_info_fwids(data: bytes) -> list[tuple[str, bytes]]:
    """The ``fwids`` field of a TCG ``DiceTcbInfo`` (the extension under OID 2.23.133.5.4.1.1).

    ``DiceTcbInfo ::= SEQUENCE { vendor [0], model [1], version [2], svn [3], layer [4],
    index [5], fwids [6] IMPLICIT SEQUENCE OF FWID, flags [7], vendorInfo [8], type [9], ... }``,
    every field optional (TCG DICE Attestation Architecture). Blackwell device certificates use it.
    """
    outer = single(data)
    if outer.tag != 0x30:
        raise DerError("DiceTcbInfo is not a SEQUENCE")
    for field in iter_tlvs(outer.value):
        if field.tag == 0xA6:
            fwids = []
            for entry in iter_tlvs(field.value):
                children = list(iter_tlvs(entry.value))
                if (
                    entry.tag != 0x30
                    or len(children) != 2
                    or children[0].tag != 0x06
                    or children[1].tag != 0x04
                ):
                    raise DerError("fwids entry is not FWID ::= SEQUENCE { OID, OCTET STRING }")
                fwids.append((decode_oid(children[0].value), children[1].value))
            return fwids
    raise DerError("DiceTcbInfo has no fwids field [6]")


def x509_problem(exc: Exception) -> str:
    """A readable reason for a ``cryptography`` load error.

    Its DER errors are Rust debug text (``error parsing asn1 value: ParseError { kind:
    UnexpectedTag { ... } }``), which tells an operator nothing; name the problem instead.
    """
    text = str(exc)
    if "ParseError" in text or "asn1" in text.lower():
        kind = re.search(r"kind: (\w+)", text)
        return "not valid DER (malformed ASN.1" + (f": {kind.group(1)})" if kind else ")")
    return text or type(exc).__name__
