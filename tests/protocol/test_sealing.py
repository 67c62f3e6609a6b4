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
    NONCE_LEN,
    ClientKeys,
    EncryptionKeyPair,
    Envelope,
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


def open_as_executor(sealed: SealedJob, envelope: Any = None, **changes: Any) -> bytes:
    kwargs: dict[str, Any] = {"recipient": EXECUTOR, "client_pubkey": sealed.client_keys.public, **BINDING}
    kwargs.update(changes)
    return open_job(sealed.envelope if envelope is None else envelope, **kwargs).payload


def reason(exc: pytest.ExceptionInfo[SealingError]) -> str:
    return exc.value.reason


def flipped(envelope: Envelope, bit: int) -> list[Envelope]:
    """The envelope with one bit flipped, for each byte of its nonce and of its ciphertext."""
    out = []
    for i in range(len(envelope.nonce)):
        nonce = bytearray(envelope.nonce)
        nonce[i] ^= bit
        out.append(Envelope(bytes(nonce), envelope.ciphertext))
    for i in range(len(envelope.ciphertext)):
        body = bytearray(envelope.ciphertext)
        body[i] ^= bit
        out.append(Envelope(envelope.nonce, bytes(body)))
    return out


# --- envelopes ------------------------------------------------------------------------------------


@given(st.binary(max_size=2048))
def test_job_and_result_round_trip(payload: bytes) -> None:
    sealed = seal(payload)
    assert isinstance(sealed.envelope, Envelope)
    assert len(sealed.envelope.nonce) == NONCE_LEN
    assert len(sealed.envelope.ciphertext) == len(payload) + ENVELOPE_OVERHEAD == len(payload) + 16
    opened = open_job(sealed.envelope, recipient=EXECUTOR, client_pubkey=sealed.client_keys.public, **BINDING)
    assert opened.payload == payload
    assert opened.session == sealed.session  # both ends derive the same result key and binding
    assert open_result(sealed.session, seal_result(opened.session, payload[::-1])) == payload[::-1]


def test_every_envelope_is_fresh() -> None:
    a, b = seal(), seal()
    assert a.client_keys.public != b.client_keys.public
    assert a.envelope.nonce != b.envelope.nonce
    assert a.session.result_key != b.session.result_key
    opened = open_job(a.envelope, recipient=EXECUTOR, client_pubkey=a.client_keys.public, **BINDING)
    r1, r2 = seal_result(opened.session, b"same"), seal_result(opened.session, b"same")
    assert r1.nonce != r2.nonce and r1.ciphertext != r2.ciphertext


def test_aad_is_the_canonical_binding() -> None:
    aad = job_aad(JobBinding.checked(JOB_ID, MODEL, DEADLINE), b"\x01" * 32, b"\x02" * 32, "job")
    assert decode(aad) == {
        "client_pubkey": b"\x01" * 32,
        "deadline_ms": DEADLINE,
        "dir": "job",
        "executor_pubkey": b"\x02" * 32,
        "job_id": JOB_ID,
        "model_id": MODEL,
        "v": 2,
    }


def test_each_flipped_byte_of_an_envelope_is_refused() -> None:
    sealed = seal(b"tiny")
    for bit in (0x01, 0x80):
        for i, tampered in enumerate(flipped(sealed.envelope, bit)):
            with pytest.raises(SealingError) as info:
                open_as_executor(sealed, tampered)
            assert reason(info) == "decrypt_failed", i


