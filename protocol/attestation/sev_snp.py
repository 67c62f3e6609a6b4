"""AMD SEV-SNP evidence: ARK → ASK → VCEK chain, report signature, then our appraisal.

Only ``cryptography`` is used. The ARK of each product line (Milan, Genoa, Turin) is pinned in
``roots/``; a chain supplied with the evidence is accepted only if its ARK is that pinned ARK.
The VCEK must be *this chip's* key at *this TCB*: its hwID extension must equal CHIP_ID and its
SPL extensions must equal REPORTED_TCB, otherwise a VCEK from another machine could be offered.

Endorsements: ``vcek`` (DER or PEM), optionally ``cert_chain`` (PEM ASK and ARK, in either
order) or ``cert_table`` (the extended-report certificate table, e.g. configfs-tsm ``auxblob``).

Policy keys (``[sev-snp]``, all optional): ``allow_debug`` (test only, default false),
``max_vmpl`` (default 0), ``min_tcb`` (table of bootloader/tee/snp/microcode/fmc minimums),
``measurements`` (hex list; absent is refused unless ``allow_any_measurement = true``),
``host_data`` (hex list, checked when present), ``allowed_products`` (default all pinned),
``min_guest_svn`` (default 0).
"""

from __future__ import annotations

import warnings
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
from protocol.attestation.roots import AMD_PRODUCTS, amd_chain, fingerprint
from protocol.attestation.snp_report import (
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNING_KEY_VCEK,
    ReportFormatError,
    SnpReport,
    TcbVersion,
    parse_cert_table,
    parse_report,
)

LABEL = "AMD SEV-SNP"
REPORT_DATA_SIZE = 64
MAX_CERT_SIZE = 16 * 1024
OID_PRODUCT = "1.3.6.1.4.1.3704.1.2"
OID_HWID = "1.3.6.1.4.1.3704.1.4"
OID_SPL = {
    "bootloader": "1.3.6.1.4.1.3704.1.3.1",
    "tee": "1.3.6.1.4.1.3704.1.3.2",
    "snp": "1.3.6.1.4.1.3704.1.3.3",
    "microcode": "1.3.6.1.4.1.3704.1.3.8",
    "fmc": "1.3.6.1.4.1.3704.1.3.9",
}
POLICY_KEYS = frozenset(
    {
        "allow_debug",
        "max_vmpl",
        "min_guest_svn",
        "min_tcb",
        "measurements",
        "host_data",
        "allow_any_measurement",
        "allowed_products",
    }
)
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


class _Refusal(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def load_certificate(data: bytes) -> x509.Certificate:
    """Load DER or PEM. AMD VCEKs carry serial number 0, which ``cryptography`` warns about."""
    if len(data) > MAX_CERT_SIZE:
        raise ValueError("certificate too large")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)


def _ext_bytes(cert: x509.Certificate, oid: str) -> bytes:
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise ValueError(f"extension {oid} has an unexpected type")
    return ext.value


def _hwid(value: bytes) -> bytes:
    """The hwID extension: raw 64 (8 on Turin) bytes in KDS VCEKs, or DER-wrapped as an OCTET STRING."""
    if len(value) in (8, 64):
        return value
    inner = der.read_octets(value)
    if len(inner) not in (8, 64):
        raise ValueError(f"hwID of {len(inner)} bytes")
    return inner


