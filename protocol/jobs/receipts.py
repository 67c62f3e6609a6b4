"""Job receipts: a signed, portable record of one job that anyone can verify offline.

Why: the verification report is the user's node's own unsigned summary. A receipt carries the
executors' *own* signed commitments, what each revealed (salt and result digest, which must open
its commitment), the attestation bundle each executor's key was attested by, the comparator and
the vote, all signed by the user's node key in the ``receipt`` domain. A third party holding only
the receipt (and a policy) can check every signature, every commitment against its opening, that
the returned answer is one the winning cluster committed to, that the winning cluster is a
majority of the quorum, and each executor's bundle at the job's time. The receipt reveals nothing
about the prompt: it holds a salted digest of the input, and the salt stays with the user.

What a third party cannot check from the receipt alone is the comparator itself (that the
winners' results really were within its bounds): that needs the results, which are private.
The user's signature vouches for the clustering; the executors' signatures vouch for what each
computed. ``docs/protocol/receipts.md`` specifies the format and every check.

Why one module over 500 lines: the receipt's schema and its verification are one specification
(each check reads the fields the decoder bounded); splitting them would separate a rule from the
field it constrains.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocol.attestation.appraisal import BundleAppraiser
from protocol.attestation.bundle import MAX_BUNDLE_SIZE, AttestationBundle, BundleError
from protocol.attestation.policy import Policy
from protocol.codec import CodecError, Limits, decode, encode
from protocol.errors import ProtocolError
from protocol.identity import Domain, Identity, SignatureError, public_key_from_peer_id, verify
from protocol.jobs.messages import (
    HASH_LEN,
    JOB_ID_LEN,
    KEY_LEN,
    MAX_MODEL_ID,
    SALT_LEN,
    SIG_LEN,
    Commitment,
    MessageError,
    Mode,
    Task,
    commitment_hash,
    result_digest,
)

__all__ = [
    "INPUT_TAG",
    "MAX_EXECUTORS",
    "MAX_RECEIPT_SIZE",
    "RECEIPT_LIMITS",
    "RECEIPT_TAG",
    "RECEIPT_VERSION",
    "ExecutorEntry",
    "Receipt",
    "ReceiptError",
    "ReceiptVerdict",
    "Step",
    "StepStatus",
    "input_digest",
    "verify_receipt",
]

RECEIPT_VERSION = 1
RECEIPT_TAG = "receipt"
INPUT_TAG = b"veilnet/receipt-input/v1\x00"
MAX_EXECUTORS = 64  # k <= 15, escalation adds 2k+1, replacements add a few
MAX_RECEIPT_SIZE = 4 << 20
MAX_COMMITMENT_WIRE = 512  # a signed Commitment message is ~250 bytes
MAX_TEXT = 256
MAX_BOUNDS = 8
RECEIPT_LIMITS = Limits(
    max_size=MAX_RECEIPT_SIZE,
    max_depth=5,
    max_str=MAX_TEXT,
    max_bin=MAX_BUNDLE_SIZE,
    max_array=MAX_EXECUTORS,
    max_map=24,
)
MIN_MS = 1_577_836_800_000  # 2020-01-01, as protocol.jobs.messages
MAX_MS = 4_102_444_800_000  # 2100-01-01

_STATES = ("revealed", "failed")
_STATUSES = ("ok", "no_consensus", "unavailable", "deadline")


class ReceiptError(ProtocolError):
    """A receipt that cannot be decoded or built (schema, size, signature domain)."""


def input_digest(salt: bytes, job_input: bytes) -> bytes:
    """SHA-256("veilnet/receipt-input/v1" ‖ 0x00 ‖ salt ‖ input): hides the input, checkable with the salt."""
    if len(salt) != SALT_LEN:
        raise ReceiptError("bad_field", f"input salt must be {SALT_LEN} bytes")
    return hashlib.sha256(INPUT_TAG + salt + job_input).digest()


# -- schema helpers --------------------------------------------------------------------------------


def _bad(name: str, why: str) -> ReceiptError:
    return ReceiptError("bad_field", f"{name}: {why}")


def _take(raw: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in raw:
        raise ReceiptError("missing_field", f"{where}{name}")
    value = raw[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(f"{where}{name}", f"unexpected type {type(value).__name__}")
    return value


def _bin(value: Any, name: str, size: int | None = None, max_len: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise _bad(name, "expected bytes")
    if size is not None and len(value) != size:
        raise _bad(name, f"expected {size} bytes, got {len(value)}")
    if max_len is not None and len(value) > max_len:
        raise _bad(name, f"{len(value)} bytes exceeds {max_len}")
    return value


def _peer(value: Any, name: str) -> bytes:
    value = _bin(value, name)
    try:
        public_key_from_peer_id(value)
    except SignatureError as exc:
        raise _bad(name, str(exc)) from None
    return value


def _ms(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not MIN_MS <= value <= MAX_MS:
        raise _bad(name, "not a unix-millisecond time within 2020..2100")
    return value


def _text(value: Any, name: str, allowed: Sequence[str] | None = None, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > max_len or (allowed is not None and value not in allowed):
        raise _bad(name, f"{str(value)[:40]!r} is not allowed")
    return value


def _exact_keys(raw: Mapping[str, Any], required: set[str], optional: set[str], where: str) -> None:
    missing = sorted(required - set(raw))
    if missing:
        raise ReceiptError("missing_field", where + ", ".join(missing))
    extra = sorted(set(raw) - required - optional)
    if extra:
        raise ReceiptError("unknown_field", where + ", ".join(extra))


# -- the receipt -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutorEntry:
    """One executor's part: its signed commitment, its opening, its attestation and its fate.

    ``salt``/``result_digest`` are present when it revealed; ``bundle`` embeds the attestation
    bundle its epoch key ``enc_pubkey`` was attested by, or ``bundle_digest`` names it (SHA-256 of
    the bundle's wire bytes, fetchable from any peer that has it).
    """

    peer_id: bytes
    round: int
    state: str  # "revealed" | "failed"
    enc_pubkey: bytes
    commitment: bytes = b""  # the executor's signed Commitment message (wire bytes); empty if none
    salt: bytes = b""
    result_digest: bytes = b""
    bundle: bytes = b""
    bundle_digest: bytes = b""
    offence: str = ""  # the reputation offence recorded for it ("" for none)
    job_id: bytes = b""  # the phase's job id when it is not the receipt's (chat's score phase)

    def __post_init__(self) -> None:
        _peer(self.peer_id, "peer_id")
        if self.job_id:
            _bin(self.job_id, "job_id", JOB_ID_LEN)
        if not isinstance(self.round, int) or isinstance(self.round, bool) or not 0 <= self.round <= 1:
            raise _bad("round", "must be 0 or 1")
        _text(self.state, "state", _STATES)
        _bin(self.enc_pubkey, "enc_pubkey", KEY_LEN)
        _bin(self.commitment, "commitment", max_len=MAX_COMMITMENT_WIRE)
        if self.salt or self.result_digest or self.state == "revealed":
            _bin(self.salt, "salt", SALT_LEN)
            _bin(self.result_digest, "result_digest", HASH_LEN)
            if self.state != "revealed" or not self.commitment:
                raise _bad("salt", "an opening needs a commitment and state 'revealed'")
        _bin(self.bundle, "bundle", max_len=MAX_BUNDLE_SIZE)
        if self.bundle_digest:
            _bin(self.bundle_digest, "bundle_digest", HASH_LEN)
        if bool(self.bundle) == bool(self.bundle_digest):
            raise _bad("bundle", "exactly one of bundle and bundle_digest")
        _text(self.offence, "offence", max_len=64)

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "peer_id": self.peer_id,
            "round": self.round,
            "state": self.state,
            "enc_pubkey": self.enc_pubkey,
        }
        for name in ("commitment", "salt", "result_digest", "bundle", "bundle_digest", "offence", "job_id"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_map(cls, raw: Any, where: str) -> ExecutorEntry:
        if not isinstance(raw, dict):
            raise _bad(where, "an executor entry is a map")
        _exact_keys(
            raw,
            {"peer_id", "round", "state", "enc_pubkey"},
            {"commitment", "salt", "result_digest", "bundle", "bundle_digest", "offence", "job_id"},
            where,
        )
        for name in ("commitment", "salt", "result_digest", "bundle", "bundle_digest", "offence", "job_id"):
            if name in raw and not raw[name]:
                raise _bad(f"{where}{name}", "empty values are omitted, not sent")
        return cls(**{k: raw[k] for k in raw})

    def bundle_hash(self) -> bytes:
        return self.bundle_digest or hashlib.sha256(self.bundle).digest()


@dataclass(frozen=True)
class Receipt:
    """A job receipt; construct with :meth:`create` (signs) or :meth:`from_wire` (decodes, checks schema)."""

    job_id: bytes
    user: bytes  # the user's node peer id: the signer
    model_id: str
    task: str
    mode: str
    input_digest: bytes
    status: str
    quorum: int
    needed: int
    escalated: bool
    comparator: str
    bounds: Mapping[str, str]  # decimal strings (floats are not canonical)
    executors: tuple[ExecutorEntry, ...]
    winners: tuple[bytes, ...]
    created_ms: int
    finished_ms: int
    answer_digest: bytes = b""
    sig: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        _bin(self.job_id, "job_id", JOB_ID_LEN)
        _peer(self.user, "user")
        _text(self.model_id, "model_id", max_len=MAX_MODEL_ID)
        _text(self.task, "task", [t.value for t in Task])
        _text(self.mode, "mode", [m.value for m in Mode])
        _bin(self.input_digest, "input_digest", HASH_LEN)
        _text(self.status, "status", _STATUSES)
        for name, hi in (("quorum", MAX_EXECUTORS), ("needed", MAX_EXECUTORS)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= hi:
                raise _bad(name, f"must be within 1..{hi}")
        if not isinstance(self.escalated, bool):
            raise _bad("escalated", "expected bool")
        _text(self.comparator, "comparator", max_len=64)
        if not isinstance(self.bounds, Mapping) or len(self.bounds) > MAX_BOUNDS:
            raise _bad("bounds", f"a map of at most {MAX_BOUNDS} entries")
        for key, value in self.bounds.items():
            _text(key, "bounds key", max_len=64)
            _text(value, f"bounds.{key}", max_len=64)
        object.__setattr__(self, "bounds", dict(self.bounds))
        object.__setattr__(self, "executors", tuple(self.executors))
        object.__setattr__(self, "winners", tuple(self.winners))
        if not 1 <= len(self.executors) <= MAX_EXECUTORS:
            raise _bad("executors", f"1..{MAX_EXECUTORS} entries")
        peers = [e.peer_id for e in self.executors]
        if len(set(peers)) != len(peers):
            raise _bad("executors", "an executor is listed twice")
        if len(set(self.winners)) != len(self.winners) or len(self.winners) > MAX_EXECUTORS:
            raise _bad("winners", "duplicate or too many")
        for i, winner in enumerate(self.winners):
            _peer(winner, f"winners[{i}]")
        if list(self.winners) != sorted(self.winners):
            raise _bad("winners", "must be sorted by their bytes")
        _ms(self.created_ms, "created_ms")
        _ms(self.finished_ms, "finished_ms")
        if self.finished_ms < self.created_ms:
            raise _bad("finished_ms", "before created_ms")
        if self.answer_digest:
            _bin(self.answer_digest, "answer_digest", HASH_LEN)
        if (self.status == "ok") != bool(self.answer_digest):
            raise _bad("answer_digest", "present exactly when status is ok")
        if self.sig:
            _bin(self.sig, "sig", SIG_LEN)

    # -- encoding --------------------------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": RECEIPT_VERSION,
            "t": RECEIPT_TAG,
            "job_id": self.job_id,
            "user": self.user,
            "model_id": self.model_id,
            "task": self.task,
            "mode": self.mode,
            "input_digest": self.input_digest,
            "status": self.status,
            "quorum": self.quorum,
            "needed": self.needed,
            "escalated": self.escalated,
            "comparator": self.comparator,
            "bounds": dict(self.bounds),
            "executors": [e.to_map() for e in self.executors],
            "winners": list(self.winners),
            "created_ms": self.created_ms,
            "finished_ms": self.finished_ms,
        }
        if self.answer_digest:
            body["answer_digest"] = self.answer_digest
        return body

    def signed_body(self) -> bytes:
        """The bytes the user signs in the ``receipt`` domain: the canonical map without ``sig``."""
        return encode(self._body())

    def to_wire(self) -> bytes:
        if len(self.sig) != SIG_LEN:
            raise ReceiptError("unsigned", "an unsigned receipt has no wire form")
        data = encode({**self._body(), "sig": self.sig})
        if len(data) > MAX_RECEIPT_SIZE:
            raise ReceiptError("too_large", f"{len(data)} bytes exceeds {MAX_RECEIPT_SIZE}")
        return data

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_wire()).digest()

    @classmethod
    def create(cls, identity: Identity, **fields: Any) -> Receipt:
        """Build and sign as ``identity`` (``user`` is its peer id)."""
        unsigned = cls(user=identity.peer_id, **fields)
        signature = identity.sign(Domain.RECEIPT, unsigned.signed_body())
        return cls(user=identity.peer_id, sig=signature, **fields)

    @classmethod
    def from_wire(cls, data: bytes) -> Receipt:
        """Decode untrusted bytes with size limits and schema checks. Does not verify anything else."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ReceiptError("malformed", "expected bytes")
        if len(data) > MAX_RECEIPT_SIZE:
            raise ReceiptError("too_large", f"{len(data)} bytes exceeds {MAX_RECEIPT_SIZE}")
        try:
            raw = decode(bytes(data), RECEIPT_LIMITS)
        except CodecError as exc:
            raise ReceiptError("malformed", str(exc)) from None
        return cls.from_map(raw)

    @classmethod
    def from_map(cls, raw: Any) -> Receipt:
        if not isinstance(raw, dict):
            raise ReceiptError("malformed", "a receipt is a map")
        version = raw.get("v")
        if version != RECEIPT_VERSION or isinstance(version, bool):
            raise ReceiptError("unsupported_version", f"receipt version {str(version)[:20]!r}")
        if raw.get("t") != RECEIPT_TAG:
            raise ReceiptError("unexpected_type", "not a receipt")
        required = {
            "v",
            "t",
            "job_id",
            "user",
            "model_id",
            "task",
            "mode",
            "input_digest",
            "status",
            "quorum",
            "needed",
            "escalated",
            "comparator",
            "bounds",
            "executors",
            "winners",
            "created_ms",
            "finished_ms",
            "sig",
        }
        _exact_keys(raw, required, {"answer_digest"}, "")
        executors = _take(raw, "executors", list, "")
        bounds = _take(raw, "bounds", dict, "")
        try:
            return cls(
                job_id=raw["job_id"],
                user=raw["user"],
                model_id=raw["model_id"],
                task=raw["task"],
                mode=raw["mode"],
                input_digest=raw["input_digest"],
                status=raw["status"],
                quorum=raw["quorum"],
                needed=raw["needed"],
                escalated=raw["escalated"],
                comparator=raw["comparator"],
                bounds=bounds,
                executors=tuple(
                    ExecutorEntry.from_map(e, f"executors[{i}].") for i, e in enumerate(executors)
                ),
                winners=tuple(_take(raw, "winners", list, "")),
                created_ms=raw["created_ms"],
                finished_ms=raw["finished_ms"],
                answer_digest=raw.get("answer_digest", b""),
                sig=_bin(raw["sig"], "sig", SIG_LEN),
            )
        except TypeError as exc:  # a value of the wrong type reached a length or comparison
            raise ReceiptError("bad_field", str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        """The JSON rendering: the same map, bytes as lowercase hex, peer ids as hex too.

        Verification always runs on the msgpack form (``from_json`` inverts this exactly).
        """
        return _hexify({**self._body(), "sig": self.sig})

    @classmethod
    def from_json(cls, value: Any) -> Receipt:
        try:
            return cls.from_wire(encode(_unhexify(value, 0)))
        except (ValueError, CodecError) as exc:
            raise ReceiptError("malformed", f"JSON rendering: {exc}") from None


_BINARY_KEYS = {
    "job_id",
    "user",
    "input_digest",
    "answer_digest",
    "sig",
    "peer_id",
    "enc_pubkey",
    "commitment",
    "salt",
    "result_digest",
    "bundle",
    "bundle_digest",
    "winners",
}


def _hexify(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _hexify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hexify(v) for v in value]
    return value


def _unhexify(value: Any, depth: int, binary: bool = False) -> Any:
    if depth > 6:
        raise ValueError("nested too deep")
    if isinstance(value, dict):
        return {str(k): _unhexify(v, depth + 1, k in _BINARY_KEYS) for k, v in value.items()}
    if isinstance(value, list):
        return [_unhexify(v, depth + 1, binary) for v in value]
    if binary and isinstance(value, str):
        return bytes.fromhex(value)
    return value


# -- verification ----------------------------------------------------------------------------------


class StepStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SIMULATED = "simulated"  # passed, but the evidence is simulated: no hardware guarantee
    NOT_CHECKED = "not_checked"  # nothing to check it against (no --answer, bundle by digest only)


@dataclass(frozen=True)
class Step:
    name: str
    status: StepStatus
    reason: str = ""  # a stable code when status is FAIL or NOT_CHECKED
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"step": self.name, "status": self.status.value, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class ReceiptVerdict:
    """Per-step results; ``ok`` when no step failed (NOT_CHECKED and SIMULATED do not fail)."""

    steps: tuple[Step, ...]
    receipt: Receipt

    @property
    def ok(self) -> bool:
        return all(s.status is not StepStatus.FAIL for s in self.steps)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.reason for s in self.steps if s.status is StepStatus.FAIL))

    @property
    def simulated(self) -> bool:
        return any(s.status is StepStatus.SIMULATED for s in self.steps)