def test_each_flipped_byte_of_a_result_envelope_is_refused() -> None:
    sealed = seal()
    envelope = seal_result(sealed.session, b"result")
    for tampered in flipped(envelope, 0x04):
        with pytest.raises(SealingError) as info:
            open_result(sealed.session, tampered)
        assert reason(info) == "decrypt_failed"


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
    nonce, body = sealed.envelope
    for n in range(len(body)):
        with pytest.raises(SealingError) as info:
            open_as_executor(sealed, Envelope(nonce, body[:n]))
        assert reason(info) == ("truncated" if n < ENVELOPE_OVERHEAD else "decrypt_failed")
    with pytest.raises(SealingError) as info:
        open_as_executor(sealed, Envelope(nonce, body + b"\x00"))
    assert reason(info) == "decrypt_failed"
    for bad_nonce in (nonce[:-1], nonce + b"\x00", b""):
        with pytest.raises(SealingError) as info:
            open_as_executor(sealed, Envelope(bad_nonce, body))
        assert reason(info) == "bad_nonce"
    with pytest.raises(SealingError) as info:
        open_as_executor(sealed, Envelope(nonce, bytes(MAX_PLAINTEXT + ENVELOPE_OVERHEAD + 1)))
    assert reason(info) == "too_large"


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
    nonce, body = sealed.envelope
    assert open_as_executor(sealed, (bytearray(nonce), memoryview(body))) == b"v"
    for not_a_pair in (nonce + body, "ab", (nonce,), (nonce, body, b""), (nonce, "text"), 42):
        with pytest.raises(SealingError) as info:
            open_as_executor(sealed, not_a_pair)
        assert reason(info) == "bad_argument", not_a_pair


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


@given(st.binary(max_size=40), st.binary(max_size=120))
def test_open_job_on_arbitrary_bytes_raises_only_sealing_error(nonce: bytes, body: bytes) -> None:
    with pytest.raises(SealingError):
        open_job(Envelope(nonce, body), recipient=EXECUTOR, client_pubkey=OTHER_EXECUTOR.public, **BINDING)


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


def documented_keys(c_pk: bytes, e_pk: bytes, shared: bytes, job_id: bytes = JOB_ID) -> tuple[bytes, bytes]:
    """(k_job, k_result) exactly as docs/protocol/sealing.md gives them (hashlib, not the library)."""
    k_session = hashlib.blake2b(
        b"veilnet/seal/v3/session\x00" + c_pk + e_pk, key=shared, digest_size=32
    ).digest()
    keys = hashlib.blake2b(b"veilnet/seal/v3/job\x00" + job_id, key=k_session, digest_size=64).digest()
    return keys[:32], keys[32:]


def documented_aad(direction: str, c_pk: bytes, e_pk: bytes, version: int = 2) -> bytes:
    return encode(
        {
            "v": version,
            "dir": direction,
            "job_id": JOB_ID,
            "model_id": MODEL,
            "client_pubkey": c_pk,
            "executor_pubkey": e_pk,
            "deadline_ms": DEADLINE,
        }
    )


def test_envelopes_match_the_documented_construction() -> None:
    sealed = seal(b"documented")
    c_pk, e_pk = sealed.client_keys.public, EXECUTOR.public
    k_job, k_result = documented_keys(c_pk, e_pk, sodium.crypto_scalarmult(EXECUTOR.secret, c_pk))

    def aad(direction: str) -> bytes:
        return documented_aad(direction, c_pk, e_pk)

    nonce, body = sealed.envelope
    assert sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(body, aad("job"), nonce, k_job) == b"documented"
    result = seal_result(sealed.session, b"answer")
    plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        result.ciphertext, aad("result"), result.nonce, k_result
    )
    assert plain == b"answer"
    # and an envelope built by hand from the page opens with the library
    mine_nonce = b"\x09" * 24
    mine = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        b"hand made", aad("result"), mine_nonce, k_result
    )
    assert open_result(sealed.session, (mine_nonce, mine)) == b"hand made"
    # stream opening: key ‖ header under k_result, dir "stream"; chunks are plain secretstream
    sealer, opening = StreamSealer.start(sealed.session)
    assert (len(opening.nonce), len(opening.ciphertext)) == (24, 72)
    secret = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        opening.ciphertext, aad("stream"), opening.nonce, k_result
    )
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, secret[32:], secret[:32])
    assert sodium.crypto_secretstream_xchacha20poly1305_pull(state, sealer.push(b"c1"), None) == (b"c1", 0)
    assert sodium.crypto_secretstream_xchacha20poly1305_pull(state, sealer.final(b""), None) == (b"", 3)


