"""Job and result envelopes, and sealed result streams (pynacl/libsodium only).

A job is sealed to an executor's attested X25519 epoch key with an ephemeral X25519 client key
(it doubles as the key results come back to). One client key serves a *session* of up to
``ClientKeys.max_jobs`` jobs to one executor key, so the X25519 agreement (about 80 µs a side) is
paid once per session, not per job; both ends cache the session key. Every job still has its own
keys, derived from the session key and the job id in one keyed hash::

    k_session        = BLAKE2b-256(key=shared,    "veilnet/seal/v3/session" ‖ 0x00 ‖ client_pk ‖ executor_pk)
    k_job ‖ k_result = BLAKE2b-512(key=k_session, "veilnet/seal/v3/job"     ‖ 0x00 ‖ job_id)

An ``Envelope`` is a pair: ``nonce`` (24 random bytes) and ``ciphertext`` (XChaCha20-Poly1305-IETF
ciphertext ‖ tag (16)), whose AAD is the canonical encoding of the job binding (version, direction,
job id, model id, both keys, deadline). The two travel as separate message fields, so neither
sealing nor opening copies the message to join or split them (at 1 MiB those two copies cost a
fifth of the AEAD itself). Results are sealed with ``k_result``: only the holder of the client's
ephemeral secret (or the executor that answered) can derive it, the same construction Oblivious
HTTP uses for its responses, and it costs no extra key agreement per result. Random 192-bit
nonces, drawn for every envelope and never derived, make nonce reuse under one key negligible (and
every job has its own keys anyway; a job id is never reused within its deadline, which the
executor's replay window enforces). docs/protocol/sealing.md gives the
security argument for sessions.

Streamed results use libsodium's secretstream (per-chunk nonces, ordered, final tag) under a fresh
random stream key that travels, with the stream header, inside an envelope sealed with ``k_result``
(direction "stream").

Why one module over 500 lines: envelopes and result streams are one construction (a stream opens
with an envelope under the job's session, AAD and limits), specified as one page
(docs/protocol/sealing.md); splitting them would split the key schedule from its only users.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import msgpack
import nacl.bindings as sodium
import nacl.exceptions
import nacl.utils

from protocol.errors import ProtocolError
from protocol.jobs.messages import (
    JOB_ID_LEN,
    MAX_MODEL_ID,
    MAX_SEALED,
    PROTOCOL_VERSION,
    SEAL_NONCE_LEN,
    SEAL_TAG_LEN,
)

__all__ = [
    "ENVELOPE_OVERHEAD",
    "KEY_LEN",
    "MAX_PLAINTEXT",
    "MAX_STREAM_PLAINTEXT",
    "NONCE_LEN",
    "STREAM_ABYTES",
    "STREAM_HEADER_LEN",
    "STREAM_OPENING_LEN",
    "TAG_LEN",
    "ClientKeys",
    "EncryptionKeyPair",
    "Envelope",
    "JobBinding",
    "JobSession",
    "OpenedJob",
    "SealedJob",
    "SealingError",
    "StreamOpener",
    "StreamSealer",
    "job_aad",
    "open_job",
    "open_result",
    "seal_job",
    "seal_result",
]

KEY_LEN = 32
NONCE_LEN = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_LEN = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
# the wire's nonce and ciphertext fields (protocol.jobs.messages) are sized for these
assert (NONCE_LEN, TAG_LEN) == (SEAL_NONCE_LEN, SEAL_TAG_LEN)
ENVELOPE_OVERHEAD = TAG_LEN  # ciphertext bytes beyond the plaintext (the nonce travels apart)
MAX_PLAINTEXT = MAX_SEALED - ENVELOPE_OVERHEAD

STREAM_HEADER_LEN = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 24
STREAM_ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
STREAM_OPENING_LEN = ENVELOPE_OVERHEAD + KEY_LEN + STREAM_HEADER_LEN  # an opening's ciphertext
MAX_STREAM_PLAINTEXT = 1 << 20
_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL

_SESSION_LABEL = b"veilnet/seal/v3/session\x00"
_JOB_KEYS_LABEL = b"veilnet/seal/v3/job\x00"
_JOB_KEYS_LEN = 2 * KEY_LEN  # k_job ‖ k_result from one BLAKE2b-512
_SESSION_CACHE_SIZE = 4096
# One packer for every AAD: packing bytes, str and int runs in C under the GIL with no callbacks,
# so sharing it across threads is safe, and it saves half the cost of ``packb``.
_AAD_PACKER = msgpack.Packer(use_bin_type=True)
_pack = _AAD_PACKER.pack
# The AAD map's fixed parts in canonical key order, each with the msgpack header of the value that
# follows when that value has a fixed length (keys 32 bytes: bin8 of 32, job id: bin8 of 16).
_AAD_CLIENT_PK = b"\x87" + _pack("client_pubkey") + b"\xc4\x20"
_AAD_DEADLINE = _pack("deadline_ms")
_AAD_EXECUTOR_PK = _pack("executor_pubkey") + b"\xc4\x20"
_AAD_JOB_ID = _pack("job_id") + b"\xc4\x10"
_AAD_MODEL_ID = _pack("model_id")
_AAD_VERSION = _pack("v") + _pack(PROTOCOL_VERSION)
_AAD_DIRECTIONS = {d: _pack("dir") + _pack(d) + _AAD_EXECUTOR_PK for d in ("job", "result", "stream")}
_new = tuple.__new__  # a named tuple made without its Python-level ``__new__`` (hot path only)


class SealingError(ProtocolError):
    """Sealing or opening failed. ``reason`` is a short machine-readable code."""


def _check_len(name: str, value: Any, length: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise SealingError("bad_key" if "key" in name else "bad_argument", f"{name} must be {length} bytes")
    return value


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise SealingError("bad_argument", f"{name} must be bytes, got {type(value).__name__}")


@dataclass(frozen=True, repr=False)
class EncryptionKeyPair:
    """An X25519 key pair (an executor's epoch key, or a client's per-job ephemeral key)."""

    secret: bytes
    public: bytes

    def __post_init__(self) -> None:
        _check_len("secret key", self.secret, KEY_LEN)
        _check_len("public key", self.public, KEY_LEN)
        if sodium.crypto_scalarmult_base(self.secret) != self.public:
            raise SealingError("bad_key", "public key does not belong to the secret key")

    @classmethod
    def generate(cls) -> EncryptionKeyPair:
        public, secret = sodium.crypto_box_keypair()
        # libsodium derived ``public`` from ``secret`` itself: skip the consistency check (one
        # scalar multiplication, a sizeable share of a small envelope's cost).
        pair = object.__new__(cls)
        object.__setattr__(pair, "secret", secret)
        object.__setattr__(pair, "public", public)
        return pair

    @classmethod
    def from_secret(cls, secret: bytes) -> EncryptionKeyPair:
        _check_len("secret key", secret, KEY_LEN)
        return cls(secret=secret, public=sodium.crypto_scalarmult_base(secret))

    def __repr__(self) -> str:  # never print the secret
        return f"EncryptionKeyPair(public={self.public.hex()})"


class JobBinding(NamedTuple):
    """The clear-text job fields every envelope of the job authenticates (with both keys).

    A named tuple made through ``checked`` (every field validated): the same checks as a frozen
    dataclass's ``__post_init__`` in half the time, and one is made on each side of every job.
    """

    job_id: bytes
    model_id: str
    deadline_ms: int

    @classmethod
    def checked(cls, job_id: Any, model_id: Any, deadline_ms: Any) -> JobBinding:
        """The binding of these fields; SealingError("bad_argument") unless each is well formed."""
        if type(job_id) is not bytes or len(job_id) != JOB_ID_LEN:
            raise SealingError("bad_argument", f"job_id must be {JOB_ID_LEN} bytes")
        if type(model_id) is not str or not 0 < len(model_id) <= MAX_MODEL_ID:
            raise SealingError("bad_argument", f"model_id must be a str of 1..{MAX_MODEL_ID} characters")
        if type(deadline_ms) is not int or deadline_ms < 0:  # ``type`` also refuses bool
            raise SealingError("bad_argument", "deadline_ms must be a non-negative int")
        return _new(cls, (job_id, model_id, deadline_ms))


class Envelope(NamedTuple):
    """One sealed message: its random nonce and its ciphertext ‖ tag, kept apart (never joined).

    On the wire they are two fields of the carrying message (``input_nonce`` / ``sealed_input``,
    ``result_nonce`` / ``sealed_result``, ``opening_nonce`` / ``data``).
    """

    nonce: bytes
    ciphertext: bytes


def job_aad(binding: JobBinding, client_pubkey: bytes, executor_pubkey: bytes, direction: str) -> bytes:
    """The associated data of an envelope: canonical msgpack of the binding, keys and direction.

    The map's keys and fixed-length headers are packed once, in canonical (sorted) key order, and
    joined with the values (half the time of packing the map); tests compare the result with
    ``protocol.codec.encode`` of the map.
    """
    if len(client_pubkey) != KEY_LEN or len(executor_pubkey) != KEY_LEN or len(binding.job_id) != JOB_ID_LEN:
        raise SealingError("bad_argument", "keys must be 32 bytes and the job id 16")
    middle = _AAD_DIRECTIONS.get(direction)
    if middle is None:
        if not isinstance(direction, str):
            raise SealingError("bad_argument", "direction must be a str")
        middle = _pack("dir") + _pack(direction) + _AAD_EXECUTOR_PK
    packed = b"".join((
        _AAD_CLIENT_PK, client_pubkey, _AAD_DEADLINE, _pack(binding.deadline_ms), middle, executor_pubkey,
        _AAD_JOB_ID, binding.job_id, _AAD_MODEL_ID, _pack(binding.model_id), _AAD_VERSION,
    ))  # fmt: skip
    return packed


class _SessionKeys:
    """Session keys by (own secret, peer public key): an LRU map, so an executor pays X25519 once
    per client session and a client once per executor key. Only inputs' outputs are cached (a
    deterministic function of them), so a cache hit can never give a key the inputs would not.

    Each entry is BLAKE2b-512 already keyed with ``k_session``: copying it skips the key block's
    compression that every per-job derivation would otherwise repeat."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[tuple[bytes, bytes, bytes, bytes], Any] = OrderedDict()

    def get(self, secret: bytes, peer_public: bytes, client_pk: bytes, executor_pk: bytes) -> Any:
        index = (secret, peer_public, client_pk, executor_pk)
        key = self._keys.get(index)
        if key is not None:
            self._keys.move_to_end(index)
            return key
        try:
            shared = sodium.crypto_scalarmult(secret, peer_public)
        except nacl.exceptions.CryptoError:  # libsodium refuses an all-zero result (low-order point)
            raise SealingError(
                "bad_public_key", "X25519 with this public key gives no shared secret"
            ) from None
        session_key = _blake2b(shared, _SESSION_LABEL + client_pk + executor_pk)
        key = hashlib.blake2b(key=session_key, digest_size=_JOB_KEYS_LEN)
        self._keys[index] = key
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return key


