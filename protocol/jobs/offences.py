"""Offence records: misbehaviour evidence that any node can check before it believes it.

Why: each node's reputation book only knows what that node saw. An offence record lets one node
tell the others, and carries the offender's *own* signatures, so a third party cannot forge one:

* ``equivocation``: two signed commitments by the offender for one job that differ. Self-proving.
* ``bad_reveal``: the offender's signed commitment and its signed reveal that does not open it.
  Self-proving.
* ``wrong_output``: the offender's signed commitment and opening, inside the job's receipt, where
  the user's node signed that the majority of the quorum (each with its own signed commitment
  and opening) agreed on another result. This one rests on the user's word about the comparison
  (results are private), so receivers give it bounded weight and count it once per job.

The reporter signs the record in the ``offence`` domain, so a forwarder cannot pass off someone
else's record as theirs, and an invalid record is chargeable to whoever signed it.
``docs/protocol/receipts.md`` specifies the format and the checks.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from protocol.codec import CodecError, Limits, decode, encode
from protocol.errors import ProtocolError
from protocol.identity import Domain, Identity, SignatureError, public_key_from_peer_id, verify
from protocol.jobs.messages import JOB_ID_LEN, SIG_LEN, Commitment, MessageError, Reveal
from protocol.jobs.receipts import Receipt, ReceiptError, verify_receipt

__all__ = [
    "MAX_OFFENCE_RECORD",
    "OFFENCE_VERSION",
    "OffenceError",
    "OffenceKind",
    "OffenceRecord",
    "verify_offence",
]

OFFENCE_VERSION = 1
OFFENCE_TAG = "offence"
MAX_OFFENCE_RECORD = 128 << 10  # gossip-sized: receipts travel with bundles by digest
_LIMITS = Limits(max_size=MAX_OFFENCE_RECORD, max_depth=2, max_str=64, max_bin=MAX_OFFENCE_RECORD, max_map=12)
_MAX_STATEMENT = 512


class OffenceError(ProtocolError):
    """A record that does not decode, or does not prove what it claims; ``reason`` says which check."""


class OffenceKind(StrEnum):
    WRONG_OUTPUT = "wrong_output"
    BAD_REVEAL = "bad_reveal"
    EQUIVOCATION = "equivocation"


_PROOF_FIELD = {
    OffenceKind.WRONG_OUTPUT: "receipt",
    OffenceKind.BAD_REVEAL: "reveal",
    OffenceKind.EQUIVOCATION: "other",
}


@dataclass(frozen=True)
class OffenceRecord:
    """``statement`` is the offender's signed commitment; ``proof`` the field its kind needs."""

    kind: OffenceKind
    job_id: bytes
    offender: bytes
    reporter: bytes
    statement: bytes
    proof: bytes
    sig: bytes = b""

    def _body(self) -> dict[str, Any]:
        return {
            "v": OFFENCE_VERSION,
            "t": OFFENCE_TAG,
            "kind": self.kind.value,
            "job_id": self.job_id,
            "offender": self.offender,
            "reporter": self.reporter,
            "statement": self.statement,
            _PROOF_FIELD[self.kind]: self.proof,
        }

    def signed_body(self) -> bytes:
        return encode(self._body())

    def to_wire(self) -> bytes:
        data = encode({**self._body(), "sig": self.sig})
        if len(data) > MAX_OFFENCE_RECORD:
            raise OffenceError("too_large", f"{len(data)} bytes exceeds {MAX_OFFENCE_RECORD}")
        return data

    def dedup_key(self) -> tuple[bytes, bytes]:
        """One record counts once per (offender, job), whoever reports it and however often."""
        return self.offender, self.job_id

    @classmethod
    def create(
        cls,
        reporter: Identity,
        kind: OffenceKind,
        *,
        job_id: bytes,
        offender: bytes,
        statement: bytes,
        proof: bytes,
    ) -> OffenceRecord:
        unsigned = cls(kind, job_id, offender, reporter.peer_id, statement, proof)
        return cls(
            kind,
            job_id,
            offender,
            reporter.peer_id,
            statement,
            proof,
            sig=reporter.sign(Domain.OFFENCE, unsigned.signed_body()),
        )

    @classmethod
    def from_wire(cls, data: bytes) -> OffenceRecord:
        """Decode with size limits and schema checks (signatures are ``verify_offence``'s)."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > MAX_OFFENCE_RECORD:
            raise OffenceError("too_large", "an offence record is bytes of at most 128 KiB")
        try:
            raw = decode(bytes(data), _LIMITS)
        except CodecError as exc:
            raise OffenceError("malformed", str(exc)) from None
        if not isinstance(raw, dict) or raw.get("v") != OFFENCE_VERSION or raw.get("t") != OFFENCE_TAG:
            raise OffenceError("malformed", "not a version-1 offence record")
        try:
            kind = OffenceKind(str(raw.get("kind")))
        except ValueError:
            raise OffenceError("malformed", "unknown offence kind") from None
        proof_field = _PROOF_FIELD[kind]
        expected = {"v", "t", "kind", "job_id", "offender", "reporter", "statement", proof_field, "sig"}
        if set(raw) != expected:
            raise OffenceError("malformed", f"fields must be exactly {sorted(expected)}")
        for name in expected - {"v", "t", "kind"}:
            if not isinstance(raw[name], bytes):
                raise OffenceError("malformed", f"{name} must be bytes")
        if len(raw["job_id"]) != JOB_ID_LEN or len(raw["sig"]) != SIG_LEN:
            raise OffenceError("malformed", "job_id or sig has the wrong length")
        if len(raw["statement"]) > _MAX_STATEMENT or (
            kind is OffenceKind.EQUIVOCATION and len(raw["other"]) > _MAX_STATEMENT
        ):
            raise OffenceError("malformed", "a signed commitment is at most 512 bytes")
        for name in ("offender", "reporter"):
            try:
                public_key_from_peer_id(raw[name])
            except SignatureError as exc:
                raise OffenceError("malformed", f"{name}: {exc}") from None
        return cls(
            kind,
            raw["job_id"],
            raw["offender"],
            raw["reporter"],
            raw["statement"],
            raw[proof_field],
            raw["sig"],
        )


def _commitment(data: bytes, offender: bytes, job_id: bytes, what: str) -> Commitment:
    try:
        commitment = Commitment.from_wire(data)
        commitment.verify(expected_peer_id=offender)
    except MessageError as exc:
        raise OffenceError("bad_statement", f"{what}: {exc}") from None
    if commitment.job_id != job_id:
        raise OffenceError("bad_statement", f"{what} is for another job")
    return commitment


def verify_offence(record: OffenceRecord | bytes) -> OffenceRecord:
    """Return the record when it proves its offence; raise OffenceError(reason) otherwise."""
    r = record if isinstance(record, OffenceRecord) else OffenceRecord.from_wire(record)
    try:
        verify(r.reporter, Domain.OFFENCE, r.signed_body(), r.sig)
    except SignatureError as exc:
        raise OffenceError("bad_reporter_signature", str(exc)) from None
    statement = _commitment(r.statement, r.offender, r.job_id, "statement")
    if r.kind is OffenceKind.EQUIVOCATION:
        other = _commitment(r.proof, r.offender, r.job_id, "other")
        if hmac.compare_digest(other.commitment, statement.commitment):
            raise OffenceError("not_an_offence", "the two commitments are the same")
        return r
    if r.kind is OffenceKind.BAD_REVEAL:
        try:
            reveal = Reveal.from_wire(r.proof)
            reveal.verify(expected_peer_id=r.offender)
        except MessageError as exc:
            raise OffenceError("bad_proof", f"reveal: {exc}") from None
        if reveal.job_id != r.job_id:
            raise OffenceError("bad_proof", "the reveal is for another job")
        try:
            reveal.check_against(statement)
        except MessageError:
            return r  # the offender's signed reveal does not open its signed commitment
        raise OffenceError("not_an_offence", "the reveal opens the commitment")
    return _verify_wrong_output(r)


def _verify_wrong_output(r: OffenceRecord) -> OffenceRecord:
    try:
        receipt = Receipt.from_wire(r.proof)
    except ReceiptError as exc:
        raise OffenceError("bad_proof", f"receipt: {exc}") from None
    if receipt.job_id != r.job_id or receipt.user != r.reporter:
        raise OffenceError("bad_proof", "the receipt is for another job or by another user")
    entry = next((e for e in receipt.executors if e.peer_id == r.offender), None)
    if entry is None or entry.commitment != r.statement:
        raise OffenceError("bad_proof", "the receipt does not hold the offender's statement")
    if (
        entry.state != "revealed"
        or r.offender in receipt.winners
        or entry.offence != OffenceKind.WRONG_OUTPUT
    ):
        raise OffenceError("not_an_offence", "the receipt does not show the offender outvoted")
    verdict = verify_receipt(receipt, check_bundles=False)  # statements, not attestation
    if not verdict.ok:
        raise OffenceError("bad_proof", f"receipt: {verdict.reasons[0]}")
    return r