# Test vector (docs/protocol/sealing.md): fixed keys, job, nonces → the exact bytes on the wire.
VECTOR_CLIENT = EncryptionKeyPair.from_secret(bytes(range(32, 64)))
VECTOR = {
    "client_pubkey": "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254",
    "executor_pubkey": "132c442be010fbd57e72603328aa76e71fccc1503aae219327d14d9c9993f472",
    "k_job": "deac6bd97a2601e8541da8bc5950ac0550a2c710cc91d56ac47530445dccd831",
    "k_result": "ae0126b2d8100f4bc66ef2dec931cf01cfd0cf7a5a113fefb805d625dffacd49",
    "aad_job": (
        "87ad636c69656e745f7075626b6579c420358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd1662"
        "54ab646561646c696e655f6d73cf000001a3185c5000a3646972a36a6f62af6578656375746f725f7075626b6579c420"
        "132c442be010fbd57e72603328aa76e71fccc1503aae219327d14d9c9993f472a66a6f625f6964c41000010203040506"
        "0708090a0b0c0d0e0fa86d6f64656c5f6964d949766e2d6d6f64656c3a63646364636463646364636463646364636463"
        "646364636463646364636463646364636463646364636463646364636463646364636463646364636463646364a17602"
    ),
    # input_nonce = 09 × 24, plaintext "veilnet job vector"
    "sealed_input": "4a9a1c4e7fef21fed28561b8dbacc23e4b8c480e3ce88f3bbf04be2060252a16276c",
    # result_nonce = 0a × 24, plaintext "veilnet result vector"
    "sealed_result": "33945407e4f0c95b01070af9db3fc26c2c3e6d509aa84c906d75f4617bd0685d3c7672f554",
}


def test_the_test_vector() -> None:
    c_pk, e_pk = VECTOR_CLIENT.public, EXECUTOR.public
    assert (c_pk.hex(), e_pk.hex()) == (VECTOR["client_pubkey"], VECTOR["executor_pubkey"])
    k_job, k_result = documented_keys(c_pk, e_pk, sodium.crypto_scalarmult(VECTOR_CLIENT.secret, e_pk))
    assert (k_job.hex(), k_result.hex()) == (VECTOR["k_job"], VECTOR["k_result"])
    aad = job_aad(JobBinding.checked(JOB_ID, MODEL, DEADLINE), c_pk, e_pk, "job")
    assert aad.hex() == documented_aad("job", c_pk, e_pk).hex() == VECTOR["aad_job"]
    sealed_input = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        b"veilnet job vector", aad, b"\x09" * 24, k_job
    )
    assert sealed_input.hex() == VECTOR["sealed_input"]
    # the library opens the vector's envelopes, on both sides
    opened = open_job(
        Envelope(b"\x09" * 24, bytes.fromhex(VECTOR["sealed_input"])), recipient=EXECUTOR, client_pubkey=c_pk,
        **BINDING,
    )
    assert opened.payload == b"veilnet job vector"
    assert opened.session.result_key.hex() == VECTOR["k_result"]
    sealed = seal_job(b"x", recipient_pubkey=e_pk, client_keys=VECTOR_CLIENT, **BINDING)
    result = Envelope(b"\x0a" * 24, bytes.fromhex(VECTOR["sealed_result"]))
    assert open_result(sealed.session, result) == b"veilnet result vector"
    assert open_result(opened.session, result) == b"veilnet result vector"


# --- sessions: one client key for many jobs, every job its own keys ------------------------------


def test_jobs_of_one_session_share_the_client_key_but_not_their_keys() -> None:
    ring = ClientKeys(max_jobs=3)
    first = seal_job(b"one", recipient_pubkey=EXECUTOR.public, client_keys=ring, **BINDING)
    other_id = {**BINDING, "job_id": bytes(reversed(JOB_ID))}
    second = seal_job(b"two", recipient_pubkey=EXECUTOR.public, client_keys=ring, **other_id)
    assert first.client_keys.public == second.client_keys.public
    assert first.session.result_key != second.session.result_key  # per-job keys from the job id
    assert first.envelope.nonce != second.envelope.nonce  # fresh random nonces
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
    with pytest.raises(SealingError) as exc:  # as it came: one blob, not a (nonce, ciphertext) pair
        open_job(envelope, recipient=EXECUTOR, client_pubkey=c_pk, **BINDING)  # type: ignore[arg-type]
    assert reason(exc) == "bad_argument"
    with pytest.raises(SealingError) as exc:  # split as version 3 carries it: other keys, other AAD
        open_job(Envelope(envelope[:24], envelope[24:]), recipient=EXECUTOR, client_pubkey=c_pk, **BINDING)
    assert reason(exc) == "decrypt_failed"


