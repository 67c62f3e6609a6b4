"""Sealing: job/result envelopes and result streams, with every tamper we can think of."""

from __future__ import annotations

import hashlib
from typing import Any

import nacl.bindings as sodium
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import decode, encode
from protocol.sealing import (
    ENVELOPE_OVERHEAD,
    MAX_PLAINTEXT,
    MAX_STREAM_PLAINTEXT,
    ClientKeys,
    EncryptionKeyPair,
    JobBinding,
    SealedJob,
    SealingError,
    StreamOpener,
    StreamSealer,
    job_aad,
    open_job,
    open_result,
    seal_job,
    seal_result,
)

EXECUTOR = EncryptionKeyPair.from_secret(b"\x42" * 32)
OTHER_EXECUTOR = EncryptionKeyPair.from_secret(b"\x43" * 32)
JOB_ID = bytes(range(16))
MODEL = "vn-model:" + "cd" * 32
DEADLINE = 1_800_000_000_000
BINDING: dict[str, Any] = {"job_id": JOB_ID, "model_id": MODEL, "deadline_ms": DEADLINE}

# X25519 public keys of small order: X25519 with them yields all zeros (libsodium refuses).
LOW_ORDER_POINTS = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def seal(payload: bytes = b"the prompt") -> SealedJob:
    return seal_job(payload, recipient_pubkey=EXECUTOR.public, **BINDING)


def open_as_executor(sealed: SealedJob, envelope: bytes | None = None, **changes: Any) -> bytes:
    kwargs: dict[str, Any] = {"recipient": EXECUTOR, "client_pubkey": sealed.client_keys.public, **BINDING}
    kwargs.update(changes)
    return open_job(sealed.envelope if envelope is None else envelope, **kwargs).payload


def reason(exc: pytest.ExceptionInfo[SealingError]) -> str:
    return exc.value.reason


# --- envelopes ------------------------------------------------------------------------------------


@given(st.binary(max_size=2048))
def test_job_and_result_round_trip(payload: bytes) -> None:
    sealed = seal(payload)
    assert len(sealed.envelope) == len(payload) + ENVELOPE_OVERHEAD
    opened = open_job(sealed.envelope, recipient=EXECUTOR, client_pubkey=sealed.client_keys.public, **BINDING)
    assert opened.payload == payload
    assert opened.session == sealed.session  # both ends derive the same result key and binding
    assert open_result(sealed.session, seal_result(opened.session, payload[::-1])) == payload[::-1]


def test_every_envelope_is_fresh() -> None:
    a, b = seal(), seal()
    assert a.client_keys.public != b.client_keys.public
    assert a.envelope[:24] != b.envelope[:24]
    assert a.session.result_key != b.session.result_key
    opened = open_job(a.envelope, recipient=EXECUTOR, client_pubkey=a.client_keys.public, **BINDING)
    r1, r2 = seal_result(opened.session, b"same"), seal_result(opened.session, b"same")
    assert r1[:24] != r2[:24] and r1 != r2


def test_aad_is_the_canonical_binding() -> None:
    aad = job_aad(JobBinding(JOB_ID, MODEL, DEADLINE), b"\x01" * 32, b"\x02" * 32, "job")
    assert decode(aad) == {
        "client_pubkey": b"\x01" * 32,
        "deadline_ms": DEADLINE,
        "dir": "job",
        "executor_pubkey": b"\x02" * 32,
        "job_id": JOB_ID,
        "model_id": MODEL,
        "v": 1,
    }


def test_each_flipped_byte_of_an_envelope_is_refused() -> None:
    sealed = seal(b"tiny")
    for i in range(len(sealed.envelope)):
        for bit in (0x01, 0x80):
            tampered = bytearray(sealed.envelope)
            tampered[i] ^= bit
            with pytest.raises(SealingError) as info:
                open_as_executor(sealed, bytes(tampered))
            assert reason(info) == "decrypt_failed", i