def _strict_majority(n: int) -> int:
    return n // 2 + 1


def verify_receipt(
    receipt: Receipt | bytes,
    *,
    policy: Policy | None = None,
    at: int | None = None,
    answer: bytes | None = None,
    job_input: bytes | None = None,
    salt: bytes | None = None,
    bundles: Mapping[bytes, bytes] | None = None,
    appraiser: BundleAppraiser | None = None,
    check_bundles: bool = True,
) -> ReceiptVerdict:
    """Check everything the receipt claims that can be checked offline; never raises on bad content.

    Raises ReceiptError only when ``receipt`` bytes cannot be decoded at all (unusable input).
    ``policy`` (default: ``Policy()``, which refuses simulated evidence) appraises each bundle at
    ``at`` (unix seconds; default: the job's creation time). ``bundles`` maps a bundle digest to
    bundle bytes for entries that name their bundle by digest only. ``check_bundles=False``
    leaves the bundle steps out (offence records prove statements, not attestation).
    """
    r = receipt if isinstance(receipt, Receipt) else Receipt.from_wire(receipt)
    steps: list[Step] = []

    def add(name: str, ok: bool, reason: str, detail: str = "") -> None:
        steps.append(Step(name, StepStatus.PASS if ok else StepStatus.FAIL, "" if ok else reason, detail))

    try:
        verify(r.user, Domain.RECEIPT, r.signed_body(), r.sig)
        add("receipt_signature", True, "")
    except SignatureError as exc:
        add("receipt_signature", False, "bad_receipt_signature", str(exc))

    openings: dict[bytes, bytes] = {}
    for entry in r.executors:
        name = f"commitment:{entry.peer_id.hex()[-12:]}"
        if not entry.commitment:
            if entry.state == "revealed":
                add(name, False, "missing_commitment")
            continue
        reason, detail = _check_commitment(r.job_id, entry)
        add(name, not reason, reason, detail)
        if not reason and entry.state == "revealed":
            openings[entry.peer_id] = entry.result_digest

    steps.extend(_check_outcome(r, openings))

    if answer is None:
        steps.append(Step("answer", StepStatus.NOT_CHECKED, "no_answer_given"))
    elif not r.answer_digest:
        add("answer", False, "no_answer_in_receipt")
    else:
        add("answer", hmac.compare_digest(result_digest(answer), r.answer_digest), "answer_mismatch")

    if job_input is None or salt is None:
        steps.append(Step("input", StepStatus.NOT_CHECKED, "no_input_given"))
    else:
        try:
            same = hmac.compare_digest(input_digest(salt, job_input), r.input_digest)
            add("input", same, "input_mismatch")
        except ReceiptError as exc:
            add("input", False, "bad_salt", str(exc))

    if not check_bundles:
        return ReceiptVerdict(tuple(steps), r)
    appraiser = appraiser or BundleAppraiser(policy or Policy(), cache_size=0)
    when = at if at is not None else r.created_ms // 1000
    for entry in r.executors:
        steps.append(_check_bundle(entry, appraiser, when, bundles or {}))
    return ReceiptVerdict(tuple(steps), r)