def test_a_version_2_envelope_is_refused() -> None:
    """Version 2 (nonce ‖ ciphertext in one field, k_job and k_result from two BLAKE2b-256 under
    the v2 labels, AAD "v": 1) does not open either way it could arrive."""
    client = EncryptionKeyPair.generate()
    c_pk, e_pk = client.public, EXECUTOR.public
    shared = sodium.crypto_scalarmult(client.secret, e_pk)
    k_session = hashlib.blake2b(
        b"veilnet/seal/v2/session\x00" + c_pk + e_pk, key=shared, digest_size=32
    ).digest()
    k_job_v2 = hashlib.blake2b(b"veilnet/seal/v2/job\x00" + JOB_ID, key=k_session, digest_size=32).digest()
    nonce = b"\x06" * 24
    envelope = nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        b"old", documented_aad("job", c_pk, e_pk, version=1), nonce, k_job_v2
    )
    with pytest.raises(SealingError) as exc:
        open_job(envelope, recipient=EXECUTOR, client_pubkey=c_pk, **BINDING)  # type: ignore[arg-type]
    assert reason(exc) == "bad_argument"
    with pytest.raises(SealingError) as exc:
        open_job(Envelope(envelope[:24], envelope[24:]), recipient=EXECUTOR, client_pubkey=c_pk, **BINDING)
    assert reason(exc) == "decrypt_failed"
    # nor does a v2 AAD under the v3 keys: the binding names its version
    k_job, _ = documented_keys(c_pk, e_pk, shared)
    body = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        b"old", documented_aad("job", c_pk, e_pk, version=1), nonce, k_job
    )
    with pytest.raises(SealingError) as exc:
        open_job(Envelope(nonce, body), recipient=EXECUTOR, client_pubkey=c_pk, **BINDING)
    assert reason(exc) == "decrypt_failed"


def test_client_keys_limits_are_validated() -> None:
    with pytest.raises(SealingError):
        ClientKeys(max_jobs=0)


@given(
    st.binary(min_size=16, max_size=16),
    st.text(min_size=1, max_size=128),
    st.integers(0, 2**64 - 1),
    st.sampled_from(["job", "result", "stream"]) | st.text(max_size=40),
)
def test_the_aad_is_the_canonical_encoding_of_the_binding(
    job_id: bytes, model_id: str, deadline: int, direction: str
) -> None:
    binding = JobBinding.checked(job_id, model_id, deadline)
    expected = encode(
        {"v": 2, "dir": direction, "job_id": job_id, "model_id": model_id, "client_pubkey": b"c" * 32,
         "executor_pubkey": b"e" * 32, "deadline_ms": deadline}
    )
    assert job_aad(binding, b"c" * 32, b"e" * 32, direction) == expected


def test_binding_checks() -> None:
    for job_id, model_id, deadline in (
        (JOB_ID[:-1], MODEL, DEADLINE), (bytearray(JOB_ID), MODEL, DEADLINE), (JOB_ID, "", DEADLINE),
        (JOB_ID, "m" * 129, DEADLINE), (JOB_ID, b"model", DEADLINE), (JOB_ID, MODEL, -1),
        (JOB_ID, MODEL, True), (JOB_ID, MODEL, 1.0), (JOB_ID, MODEL, "1"),
    ):
        with pytest.raises(SealingError) as info:
            JobBinding.checked(job_id, model_id, deadline)
        assert reason(info) == "bad_argument"
    with pytest.raises(SealingError):
        job_aad(JobBinding.checked(JOB_ID, MODEL, DEADLINE), b"c" * 31, b"e" * 32, "job")
    with pytest.raises(SealingError):
        job_aad(JobBinding.checked(JOB_ID, MODEL, DEADLINE), b"c" * 32, b"e" * 32, 1)  # type: ignore[arg-type]
