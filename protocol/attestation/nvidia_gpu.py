"""NVIDIA GPU confidential-computing evidence (Hopper and Blackwell).

Checks, in order: the device certificate chain up to the pinned NVIDIA Device Identity CA; the
SPDM GET_MEASUREMENTS transcript and its ECDSA P-384 signature by the leaf key; the FWID the GPU
reports (opaque field 20) equal to the FWID its leaf certificate carries, read as NVIDIA's own
verifier (NVAT) reads it: Hopper from the TCG DICE extension 2.23.133.5.4.1 (its FWID), Blackwell
from the DiceTcbInfo extension 2.23.133.5.4.1.1 (the first FWID of ``fwids``). A report without
field 20 skips the FWID check, as NVAT does, and the verdict says so. Then the requester nonce
equal to our 32-byte GPU binding (constant time); reference measurements from RIMs when given.
Revocation needs NVIDIA's OCSP service, so offline it is recorded as ``"not checked"`` and the
``require_ocsp`` policy key (default true) decides.

A chain link (certificate, issuer) whose signature verified is remembered by the two certificates'
digests (``issuer_links``): k GPUs share their upper links, and a node sees the same chains each
epoch. Validity windows, names and the SPDM signature are checked on every call.

Endorsements: ``cert_chain`` (PEM, leaf first), optional ``rim*`` keys (SWID tag XML each) and
``arch`` (informational; the architecture is taken from the leaf certificate).

Policy keys (``[nvidia-gpu]``): ``require_ocsp`` (default true), ``allow_any_measurement``
(default false: without RIMs the measurements are refused), ``allowed_driver_versions``,
``allowed_vbios_versions`` and ``fwids`` (hex; checked when present: pins the GSP firmware
without RIMs), ``allowed_archs`` (default both).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from protocol.attestation import allowlist, der
from protocol.attestation.evidence import (
    Evidence,
    EvidenceKind,
    EvidenceVerdict,
    Reason,
    refused_before_reading,
)
from protocol.attestation.issuer_links import verify_issued_by
from protocol.attestation.nvidia_rim import Rim, RimError, parse_rim
from protocol.attestation.roots import fingerprint, nvidia_device_root
from protocol.attestation.spdm import (
    OPAQUE_DRIVER_VERSION,
    OPAQUE_FWID,
    OPAQUE_VBIOS_VERSION,
    MeasurementsTranscript,
    SpdmFormatError,
    parse_transcript,
)

LABEL = "NVIDIA GPU CC"
NONCE_SIZE = 32
MAX_CHAIN_CERTS = 8
MAX_CHAIN_SIZE = 64 * 1024
OID_TCG_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
OID_TCG_DICE_TCB_INFO_BLACKWELL = x509.ObjectIdentifier("2.23.133.5.4.1.1")
FWID_OIDS = {"HOPPER": OID_TCG_DICE_TCB_INFO, "BLACKWELL": OID_TCG_DICE_TCB_INFO_BLACKWELL}
POLICY_KEYS = frozenset(
    {
        "require_ocsp",
        "allow_any_measurement",
        "allowed_driver_versions",
        "allowed_vbios_versions",
        "allowed_archs",
        "fwids",
    }
)
ARCHS = {"GH100": "HOPPER", "GB100": "BLACKWELL", "GB102": "BLACKWELL", "GB202": "BLACKWELL"}


class _Refusal(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def format_vbios_version(raw: bytes) -> str:
    """Opaque field 6 (8 bytes) as NVIDIA prints it: bytes 3,2,1,0,4 → ``96.00.9F.00.01``."""
    if len(raw) < 5:
        return raw.hex()
    return ".".join(f"{raw[i]:02X}" for i in (3, 2, 1, 0, 4))


def architecture(leaf: x509.Certificate) -> str | None:
    names = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    return next((arch for chip, arch in ARCHS.items() if cn.startswith(chip)), None)


def device_id(leaf: x509.Certificate) -> str:
    """The GPU's identity as its leaf certificate names it (SAN ``NVIDIA:GH100:<id>``, else serialNumber).

    Lets a relying party notice the same GPU listed twice, or a GPU moving between hosts.
    """
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for other in san.get_values_for_type(x509.OtherName):
            return der.read_string(other.value)
    except (x509.ExtensionNotFound, ValueError):
        pass
    serials = leaf.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
    return str(serials[0].value) if serials else ""


@lru_cache(maxsize=256)
def load_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Parsed once per distinct chain (a GPU presents the same one every epoch); immutable."""
    return tuple(x509.load_pem_x509_certificates(pem))