def test_each_flipped_byte_of_a_result_envelope_is_refused() -> None:
    sealed = seal()
    envelope = seal_result(sealed.session, b"result")
    for i in range(len(envelope)):
        tampered = bytearray(envelope)
        tampered[i] ^= 0x04
        with pytest.raises(SealingError):
            open_result(sealed.session, bytes(tampered))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", b"\x00" * 16),
        ("model_id", MODEL[:-1] + "e"),
        ("deadline_ms", DEADLINE + 1),
        ("client_pubkey", EncryptionKeyPair.generate().public),
    ],
)
def test_each_wrong_aad_field_is_refused(field: str, value: Any) -> None:
    sealed = seal()
    with pytest.raises(SealingError) as info:
        open_as_executor(sealed, **{field: value})
    assert reason(info) == "decrypt_failed"


def test_wrong_recipient_is_refused() -> None:
    sealed = seal()
    with pytest.raises(SealingError) as info:
        open_as_executor(sealed, recipient=OTHER_EXECUTOR)
    assert reason(info) == "decrypt_failed"


def test_truncated_and_extended_envelopes_are_refused() -> None:
    sealed = seal(b"a payload")
    for n in range(len(sealed.envelope)):
        with pytest.raises(SealingError) as info:
            open_as_executor(sealed, sealed.envelope[:n])
        assert reason(info) == ("truncated" if n < ENVELOPE_OVERHEAD else "decrypt_failed")
    with pytest.raises(SealingError):
        open_as_executor(sealed, sealed.envelope + b"\x00")


def test_directions_do_not_mix() -> None:
    """A result can't be replayed as a job, a stream opening as a result, or a job as a result."""
    sealed = seal()
    opened = open_job(sealed.envelope, recipient=EXECUTOR, client_pubkey=sealed.client_keys.public, **BINDING)
    result = seal_result(opened.session, b"r" * 56)
    _, opening = StreamSealer.start(opened.session)
    with pytest.raises(SealingError):
        open_result(sealed.session, opening)
    with pytest.raises(SealingError):
        StreamOpener.start(sealed.session, result)
    with pytest.raises(SealingError):
        open_result(sealed.session, sealed.envelope)


def test_results_are_bound_to_their_job() -> None:
    first, second = seal(), seal()
    result = seal_result(first.session, b"answer")
    with pytest.raises(SealingError):
        open_result(second.session, result)
    other_binding = seal_job(
        b"x", recipient_pubkey=EXECUTOR.public, job_id=b"\x01" * 16, model_id=MODEL, deadline_ms=DEADLINE
    )
    forged_session = other_binding.session._replace(result_key=first.session.result_key, aads={})
    with pytest.raises(SealingError):  # right key, wrong binding in the AAD
        open_result(forged_session, result)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_public_keys_are_refused(point: bytes) -> None:
    with pytest.raises(SealingError) as info:
        seal_job(b"x", recipient_pubkey=point, **BINDING)
    assert reason(info) == "bad_public_key"
    with pytest.raises(SealingError) as info:
        open_job(seal().envelope, recipient=EXECUTOR, client_pubkey=point, **BINDING)
    assert reason(info) == "bad_public_key"


def test_argument_checks() -> None:
    with pytest.raises(SealingError):
        seal_job(b"x", recipient_pubkey=b"\x01" * 31, **BINDING)
    with pytest.raises(SealingError):
        seal_job(
            b"x", recipient_pubkey=EXECUTOR.public, job_id=b"short", model_id=MODEL, deadline_ms=DEADLINE
        )
    with pytest.raises(SealingError):
        seal_job(b"x", recipient_pubkey=EXECUTOR.public, job_id=JOB_ID, model_id="", deadline_ms=DEADLINE)
    with pytest.raises(SealingError):
        seal_job(b"x", recipient_pubkey=EXECUTOR.public, job_id=JOB_ID, model_id=MODEL, deadline_ms=True)
    with pytest.raises(SealingError):
        seal_job("text", recipient_pubkey=EXECUTOR.public, **BINDING)  # type: ignore[arg-type]
    with pytest.raises(SealingError) as info:
        seal_job(bytes(MAX_PLAINTEXT + 1), recipient_pubkey=EXECUTOR.public, **BINDING)
    assert reason(info) == "too_large"
    sealed = seal(b"v")
    assert open_as_executor(sealed, bytearray(sealed.envelope)) == b"v"  # type: ignore[arg-type]


def test_largest_payload_round_trips() -> None:
    sealed = seal(bytes(MAX_PLAINTEXT))
    assert len(open_as_executor(sealed)) == MAX_PLAINTEXT