_SESSIONS = _SessionKeys(_SESSION_CACHE_SIZE)


def _shared_keys(
    secret: bytes, peer_public: bytes, client_pk: bytes, executor_pk: bytes, job_id: bytes
) -> tuple[bytes, bytes]:
    """(k_job, k_result): the two halves of one keyed BLAKE2b-512 of the job id under k_session."""
    keyed = _SESSIONS.get(secret, peer_public, client_pk, executor_pk).copy()
    keyed.update(_JOB_KEYS_LABEL + job_id)
    keys = keyed.digest()
    return keys[:KEY_LEN], keys[KEY_LEN:]


def _blake2b(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2b-256, no salt or personalisation: libsodium's ``crypto_generichash`` (hashlib's
    C implementation, without pynacl's per-call argument checks that cost more than the hash)."""
    return hashlib.blake2b(data, key=key, digest_size=KEY_LEN).digest()


def _seal(key: bytes, aad: bytes, plaintext: bytes) -> Envelope:
    """Encrypt under a fresh random 192-bit nonce (never derived, never reused)."""
    nonce = nacl.utils.random(NONCE_LEN)
    ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)
    return _new(Envelope, (nonce, ciphertext))


def _open(key: bytes, aad: bytes, envelope: Any) -> bytes:
    try:
        nonce, ciphertext = envelope
    except (TypeError, ValueError):
        raise SealingError("bad_argument", "an envelope is a (nonce, ciphertext) pair") from None
    nonce, ciphertext = _as_bytes("nonce", nonce), _as_bytes("ciphertext", ciphertext)
    if len(nonce) != NONCE_LEN:
        raise SealingError("bad_nonce", f"an envelope's nonce is {NONCE_LEN} bytes, got {len(nonce)}")
    if len(ciphertext) < ENVELOPE_OVERHEAD:
        raise SealingError("truncated", f"a ciphertext has at least {ENVELOPE_OVERHEAD} bytes")
    if len(ciphertext) > MAX_SEALED:
        raise SealingError("too_large", f"{len(ciphertext)} bytes exceeds {MAX_SEALED}")
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
    except nacl.exceptions.CryptoError:
        raise SealingError("decrypt_failed", "wrong key, wrong binding or tampered envelope") from None


