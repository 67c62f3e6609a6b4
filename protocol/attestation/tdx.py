"""Intel TDX evidence (DCAP quote v4/v5): Intel's chain via dcap-qvl, then our appraisal.

Order of checks, and why:
1. our strict parse and the attestation-key signature: a tampered quote is reported as such
   even without collateral, and SGX quotes are told apart before anything else;
2. the optional event log (binary CCEL, or dstack's JSON log) must replay to the quote's RTMRs;
3. the collateral's validity window at ``now``, together with the quote's own PCK certificates
   (clear "expired" / "not yet valid" reasons); a PCK chain in the collateral must be the quote's own;
4. dcap-qvl, pinned to the Intel SGX Root CA shipped in ``roots/``: PCK chain, CRLs, QE
   report and identity, TCB level. dcap-qvl does not look at MRTD/RTMRs/REPORTDATA;
5. appraisal against the ``[tdx]`` policy section: TCB status and advisories, platform flags,
   debug, measurement allow-lists, and REPORTDATA equal to our binding (constant time).

What is remembered between calls: the parsed collateral (per distinct collateral bytes: every
quote of an FMSPC comes with the same) and parsed PCK chains; never a verdict or a time decision.

Policy keys (all optional): ``allowed_tcb_statuses`` (default ``["UpToDate"]``; an empty list
or an unknown status is a policy error),
``rejected_advisories``, ``allow_dynamic_platform`` / ``allow_cached_keys`` / ``allow_smt``
(default false), ``allow_debug`` (test only, default false), ``mrtd``, ``rtmr0``..``rtmr3``
(lists of hex; an absent list is refused unless ``allow_any_measurement = true``),
``mrconfigid`` / ``mrowner`` / ``mrownerconfig`` (checked when present),
``require_event_log`` (default false).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import dcap_qvl
from cryptography import x509

from protocol.attestation import allowlist
from protocol.attestation.allowlist import report_data_problem
from protocol.attestation.ccel import CcEvent, EventLogError, parse_event_log, replay_rtmrs
from protocol.attestation.dstack_eventlog import looks_like_json, parse_json_event_log, runtime_events
from protocol.attestation.evidence import (
    Evidence,
    EvidenceKind,
    EvidenceVerdict,
    Reason,
    refused_before_reading,
)
from protocol.attestation.roots import intel_sgx_root_der
from protocol.attestation.tdx_collateral import CollateralError, CollateralInfo, parse_collateral
from protocol.attestation.tdx_quote import (
    INTEL_QE_VENDOR_ID,
    DcapQuote,
    QuoteFormatError,
    attestation_key_signature_valid,
    parse_quote,
)

LABEL = "Intel TDX"
REPORT_DATA_SIZE = 64
MEASUREMENT_KEYS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")
OPTIONAL_KEYS = ("mrconfigid", "mrowner", "mrownerconfig")
POLICY_KEYS = frozenset(
    {
        "allowed_tcb_statuses",
        "rejected_advisories",
        "allow_dynamic_platform",
        "allow_cached_keys",
        "allow_smt",
        "allow_debug",
        "allow_any_measurement",
        "require_event_log",
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
    }
)
TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
REVOCATION_CHECKED = "checked: Intel root CA CRL and PCK CRL from the collateral"
PLATFORM_FLAGS = (
    ("dynamic_platform", "allow_dynamic_platform"),
    ("cached_keys", "allow_cached_keys"),
    ("smt_enabled", "allow_smt"),
)

# dcap-qvl error text fragment -> reason (first match wins); anything else is a collateral problem.
_DCAP_ERRORS: tuple[tuple[str, Reason], ...] = (
    ("No matching TCB level", Reason.TCB_NOT_ALLOWED),
    ("Revoked", Reason.TCB_NOT_ALLOWED),
    ("expired", Reason.EXPIRED),
    ("CrlExpired", Reason.EXPIRED),
    ("in the future", Reason.FUTURE_DATED),
    ("not yet valid", Reason.FUTURE_DATED),
    ("report signature is invalid", Reason.BAD_SIGNATURE),
    ("Signature is invalid for qe_report", Reason.CHAIN_INVALID),
    ("QE report hash mismatch", Reason.BAD_SIGNATURE),
    ("certificate chain", Reason.CHAIN_INVALID),
    ("Signature is invalid", Reason.COLLATERAL_INVALID),
)


_REASON_LEAD = {
    Reason.TCB_NOT_ALLOWED: "the platform's TCB is not acceptable",
    Reason.EXPIRED: "an Intel certificate, CRL or collateral item has expired",
    Reason.FUTURE_DATED: "an Intel certificate, CRL or collateral item is not valid yet",
    Reason.BAD_SIGNATURE: "the quote is not signed as Intel's chain requires",
    Reason.CHAIN_INVALID: "the quote's PCK certificate chain does not verify to the Intel SGX Root CA",
    Reason.COLLATERAL_INVALID: "the collateral does not verify or does not fit this quote",
}


def _dcap_reason(message: str) -> Reason:
    for fragment, reason in _DCAP_ERRORS:
        if fragment.lower() in message.lower():
            return reason
    return Reason.COLLATERAL_INVALID


def _dcap_detail(reason: Reason, message: str) -> str:
    """A plain sentence first, dcap-qvl's own text after it (never the raw text alone)."""
    text = message.removeprefix("Verification failed: ").strip() or "no detail"
    return f"{_REASON_LEAD[reason]} (dcap-qvl: {text})"