def test_key_pairs() -> None:
    pair = EncryptionKeyPair.generate()
    assert EncryptionKeyPair.from_secret(pair.secret) == pair
    assert pair.secret.hex() not in repr(pair)
    with pytest.raises(SealingError):
        EncryptionKeyPair(secret=pair.secret, public=EXECUTOR.public)
    with pytest.raises(SealingError):
        EncryptionKeyPair.from_secret(b"\x00" * 31)
    assert "result_key" not in repr(seal().session)


@given(st.binary(max_size=120))
def test_open_job_on_arbitrary_bytes_raises_only_sealing_error(envelope: bytes) -> None:
    with pytest.raises(SealingError):
        open_job(envelope, recipient=EXECUTOR, client_pubkey=OTHER_EXECUTOR.public, **BINDING)


# --- streams --------------------------------------------------------------------------------------


def stream_pair(chunks: list[bytes]) -> tuple[StreamOpener, list[bytes]]:
    sealed = seal()
    opened = open_job(sealed.envelope, recipient=EXECUTOR, client_pubkey=sealed.client_keys.public, **BINDING)
    sealer, opening = StreamSealer.start(opened.session)
    wire = [sealer.push(c) for c in chunks[:-1]] + [sealer.final(chunks[-1])]
    assert sealer.finished
    return StreamOpener.start(sealed.session, opening), wire


CHUNKS = [b"first", b"second", b"third", b"last"]


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_stream_round_trip(chunks: list[bytes]) -> None:
    opener, wire = stream_pair(chunks)
    assert [opener.pull(c) for c in wire] == chunks
    assert opener.finished
    opener.close()


def test_stream_reordered_chunks_fail() -> None:
    opener, wire = stream_pair(CHUNKS)
    opener.pull(wire[0])
    with pytest.raises(SealingError) as info:
        opener.pull(wire[2])
    assert reason(info) == "bad_chunk"
    with pytest.raises(SealingError):  # stays failed, even for the chunk that would have been next
        opener.pull(wire[1])


def test_stream_dropped_chunk_fails() -> None:
    opener, wire = stream_pair(CHUNKS)
    with pytest.raises(SealingError) as info:
        opener.pull(wire[1])
    assert reason(info) == "bad_chunk"


def test_stream_replayed_chunk_fails() -> None:
    opener, wire = stream_pair(CHUNKS)
    opener.pull(wire[0])
    with pytest.raises(SealingError) as info:
        opener.pull(wire[0])
    assert reason(info) == "bad_chunk"


@pytest.mark.parametrize("keep", range(len(CHUNKS)))
def test_stream_truncated_before_final_fails_at_close(keep: int) -> None:
    opener, wire = stream_pair(CHUNKS)
    for chunk in wire[:keep]:
        opener.pull(chunk)
    assert not opener.finished
    with pytest.raises(SealingError) as info:
        opener.close()
    assert reason(info) == "truncated"


def test_stream_forged_chunks_fail_for_every_flipped_byte() -> None:
    key = b"\x07" * 32
    sealer = StreamSealer(key)
    wire = [sealer.push(c) for c in CHUNKS[:-1]] + [sealer.final(CHUNKS[-1])]
    for index, chunk in enumerate(wire):
        for i in range(len(chunk)):
            opener = StreamOpener(key, sealer.header)
            for good in wire[:index]:
                opener.pull(good)
            forged = bytearray(chunk)
            forged[i] ^= 0x01
            with pytest.raises(SealingError) as info:
                opener.pull(bytes(forged))
            assert reason(info) == "bad_chunk", (index, i)


def test_stream_flipped_bytes_in_one_stream() -> None:
    """The precise version: flip each byte of the second chunk of one given stream."""
    sealed = seal()
    opened = open_job(sealed.envelope, recipient=EXECUTOR, client_pubkey=sealed.client_keys.public, **BINDING)
    sealer, opening = StreamSealer.start(opened.session)
    first, second = sealer.push(b"one"), sealer.final(b"two")
    for i in range(len(second)):
        opener = StreamOpener.start(sealed.session, opening)
        assert opener.pull(first) == b"one"
        forged = bytearray(second)
        forged[i] ^= 0x10
        with pytest.raises(SealingError) as info:
            opener.pull(bytes(forged))
        assert reason(info) == "bad_chunk"
        with pytest.raises(SealingError):
            opener.close()