class JobSession(NamedTuple):
    """What both ends of one job envelope know afterwards: the binding, both keys, the result key.

    A named tuple, not a frozen dataclass: immutable all the same, and made in a third of the time
    (two per job, one on each side). ``aads`` caches each direction's AAD.
    """

    binding: JobBinding
    client_pubkey: bytes
    executor_pubkey: bytes
    result_key: bytes
    aads: dict[str, bytes]

    @classmethod
    def of(
        cls, binding: JobBinding, client_pubkey: bytes, executor_pubkey: bytes, result_key: bytes
    ) -> JobSession:
        return _new(cls, (binding, client_pubkey, executor_pubkey, result_key, {}))

    def aad(self, direction: str) -> bytes:
        cached = self.aads.get(direction)
        if cached is None:
            cached = self.aads[direction] = job_aad(
                self.binding, self.client_pubkey, self.executor_pubkey, direction
            )
        return cached

    def __repr__(self) -> str:
        return f"JobSession(job_id={self.binding.job_id.hex()}, model_id={self.binding.model_id!r})"


class SealedJob(NamedTuple):
    """Client side of ``seal_job``: the envelope to send, the ephemeral key, the result session."""

    envelope: Envelope
    client_keys: EncryptionKeyPair
    session: JobSession


class OpenedJob(NamedTuple):
    """Executor side of ``open_job``: the plaintext job input and the session to answer with."""

    payload: bytes
    session: JobSession


