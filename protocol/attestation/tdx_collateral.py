"""DCAP collateral (``QuoteCollateralV3`` JSON): parse, identify and compute its validity window.

Why beside dcap-qvl: dcap-qvl reports an expired collateral item as a generic chain failure,
while an operator needs "collateral expired at T, refresh it"; and the node's collateral cache
needs the FMSPC and the expiry of each entry to index it and to warn before it lapses.

Keys are checked strictly. dcap-qvl 0.7.0 reads an optional ``pck_certificate_chain`` key *instead
of* the chain embedded in the quote, so that key is machine-specific data, not FMSPC-wide
collateral: it is parsed out here, compared with the quote's own chain by the TDX verifier, and
never handed to dcap-qvl nor stored in the FMSPC cache (``fmspc_json``). Any other unknown key is
refused rather than passed through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from protocol.attestation.der import x509_problem
from protocol.nesting import loads_json

MAX_COLLATERAL_SIZE = 256 * 1024
REQUIRED_KEYS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
MACHINE_KEYS = ("pck_certificate_chain",)
SIGNATURE_KEYS = {
    "tcb_info_signature": 64,
    "qe_identity_signature": 64,
}  # per machine, never part of an FMSPC-wide entry


class CollateralError(ValueError):
    """The collateral JSON is malformed."""


@dataclass(frozen=True)
class CollateralInfo:
    json_text: str  # the collateral as given
    fmspc_json: str  # the FMSPC-wide part only (no machine-specific keys): what dcap-qvl and the cache get
    tee: str  # "TDX" or "SGX", from tcbInfo.id
    fmspc: str  # upper-case hex, 12 chars
    tcb_evaluation_data_number: int
    not_before: int  # latest issue date of any item (unix seconds)
    not_after: int  # earliest nextUpdate / CRL nextUpdate / certificate expiry (unix seconds)
    expires_first: str  # which item expires first
    pck_certificate_chain: str | None = None  # a machine's PCK chain, when the collateral carries one

    def window_error(self, now: int) -> tuple[str, str] | None:
        """("expired" | "future", detail) when ``now`` is outside the validity window."""
        if now < self.not_before:
            return "future", f"collateral not valid before {self.not_before} (now {now})"
        if now >= self.not_after:
            return "expired", f"collateral {self.expires_first} expired at {self.not_after} (now {now})"
        return None


def _hex(obj: dict[str, str], key: str) -> bytes:
    try:
        return bytes.fromhex(obj[key])
    except ValueError:
        raise CollateralError(f"{key} is not hex") from None


def _ts(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def parse_collateral(data: bytes | str) -> CollateralInfo:
    """Parse and sanity-check collateral JSON; no signature checks (dcap-qvl does those)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise CollateralError(f"collateral is not UTF-8 text: {exc}") from None
    if len(text) > MAX_COLLATERAL_SIZE:
        raise CollateralError(f"collateral is {len(text)} bytes, limit {MAX_COLLATERAL_SIZE}")
    try:
        obj = loads_json(text)
        if not isinstance(obj, dict):
            raise CollateralError("collateral must be a JSON object")
        unknown = sorted(set(obj) - set(REQUIRED_KEYS) - set(MACHINE_KEYS))
        if unknown:
            raise CollateralError(
                f"collateral has unknown key(s) {unknown}; known: {sorted(REQUIRED_KEYS + MACHINE_KEYS)}"
            )
        missing = [k for k in REQUIRED_KEYS if not isinstance(obj.get(k), str)]
        if missing:
            raise CollateralError(f"collateral lacks {', '.join(missing)}")
        chain = obj.get("pck_certificate_chain")
        if chain is not None and not isinstance(chain, str):
            raise CollateralError("pck_certificate_chain must be a PEM string")
        tcb = loads_json(obj["tcb_info"])
        qe = loads_json(obj["qe_identity"])
        if not isinstance(tcb, dict) or not isinstance(qe, dict):
            raise CollateralError("tcb_info and qe_identity must be JSON objects")
        bounds: list[tuple[int, int, str | tuple[str, x509.Certificate]]] = [
            (_ts(tcb["issueDate"]), _ts(tcb["nextUpdate"]), "TCB info"),
            (_ts(qe["issueDate"]), _ts(qe["nextUpdate"]), "QE identity"),
        ]
        for key, size in SIGNATURE_KEYS.items():
            if len(_hex(obj, key)) != size:
                raise CollateralError(f"{key} must be {size} bytes of hex (ECDSA P-256 r‖s)")
        for key, label in (("pck_crl", "PCK CRL"), ("root_ca_crl", "root CA CRL")):
            try:
                crl = x509.load_der_x509_crl(_hex(obj, key))
            except ValueError as exc:
                raise CollateralError(f"{label} ({key}) is not a DER CRL: {x509_problem(exc)}") from None
            if crl.next_update_utc is None:
                raise CollateralError(f"{label} has no nextUpdate")
            bounds.append((int(crl.last_update_utc.timestamp()), int(crl.next_update_utc.timestamp()), label))
        for key, label in (
            ("tcb_info_issuer_chain", "TCB signing chain"),
            ("qe_identity_issuer_chain", "QE identity signing chain"),
            ("pck_crl_issuer_chain", "PCK CRL issuer chain"),
        ):
            try:
                certs = x509.load_pem_x509_certificates(obj[key].encode())
            except ValueError as exc:
                raise CollateralError(f"{label} ({key}) is not a PEM chain: {x509_problem(exc)}") from None
            for cert in certs:
                bounds.append(
                    (
                        int(cert.not_valid_before_utc.timestamp()),
                        int(cert.not_valid_after_utc.timestamp()),
                        (label, cert),  # named only if it is the first to expire (naming is slow)
                    )
                )
        fmspc = str(tcb["fmspc"]).upper()
        bytes.fromhex(fmspc)
        tee = str(tcb["id"])
        eval_num = int(tcb["tcbEvaluationDataNumber"])
    except CollateralError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CollateralError(f"malformed collateral: {exc}") from exc
    first = min(bounds, key=lambda b: b[1])
    what = first[2]
    expires_first = (
        what if isinstance(what, str) else f"{what[0]} certificate {what[1].subject.rfc4514_string()}"
    )
    return CollateralInfo(
        json_text=text,
        fmspc_json=json.dumps({k: obj[k] for k in REQUIRED_KEYS}),
        pck_certificate_chain=chain,
        tee=tee,
        fmspc=fmspc,
        tcb_evaluation_data_number=eval_num,
        not_before=max(b[0] for b in bounds),
        not_after=first[1],
        expires_first=expires_first,
    )