def _read_event_log(raw: bytes) -> tuple[str, list[CcEvent]]:
    if looks_like_json(raw):
        return "dstack-json", parse_json_event_log(raw)
    return "ccel", parse_event_log(raw)


def _pck_certificates(quote: DcapQuote) -> tuple[x509.Certificate, ...]:
    pem = quote.pck_chain_pem()
    return _load_pck_chain(pem) if pem else ()


@lru_cache(maxsize=256)
def _load_pck_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Parsed once per distinct chain (a machine's quotes all carry the same one); immutable."""
    try:
        return tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        return ()  # unreadable: dcap-qvl refuses the chain with its own reason


@lru_cache(maxsize=64)
def _collateral_info(raw: bytes) -> CollateralInfo:
    """Parsed once per distinct collateral: every quote of an FMSPC comes with the same one.

    Parsing decides nothing about time (``CollateralInfo.window_error`` takes ``now``), and the
    result is immutable; a refusal raises and is not remembered.
    """
    return parse_collateral(raw)


@lru_cache(maxsize=64)
def _dcap_collateral(text: str) -> dcap_qvl.QuoteCollateralV3:
    """dcap-qvl's own form of the collateral, built once per distinct text (its fields are read-only)."""
    return dcap_qvl.QuoteCollateralV3.from_json(text)


def forget_parsed() -> None:
    """Empty the parse caches above (benchmarks measure a cold process this way)."""
    for cached in (_load_pck_chain, _collateral_info, _dcap_collateral):
        cached.cache_clear()


def certificate_window_error(certs: Sequence[x509.Certificate], now: int) -> tuple[str, str] | None:
    """("expired" | "future", detail) when ``now`` is outside a certificate's validity (integer compare)."""
    for cert in certs:
        not_before = int(cert.not_valid_before_utc.timestamp())
        not_after = int(cert.not_valid_after_utc.timestamp())
        if now < not_before:
            name = cert.subject.rfc4514_string()
            return "future", f"PCK chain certificate {name} not valid before {not_before} (now {now})"
        if now > not_after:
            name = cert.subject.rfc4514_string()
            return "expired", f"PCK chain certificate {name} expired at {not_after} (now {now})"
    return None


def _platform_flag(value: Any) -> bool | None:
    """dcap-qvl reports PCK platform flags as "True"/"False"/"Undefined"; the verdict uses JSON booleans."""
    text = str(value).lower()
    return True if text == "true" else False if text == "false" else None


def allowed_statuses(policy: Mapping[str, Any]) -> list[str]:
    statuses = allowlist.strings(policy, "allowed_tcb_statuses")
    if statuses is None:
        return ["UpToDate"]
    if not statuses:
        raise allowlist.PolicyError(
            "allowed_tcb_statuses is empty, which would refuse every quote; list at least one status "
            'or leave the key out for the default ["UpToDate"]'
        )
    unknown = sorted(set(statuses) - TCB_STATUSES)
    if unknown:
        raise allowlist.PolicyError(
            f"allowed_tcb_statuses has unknown status(es) {unknown}; known: {sorted(TCB_STATUSES)}"
        )
    return statuses


class TdxVerifier:
    """Verifies and appraises TDX quotes. Stateless; one shared instance is ``VERIFIER``."""

    kind = EvidenceKind.TDX

    def __init__(self, root_ca_der: bytes | None = None) -> None:
        self._root_ca_der = root_ca_der

    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes,
        policy: Mapping[str, Any],
        now: int,
    ) -> EvidenceVerdict:
        kind = EvidenceKind.TDX.value
        refused = refused_before_reading(EvidenceKind.TDX, LABEL, now, policy, POLICY_KEYS)
        if refused is not None:
            return refused
        try:
            allowed_statuses(policy)
            return self._verify(evidence, expected_report_data, policy, now)
        except allowlist.PolicyError as exc:
            return EvidenceVerdict.refused(
                kind, Reason.POLICY_VIOLATION, f"bad [tdx] policy: {exc}", label=LABEL
            )

    def _verify(
        self, evidence: Evidence, expected: bytes, policy: Mapping[str, Any], now: int
    ) -> EvidenceVerdict:
        kind = EvidenceKind.TDX.value
        try:
            quote = parse_quote(evidence.data)
        except QuoteFormatError as exc:
            return EvidenceVerdict.refused(kind, Reason.MALFORMED, f"not a DCAP quote: {exc}", label=LABEL)
        if not quote.is_tdx:
            return EvidenceVerdict.refused(
                kind,
                Reason.NOT_CPU_EVIDENCE,
                f"SGX enclave quote (v{quote.version}) offered as TDX evidence: an SGX enclave "
                "is not a confidential VM and is never accepted as CPU evidence",
                label=LABEL,
                report_data=quote.report_data,
            )
        if quote.qe_vendor_id != INTEL_QE_VENDOR_ID:
            return EvidenceVerdict.refused(
                kind, Reason.WRONG_SIGNER, f"unknown QE vendor {quote.qe_vendor_id.hex()}", label=LABEL
            )
        fields = quote.td_fields()
        claims: dict[str, Any] = {
            "label": LABEL,
            "measurements": {k: v.hex() for k, v in fields.items() if k != "report_data"},
            "report_data": fields["report_data"],
            "debug": quote.td_debug,
        }
        if not attestation_key_signature_valid(quote):
            return EvidenceVerdict.refused(
                kind, Reason.BAD_SIGNATURE, "quote signature by the attestation key is invalid", **claims
            )
        extra: dict[str, Any] = {"quote_version": quote.version, "body_type": quote.body_type}
        if quote.trailing_bytes:
            extra["trailing_bytes_ignored"] = quote.trailing_bytes

        event_log = evidence.endorsements.get("event_log")
        if event_log is None and allowlist.flag(policy, "require_event_log"):
            return EvidenceVerdict.refused(
                kind, Reason.POLICY_VIOLATION, "policy requires an event log and none was given", **claims
            )
        if event_log is not None:
            try:
                log_format, events = _read_event_log(event_log)
                replayed = replay_rtmrs(events)
            except EventLogError as exc:
                return EvidenceVerdict.refused(kind, Reason.MALFORMED, f"event log: {exc}", **claims)
            bad = [f"rtmr{i}" for i in range(4) if not allowlist.same(replayed[i], fields[f"rtmr{i}"])]
            if bad:
                return EvidenceVerdict.refused(
                    kind,
                    Reason.MEASUREMENT_NOT_ALLOWED,
                    f"event log does not replay to the quote's {', '.join(bad)}",
                    **claims,
                )
            extra["event_log_replayed"] = True
            extra["event_log_format"] = log_format
            if app_events := runtime_events(events):
                extra["runtime_events"] = [f"{name}={payload}" for name, payload in app_events]

        raw_collateral = evidence.endorsements.get("collateral")
        if raw_collateral is None:
            return EvidenceVerdict.refused(
                kind, Reason.COLLATERAL_INVALID, "no DCAP collateral for this quote", **claims
            )
        try:
            info = _collateral_info(bytes(raw_collateral))
        except CollateralError as exc:
            return EvidenceVerdict.refused(kind, Reason.COLLATERAL_INVALID, f"collateral: {exc}", **claims)
        if info.tee != "TDX":
            return EvidenceVerdict.refused(
                kind, Reason.COLLATERAL_INVALID, f"collateral is for {info.tee}, not TDX", **claims
            )
        extra.update(fmspc=info.fmspc, collateral_expires_at=info.not_after)
        if refusal := self._pck_chain_refusal(quote, info, now):
            return EvidenceVerdict.refused(kind, refusal[0], refusal[1], extra=extra, **claims)
        # The collateral's PCK chain reaches dcap-qvl only when the quote has none of its own.
        dcap_json = info.json_text if quote.pck_chain_pem() is None else info.fmspc_json
        try:
            collateral = _dcap_collateral(dcap_json)
        except ValueError as exc:
            detail = _dcap_detail(Reason.COLLATERAL_INVALID, str(exc))
            return EvidenceVerdict.refused(kind, Reason.COLLATERAL_INVALID, detail, extra=extra, **claims)

        try:
            verifier = dcap_qvl.QuoteVerifier(root_ca_der=self._root_ca_der or intel_sgx_root_der())
            verified = json.loads(
                verifier.verify_with_policy(
                    evidence.data, collateral, now, dcap_qvl.QuotePolicy.claims_only(now)
                ).to_json()
            )
        except (ValueError, OverflowError) as exc:
            reason = _dcap_reason(str(exc))
            return EvidenceVerdict.refused(
                kind, reason, _dcap_detail(reason, str(exc)), extra=extra, **claims
            )

        status = str(verified["tcb"]["status"])
        advisories = tuple(str(a) for a in verified["tcb"].get("advisory_ids", []))
        pck = verified.get("platform", {}).get("pck", {})
        extra["platform"] = {name: _platform_flag(pck.get(name)) for name, _ in PLATFORM_FLAGS}
        claims.update(tcb_status=status, advisories=advisories, extra=extra, revocation=REVOCATION_CHECKED)
        return self._appraise(
            fields, quote.td_debug, status, advisories, extra["platform"], expected, policy, claims
        )

    def _pck_chain_refusal(
        self, quote: DcapQuote, info: CollateralInfo, now: int
    ) -> tuple[Reason, str] | None:
        """The collateral window plus the quote's own PCK certificates; and no foreign PCK chain.

        dcap-qvl 0.7.0 would verify a ``pck_certificate_chain`` from the collateral *instead of* the
        chain in the quote, so a collateral file could swap in another machine's chain or paper over
        a corrupted one. The quote's own chain wins: the collateral's must equal it (it is then
        redundant) and is only used when the quote carries none.
        """
        own = quote.pck_chain_pem()
        given = info.pck_certificate_chain
        if given is not None and own is not None and given.strip() != own.decode("latin-1").strip():
            return (
                Reason.COLLATERAL_INVALID,
                "the collateral's pck_certificate_chain is not the PCK chain embedded in the quote "
                "(another machine's chain, or the quote's chain was altered); refusing to substitute it",
            )
        if own is None and given is None:
            return (
                Reason.COLLATERAL_INVALID,
                "the quote carries no PCK certificate chain (certification data type "
                f"{quote.cert_data_type}) and the collateral has no pck_certificate_chain",
            )
        window = info.window_error(now) or certificate_window_error(_pck_certificates(quote), now)
        if window is not None:
            return (Reason.EXPIRED if window[0] == "expired" else Reason.FUTURE_DATED), window[1]
        return None

    def _appraise(
        self,
        fields: Mapping[str, bytes],
        debug: bool,
        status: str,
        advisories: tuple[str, ...],
        platform: Mapping[str, bool | None],
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

        statuses = allowed_statuses(policy)
        if status not in statuses:
            refuse(Reason.TCB_NOT_ALLOWED, f"TCB status {status} not in {statuses}")
        rejected = set(allowlist.strings(policy, "rejected_advisories") or [])
        if hit := sorted(rejected.intersection(advisories)):
            refuse(Reason.TCB_NOT_ALLOWED, f"advisories {hit} are rejected by policy")
        for name, key in PLATFORM_FLAGS:
            if platform.get(name) is True and not allowlist.flag(policy, key):
                refuse(Reason.UNTRUSTED_PLATFORM, f"platform has {name} and the policy does not set {key}")
        if debug and not allowlist.flag(policy, "allow_debug"):
            refuse(Reason.DEBUG, "TD attributes have the DEBUG bit set")
        for key in MEASUREMENT_KEYS:
            if problem := allowlist.check_measurement(policy, key, fields[key]):
                refuse(Reason.MEASUREMENT_NOT_ALLOWED, problem)
        for key in OPTIONAL_KEYS:
            if key in policy and (problem := allowlist.check_measurement(policy, key, fields[key])):
                refuse(Reason.MEASUREMENT_NOT_ALLOWED, problem)
        if problem := report_data_problem(fields["report_data"], expected, "REPORTDATA"):
            refuse(Reason.REPORT_DATA_MISMATCH, problem)
        kind = EvidenceKind.TDX.value
        if reasons:
            return EvidenceVerdict(
                kind=kind, ok=False, reasons=tuple(reasons), detail="; ".join(details), **claims
            )
        return EvidenceVerdict(kind=kind, ok=True, detail=f"TDX quote verified, TCB {status}", **claims)


VERIFIER = TdxVerifier()
