"""Typed, versioned wire messages of the job and challenge protocols (framing: ``framing``).

Every message is a canonical msgpack map (see ``protocol.codec``) with ``"v"`` (protocol version)
and ``"t"`` (type tag). Messages are frozen dataclasses that validate themselves on construction,
so a value that exists is a value that may go on the wire, and decoding is just "codec, then
construct": one validation path for both directions. Every failure is a ``MessageError`` with a
short machine-readable ``reason``.

Each field's rule is declared once, in its type (``job_id: _JobId`` is ``Annotated[bytes, check]``),
and one ``__post_init__`` applies them in field order, so a message class declares fields, not a
check method. Signed messages (``Commitment``, ``Reveal``, ``ChallengeResponse``) derive from
``_Signed``, the one place that turns fields into canonical bytes, signs them in the message's own
``Domain`` with the ``peer_id``'s Ed25519 key (``sig`` covers ``encode(map without "sig")``) and
verifies them; decoding does not verify (the caller knows whom it expects), ``verify()`` does.

Why one module over 500 lines: the eight message types, their field rules and the one decoder
are a single wire vocabulary (``docs/protocol/messages.md`` specifies it as one document);
splitting them would scatter the limits every field is checked against. Framing lives apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Annotated, Any, ClassVar, Self, TypeVar, get_args, get_origin, get_type_hints

from protocol.codec import CodecError, Limits, decode, encode
from protocol.errors import ProtocolError
from protocol.identity import Domain, Identity, SignatureError, public_key_from_peer_id, verify

__all__ = [
    "COMMIT_TAG",
    "HASH_LEN",
    "JOB_ID_LEN",
    "KEY_LEN",
    "MAX_ERROR_MESSAGE",
    "MAX_EVIDENCE",
    "MAX_FRAME",
    "MAX_KIND",
    "MAX_MESSAGE_SIZE",
    "MAX_MODEL_ID",
    "MAX_SEALED",
    "MAX_STREAM_CHUNK",
    "MAX_TIMESTAMP_MS",
    "MAX_TIMING_MS",
    "MESSAGE_LIMITS",
    "MIN_TIMESTAMP_MS",
    "NONCE_LEN",
    "PROTOCOL_VERSION",
    "SALT_LEN",
    "SEAL_NONCE_LEN",
    "SEAL_TAG_LEN",
    "SIG_LEN",
    "ChallengeRequest",
    "ChallengeResponse",
    "Commitment",
    "ErrorCode",
    "ErrorMessage",
    "JobRequest",
    "Message",
    "MessageError",
    "Mode",
    "Reveal",
    "RevealRequest",
    "StreamChunk",
    "Task",
    "commitment_hash",
    "decode_message",
    "result_digest",
    "result_hasher",
]

# 2: envelopes travel as two fields, the random nonce apart from the ciphertext (docs/protocol/sealing.md)
PROTOCOL_VERSION = 2

JOB_ID_LEN = 16
KEY_LEN = 32  # X25519 public keys
HASH_LEN = 32  # SHA-256 digests: commitments, result digests
SALT_LEN = 32
NONCE_LEN = 32  # challenge nonces
SEAL_NONCE_LEN = 24  # an envelope's XChaCha20-Poly1305 nonce (protocol.sealing)
SEAL_TAG_LEN = 16  # its Poly1305 tag: the shortest ciphertext
SIG_LEN = 64

MAX_MODEL_ID = 128
MAX_ERROR_MESSAGE = 1024  # characters
MAX_KIND = 64
MAX_SEALED = 4 << 20  # the ciphertext of a sealed job input or result envelope
MAX_EVIDENCE = 1 << 20  # an opaque attestation evidence blob in a challenge response
MAX_STREAM_CHUNK = (1 << 20) + 17  # one secretstream chunk: 1 MiB plaintext + secretstream overhead
MAX_MESSAGE_SIZE = MAX_SEALED + (64 << 10)  # room for every other field of the largest message
MAX_FRAME = MAX_MESSAGE_SIZE  # a frame carries exactly one message (protocol.jobs.framing)

# Absolute sanity bounds for unix-millisecond timestamps: 2020-01-01 .. 2100-01-01. Relative
# checks ("is this deadline still ahead of me?") need a clock and live in JobRequest.check_deadline.
MIN_TIMESTAMP_MS = 1_577_836_800_000
MAX_TIMESTAMP_MS = 4_102_444_800_000
MAX_TIMING_MS = 7 * 24 * 3600 * 1000

# Messages are flat maps of scalars: depth 2, no arrays, few keys.
MESSAGE_LIMITS = Limits(
    max_size=MAX_MESSAGE_SIZE,
    max_depth=2,
    max_str=4 * MAX_ERROR_MESSAGE,
    max_bin=MAX_SEALED,
    max_array=0,
    max_map=16,
)

COMMIT_TAG = b"veilnet/commit/v1"
_RESULT_TAG = b"veilnet/result/v1\x00"
_MODEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._/+-]*")
_KIND_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


class MessageError(ProtocolError):
    """The only error of this module; ``reason`` is a short machine-readable code."""


class Task(StrEnum):
    EMBEDDINGS = "embeddings"
    CHAT = "chat"


class Mode(StrEnum):
    CONSENSUS = "consensus"
    SPOT_CHECK = "spot-check"


class ErrorCode(StrEnum):
    """Why an executor refused or failed a job; the router decides whether to retry elsewhere."""

    BUSY = "busy"
    EXPIRED = "expired"
    BAD_REQUEST = "bad_request"
    REPLAY = "replay"
    UNKNOWN_MODEL = "unknown_model"
    WRONG_KEY = "wrong_key"
    DECRYPT_FAILED = "decrypt_failed"
    INTERNAL = "internal"
    NOT_EXECUTOR = "not_executor"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"


# ---------------------------------------------------------------------------------------------
# Field checks: each returns the (possibly normalised) value or raises MessageError("bad_field").


def _bad(name: str, why: str) -> MessageError:
    return MessageError("bad_field", f"{name}: {why}")


def _bytes(
    name: str, value: Any, *, exact: int | None = None, min_len: int = 0, max_len: int | None = None
) -> bytes:
    if not isinstance(value, bytes):
        raise _bad(name, f"expected bytes, got {type(value).__name__}")
    if exact is not None and len(value) != exact:
        raise _bad(name, f"expected {exact} bytes, got {len(value)}")
    if len(value) < min_len:
        raise _bad(name, f"{len(value)} bytes is shorter than {min_len}")
    if max_len is not None and len(value) > max_len:
        raise _bad(name, f"{len(value)} bytes exceeds {max_len}")
    return value


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(name, f"expected int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise _bad(name, f"{value} outside [{lo}, {hi}]")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, f"expected bool, got {type(value).__name__}")
    return value


def _str(name: str, value: Any, max_len: int, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise _bad(name, f"expected str, got {type(value).__name__}")
    if len(value) > max_len:
        raise _bad(name, f"{len(value)} characters exceeds {max_len}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _bad(name, f"{value!r} is not allowed")
    return value


_E = TypeVar("_E", bound=StrEnum)


def _enum(name: str, value: Any, enum_type: type[_E]) -> _E:
    if not isinstance(value, str):
        raise _bad(name, f"expected str, got {type(value).__name__}")
    try:
        return enum_type(value)
    except ValueError:
        raise _bad(name, f"unknown value {value!r}") from None


def _peer_id(name: str, value: Any) -> bytes:
    value = _bytes(name, value)
    try:
        public_key_from_peer_id(value)
    except SignatureError as exc:
        raise _bad(name, str(exc)) from None
    return value


def _timestamp_ms(name: str, value: Any) -> int:
    return _int(name, value, MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS)


# Field types: the wire type plus its check, so a field's rule is stated where the field is.
_JobId = Annotated[bytes, partial(_bytes, exact=JOB_ID_LEN)]
_PeerId = Annotated[bytes, _peer_id]
_Signature = Annotated[bytes, partial(_bytes, exact=SIG_LEN)]
_Key = Annotated[bytes, partial(_bytes, exact=KEY_LEN)]
_Hash = Annotated[bytes, partial(_bytes, exact=HASH_LEN)]
_Salt = Annotated[bytes, partial(_bytes, exact=SALT_LEN)]
_Nonce = Annotated[bytes, partial(_bytes, exact=NONCE_LEN)]
_SealNonce = Annotated[bytes, partial(_bytes, exact=SEAL_NONCE_LEN)]
_Sealed = Annotated[bytes, partial(_bytes, min_len=SEAL_TAG_LEN, max_len=MAX_SEALED)]
_Evidence = Annotated[bytes, partial(_bytes, max_len=MAX_EVIDENCE)]
_ChunkData = Annotated[bytes, partial(_bytes, max_len=MAX_STREAM_CHUNK)]
_ModelId = Annotated[str, partial(_str, max_len=MAX_MODEL_ID, pattern=_MODEL_ID_RE)]
_Kind = Annotated[str, partial(_str, max_len=MAX_KIND, pattern=_KIND_RE)]
_ErrorText = Annotated[str, partial(_str, max_len=MAX_ERROR_MESSAGE)]
_TimestampMs = Annotated[int, _timestamp_ms]
_TimingMs = Annotated[int, partial(_int, lo=0, hi=MAX_TIMING_MS)]
_Flag = Annotated[bool, _bool]
_Task = Annotated[Task, partial(_enum, enum_type=Task)]
_Mode = Annotated[Mode, partial(_enum, enum_type=Mode)]
_ErrorCode = Annotated[ErrorCode, partial(_enum, enum_type=ErrorCode)]

_Check = Callable[[str, Any], Any]  # (field name, value) → the normalised value, or MessageError
_CHECKS: dict[type, tuple[tuple[str, _Check, bool], ...]] = {}


def _checks_of(cls: type) -> tuple[tuple[str, _Check, bool], ...]:
    """(name, check, optional) for each field of a message class, in field order (cached)."""
    checks = _CHECKS.get(cls)
    if checks is None:
        hints = get_type_hints(cls, include_extras=True)
        checks = tuple((f.name, _check_in(hints[f.name]), f.default is None) for f in dataclasses.fields(cls))
        _CHECKS[cls] = checks
    return checks


def _check_in(hint: Any) -> _Check:
    """The check of an ``Annotated`` field type, also inside ``X | None``."""
    for candidate in (hint, *get_args(hint)):
        if get_origin(candidate) is Annotated:
            check: _Check = candidate.__metadata__[0]
            return check
    raise TypeError(f"message field type {hint!r} declares no check")


# ---------------------------------------------------------------------------------------------
# The message base: map conversion, version/tag handling, optional-field rule.


class _Message:
    """Shared wire logic. Subclasses are frozen dataclasses with a ``TAG`` and checked field types.

    Optional fields default to ``None`` and are *omitted* from the map when ``None`` (nil never
    appears on the wire), so every message has exactly one encoding.
    """

    TAG: ClassVar[str]

    def __post_init__(self) -> None:
        """Check every field in order (a field's check is in its ``Annotated`` type); raise MessageError."""
        for name, check, optional in _checks_of(type(self)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            checked = check(name, value)
            if checked is not value:
                object.__setattr__(self, name, checked)  # normalisation inside a frozen dataclass

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": self.TAG}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = str(value) if isinstance(value, StrEnum) else value
        return out

    def to_wire(self) -> bytes:
        data = encode(self.to_map())
        if len(data) > MAX_MESSAGE_SIZE:
            raise MessageError("too_large", f"{len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
        return data

    @classmethod
    def from_map(cls, raw: dict[str, Any]) -> Self:
        _check_header(raw)
        if raw["t"] != cls.TAG:
            raise MessageError("unexpected_type", f"expected {cls.TAG!r}, got {raw['t']!r}")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        known = {f.name for f in fields}
        extra = sorted(set(raw) - known - {"v", "t"})
        if extra:
            raise MessageError("unknown_field", ", ".join(extra))
        kwargs: dict[str, Any] = {}
        for f in fields:
            if f.name in raw:
                if raw[f.name] is None:
                    raise _bad(f.name, "nil is not allowed (omit optional fields instead)")
                kwargs[f.name] = raw[f.name]
            elif f.default is dataclasses.MISSING:
                raise MessageError("missing_field", f.name)
        return cls(**kwargs)

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        return cls.from_map(_decode_map(data))


def _decode_map(data: bytes) -> dict[str, Any]:
    try:
        raw = decode(data, MESSAGE_LIMITS)
    except CodecError as exc:
        raise MessageError("malformed", str(exc)) from None
    if not isinstance(raw, dict):
        raise MessageError("not_a_map", f"top level is {type(raw).__name__}")
    return raw


def _check_header(raw: dict[str, Any]) -> None:
    version = raw.get("v")
    if version is None:
        raise MessageError("missing_field", "v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise MessageError(
            "unsupported_version", f"protocol version {version!r} (this node speaks {PROTOCOL_VERSION})"
        )
    tag = raw.get("t")
    if tag is None:
        raise MessageError("missing_field", "t")
    if not isinstance(tag, str) or tag not in _BY_TAG:
        raise MessageError("unknown_type", repr(tag)[:80])


class _Signed(_Message):
    """A message whose ``sig`` is the ``peer_id``'s signature over the rest of the map.

    The signed-message pattern lives here once: fields → canonical bytes (``signed_body``) →
    Ed25519 signature in the class's ``DOMAIN`` (``_signed``) → ``verify``. Subclasses declare
    ``peer_id: _PeerId`` and ``sig: _Signature`` among their fields and a typed ``create``.
    """

    DOMAIN: ClassVar[Domain]
    peer_id: bytes
    sig: bytes

    def signed_body(self) -> bytes:
        body = self.to_map()
        del body["sig"]
        return encode(body)

    def verify(self, expected_peer_id: bytes | None = None) -> None:
        """Raise MessageError unless ``sig`` is valid (and made by ``expected_peer_id`` if given)."""
        if expected_peer_id is not None and expected_peer_id != self.peer_id:
            raise MessageError("wrong_signer", "signed by a different peer than expected")
        try:
            verify(self.peer_id, self.DOMAIN, self.signed_body(), self.sig)
        except SignatureError as exc:
            raise MessageError("bad_signature", str(exc)) from None

    @classmethod
    def _signed(cls, identity: Identity, **fields: Any) -> Self:
        unsigned = cls(peer_id=identity.peer_id, sig=bytes(SIG_LEN), **fields)  # type: ignore[call-arg]
        return dataclasses.replace(unsigned, sig=identity.sign(cls.DOMAIN, unsigned.signed_body()))  # type: ignore[type-var]


# ---------------------------------------------------------------------------------------------
# Messages.


@dataclass(frozen=True)
class JobRequest(_Message):
    """Client → executor: a job whose inputs are sealed to the executor's attested epoch key.

    ``client_pubkey`` is the client's session X25519 key (results are sealed back to it);
    ``input_nonce`` and ``sealed_input`` are a ``protocol.sealing`` job envelope (its nonce and its
    ciphertext) whose AAD binds job id, model id, both keys and the deadline, so none of those
    clear-text fields can be altered in transit. ``live``
    (omitted when false) asks a chat primary to stream its tokens while it generates.
    """

    TAG: ClassVar[str] = "job_request"
    job_id: _JobId
    model_id: _ModelId
    task: _Task
    deadline_ms: _TimestampMs
    client_pubkey: _Key
    executor_enc_pubkey: _Key
    input_nonce: _SealNonce
    sealed_input: _Sealed
    mode: _Mode
    stream: _Flag
    # chat only: stream the tokens as they are generated, before the commitment (protocol.jobs.live)
    live: _Flag | None = None

    def check_deadline(self, now_ms: int, max_ahead_ms: int) -> None:
        """Refuse a job whose deadline has passed or lies implausibly far in the future."""
        if self.deadline_ms <= now_ms:
            raise MessageError("expired", f"deadline {self.deadline_ms} <= now {now_ms}")
        if self.deadline_ms - now_ms > max_ahead_ms:
            raise MessageError("deadline_too_far", f"deadline is more than {max_ahead_ms} ms ahead")


@dataclass(frozen=True)
class Commitment(_Signed):
    """Executor → client: a signed, hiding commitment to its result (see ``commitment_hash``)."""

    TAG: ClassVar[str] = "commitment"
    DOMAIN: ClassVar[Domain] = Domain.COMMITMENT
    job_id: _JobId
    peer_id: _PeerId
    commitment: _Hash
    queue_ms: _TimingMs
    compute_ms: _TimingMs
    sig: _Signature

    @classmethod
    def create(
        cls,
        identity: Identity,
        *,
        job_id: bytes,
        salt: bytes,
        result_digest: bytes,
        queue_ms: int,
        compute_ms: int,
    ) -> Commitment:
        """Commit to ``result_digest`` under ``salt`` and sign, as ``identity``."""
        return cls._signed(
            identity,
            job_id=job_id,
            commitment=commitment_hash(job_id, identity.peer_id, salt, result_digest),
            queue_ms=queue_ms,
            compute_ms=compute_ms,
        )


@dataclass(frozen=True)
class RevealRequest(_Message):
    """Client → executor: the quorum has committed (or the commit deadline passed); reveal now."""

    TAG: ClassVar[str] = "reveal_request"
    job_id: _JobId


@dataclass(frozen=True)
class Reveal(_Signed):
    """Executor → client: the salt and the result sealed to the client's session key.

    ``result_nonce`` and ``sealed_result`` are a result envelope (its nonce and its ciphertext). For
    ``stream=True`` jobs they are a secretstream opening (``sealing.StreamSealer``) and the result
    follows as ``StreamChunk`` messages; ``result_digest`` is always over the whole plaintext result.
    """

    TAG: ClassVar[str] = "reveal"
    DOMAIN: ClassVar[Domain] = Domain.REVEAL
    job_id: _JobId
    peer_id: _PeerId
    salt: _Salt
    result_digest: _Hash
    result_nonce: _SealNonce
    sealed_result: _Sealed
    sig: _Signature

    @classmethod
    def create(
        cls,
        identity: Identity,
        *,
        job_id: bytes,
        salt: bytes,
        result_digest: bytes,
        result_nonce: bytes,
        sealed_result: bytes,
    ) -> Reveal:
        return cls._signed(
            identity, job_id=job_id, salt=salt, result_digest=result_digest, result_nonce=result_nonce,
            sealed_result=sealed_result,
        )

    def check_against(self, commitment: Commitment) -> None:
        """Raise MessageError("commitment_mismatch") unless this reveal opens ``commitment``.

        Signatures are not checked here; call ``verify`` on both first.
        """
        if self.job_id != commitment.job_id or self.peer_id != commitment.peer_id:
            raise MessageError("commitment_mismatch", "different job or peer")
        expected = commitment_hash(self.job_id, self.peer_id, self.salt, self.result_digest)
        if expected != commitment.commitment:
            raise MessageError("commitment_mismatch", "salt and digest do not open the commitment")


@dataclass(frozen=True)
class StreamChunk(_Message):
    """Executor → client: one secretstream chunk of a streamed, sealed result (ordered).

    A live stream (``protocol.jobs.live``) starts with a chunk that carries its opening instead:
    ``opening_nonce`` and ``data`` are then the opening envelope's nonce and ciphertext.
    ``opening_nonce`` is omitted from every other chunk.
    """

    TAG: ClassVar[str] = "stream_chunk"
    job_id: _JobId
    data: _ChunkData
    opening_nonce: _SealNonce | None = None


@dataclass(frozen=True)
class ErrorMessage(_Message):
    """Either direction: a typed refusal or failure. ``job_id`` is omitted when none applies."""

    TAG: ClassVar[str] = "error"
    code: _ErrorCode
    message: _ErrorText
    job_id: _JobId | None = None


@dataclass(frozen=True)
class ChallengeRequest(_Message):
    """Client → executor: prove freshness by producing evidence over this nonce."""

    TAG: ClassVar[str] = "challenge_request"
    nonce: _Nonce
    job_id: _JobId | None = None


@dataclass(frozen=True)
class ChallengeResponse(_Signed):
    """Executor → client: fresh evidence (opaque here; its ``kind`` says who parses it), signed."""

    TAG: ClassVar[str] = "challenge_response"
    DOMAIN: ClassVar[Domain] = Domain.CHALLENGE
    peer_id: _PeerId
    nonce: _Nonce
    kind: _Kind
    evidence: _Evidence
    sig: _Signature

    @classmethod
    def create(cls, identity: Identity, *, nonce: bytes, kind: str, evidence: bytes) -> ChallengeResponse:
        return cls._signed(identity, nonce=nonce, kind=kind, evidence=evidence)


Message = (
    JobRequest
    | Commitment
    | RevealRequest
    | Reveal
    | StreamChunk
    | ErrorMessage
    | ChallengeRequest
    | ChallengeResponse
)

_BY_TAG: dict[str, type[Message]] = {
    cls.TAG: cls
    for cls in (
        JobRequest,
        Commitment,
        RevealRequest,
        Reveal,
        StreamChunk,
        ErrorMessage,
        ChallengeRequest,
        ChallengeResponse,
    )
}


def decode_message(data: bytes) -> Message:
    """Decode any message, dispatching on ``"t"``. Raises MessageError only."""
    raw = _decode_map(data)
    _check_header(raw)
    return _BY_TAG[raw["t"]].from_map(raw)


# ---------------------------------------------------------------------------------------------
# Commit/reveal hashing.


def result_hasher() -> hashlib._Hash:
    """An incremental SHA-256 for ``result_digest`` (feed the plaintext result, e.g. chunk by chunk)."""
    return hashlib.sha256(_RESULT_TAG)


def result_digest(result: bytes) -> bytes:
    """SHA-256("veilnet/result/v1" ‖ 0x00 ‖ result): the digest an executor commits to."""
    return hashlib.sha256(_RESULT_TAG + result).digest()


def commitment_hash(job_id: bytes, peer_id: bytes, salt: bytes, result_digest: bytes) -> bytes:
    """SHA-256("veilnet/commit/v1" ‖ job_id ‖ peer_id ‖ salt ‖ result_digest).

    Every part has a fixed length (16, 38, 32, 32), so the concatenation is unambiguous.
    """
    _bytes("job_id", job_id, exact=JOB_ID_LEN)
    _peer_id("peer_id", peer_id)
    _bytes("salt", salt, exact=SALT_LEN)
    _bytes("result_digest", result_digest, exact=HASH_LEN)
    return hashlib.sha256(COMMIT_TAG + job_id + peer_id + salt + result_digest).digest()