class MissingExtension(ValueError):
    """The leaf certificate lacks the extension that carries its FWID."""


@lru_cache(maxsize=256)
def leaf_fwid(leaf: x509.Certificate, arch: str) -> bytes:
    """The FWID the leaf certificate vouches for, read where NVIDIA's verifier reads it for ``arch``.

    Remembered per (certificate, arch): a pure function of the certificate's DER.

    Hopper: the TCG DICE TcbInfo extension 2.23.133.5.4.1, whose FWID is its last 48 bytes (we
    walk the DER and take the last FWID). Blackwell: the DiceTcbInfo extension 2.23.133.5.4.1.1,
    the first FWID of its ``fwids`` field.
    """
    oid = FWID_OIDS[arch]
    try:
        ext = leaf.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        raise MissingExtension(
            f"{arch} leaf certificate has no {oid.dotted_string} (FWID) extension"
        ) from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise ValueError("FWID extension has an unexpected type")
    fwids = der.dice_tcb_info_fwids(ext.value) if arch == "BLACKWELL" else der.find_fwids(ext.value)
    if not fwids:
        raise ValueError(f"{oid.dotted_string} extension lists no FWID")
    return fwids[0][1] if arch == "BLACKWELL" else fwids[-1][1]


def forget_parsed() -> None:
    """Empty the parse caches (benchmarks measure a cold process this way)."""
    load_chain.cache_clear()
    leaf_fwid.cache_clear()