def _check_commitment(job_id: bytes, entry: ExecutorEntry) -> tuple[str, str]:
    """('', '') when the signed commitment is the executor's, for this job, and opens to its digest."""
    try:
        commitment = Commitment.from_wire(entry.commitment)
        commitment.verify(expected_peer_id=entry.peer_id)
    except MessageError as exc:
        return "bad_commitment", str(exc)
    job_id = entry.job_id or job_id
    if commitment.job_id != job_id:
        return "commitment_wrong_job", "signed for another job"
    if entry.state == "revealed":
        opened = commitment_hash(job_id, entry.peer_id, entry.salt, entry.result_digest)
        if not hmac.compare_digest(opened, commitment.commitment):
            return "reveal_mismatch", "salt and result digest do not open the signed commitment"
    return "", ""


def _check_outcome(r: Receipt, openings: Mapping[bytes, bytes]) -> list[Step]:
    """The answer belongs to the winning cluster, and that cluster is a majority of the quorum."""
    steps: list[Step] = []
    listed = {e.peer_id: e for e in r.executors}
    revealed = [e for e in r.executors if e.state == "revealed"]
    unproven = [w for w in r.winners if w not in openings]
    if unproven:
        return [
            Step(
                "winning_cluster",
                StepStatus.FAIL,
                "winner_not_proven",
                f"{len(unproven)} winner(s) without a valid signed commitment and opening",
            )
        ]
    if r.status != "ok":
        return [Step("winning_cluster", StepStatus.PASS, "", f"no answer: job ended {r.status}")]
    if not any(hmac.compare_digest(openings[w], r.answer_digest) for w in r.winners):
        steps.append(
            Step(
                "answer_in_winning_cluster",
                StepStatus.FAIL,
                "answer_not_from_winner",
                "no winner committed to the returned answer's digest",
            )
        )
    else:
        steps.append(Step("answer_in_winning_cluster", StepStatus.PASS))
    needed = max(r.needed, _strict_majority(r.quorum))
    if r.escalated:
        needed = max(needed, _strict_majority(len(revealed)))
    majority = len(r.winners) >= needed and 2 * len(r.winners) > len(revealed)
    steps.append(
        Step(
            "majority",
            StepStatus.PASS if majority else StepStatus.FAIL,
            "" if majority else "minority_cluster",
            f"{len(r.winners)} of {len(revealed)} revealed (quorum {r.quorum}, {needed} needed)",
        )
    )
    wrong = [e for e in revealed if e.peer_id not in r.winners and e.offence != "wrong_output"]
    marked = [p for p, e in listed.items() if e.offence == "wrong_output" and p in r.winners]
    consistent = not wrong and not marked
    steps.append(
        Step(
            "offences",
            StepStatus.PASS if consistent else StepStatus.FAIL,
            "" if consistent else "inconsistent_offences",
            "" if consistent else "outvoted executors must be (and winners must not be) marked wrong_output",
        )
    )
    return steps