class ClientKeys:
    """A client's ephemeral keys, one per executor key, each used for at most ``max_jobs`` jobs.

    Reusing a client key across jobs to the same executor key is what lets both ends skip the
    X25519 agreement; ``max_jobs`` bounds how many jobs one client secret can expose, and the map
    keeps the ``max_executors`` most recently used executor keys (epoch keys rotate).
    """

    def __init__(self, max_jobs: int = 1024, max_executors: int = 256) -> None:
        if max_jobs < 1 or max_executors < 1:
            raise SealingError("bad_argument", "max_jobs and max_executors must be >= 1")
        self.max_jobs = max_jobs
        self.max_executors = max_executors
        self._keys: OrderedDict[bytes, tuple[EncryptionKeyPair, int]] = OrderedDict()

    def for_executor(self, executor_pubkey: bytes) -> EncryptionKeyPair:
        """The client key for the next job to ``executor_pubkey`` (a fresh one when due)."""
        held = self._keys.pop(executor_pubkey, None)
        if held is None or held[1] >= self.max_jobs:
            held = (EncryptionKeyPair.generate(), 0)
        keys, used = held
        self._keys[executor_pubkey] = (keys, used + 1)
        while len(self._keys) > self.max_executors:
            self._keys.popitem(last=False)
        return keys


def seal_job(
    payload: bytes,
    *,
    recipient_pubkey: bytes,
    job_id: bytes,
    model_id: str,
    deadline_ms: int,
    client_keys: EncryptionKeyPair | ClientKeys | None = None,
) -> SealedJob:
    """Seal ``payload`` to ``recipient_pubkey``: under the session key from ``client_keys`` (a
    ``ClientKeys`` ring or one key pair) or, without it, under a fresh one-job ephemeral key."""
    payload = _as_bytes("payload", payload)
    _check_len("recipient public key", recipient_pubkey, KEY_LEN)
    if len(payload) > MAX_PLAINTEXT:
        raise SealingError("too_large", f"{len(payload)} bytes exceeds {MAX_PLAINTEXT}")
    binding = JobBinding.checked(job_id, model_id, deadline_ms)
    if isinstance(client_keys, ClientKeys):
        client = client_keys.for_executor(recipient_pubkey)
    else:
        client = client_keys if client_keys is not None else EncryptionKeyPair.generate()
    job_key, result_key = _shared_keys(
        client.secret, recipient_pubkey, client.public, recipient_pubkey, job_id
    )
    session = JobSession.of(binding, client.public, recipient_pubkey, result_key)
    aad = session.aad("job")
    return _new(SealedJob, (_seal(job_key, aad, payload), client, session))


def open_job(
    envelope: Envelope,
    *,
    recipient: EncryptionKeyPair,
    client_pubkey: bytes,
    job_id: bytes,
    model_id: str,
    deadline_ms: int,
) -> OpenedJob:
    """Open a job envelope with the executor's key pair; every clear-text field must match the AAD."""
    _check_len("client public key", client_pubkey, KEY_LEN)
    binding = JobBinding.checked(job_id, model_id, deadline_ms)
    job_key, result_key = _shared_keys(
        recipient.secret, client_pubkey, client_pubkey, recipient.public, job_id
    )
    session = JobSession.of(binding, client_pubkey, recipient.public, result_key)
    aad = session.aad("job")
    return _new(OpenedJob, (_open(job_key, aad, envelope), session))