def test_stream_chunk_from_another_stream_fails() -> None:
    opener, _ = stream_pair(CHUNKS)
    _, other = stream_pair(CHUNKS)
    with pytest.raises(SealingError) as info:
        opener.pull(other[0])
    assert reason(info) == "bad_chunk"


def test_nothing_after_final() -> None:
    opener, wire = stream_pair(CHUNKS)
    for chunk in wire:
        opener.pull(chunk)
    with pytest.raises(SealingError) as info:
        opener.pull(wire[-1])
    assert reason(info) == "after_final"
    sealer = StreamSealer()
    sealer.final(b"")
    with pytest.raises(SealingError) as info:
        sealer.push(b"late")
    assert reason(info) == "finished"


def test_stream_limits_and_bad_chunks() -> None:
    sealer = StreamSealer()
    with pytest.raises(SealingError):
        sealer.push(bytes(MAX_STREAM_PLAINTEXT + 1))
    opener = StreamOpener(bytes(32), bytes(24))
    with pytest.raises(SealingError) as info:
        opener.pull(b"\x00" * 16)
    assert reason(info) == "bad_chunk"
    with pytest.raises(SealingError):
        StreamOpener(bytes(31), bytes(24))
    with pytest.raises(SealingError):
        StreamOpener(bytes(32), bytes(23))


def test_rekey_or_push_tags_are_refused() -> None:
    """Only MESSAGE and FINAL are part of our stream; a sender using other tags is refused."""
    sealer = StreamSealer(key=b"\x07" * 32)
    chunk = sodium.crypto_secretstream_xchacha20poly1305_push(
        sealer._state, b"x", None, sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY
    )
    opener = StreamOpener(b"\x07" * 32, sealer.header)
    with pytest.raises(SealingError) as info:
        opener.pull(chunk)
    assert reason(info) == "bad_tag"


def test_wrong_session_cannot_open_the_stream() -> None:
    sealed, other = seal(), seal()
    opened = open_job(sealed.envelope, recipient=EXECUTOR, client_pubkey=sealed.client_keys.public, **BINDING)
    _, opening = StreamSealer.start(opened.session)
    with pytest.raises(SealingError) as info:
        StreamOpener.start(other.session, opening)
    assert reason(info) == "decrypt_failed"


@given(st.lists(st.binary(max_size=60), min_size=1, max_size=4))
def test_stream_opener_on_arbitrary_chunks_raises_only_sealing_error(chunks: list[bytes]) -> None:
    opener = StreamOpener(b"\x07" * 32, b"\x01" * 24)
    with pytest.raises(SealingError):
        for chunk in chunks:
            opener.pull(chunk)
        opener.close()


# --- interoperability: docs/protocol/sealing.md re-implemented with raw primitives ----------------


def test_envelopes_match_the_documented_construction() -> None:
    sealed = seal(b"documented")
    c_pk, e_pk = sealed.client_keys.public, EXECUTOR.public
    shared = sodium.crypto_scalarmult(EXECUTOR.secret, c_pk)
    k_session = hashlib.blake2b(
        b"veilnet/seal/v2/session\x00" + c_pk + e_pk, key=shared, digest_size=32
    ).digest()
    k_job = hashlib.blake2b(b"veilnet/seal/v2/job\x00" + JOB_ID, key=k_session, digest_size=32).digest()
    k_result = hashlib.blake2b(b"veilnet/seal/v2/result\x00" + JOB_ID, key=k_session, digest_size=32).digest()

    def aad(direction: str) -> bytes:
        return encode(
            {
                "v": 1,
                "dir": direction,
                "job_id": JOB_ID,
                "model_id": MODEL,
                "client_pubkey": c_pk,
                "executor_pubkey": e_pk,
                "deadline_ms": DEADLINE,
            }
        )

    nonce, body = sealed.envelope[:24], sealed.envelope[24:]
    assert sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(body, aad("job"), nonce, k_job) == b"documented"
    result = seal_result(sealed.session, b"answer")
    plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        result[24:], aad("result"), result[:24], k_result
    )
    assert plain == b"answer"
    # and an envelope built by hand from the page opens with the library
    mine_nonce = b"\x09" * 24
    mine = mine_nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        b"hand made", aad("result"), mine_nonce, k_result
    )
    assert open_result(sealed.session, mine) == b"hand made"
    # stream opening: key ‖ header under k_result, dir "stream"; chunks are plain secretstream
    sealer, opening = StreamSealer.start(sealed.session)
    assert len(opening) == 96
    secret = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        opening[24:], aad("stream"), opening[:24], k_result
    )
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, secret[32:], secret[:32])
    assert sodium.crypto_secretstream_xchacha20poly1305_pull(state, sealer.push(b"c1"), None) == (b"c1", 0)
    assert sodium.crypto_secretstream_xchacha20poly1305_pull(state, sealer.final(b""), None) == (b"", 3)


