"""Reading evidence in the forms it is found in the wild, and telling which kind it is.

Forms: raw binary (a DCAP quote, an SNP report, an SPDM transcript), the same as hex text
(NVIDIA's sample files), the same as a JSON array of byte values (NEAR MPC's ``quote.json``),
and NVIDIA's SDK JSON (``[{arch, nonce, evidence: b64, certificate: b64 PEM chain, ...}]``, one
entry per GPU). JSON is parsed with a bounded nesting depth. Works on bytes only (sans-IO): the
caller reads the file. The kind is found by strict parsing, never by file name.
"""

from __future__ import annotations

import base64
import binascii
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

from protocol.attestation.evidence import Evidence, EvidenceKind
from protocol.attestation.snp_report import ReportFormatError, parse_report
from protocol.attestation.spdm import SpdmFormatError, parse_transcript
from protocol.attestation.tdx_quote import QuoteFormatError, parse_quote
from protocol.nesting import loads_json

MAX_EVIDENCE_FILE = 4 * 1024 * 1024
MAX_JSON_ENTRIES = 64
_HEX = set(string.hexdigits.encode())
_SPACE = set(string.whitespace.encode())


class EvidenceFileError(ValueError):
    """The file is not evidence in any form we read."""


@dataclass(frozen=True)
class LoadedEvidence:
    evidence: Evidence
    form: str  # "binary", "hex", "json-bytes" or "sdk-json"
    declared_nonce: bytes | None = None  # what the SDK JSON claims the nonce is (informational)
    notes: tuple[str, ...] = field(default_factory=tuple)


def detect_kind(raw: bytes) -> EvidenceKind | None:
    """The kind whose strict parser accepts ``raw`` (SGX quotes count as TDX: that verifier refuses them)."""
    try:
        parse_quote(raw)
        return EvidenceKind.TDX
    except QuoteFormatError:
        pass
    try:
        parse_report(raw)
        return EvidenceKind.SEV_SNP
    except ReportFormatError:
        pass
    try:
        parse_transcript(raw)
        return EvidenceKind.NVIDIA_GPU
    except SpdmFormatError:
        pass
    return None


def _hex_digits(data: bytes) -> bytes | None:
    """The hex digits of ``data`` when it is hex text (whitespace and a ``0x`` prefix allowed)."""
    stripped = bytes(b for b in data if b not in _SPACE)
    if stripped.lower().startswith(b"0x"):
        stripped = stripped[2:]
    if not stripped or not set(stripped) <= _HEX:
        return None
    return stripped


def _from_hex(data: bytes) -> bytes | None:
    digits = _hex_digits(data)
    if digits is None or len(digits) % 2:
        return None
    return bytes.fromhex(digits.decode("ascii"))


def load_evidence(
    data: bytes,
    kind: EvidenceKind | str | None = None,
    endorsements: Mapping[str, bytes] | None = None,
) -> list[LoadedEvidence]:
    """Decode ``data`` into one or more pieces of evidence (several for multi-GPU SDK JSON)."""
    if len(data) > MAX_EVIDENCE_FILE:
        raise EvidenceFileError(f"evidence file is {len(data)} bytes, limit {MAX_EVIDENCE_FILE}")
    wanted = EvidenceKind(kind) if kind is not None else None
    extra = dict(endorsements or {})
    if data.lstrip()[:1] in (b"[", b"{"):
        try:
            doc = loads_json(data)
        except ValueError as exc:  # syntax, encoding or nesting depth
            raise EvidenceFileError(f"not JSON evidence: {exc}") from exc
        if _is_byte_list(doc):
            candidates = [("json-bytes", bytes(doc))]
        else:
            return _load_sdk_json(doc, wanted, extra)
    else:
        as_hex = _from_hex(data)
        candidates = [("binary", data)] + ([("hex", as_hex)] if as_hex is not None else [])
    for form, raw in candidates:
        found = detect_kind(raw)
        if found is None:
            continue
        if wanted is not None and wanted != found:
            raise EvidenceFileError(f"the file holds {found.value} evidence, not {wanted.value}")
        return [LoadedEvidence(Evidence(found.value, raw, extra), form)]
    digits = _hex_digits(data)
    if digits is not None and len(digits) % 2:
        raise EvidenceFileError(
            f"hex text with an odd number of digits ({len(digits)}): truncated or corrupted"
        )
    if wanted is not None:
        # The caller insists on a kind: hand the bytes to that verifier, which says what is wrong.
        form, raw = candidates[-1]
        return [LoadedEvidence(Evidence(wanted.value, raw, extra), form, notes=("format not recognised",))]
    raise EvidenceFileError("not a DCAP quote, an SEV-SNP report, SPDM evidence or NVIDIA SDK JSON")


def _is_byte_list(doc: object) -> bool:
    return (
        isinstance(doc, list)
        and bool(doc)
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in doc)
    )


def _load_sdk_json(doc: object, wanted: EvidenceKind | None, extra: dict[str, bytes]) -> list[LoadedEvidence]:
    if wanted not in (None, EvidenceKind.NVIDIA_GPU):
        raise EvidenceFileError("JSON evidence files are NVIDIA SDK GPU evidence or a JSON array of bytes")
    entries = doc if isinstance(doc, list) else [doc]
    if not entries or len(entries) > MAX_JSON_ENTRIES:
        raise EvidenceFileError(f"expected 1..{MAX_JSON_ENTRIES} GPU entries")
    out: list[LoadedEvidence] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("evidence"), str):
            raise EvidenceFileError(f"entry {i} has no 'evidence' string")
        try:
            raw = base64.b64decode(entry["evidence"], validate=True)
            endorsements = dict(extra)
            if isinstance(entry.get("certificate"), str):
                endorsements["cert_chain"] = base64.b64decode(entry["certificate"], validate=True)
            nonce = bytes.fromhex(entry["nonce"]) if isinstance(entry.get("nonce"), str) else None
        except (binascii.Error, ValueError) as exc:
            raise EvidenceFileError(f"entry {i}: bad base64 or hex: {exc}") from exc
        if isinstance(entry.get("arch"), str):
            endorsements["arch"] = entry["arch"].encode()
        out.append(
            LoadedEvidence(Evidence(EvidenceKind.NVIDIA_GPU.value, raw, endorsements), "sdk-json", nonce)
        )
    return out