@lru_cache(maxsize=len(AMD_PRODUCTS))
def _ark_self_signed(product: str) -> bool:
    ark = amd_chain(product).ark
    try:
        ark.verify_directly_issued_by(ark)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _check_validity(cert: x509.Certificate, now: int, what: str) -> None:
    # Integer seconds, not datetime: any ``now`` (even far outside years 1..9999) compares.
    if now < int(cert.not_valid_before_utc.timestamp()):
        raise _Refusal(Reason.FUTURE_DATED, f"{what} not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    if now > int(cert.not_valid_after_utc.timestamp()):
        raise _Refusal(Reason.EXPIRED, f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d}")


def _issued_by(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    try:
        verify_issued_by(child, parent)  # remembered when it verifies: every VCEK shares its ASK
    except InvalidSignature as exc:
        raise _Refusal(Reason.CHAIN_INVALID, f"{what}: the signature does not verify") from exc
    except (ValueError, TypeError) as exc:
        raise _Refusal(Reason.CHAIN_INVALID, f"{what}: {str(exc) or type(exc).__name__}") from exc


def _vcek_extension(vcek: x509.Certificate, oid: str, what: str) -> bytes:
    try:
        return _ext_bytes(vcek, oid)
    except x509.ExtensionNotFound:
        raise _Refusal(Reason.MISSING_EXTENSION, f"VCEK has no {what} extension ({oid})") from None
    except ValueError as exc:
        raise _Refusal(Reason.MALFORMED, f"VCEK {what} extension unreadable: {exc}") from exc


class SevSnpVerifier:
    """Verifies and appraises SEV-SNP reports. Stateless; one shared instance is ``VERIFIER``."""

    kind = EvidenceKind.SEV_SNP

    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes,
        policy: Mapping[str, Any],
        now: int,
    ) -> EvidenceVerdict:
        kind = EvidenceKind.SEV_SNP.value
        refused = refused_before_reading(EvidenceKind.SEV_SNP, LABEL, now, policy, POLICY_KEYS)
        if refused is not None:
            return refused
        try:
            report = parse_report(evidence.data)
        except ReportFormatError as exc:
            return EvidenceVerdict.refused(kind, Reason.MALFORMED, f"not an SNP report: {exc}", label=LABEL)
        claims: dict[str, Any] = {
            "label": LABEL,
            "measurements": {
                "measurement": report.measurement.hex(),
                "host_data": report.host_data.hex(),
                "id_key_digest": report.id_key_digest.hex(),
            },
            "report_data": report.report_data,
            "debug": report.debug,
        }
        try:
            product, reported = self._verify_signature_chain(report, evidence.endorsements, now, policy)
        except _Refusal as refusal:
            return EvidenceVerdict.refused(kind, refusal.reason, refusal.detail, **claims)
        except allowlist.PolicyError as exc:
            return EvidenceVerdict.refused(
                kind, Reason.POLICY_VIOLATION, f"bad [sev-snp] policy: {exc}", **claims
            )
        claims.update(
            tcb_status=f"reported TCB {reported.raw.hex()}",
            extra={
                "product": product,
                "report_version": report.version,
                "policy": f"{report.policy:#x}",
                "vmpl": report.vmpl,
                "reported_tcb": reported.components(),
                "guest_svn": report.guest_svn,
            },
        )
        try:
            return self._appraise(report, reported, expected_report_data, policy, claims)
        except allowlist.PolicyError as exc:
            return EvidenceVerdict.refused(
                kind, Reason.POLICY_VIOLATION, f"bad [sev-snp] policy: {exc}", **claims
            )

    def _verify_signature_chain(
        self, report: SnpReport, endorsements: Mapping[str, bytes], now: int, policy: Mapping[str, Any]
    ) -> tuple[str, TcbVersion]:
        if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
            raise _Refusal(Reason.MALFORMED, f"unsupported signature algorithm {report.signature_algo}")
        if report.signing_key != SIGNING_KEY_VCEK:
            raise _Refusal(
                Reason.CHAIN_INVALID,
                f"report signed by key type {report.signing_key} (VLEK or none); only VCEK is supported",
            )
        certs: dict[str, bytes] = {}
        if "cert_table" in endorsements:
            try:
                certs.update(parse_cert_table(endorsements["cert_table"]))
            except ReportFormatError as exc:
                raise _Refusal(Reason.MALFORMED, f"certificate table: {exc}") from exc
        if "vcek" in endorsements:
            certs["vcek"] = endorsements["vcek"]
        if "vcek" not in certs:
            raise _Refusal(Reason.COLLATERAL_INVALID, "no VCEK certificate for this report")
        try:
            vcek = load_certificate(certs["vcek"])
        except ValueError as exc:
            raise _Refusal(Reason.MALFORMED, f"VCEK certificate unreadable: {der.x509_problem(exc)}") from exc
        try:
            product_name = der.read_string(_vcek_extension(vcek, OID_PRODUCT, "product name"))
        except ValueError as exc:
            raise _Refusal(Reason.MALFORMED, f"VCEK product name unreadable: {exc}") from exc
        product = product_name.split("-")[0]
        if product not in AMD_PRODUCTS:
            raise _Refusal(Reason.CHAIN_INVALID, f"VCEK names unknown product {product_name!r}")
        allowed_products = allowlist.strings(policy, "allowed_products") or list(AMD_PRODUCTS)
        if product not in allowed_products:
            raise _Refusal(Reason.UNTRUSTED_PLATFORM, f"product {product} not in {allowed_products}")

        pinned = amd_chain(product)
        ask = pinned.ask
        if "cert_chain" in endorsements or "ask" in certs:
            ask, ark = self._supplied_chain(endorsements, certs, pinned.ark)
            if ark is not None and fingerprint(ark) != fingerprint(pinned.ark):
                raise _Refusal(
                    Reason.WRONG_SIGNER,
                    f"the supplied chain's root {ark.subject.rfc4514_string()} (sha256 "
                    f"{fingerprint(ark)}) is not the pinned ARK-{product} ({fingerprint(pinned.ark)})",
                )
        if not _ark_self_signed(product):
            raise _Refusal(Reason.CHAIN_INVALID, f"pinned ARK-{product} is not self-signed")
        _issued_by(ask, pinned.ark, f"ASK not signed by ARK-{product}")
        _issued_by(vcek, ask, "VCEK not signed by the ASK")
        for cert, what in ((pinned.ark, "ARK"), (ask, "ASK"), (vcek, "VCEK")):
            _check_validity(cert, now, what)

        key = vcek.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise _Refusal(Reason.CHAIN_INVALID, "VCEK key is not ECDSA P-384")
        r, s = report.signature_rs
        try:
            key.verify(encode_dss_signature(r, s), report.signed_region, ec.ECDSA(hashes.SHA384()))
        except InvalidSignature as exc:
            raise _Refusal(Reason.BAD_SIGNATURE, "report signature does not verify under the VCEK") from exc

        try:
            hwid = _hwid(_vcek_extension(vcek, OID_HWID, "hwID"))
        except ValueError as exc:
            raise _Refusal(Reason.MALFORMED, f"VCEK hwID unreadable: {exc}") from exc
        chip_id = report.chip_id
        if not chip_id.strip(b"\x00"):
            raise _Refusal(Reason.WRONG_SIGNER, "CHIP_ID is masked; the VCEK cannot be bound to this chip")
        if not allowlist.same(hwid, chip_id[: len(hwid)]) or chip_id[len(hwid) :].strip(b"\x00"):
            raise _Refusal(Reason.WRONG_SIGNER, "VCEK hwID does not equal the report's CHIP_ID")

        reported = TcbVersion.decode(report.reported_tcb_raw, product)
        for name, value in reported.components().items():
            try:
                spl = der.read_integer(_vcek_extension(vcek, OID_SPL[name], f"{name} SPL"))
            except ValueError as exc:
                raise _Refusal(Reason.MALFORMED, f"VCEK {name} SPL unreadable: {exc}") from exc
            if spl != value:
                raise _Refusal(
                    Reason.WRONG_SIGNER, f"VCEK {name} SPL {spl} does not equal REPORTED_TCB {name} {value}"
                )
        return product, reported

    def _supplied_chain(
        self, endorsements: Mapping[str, bytes], certs: Mapping[str, bytes], pinned_ark: x509.Certificate
    ) -> tuple[x509.Certificate, x509.Certificate | None]:
        """(ASK, ARK) from the endorsements. A two-certificate PEM may list them in either order:
        KDS serves ASK then ARK, other tools write ARK then ASK. The ARK is the certificate that is
        the pinned ARK, else the self-issued one; the order never decides trust."""
        try:
            if "cert_chain" in endorsements:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    chain = x509.load_pem_x509_certificates(endorsements["cert_chain"])
                if len(chain) != 2:
                    raise ValueError(f"expected ASK and ARK, found {len(chain)} certificates")
                pinned = fingerprint(pinned_ark)
                first_is_ark = fingerprint(chain[0]) == pinned or (
                    fingerprint(chain[1]) != pinned and chain[0].subject == chain[0].issuer
                )
                return (chain[1], chain[0]) if first_is_ark else (chain[0], chain[1])
            ark = load_certificate(certs["ark"]) if "ark" in certs else None
            return load_certificate(certs["ask"]), ark
        except ValueError as exc:
            raise _Refusal(
                Reason.MALFORMED, f"supplied AMD chain unreadable: {der.x509_problem(exc)}"
            ) from exc

    def _appraise(
        self,
        report: SnpReport,
        reported: TcbVersion,
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

        if report.debug and not allowlist.flag(policy, "allow_debug"):
            refuse(Reason.DEBUG, f"guest POLICY {report.policy:#x} has the DEBUG bit (19) set")
        max_vmpl = allowlist.integer(policy, "max_vmpl", 0)
        if report.vmpl > max_vmpl:
            refuse(Reason.POLICY_VIOLATION, f"VMPL {report.vmpl} above the allowed {max_vmpl}")
        if report.guest_svn < allowlist.integer(policy, "min_guest_svn", 0):
            refuse(Reason.POLICY_VIOLATION, f"GUEST_SVN {report.guest_svn} below the policy minimum")
        min_tcb = policy.get("min_tcb", {})
        if not isinstance(min_tcb, Mapping):
            raise allowlist.PolicyError("policy key 'min_tcb' must be a table")
        components = reported.components()
        for name in min_tcb:
            if name not in TCB_COMPONENTS:
                raise allowlist.PolicyError(f"unknown min_tcb component {name!r}")
            minimum = allowlist.integer(min_tcb, name, 0)
            if name in components and components[name] < minimum:
                refuse(
                    Reason.TCB_NOT_ALLOWED, f"reported {name} SPL {components[name]} below minimum {minimum}"
                )
        if problem := allowlist.check_measurement(policy, "measurements", report.measurement):
            refuse(Reason.MEASUREMENT_NOT_ALLOWED, problem)
        if "host_data" in policy and (
            problem := allowlist.check_measurement(policy, "host_data", report.host_data)
        ):
            refuse(Reason.MEASUREMENT_NOT_ALLOWED, problem)
        if problem := allowlist.report_data_problem(report.report_data, expected, "REPORT_DATA"):
            refuse(Reason.REPORT_DATA_MISMATCH, problem)
        kind = EvidenceKind.SEV_SNP.value
        if reasons:
            return EvidenceVerdict(
                kind=kind, ok=False, reasons=tuple(reasons), detail="; ".join(details), **claims
            )
        return EvidenceVerdict(kind=kind, ok=True, detail="SEV-SNP report verified", **claims)


VERIFIER = SevSnpVerifier()