# --- sessions: one client key for many jobs, every job its own keys ------------------------------


def test_jobs_of_one_session_share_the_client_key_but_not_their_keys() -> None:
    ring = ClientKeys(max_jobs=3)
    first = seal_job(b"one", recipient_pubkey=EXECUTOR.public, client_keys=ring, **BINDING)
    other_id = {**BINDING, "job_id": bytes(reversed(JOB_ID))}
    second = seal_job(b"two", recipient_pubkey=EXECUTOR.public, client_keys=ring, **other_id)
    assert first.client_keys.public == second.client_keys.public
    assert first.session.result_key != second.session.result_key  # per-job keys from the job id
    assert first.envelope[:24] != second.envelope[:24]  # fresh random nonces
    assert open_as_executor(first) == b"one"
    assert open_as_executor(second, **other_id) == b"two"
    # an envelope of one job does not open as another job of the same session
    with pytest.raises(SealingError) as exc:
        open_as_executor(first, envelope=second.envelope)
    assert reason(exc) == "decrypt_failed"
    third = seal_job(b"3", recipient_pubkey=EXECUTOR.public, client_keys=ring, **BINDING)
    fourth = seal_job(b"4", recipient_pubkey=EXECUTOR.public, client_keys=ring, **BINDING)
    assert third.client_keys.public == first.client_keys.public
    assert fourth.client_keys.public != first.client_keys.public  # max_jobs reached: a new key
    other = seal_job(b"5", recipient_pubkey=OTHER_EXECUTOR.public, client_keys=ring, **BINDING)
    assert other.client_keys.public not in (first.client_keys.public, fourth.client_keys.public)


def test_a_version_1_envelope_is_refused() -> None:
    """The v1 derivation (keys from the shared secret and both public keys, no session or job id)
    no longer opens: an old client's job fails with decrypt_failed, never opens under other keys."""
    client = EncryptionKeyPair.generate()
    c_pk, e_pk = client.public, EXECUTOR.public
    shared = sodium.crypto_scalarmult(client.secret, e_pk)
    k_job_v1 = hashlib.blake2b(b"veilnet/seal/v1/job\x00" + c_pk + e_pk, key=shared, digest_size=32).digest()
    aad = encode(
        {"v": 1, "dir": "job", "job_id": JOB_ID, "model_id": MODEL, "client_pubkey": c_pk,
         "executor_pubkey": e_pk, "deadline_ms": DEADLINE}
    )
    nonce = b"\x05" * 24
    envelope = nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(b"old", aad, nonce, k_job_v1)
    with pytest.raises(SealingError) as exc:
        open_job(envelope, recipient=EXECUTOR, client_pubkey=c_pk, **BINDING)
    assert reason(exc) == "decrypt_failed"


def test_client_keys_limits_are_validated() -> None:
    with pytest.raises(SealingError):
        ClientKeys(max_jobs=0)


@given(st.binary(min_size=16, max_size=16), st.text(min_size=1, max_size=40), st.integers(0, 2**63 - 1))
def test_the_aad_is_the_canonical_encoding_of_the_binding(
    job_id: bytes, model_id: str, deadline: int
) -> None:
    binding = JobBinding(job_id, model_id, deadline)
    expected = encode(
        {"v": 1, "dir": "result", "job_id": job_id, "model_id": model_id, "client_pubkey": b"c" * 32,
         "executor_pubkey": b"e" * 32, "deadline_ms": deadline}
    )
    assert job_aad(binding, b"c" * 32, b"e" * 32, "result") == expected
