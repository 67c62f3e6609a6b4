"""Wire messages: round trips, validation on decode, versions, signatures, framing."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import encode
from protocol.identity import Domain, Identity
from protocol.jobs.framing import encode_frame
from protocol.jobs.messages import (
    MAX_ERROR_MESSAGE,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    PROTOCOL_VERSION,
    ChallengeRequest,
    ChallengeResponse,
    Commitment,
    ErrorCode,
    ErrorMessage,
    JobRequest,
    Message,
    MessageError,
    Mode,
    Reveal,
    RevealRequest,
    StreamChunk,
    Task,
    commitment_hash,
    decode_message,
    result_digest,
    result_hasher,
)
from tests.conftest import decoder_settings
from tests.protocol.test_codec import mutate, mutations

ALICE = Identity(b"\x01" * 32)
BOB = Identity(b"\x02" * 32)
JOB_ID = bytes(range(16))
SALT = b"\x5a" * 32
DIGEST = result_digest(b"the result")
SEAL_NONCE = b"\x24" * 24  # an envelope's nonce (protocol.sealing)
SEALED = b"ciphertext-and-tag"  # at least the 16-byte tag

# --- strategies -----------------------------------------------------------------------------------

job_ids = st.binary(min_size=16, max_size=16)
keys32 = st.binary(min_size=32, max_size=32)
timestamps = st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS)
timings = st.integers(0, 7 * 24 * 3600 * 1000)
model_ids = st.from_regex(r"\A(vn-model:[0-9a-f]{1,64}|[A-Za-z0-9][A-Za-z0-9:._/+-]{0,100})\Z")
identities = st.sampled_from([ALICE, BOB])

job_requests = st.builds(
    JobRequest,
    job_id=job_ids,
    model_id=model_ids,
    task=st.sampled_from(Task),
    deadline_ms=timestamps,
    client_pubkey=keys32,
    executor_enc_pubkey=keys32,
    input_nonce=st.binary(min_size=24, max_size=24),
    sealed_input=st.binary(min_size=16, max_size=200),
    mode=st.sampled_from(Mode),
    stream=st.booleans(),
)
commitments = st.builds(
    Commitment.create,
    identities,
    job_id=job_ids,
    salt=keys32,
    result_digest=keys32,
    queue_ms=timings,
    compute_ms=timings,
)
reveals = st.builds(
    Reveal.create,
    identities,
    job_id=job_ids,
    salt=keys32,
    result_digest=keys32,
    result_nonce=st.binary(min_size=24, max_size=24),
    sealed_result=st.binary(min_size=16, max_size=200),
)
errors = st.builds(
    ErrorMessage,
    code=st.sampled_from(ErrorCode),
    message=st.text(max_size=MAX_ERROR_MESSAGE),
    job_id=st.none() | job_ids,
)
challenge_requests = st.builds(ChallengeRequest, nonce=keys32, job_id=st.none() | job_ids)
challenge_responses = st.builds(
    ChallengeResponse.create,
    identities,
    nonce=keys32,
    kind=st.sampled_from(["simulated", "tdx", "sev-snp", "nvidia-gpu"]),
    evidence=st.binary(max_size=200),
)
messages: st.SearchStrategy[Message] = st.one_of(
    job_requests,
    commitments,
    st.builds(RevealRequest, job_id=job_ids),
    reveals,
    st.builds(
        StreamChunk, job_id=job_ids, data=st.binary(max_size=100),
        opening_nonce=st.none() | st.binary(min_size=24, max_size=24),
    ),
    errors,
    challenge_requests,
    challenge_responses,
)


def a_job_request(**changes: Any) -> JobRequest:
    fields: dict[str, Any] = {
        "job_id": JOB_ID,
        "model_id": "vn-model:" + "ab" * 32,
        "task": Task.EMBEDDINGS,
        "deadline_ms": 1_800_000_000_000,
        "client_pubkey": b"\x11" * 32,
        "executor_enc_pubkey": b"\x22" * 32,
        "input_nonce": SEAL_NONCE,
        "sealed_input": SEALED,
        "mode": Mode.CONSENSUS,
        "stream": False,
    }
    fields.update(changes)
    return JobRequest(**fields)


def a_commitment() -> Commitment:
    return Commitment.create(ALICE, job_id=JOB_ID, salt=SALT, result_digest=DIGEST, queue_ms=3, compute_ms=40)


def a_reveal(identity: Identity = ALICE, **changes: Any) -> Reveal:
    fields: dict[str, Any] = {
        "job_id": JOB_ID, "salt": SALT, "result_digest": DIGEST, "result_nonce": SEAL_NONCE,
        "sealed_result": SEALED,
    }
    fields.update(changes)
    return Reveal.create(identity, **fields)


def raw_map(message: Message) -> dict[str, Any]:
    return message.to_map()


def error_of(data: bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode_message(data)
    return info.value


# --- round trips ----------------------------------------------------------------------------------


@given(messages)
def test_round_trip(message: Message) -> None:
    data = message.to_wire()
    assert decode_message(data) == message
    assert type(message).from_wire(data) == message
    assert decode_message(data).to_wire() == data


@given(st.one_of(commitments, reveals, challenge_responses))
def test_signed_messages_verify_after_round_trip(message: Commitment | Reveal | ChallengeResponse) -> None:
    back = decode_message(message.to_wire())
    assert isinstance(back, (Commitment, Reveal, ChallengeResponse))
    back.verify()
    back.verify(message.peer_id)


def test_wire_map_has_version_and_tag_and_omits_absent_optionals() -> None:
    m = msgpack.unpackb(ErrorMessage(code=ErrorCode.BUSY, message="try later").to_wire())
    assert m == {"v": 2, "t": "error", "code": "busy", "message": "try later"}
    assert PROTOCOL_VERSION == 2
    m = msgpack.unpackb(a_job_request().to_wire())
    assert m["v"] == 2 and m["t"] == "job_request" and m["task"] == "embeddings" and m["mode"] == "consensus"


def test_enums_are_normalised_from_plain_strings() -> None:
    request = a_job_request(task="chat", mode="spot-check")
    assert request.task is Task.CHAT and request.mode is Mode.SPOT_CHECK
    assert ErrorMessage(code="replay", message="").code is ErrorCode.REPLAY  # type: ignore[arg-type]


def test_all_error_codes_are_known() -> None:
    assert {c.value for c in ErrorCode} == {
        "busy", "expired", "bad_request", "replay", "unknown_model", "wrong_key", "decrypt_failed",
        "internal", "not_executor", "too_large", "rate_limited",
    }  # fmt: skip


# --- header: version and type ---------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 3, 255, -1, "2", True, b"\x02"])
def test_unknown_versions_are_refused_clearly(version: Any) -> None:
    m = raw_map(a_job_request())
    m["v"] = version
    err = error_of(encode(m))
    assert err.reason == "unsupported_version"
    assert "this node speaks 2" in str(err)


def test_missing_version_or_type() -> None:
    for key in ("v", "t"):
        m = raw_map(a_job_request())
        del m[key]
        err = error_of(encode(m))
        assert (err.reason, err.detail) == ("missing_field", key)


@pytest.mark.parametrize("tag", ["bundle", "", "JOB_REQUEST", 7, b"job_request"])
def test_unknown_types_are_refused(tag: Any) -> None:
    m = raw_map(a_job_request())
    m["t"] = tag
    assert error_of(encode(m)).reason == "unknown_type"


def test_from_wire_of_the_wrong_class() -> None:
    with pytest.raises(MessageError) as info:
        Commitment.from_wire(a_job_request().to_wire())
    assert info.value.reason == "unexpected_type"


def test_codec_errors_become_message_errors() -> None:
    for data in (b"", b"\xc1", encode({"v": 1}) + b"\x00", encode({"b": 1})[:-1]):
        err = error_of(data)
        assert err.reason == "malformed"
        assert isinstance(err, ValueError)
    assert error_of(encode([1, 2])).reason == "malformed"  # arrays are outside message limits
    assert error_of(encode(5)).reason == "not_a_map"
    assert error_of(encode({"v": 1, "t": "error", "x": {"deep": 1}})).reason == "malformed"


# --- fields ---------------------------------------------------------------------------------------


def test_unknown_missing_and_nil_fields() -> None:
    m = raw_map(a_job_request())
    m["extra"] = 1
    assert error_of(encode(m)).reason == "unknown_field"
    required = (
        "job_id", "model_id", "task", "deadline_ms", "client_pubkey", "input_nonce", "sealed_input", "stream",
    )
    for name in required:
        m = raw_map(a_job_request())
        del m[name]
        err = error_of(encode(m))
        assert (err.reason, err.detail) == ("missing_field", name)
    m = raw_map(ErrorMessage(code=ErrorCode.BUSY, message=""))
    m["job_id"] = None
    assert error_of(encode(m)).reason == "bad_field"


BAD_JOB_FIELDS: list[tuple[str, Any]] = [
    ("job_id", b"\x00" * 15),
    ("job_id", b"\x00" * 17),
    ("job_id", "0" * 16),
    ("model_id", ""),
    ("model_id", "x" * 129),
    ("model_id", "has space"),
    ("model_id", "-leading-dash"),
    ("model_id", "ünïcode"),
    ("model_id", b"vn-model:ab"),
    ("task", "translate"),
    ("task", 1),
    ("deadline_ms", MIN_TIMESTAMP_MS - 1),
    ("deadline_ms", MAX_TIMESTAMP_MS + 1),
    ("deadline_ms", -1),
    ("deadline_ms", True),
    ("deadline_ms", "1800000000000"),
    ("client_pubkey", b"\x00" * 31),
    ("executor_enc_pubkey", b"\x00" * 33),
    ("input_nonce", b"\x00" * 23),
    ("input_nonce", b"\x00" * 25),
    ("input_nonce", "n" * 24),
    ("sealed_input", "text"),
    ("sealed_input", b"\x00" * 15),
    ("mode", "majority"),
    ("stream", 1),
    ("stream", b"\x01"),
]


@pytest.mark.parametrize(("name", "value"), BAD_JOB_FIELDS)
def test_job_request_fields_are_validated_on_decode_and_construction(name: str, value: Any) -> None:
    m = raw_map(a_job_request())
    m[name] = value
    err = error_of(encode(m))
    assert err.reason == "bad_field" and err.detail.startswith(name)
    with pytest.raises(MessageError):
        a_job_request(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("peer_id", b"\x00" * 38),
        ("peer_id", ALICE.peer_id[:-1]),
        ("commitment", b"\x00" * 31),
        ("queue_ms", -1),
        ("compute_ms", 7 * 24 * 3600 * 1000 + 1),
        ("sig", b"\x00" * 63),
    ],
)
def test_commitment_fields_are_validated(name: str, value: Any) -> None:
    m = raw_map(a_commitment())
    m[name] = value
    assert error_of(encode(m)).reason == "bad_field"


def test_other_field_limits() -> None:
    with pytest.raises(MessageError):
        ErrorMessage(code=ErrorCode.INTERNAL, message="x" * (MAX_ERROR_MESSAGE + 1))
    with pytest.raises(MessageError):
        ErrorMessage(code="teapot", message="")  # type: ignore[arg-type]
    with pytest.raises(MessageError):
        ChallengeRequest(nonce=b"\x00" * 16)
    with pytest.raises(MessageError):
        ChallengeResponse.create(ALICE, nonce=b"\x00" * 32, kind="Not A Kind", evidence=b"")
    with pytest.raises(MessageError):
        StreamChunk(job_id=JOB_ID, data=b"\x00" * ((1 << 20) + 18))
    with pytest.raises(MessageError):
        StreamChunk(job_id=JOB_ID, data=b"", opening_nonce=b"\x00" * 32)
    with pytest.raises(MessageError):
        a_reveal(salt=b"short")
    too_long = b"\x00" * ((4 << 20) + 1)
    for nonce, sealed in ((b"\x00" * 23, SEALED), (SEAL_NONCE, b"\x00" * 15), (SEAL_NONCE, too_long)):
        with pytest.raises(MessageError) as info:
            a_reveal(result_nonce=nonce, sealed_result=sealed)
        assert info.value.reason == "bad_field"


def test_error_message_at_its_limit_in_multibyte_characters_fits_the_codec() -> None:
    message = ErrorMessage(code=ErrorCode.INTERNAL, message="😀" * MAX_ERROR_MESSAGE)
    assert decode_message(message.to_wire()) == message


def test_check_deadline() -> None:
    request = a_job_request(deadline_ms=1_800_000_010_000)
    request.check_deadline(now_ms=1_800_000_000_000, max_ahead_ms=60_000)
    for now, reason in (
        (1_800_000_010_000, "expired"),
        (1_800_000_020_000, "expired"),
        (1_799_000_000_000, "deadline_too_far"),
    ):
        with pytest.raises(MessageError) as info:
            request.check_deadline(now_ms=now, max_ahead_ms=60_000)
        assert info.value.reason == reason


# --- signatures -----------------------------------------------------------------------------------


def signed_examples() -> list[Commitment | Reveal | ChallengeResponse]:
    return [
        a_commitment(),
        a_reveal(),
        ChallengeResponse.create(ALICE, nonce=b"\x07" * 32, kind="simulated", evidence=b"evidence"),
    ]


@pytest.mark.parametrize("message", signed_examples(), ids=lambda m: m.TAG)
def test_every_field_is_covered_by_the_signature(message: Commitment | Reveal | ChallengeResponse) -> None:
    message.verify(ALICE.peer_id)
    for f in dataclasses.fields(message):
        if f.name in ("sig", "peer_id"):
            continue
        value = getattr(message, f.name)
        changed: Any
        if isinstance(value, bytes):
            changed = bytes([value[0] ^ 1]) + value[1:] if value else b"\x00"
        elif isinstance(value, int):
            changed = value + 1
        else:
            changed = "x" + value
        tampered = dataclasses.replace(message, **{f.name: changed})
        with pytest.raises(MessageError) as info:
            tampered.verify()
        assert info.value.reason == "bad_signature", f.name


@pytest.mark.parametrize("message", signed_examples(), ids=lambda m: m.TAG)
def test_signature_by_someone_else(message: Commitment | Reveal | ChallengeResponse) -> None:
    with pytest.raises(MessageError) as info:
        message.verify(BOB.peer_id)
    assert info.value.reason == "wrong_signer"
    claimed = dataclasses.replace(message, peer_id=BOB.peer_id)  # Alice's signature, Bob's name
    with pytest.raises(MessageError) as info:
        claimed.verify()
    assert info.value.reason == "bad_signature"
    for i in (0, 31, 63):
        sig = bytearray(message.sig)
        sig[i] ^= 0x40
        with pytest.raises(MessageError):
            dataclasses.replace(message, sig=bytes(sig)).verify()


def test_signatures_use_the_message_domain() -> None:
    c = a_commitment()
    assert ALICE.sign(Domain.COMMITMENT, c.signed_body()) == c.sig
    assert b"sig" not in msgpack.unpackb(c.signed_body())
    # a reveal signature can't be passed off as a commitment's even over identical bytes
    forged = dataclasses.replace(c, sig=ALICE.sign(Domain.REVEAL, c.signed_body()))
    with pytest.raises(MessageError):
        forged.verify()


# --- commit / reveal ------------------------------------------------------------------------------


def test_commitment_hash_layout() -> None:
    expected = hashlib.sha256(b"veilnet/commit/v1" + JOB_ID + ALICE.peer_id + SALT + DIGEST).digest()
    assert commitment_hash(JOB_ID, ALICE.peer_id, SALT, DIGEST) == expected
    assert a_commitment().commitment == expected
    with pytest.raises(MessageError):
        commitment_hash(JOB_ID, ALICE.peer_id, SALT[:-1], DIGEST)


def test_result_digest_layout_and_incremental_hasher() -> None:
    assert result_digest(b"abc") == hashlib.sha256(b"veilnet/result/v1\x00abc").digest()
    h = result_hasher()
    h.update(b"a")
    h.update(b"bc")
    assert h.digest() == result_digest(b"abc")


def test_reveal_opens_its_commitment_and_nothing_else() -> None:
    c = a_commitment()
    reveal = a_reveal()
    reveal.check_against(c)
    wrong = [
        a_reveal(salt=b"\x00" * 32),
        a_reveal(result_digest=result_digest(b"other")),
        a_reveal(job_id=b"\x09" * 16),
        a_reveal(BOB),
    ]
    for r in wrong:
        with pytest.raises(MessageError) as info:
            r.check_against(c)
        assert info.value.reason == "commitment_mismatch"


# --- hostile bytes --------------------------------------------------------------------------------


def check_message_decoder(data: bytes) -> None:
    try:
        message = decode_message(data)
    except MessageError:
        return
    assert message.to_wire() == data


@decoder_settings()
@given(st.binary(max_size=300))
def test_message_decoder_on_arbitrary_bytes(data: bytes) -> None:
    check_message_decoder(data)


def message_corpus() -> list[bytes]:
    """Valid encodings of every message type (optional fields present and absent)."""
    examples: list[Message] = [
        a_job_request(),
        a_job_request(task=Task.CHAT, mode=Mode.SPOT_CHECK, stream=True, sealed_input=b"x" * 300),
        a_commitment(),
        RevealRequest(job_id=JOB_ID),
        Reveal.create(ALICE, job_id=JOB_ID, salt=SALT, result_digest=DIGEST, result_nonce=SEAL_NONCE,
                      sealed_result=b"s" * 70),
        StreamChunk(job_id=JOB_ID, data=b"chunk"),
        StreamChunk(job_id=JOB_ID, data=SEALED, opening_nonce=SEAL_NONCE),
        ErrorMessage(code=ErrorCode.BUSY, message="busy, try another executor"),
        ErrorMessage(code=ErrorCode.REPLAY, message="", job_id=JOB_ID),
        ChallengeRequest(nonce=b"\x03" * 32),
        ChallengeRequest(nonce=b"\x03" * 32, job_id=JOB_ID),
        ChallengeResponse.create(BOB, nonce=b"\x03" * 32, kind="tdx", evidence=b"q" * 100),
    ]
    return [m.to_wire() for m in examples]


@decoder_settings()
@given(st.sampled_from(message_corpus()), mutations)
def test_message_decoder_on_mutated_messages(data: bytes, program: bytes) -> None:
    check_message_decoder(mutate(data, program))


@given(messages, mutations)
def test_message_decoder_on_mutated_generated_messages(message: Message, program: bytes) -> None:
    check_message_decoder(mutate(message.to_wire(), program))


FIELD_NAMES = ["v", "t", "job_id", "nonce", "code", "message", "stream", "kind", "data", "x"]
FIELD_VALUES: list[Any] = [
    None, True, False, -1, 0, 1, 2, 1_800_000_000_000, b"", bytes(16), bytes(32), ALICE.peer_id, "",
    "error", "challenge_request", "stream_chunk", "job_request", "busy", "tdx", "x" * 70,
]  # fmt: skip


@decoder_settings()
@given(st.binary(max_size=2 * len(FIELD_NAMES)))
def test_message_decoder_on_structured_garbage(program: bytes) -> None:
    """Well-formed maps of plausible keys and values: exercises the schema checks, not the codec."""
    fields = {
        FIELD_NAMES[program[i] % len(FIELD_NAMES)]: FIELD_VALUES[program[i + 1] % len(FIELD_VALUES)]
        for i in range(0, len(program) - 1, 2)
    }
    check_message_decoder(encode(fields))


# ---------------------------------------------------------------------------------------------
# Wire vectors: every message type encoded from fixed inputs, compared with bytes captured from
# the implementation before the signed-message pattern was folded into one base, and recaptured for
# protocol version 2 (an envelope's nonce in its own field). Ed25519 signatures are deterministic,
# so signed messages are fixed too. A change here is a wire change.

_VECTOR_IDENTITY = Identity(bytes(range(32)))
_VECTOR_JOB_ID = bytes(range(16))


def _vector_messages() -> dict[str, Message]:
    ident, job_id = _VECTOR_IDENTITY, _VECTOR_JOB_ID
    return {
        "job_request": JobRequest(
            job_id=job_id, model_id="all-MiniLM-L6-v2:sha256.ab", task=Task.EMBEDDINGS,
            deadline_ms=1_800_000_000_000, client_pubkey=b"\x01" * 32, executor_enc_pubkey=b"\x02" * 32,
            input_nonce=b"\x05" * 24, sealed_input=b"sealed-input-and-tag", mode=Mode.SPOT_CHECK,
            stream=False,
        ),
        "commitment": Commitment.create(
            ident, job_id=job_id, salt=b"\x03" * 32, result_digest=result_digest(b"result"), queue_ms=7,
            compute_ms=1234,
        ),
        "reveal_request": RevealRequest(job_id=job_id),
        "reveal": Reveal.create(
            ident, job_id=job_id, salt=b"\x03" * 32, result_digest=result_digest(b"result"),
            result_nonce=b"\x06" * 24, sealed_result=b"sealed-result-and-tag",
        ),
        "stream_chunk": StreamChunk(job_id=job_id, data=b"chunk"),
        "stream_chunk_opening": StreamChunk(
            job_id=job_id, data=b"opening-ciphertext", opening_nonce=b"\x07" * 24
        ),
        "error": ErrorMessage(code=ErrorCode.BUSY, message="queue full", job_id=job_id),
        "error_no_job": ErrorMessage(code=ErrorCode.BAD_REQUEST, message="bad"),
        "challenge_request": ChallengeRequest(nonce=b"\x04" * 32, job_id=job_id),
        "challenge_request_no_job": ChallengeRequest(nonce=b"\x04" * 32),
        "challenge_response": ChallengeResponse.create(
            ident, nonce=b"\x04" * 32, kind="simulated", evidence=b"evidence"
        ),
    }


_WIRE_VECTORS = {
    "job_request": (
        "8cad636c69656e745f7075626b6579c42001010101010101010101010101010101010101010101010101010101010101"
        "01ab646561646c696e655f6d73cf000001a3185c5000b36578656375746f725f656e635f7075626b6579c42002020202"
        "02020202020202020202020202020202020202020202020202020202ab696e7075745f6e6f6e6365c418050505050505"
        "050505050505050505050505050505050505a66a6f625f6964c410000102030405060708090a0b0c0d0e0fa46d6f6465"
        "aa73706f742d636865636ba86d6f64656c5f6964ba616c6c2d4d696e694c4d2d4c362d76323a7368613235362e6162ac"
        "7365616c65645f696e707574c4147365616c65642d696e7075742d616e642d746167a673747265616dc2a174ab6a6f62"
        "5f72657175657374a47461736baa656d62656464696e6773a17602"
    ),
    "commitment": (
        "88aa636f6d6d69746d656e74c420255441340e619757673b2a185e8f6ea6754a88f17673e9f0a6af71722b6f037daa63"
        "6f6d707574655f6d73cd04d2a66a6f625f6964c410000102030405060708090a0b0c0d0e0fa7706565725f6964c42600"
        "240801122003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a871756575655f6d7307a3"
        "736967c4401b97c202b9a6ef6b25b495b97be86f3caa263d538d683e1deb54c21a7c61767dae1bfef630aed2ed5a6070"
        "55d27b8952a7c0883d6b2c91901d54fefbd59c8a03a174aa636f6d6d69746d656e74a17602"
    ),
    "reveal_request": (
        "83a66a6f625f6964c410000102030405060708090a0b0c0d0e0fa174ae72657665616c5f72657175657374a17602"
    ),
    "reveal": (
        "89a66a6f625f6964c410000102030405060708090a0b0c0d0e0fa7706565725f6964c42600240801122003a107bff3ce"
        "10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8ad726573756c745f646967657374c4204ff1c02ec07c"
        "0d37be1ada62dcdf7478df05a3e5368ec84f63eecb4385b03c5bac726573756c745f6e6f6e6365c41806060606060606"
        "0606060606060606060606060606060606a473616c74c420030303030303030303030303030303030303030303030303"
        "0303030303030303ad7365616c65645f726573756c74c4157365616c65642d726573756c742d616e642d746167a37369"
        "67c440fe17755af1537c54ddb2f7a44bfeeb52bc34475536cfbbe07c5c769a960d7a0f1e11868c9927c0a7b1dba71b31"
        "356fcad5f3f3471d426ae3242d05b078542808a174a672657665616ca17602"
    ),
    "stream_chunk": (
        "84a464617461c4056368756e6ba66a6f625f6964c410000102030405060708090a0b0c0d0e0fa174ac73747265616d5f"
        "6368756e6ba17602"
    ),
    "stream_chunk_opening": (
        "85a464617461c4126f70656e696e672d63697068657274657874a66a6f625f6964c410000102030405060708090a0b0c"
        "0d0e0fad6f70656e696e675f6e6f6e6365c418070707070707070707070707070707070707070707070707a174ac7374"
        "7265616d5f6368756e6ba17602"
    ),
    "error": (
        "85a4636f6465a462757379a66a6f625f6964c410000102030405060708090a0b0c0d0e0fa76d657373616765aa717565"
        "75652066756c6ca174a56572726f72a17602"
    ),
    "error_no_job": "84a4636f6465ab6261645f72657175657374a76d657373616765a3626164a174a56572726f72a17602",
    "challenge_request": (
        "84a66a6f625f6964c410000102030405060708090a0b0c0d0e0fa56e6f6e6365c4200404040404040404040404040404"
        "040404040404040404040404040404040404a174b16368616c6c656e67655f72657175657374a17602"
    ),
    "challenge_request_no_job": (
        "83a56e6f6e6365c4200404040404040404040404040404040404040404040404040404040404040404a174b16368616c"
        "6c656e67655f72657175657374a17602"
    ),
    "challenge_response": (
        "87a865766964656e6365c40865766964656e6365a46b696e64a973696d756c61746564a56e6f6e6365c4200404040404"
        "040404040404040404040404040404040404040404040404040404a7706565725f6964c42600240801122003a107bff3"
        "ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a3736967c440d1a8a45f21545caffd44dfc525e5cb"
        "738a7598f219aa4260cfc84da7410342a72053d97245cd99fce9c16f6bae0088acc6f5135843e1a37b2e92da6c12643d"
        "08a174b26368616c6c656e67655f726573706f6e7365a17602"
    ),
}


@pytest.mark.parametrize("name", sorted(_WIRE_VECTORS))
def test_wire_encoding_is_byte_identical_to_the_captured_vectors(name: str) -> None:
    message = _vector_messages()[name]
    expected = bytes.fromhex(_WIRE_VECTORS[name])
    assert message.to_wire() == expected
    assert decode_message(expected) == message
    if isinstance(message, (Commitment, Reveal, ChallengeResponse)):
        message.verify(expected_peer_id=_VECTOR_IDENTITY.peer_id)


# A version 1 job request (its envelope one field, nonce ‖ ciphertext), captured before version 2.
_V1_JOB_REQUEST = (
    "8bad636c69656e745f7075626b6579c42001010101010101010101010101010101010101010101010101010101010101"
    "01ab646561646c696e655f6d73cf000001a3185c5000b36578656375746f725f656e635f7075626b6579c42002020202"
    "02020202020202020202020202020202020202020202020202020202a66a6f625f6964c410000102030405060708090a"
    "0b0c0d0e0fa46d6f6465aa73706f742d636865636ba86d6f64656c5f6964ba616c6c2d4d696e694c4d2d4c362d76323a"
    "7368613235362e6162ac7365616c65645f696e707574c40c7365616c65642d696e707574a673747265616dc2a174ab6a"
    "6f625f72657175657374a47461736baa656d62656464696e6773a17601"
)


def test_a_version_1_job_request_is_refused_with_a_typed_error() -> None:
    err = error_of(bytes.fromhex(_V1_JOB_REQUEST))
    assert err.reason == "unsupported_version"
    assert "protocol version 1 (this node speaks 2)" in str(err)


def test_framing_and_commitment_hash_vectors() -> None:
    assert encode_frame(_vector_messages()["reveal_request"].to_wire()).hex() == (
        "0000002e83a66a6f625f6964c410000102030405060708090a0b0c0d0e0fa174ae72657665616c5f72657175657374a17602"
    )
    digest = result_digest(b"result")
    salt = b"\x03" * 32
    assert commitment_hash(_VECTOR_JOB_ID, _VECTOR_IDENTITY.peer_id, salt, digest).hex() == (
        "255441340e619757673b2a185e8f6ea6754a88f17673e9f0a6af71722b6f037d"
    )