def _check_bundle(
    entry: ExecutorEntry, appraiser: BundleAppraiser, when: int, bundles: Mapping[bytes, bytes]
) -> Step:
    name = f"bundle:{entry.peer_id.hex()[-12:]}"
    data = entry.bundle or bundles.get(entry.bundle_digest, b"")
    if not data:
        return Step(name, StepStatus.NOT_CHECKED, "bundle_not_available", "named by digest only")
    if entry.bundle_digest and hashlib.sha256(data).digest() != entry.bundle_digest:
        return Step(name, StepStatus.FAIL, "bundle_digest_mismatch")
    try:
        bundle = AttestationBundle.from_wire(data)
    except BundleError as exc:
        return Step(name, StepStatus.FAIL, "bundle_malformed", str(exc))
    if bundle.node_id != entry.peer_id:
        return Step(name, StepStatus.FAIL, "bundle_wrong_peer", "the bundle attests another peer")
    if not hmac.compare_digest(bundle.enc_pubkey, entry.enc_pubkey):
        return Step(
            name,
            StepStatus.FAIL,
            "bundle_wrong_key",
            "the job was sealed to a key this bundle does not attest",
        )
    verdict = appraiser.appraise(bundle, sender_peer_id=entry.peer_id, now=when)
    if not verdict.ok:
        reason = verdict.reason.value if verdict.reason else "refused"
        label = f" [{verdict.label}]" if verdict.label else ""
        return Step(name, StepStatus.FAIL, f"bundle_{reason}", f"{verdict.detail}{label}")
    if verdict.kind == "simulated":
        return Step(
            name, StepStatus.SIMULATED, "simulated_evidence", f"{verdict.label}, epoch {verdict.epoch}"
        )
    return Step(name, StepStatus.PASS, "", f"{verdict.label}, epoch {verdict.epoch}")
