"""Intel TDX evidence (DCAP quote v4/v5): Intel's chain via dcap-qvl, then our appraisal.

Order of checks, and why:
1. our strict parse and the attestation-key signature: a tampered quote is reported as such
   even without collateral, and SGX quotes are told apart before anything else;
2. the optional CCEL event log must replay to the quote's RTMRs;
3. the collateral's validity window at ``now`` (clear "expired" / "not yet valid" reasons);
4. dcap-qvl, pinned to the Intel SGX Root CA shipped in ``roots/``: PCK chain, CRLs, QE
   report and identity, TCB level. dcap-qvl does not look at MRTD/RTMRs/REPORTDATA;
5. appraisal against the ``[tdx]`` policy section: TCB status and advisories, platform flags,
   debug, measurement allow-lists, and REPORTDATA equal to our binding (constant time).

Policy keys (all optional): ``allowed_tcb_statuses`` (default ``["UpToDate"]``),
``rejected_advisories``, ``allow_dynamic_platform`` / ``allow_cached_keys`` / ``allow_smt``
(default false), ``allow_debug`` (test only, default false), ``mrtd``, ``rtmr0``..``rtmr3``
(lists of hex; an absent list is refused unless ``allow_any_measurement = true``),
``mrconfigid`` / ``mrowner`` / ``mrownerconfig`` (checked when present),
``require_event_log`` (default false).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import dcap_qvl

from protocol.attestation import allowlist
from protocol.attestation.ccel import EventLogError, parse_event_log, replay_rtmrs
from protocol.attestation.evidence import Evidence, EvidenceKind, EvidenceVerdict, Reason
from protocol.attestation.roots import intel_sgx_root_der
from protocol.attestation.tdx_collateral import CollateralError, parse_collateral
from protocol.attestation.tdx_quote import (
    INTEL_QE_VENDOR_ID,
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


def _dcap_reason(message: str) -> Reason:
    for fragment, reason in _DCAP_ERRORS:
        if fragment.lower() in message.lower():
            return reason
    return Reason.COLLATERAL_INVALID


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
        try:
            allowlist.check_keys(policy, POLICY_KEYS, "tdx")
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

        event_log = evidence.endorsements.get("event_log")
        if event_log is None and allowlist.flag(policy, "require_event_log"):
            return EvidenceVerdict.refused(
                kind, Reason.POLICY_VIOLATION, "policy requires an event log and none was given", **claims
            )
        if event_log is not None:
            try:
                replayed = replay_rtmrs(parse_event_log(event_log))
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

        raw_collateral = evidence.endorsements.get("collateral")
        if raw_collateral is None:
            return EvidenceVerdict.refused(
                kind, Reason.COLLATERAL_INVALID, "no DCAP collateral for this quote", **claims
            )
        try:
            info = parse_collateral(raw_collateral)
            collateral = dcap_qvl.QuoteCollateralV3.from_json(info.json_text)
        except (CollateralError, ValueError) as exc:
            return EvidenceVerdict.refused(kind, Reason.COLLATERAL_INVALID, f"collateral: {exc}", **claims)
        if info.tee != "TDX":
            return EvidenceVerdict.refused(
                kind, Reason.COLLATERAL_INVALID, f"collateral is for {info.tee}, not TDX", **claims
            )
        extra.update(fmspc=info.fmspc, collateral_expires_at=info.not_after)
        window = info.window_error(now)
        if window is not None:
            reason = Reason.EXPIRED if window[0] == "expired" else Reason.FUTURE_DATED
            return EvidenceVerdict.refused(kind, reason, window[1], extra=extra, **claims)

        try:
            verifier = dcap_qvl.QuoteVerifier(root_ca_der=self._root_ca_der or intel_sgx_root_der())
            verified = json.loads(
                verifier.verify_with_policy(
                    evidence.data, collateral, now, dcap_qvl.QuotePolicy.claims_only(now)
                ).to_json()
            )
        except ValueError as exc:
            message = str(exc)
            return EvidenceVerdict.refused(
                kind, _dcap_reason(message), f"dcap-qvl: {message}", extra=extra, **claims
            )

        status = str(verified["tcb"]["status"])
        advisories = tuple(str(a) for a in verified["tcb"].get("advisory_ids", []))
        pck = verified.get("platform", {}).get("pck", {})
        extra["platform"] = {name: str(pck.get(name, "Undefined")) for name, _ in PLATFORM_FLAGS}
        claims.update(tcb_status=status, advisories=advisories, extra=extra)
        return self._appraise(
            fields, quote.td_debug, status, advisories, extra["platform"], expected, policy, claims
        )

    def _appraise(
        self,
        fields: Mapping[str, bytes],
        debug: bool,
        status: str,
        advisories: tuple[str, ...],
        platform: Mapping[str, str],
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

        allowed_statuses = allowlist.strings(policy, "allowed_tcb_statuses") or ["UpToDate"]
        if status not in allowed_statuses:
            refuse(Reason.TCB_NOT_ALLOWED, f"TCB status {status} not in {allowed_statuses}")
        rejected = set(allowlist.strings(policy, "rejected_advisories") or [])
        if hit := sorted(rejected.intersection(advisories)):
            refuse(Reason.TCB_NOT_ALLOWED, f"advisories {hit} are rejected by policy")
        for name, key in PLATFORM_FLAGS:
            if platform.get(name) == "True" and not allowlist.flag(policy, key):
                refuse(Reason.UNTRUSTED_PLATFORM, f"platform has {name} and the policy does not set {key}")
        if debug and not allowlist.flag(policy, "allow_debug"):
            refuse(Reason.DEBUG, "TD attributes have the DEBUG bit set")
        for key in MEASUREMENT_KEYS:
            if problem := allowlist.check_measurement(policy, key, fields[key]):
                refuse(Reason.MEASUREMENT_NOT_ALLOWED, problem)
        for key in OPTIONAL_KEYS:
            if key in policy and (problem := allowlist.check_measurement(policy, key, fields[key])):
                refuse(Reason.MEASUREMENT_NOT_ALLOWED, problem)
        if len(expected) != REPORT_DATA_SIZE or not allowlist.same(fields["report_data"], expected):
            refuse(Reason.REPORT_DATA_MISMATCH, "REPORTDATA does not equal the expected binding")
        kind = EvidenceKind.TDX.value
        if reasons:
            return EvidenceVerdict(
                kind=kind, ok=False, reasons=tuple(reasons), detail="; ".join(details), **claims
            )
        return EvidenceVerdict(kind=kind, ok=True, detail=f"TDX quote verified, TCB {status}", **claims)


VERIFIER = TdxVerifier()