def seal_result(session: JobSession, result: bytes) -> Envelope:
    """Seal a result back to the job's client ephemeral key (executor side)."""
    result = _as_bytes("result", result)
    if len(result) > MAX_PLAINTEXT:
        raise SealingError("too_large", f"{len(result)} bytes exceeds {MAX_PLAINTEXT}")
    return _seal(session.result_key, session.aad("result"), result)


def open_result(session: JobSession, envelope: Envelope) -> bytes:
    """Open a result envelope (client side, with the session ``seal_job`` returned)."""
    return _open(session.result_key, session.aad("result"), envelope)


class StreamSealer:
    """Sans-IO sender of a sealed result stream: ``push`` chunks, then ``final`` exactly once.

    Use ``StreamSealer.start(session)`` to get the sealer and the *opening* (stream key and header
    sealed to the client), send the opening first, then each returned chunk in order.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = sodium.crypto_secretstream_xchacha20poly1305_keygen() if key is None else key
        _check_len("stream key", self._key, KEY_LEN)
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        self.header: bytes = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, self._key)
        self._finished = False

    @classmethod
    def start(cls, session: JobSession) -> tuple[StreamSealer, Envelope]:
        sealer = cls()
        opening = _seal(session.result_key, session.aad("stream"), sealer._key + sealer.header)
        return sealer, opening

    @property
    def finished(self) -> bool:
        return self._finished

    def push(self, chunk: bytes) -> bytes:
        return self._push(chunk, _TAG_MESSAGE)

    def final(self, chunk: bytes = b"") -> bytes:
        """The last chunk (possibly empty), tagged FINAL so the receiver can tell end from cut-off."""
        out = self._push(chunk, _TAG_FINAL)
        self._finished = True
        return out

    def _push(self, chunk: bytes, tag: int) -> bytes:
        if self._finished:
            raise SealingError("finished", "the stream was already finalised")
        chunk = _as_bytes("chunk", chunk)
        if len(chunk) > MAX_STREAM_PLAINTEXT:
            raise SealingError("too_large", f"{len(chunk)} bytes exceeds {MAX_STREAM_PLAINTEXT}")
        return sodium.crypto_secretstream_xchacha20poly1305_push(self._state, chunk, None, tag)


class StreamOpener:
    """Sans-IO receiver of a sealed result stream.

    ``pull`` returns each chunk's plaintext in order. Any reordered, dropped, replayed or forged
    chunk fails authentication (secretstream nonces are implicit counters); after the first error the
    opener stays failed. ``close()`` at end of input raises unless the FINAL chunk arrived, so a
    truncated stream is never mistaken for a complete one.
    """

    def __init__(self, key: bytes, header: bytes) -> None:
        _check_len("stream key", key, KEY_LEN)
        _check_len("stream header", header, STREAM_HEADER_LEN)
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)
        self._finished = False
        self._failed: SealingError | None = None

    @classmethod
    def start(cls, session: JobSession, opening: Envelope) -> StreamOpener:
        secret = _open(session.result_key, session.aad("stream"), opening)
        if len(secret) != KEY_LEN + STREAM_HEADER_LEN:
            raise SealingError("bad_opening", "a stream opening holds a 32-byte key and a 24-byte header")
        return cls(secret[:KEY_LEN], secret[KEY_LEN:])

    @property
    def finished(self) -> bool:
        return self._finished

    def pull(self, chunk: bytes) -> bytes:
        if self._failed is not None:
            raise self._failed
        if self._finished:
            self._fail("after_final", "data after the final chunk")
        chunk = _as_bytes("chunk", chunk)
        if len(chunk) < STREAM_ABYTES:
            self._fail("bad_chunk", "chunk shorter than its authentication overhead")
        if len(chunk) > MAX_STREAM_PLAINTEXT + STREAM_ABYTES:
            self._fail("too_large", f"chunk of {len(chunk)} bytes")
        try:
            plaintext, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self._state, chunk, None)
        except nacl.exceptions.CryptoError:
            self._fail("bad_chunk", "forged, reordered, replayed or dropped chunk")
        if tag == _TAG_FINAL:
            self._finished = True
        elif tag != _TAG_MESSAGE:
            self._fail("bad_tag", f"unexpected secretstream tag {tag}")
        return plaintext

    def close(self) -> None:
        """Raise SealingError("truncated") unless the stream ended with its FINAL chunk."""
        if self._failed is not None:
            raise self._failed
        if not self._finished:
            self._fail("truncated", "stream ended without the final chunk")

    def _fail(self, reason: str, detail: str) -> NoReturn:
        self._failed = SealingError(reason, detail)
        raise self._failed