class NvidiaGpuVerifier:
    """Verifies and appraises GPU SPDM evidence. Stateless; one shared instance is ``VERIFIER``."""

    kind = EvidenceKind.NVIDIA_GPU

    def __init__(self, root: x509.Certificate | None = None) -> None:
        self._root = root  # tests pin a test CA here; production uses the shipped NVIDIA root

    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes,
        policy: Mapping[str, Any],
        now: int,
    ) -> EvidenceVerdict:
        kind = EvidenceKind.NVIDIA_GPU.value
        refused = refused_before_reading(EvidenceKind.NVIDIA_GPU, LABEL, now, policy, POLICY_KEYS)
        if refused is not None:
            return refused
        try:
            transcript = parse_transcript(evidence.data)
        except SpdmFormatError as exc:
            return EvidenceVerdict.refused(kind, Reason.MALFORMED, f"not SPDM evidence: {exc}", label=LABEL)
        claims: dict[str, Any] = {
            "label": LABEL,
            "measurements": {f"index{i}": v.hex() for i, v in sorted(transcript.measurements().items())},
            "report_data": transcript.nonce,
        }
        try:
            arch, device, fwid_check = self._verify_chain_and_signature(
                transcript, evidence.endorsements, now
            )
            extra = {
                "arch": arch,
                "device_id": device,
                "fwid": transcript.opaque.get(OPAQUE_FWID, b"").hex(),
                "fwid_check": fwid_check,
                "driver_version": transcript.opaque_text(OPAQUE_DRIVER_VERSION),
                "vbios_version": format_vbios_version(transcript.opaque.get(OPAQUE_VBIOS_VERSION, b"")),
            }
            claims["extra"] = extra
            rims = [
                parse_rim(blob)
                for key, blob in sorted(evidence.endorsements.items())
                if key.startswith("rim")
            ]
            return self._appraise(transcript, rims, extra, expected_report_data, policy, claims)
        except _Refusal as refusal:
            return EvidenceVerdict.refused(kind, refusal.reason, refusal.detail, **claims)
        except RimError as exc:
            return EvidenceVerdict.refused(
                kind, Reason.COLLATERAL_INVALID, f"reference measurements: {exc}", **claims
            )
        except allowlist.PolicyError as exc:
            return EvidenceVerdict.refused(
                kind, Reason.POLICY_VIOLATION, f"bad [nvidia-gpu] policy: {exc}", **claims
            )

    def _verify_chain_and_signature(
        self, transcript: MeasurementsTranscript, endorsements: Mapping[str, bytes], now: int
    ) -> tuple[str, str, str]:
        pem = endorsements.get("cert_chain")
        if pem is None:
            raise _Refusal(Reason.COLLATERAL_INVALID, "no device certificate chain")
        if len(pem) > MAX_CHAIN_SIZE:
            raise _Refusal(Reason.MALFORMED, "certificate chain too large")
        try:
            chain = load_chain(pem)
        except ValueError as exc:
            raise _Refusal(
                Reason.MALFORMED, f"certificate chain unreadable: {der.x509_problem(exc)}"
            ) from exc
        if not 1 <= len(chain) <= MAX_CHAIN_CERTS:
            raise _Refusal(Reason.MALFORMED, f"certificate chain of {len(chain)} certificates")
        root = self._root or nvidia_device_root()
        if fingerprint(chain[-1]) == fingerprint(root):
            chain = chain[:-1]  # the sender included the root; we use our pinned copy
        path = [*chain, root]
        for i, cert in enumerate(path):
            if i + 1 < len(path):
                try:
                    verify_issued_by(cert, path[i + 1])
                except (InvalidSignature, ValueError, TypeError) as exc:
                    issuer = path[i + 1].subject.rfc4514_string()
                    subject = cert.subject.rfc4514_string()
                    raise _Refusal(Reason.CHAIN_INVALID, f"{subject} not issued by {issuer}") from exc
            # Integer seconds, not datetime: any ``now`` (even far outside years 1..9999) compares.
            if now < int(cert.not_valid_before_utc.timestamp()):
                raise _Refusal(Reason.FUTURE_DATED, f"{cert.subject.rfc4514_string()} not yet valid")
            if now > int(cert.not_valid_after_utc.timestamp()):
                raise _Refusal(Reason.EXPIRED, f"{cert.subject.rfc4514_string()} expired")
        leaf = path[0]
        arch = architecture(leaf)
        if arch is None:
            raise _Refusal(Reason.UNTRUSTED_PLATFORM, f"unknown GPU in {leaf.subject.rfc4514_string()}")
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise _Refusal(Reason.CHAIN_INVALID, "device leaf key is not ECDSA P-384")
        r = int.from_bytes(transcript.signature[:48], "big")
        s = int.from_bytes(transcript.signature[48:], "big")
        try:
            key.verify(encode_dss_signature(r, s), transcript.signed_message, ec.ECDSA(hashes.SHA384()))
        except InvalidSignature as exc:
            raise _Refusal(Reason.BAD_SIGNATURE, "SPDM measurements signature is invalid") from exc
        reported_fwid = transcript.opaque.get(OPAQUE_FWID)
        if not reported_fwid:
            # NVIDIA's verifier (NVAT evidence.cpp) skips the FWID comparison when the report has no
            # FWID field; so do we, and say so in the verdict instead of calling the report malformed.
            return arch, device_id(leaf), "skipped: the report has no FWID field (opaque type 20)"
        try:
            certified = leaf_fwid(leaf, arch)
        except MissingExtension as exc:
            raise _Refusal(Reason.MISSING_EXTENSION, str(exc)) from exc
        except ValueError as exc:
            raise _Refusal(Reason.MALFORMED, f"leaf certificate FWID extension unreadable: {exc}") from exc
        if not allowlist.same(reported_fwid, certified):
            raise _Refusal(Reason.WRONG_SIGNER, "leaf certificate FWID does not match the reported firmware")
        return arch, device_id(leaf), "matched the leaf certificate"

    def _appraise(
        self,
        transcript: MeasurementsTranscript,
        rims: list[Rim],
        extra: dict[str, Any],
        expected: bytes,
        policy: Mapping[str, Any],
        claims: dict[str, Any],
    ) -> EvidenceVerdict:
        reasons: list[Reason] = []
        details: list[str] = []

        def refuse(reason: Reason, detail: str) -> None:
            if reason not in reasons:
                reasons.append(reason)
            details.append(detail)

        archs = allowlist.strings(policy, "allowed_archs") or ["HOPPER", "BLACKWELL"]
        if extra["arch"] not in archs:
            refuse(Reason.UNTRUSTED_PLATFORM, f"architecture {extra['arch']} not in {archs}")
        for key, field in (
            ("allowed_driver_versions", "driver_version"),
            ("allowed_vbios_versions", "vbios_version"),
        ):
            allowed = allowlist.strings(policy, key)
            if allowed is not None and extra[field].upper() not in {v.upper() for v in allowed}:
                refuse(Reason.MEASUREMENT_NOT_ALLOWED, f"{field} {extra[field]} not in {allowed}")
        pinned_fwids = allowlist.hex_values(policy, "fwids")
        if pinned_fwids is not None and not any(
            allowlist.same(bytes.fromhex(extra["fwid"]), f) for f in pinned_fwids
        ):
            refuse(
                Reason.MEASUREMENT_NOT_ALLOWED,
                f"FWID {extra['fwid'] or '(none reported)'} not in the policy's fwids",
            )
        if rims:
            rim_problems = _compare_rims(transcript, rims, extra)
            for rim_problem in rim_problems:
                refuse(Reason.MEASUREMENT_NOT_ALLOWED, rim_problem)
            extra["reference_measurements"] = "mismatch" if rim_problems else "matched"
        elif not allowlist.flag(policy, "allow_any_measurement"):
            refuse(
                Reason.MEASUREMENT_NOT_ALLOWED, "no reference measurements (RIMs) to appraise the GPU against"
            )
        else:
            extra["reference_measurements"] = "not appraised (allow_any_measurement)"
        if allowlist.flag(policy, "require_ocsp", True):
            refuse(Reason.UNTRUSTED_PLATFORM, "policy requires OCSP revocation status; not checked offline")
        if nonce_problem := allowlist.report_data_problem(transcript.nonce, expected, "the SPDM nonce"):
            refuse(Reason.REPORT_DATA_MISMATCH, nonce_problem)
        kind = EvidenceKind.NVIDIA_GPU.value
        claims["revocation"] = "not checked"
        if reasons:
            return EvidenceVerdict(
                kind=kind, ok=False, reasons=tuple(reasons), detail="; ".join(details), **claims
            )
        return EvidenceVerdict(kind=kind, ok=True, detail=f"{extra['arch']} GPU evidence verified", **claims)


def _compare_rims(transcript: MeasurementsTranscript, rims: list[Rim], extra: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    runtime = transcript.measurements()
    covered: dict[int, str] = {}
    for rim in rims:
        actual = extra["driver_version"] if rim.component == "driver" else extra["vbios_version"]
        if rim.version.upper() != str(actual).upper():
            problems.append(f"{rim.component} RIM is for version {rim.version}, GPU reports {actual}")
        for index, alternatives in rim.measurements.items():
            if index in covered:
                problems.append(
                    f"index {index} is active in both the {covered[index]} and {rim.component} RIMs"
                )
                continue
            covered[index] = rim.component
            value = runtime.get(index + 1)
            if value is None or not any(allowlist.same(value, alt) for alt in alternatives):
                problems.append(f"measurement index {index} does not match the {rim.component} RIM")
    return problems


VERIFIER = NvidiaGpuVerifier()
