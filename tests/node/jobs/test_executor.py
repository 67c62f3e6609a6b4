"""The executor's admission checks, one hostile or mistaken request at a time.

Each bad request must get a typed ErrorMessage on the same stream (or, for broken framing, a typed
error and a closed session) — and the executor must go on serving the next good job.
"""

from __future__ import annotations

import os
import time

import pytest
import trio
import trio.testing

from node.jobs.executor import ExecutorSettings
from node.jobs.faults import Fault
from node.jobs.frames import MemoryFrames, memory_frame_pair
from protocol.identity import Identity
from protocol.jobs.messages import (
    MAX_FRAME,
    Commitment,
    ErrorCode,
    ErrorMessage,
    JobRequest,
    Mode,
    Reveal,
    RevealRequest,
    Task,
    decode_message,
    result_digest,
)
from protocol.jobs.payloads import (
    MAX_TEXT_CHARS,
    ChatMessage,
    EmbeddingsInput,
    EmbeddingsResult,
    GenerateInput,
    decode_result,
)
from protocol.sealing import EncryptionKeyPair, open_result, seal_job
from tests.node.jobs.harness import TEXTS, MemoryNetwork, add_member, models

pytestmark = pytest.mark.timeout(120)
__all__ = ["models"]

CLIENT = Identity.generate()


def _request(member, model_id: str, *, texts=TEXTS[:1], deadline_ms: int | None = None,
             key: bytes | None = None, job_id: bytes | None = None, tamper_model: str | None = None):
    job_id = job_id or os.urandom(16)
    deadline_ms = deadline_ms or int((time.time() + 30) * 1000)
    key = key or member.keys.public
    sealed = seal_job(EmbeddingsInput(tuple(texts)).to_bytes(), recipient_pubkey=key, job_id=job_id,
                      model_id=model_id, deadline_ms=deadline_ms)
    request = JobRequest(
        job_id=job_id, model_id=tamper_model or model_id, task=Task.EMBEDDINGS, deadline_ms=deadline_ms,
        client_pubkey=sealed.client_keys.public, executor_enc_pubkey=key, input_nonce=sealed.envelope.nonce,
        sealed_input=sealed.envelope.ciphertext, mode=Mode.CONSENSUS, stream=False,
    )
    return request, sealed


async def _session(nursery, member) -> MemoryFrames:
    client_end, executor_end = memory_frame_pair(CLIENT.peer_id, member.peer_id)
    nursery.start_soon(member.executor.serve, executor_end)
    return client_end


async def _expect_error(io: MemoryFrames, code: ErrorCode) -> ErrorMessage:
    with trio.fail_after(20):
        message = decode_message(await io.read())
    assert isinstance(message, ErrorMessage), message
    assert message.code is code, message
    return message


async def _good_job(io: MemoryFrames, member, model_id: str) -> None:
    request, sealed = _request(member, model_id)
    await io.write(request.to_wire())
    with trio.fail_after(30):
        commitment = decode_message(await io.read())
    assert isinstance(commitment, Commitment)
    commitment.verify(expected_peer_id=member.peer_id)
    await io.write(RevealRequest(job_id=request.job_id).to_wire())
    with trio.fail_after(10):
        reveal = decode_message(await io.read())
    assert isinstance(reveal, Reveal)
    reveal.verify(expected_peer_id=member.peer_id)
    reveal.check_against(commitment)
    plaintext = open_result(sealed.session, (reveal.result_nonce, reveal.sealed_result))
    assert result_digest(plaintext) == reveal.result_digest
    result = decode_result(plaintext)
    assert isinstance(result, EmbeddingsResult) and result.count == 1


async def test_a_pipelined_reveal_request_gets_the_commitment_and_the_reveal_in_order(models):
    """k = 1: the client writes the job and its reveal request together; the executor answers with
    the commitment and the reveal together, the commitment first, both valid."""
    embed, _, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery)
        member = add_member(net, {embed.model_id: embed})
        io = await _session(nursery, member)
        request, sealed = _request(member, embed.model_id)
        await io.write(request.to_wire(), RevealRequest(job_id=request.job_id).to_wire())
        with trio.fail_after(30):
            commitment, reveal = decode_message(await io.read()), decode_message(await io.read())
        assert isinstance(commitment, Commitment) and isinstance(reveal, Reveal)
        commitment.verify(expected_peer_id=member.peer_id)
        reveal.verify(expected_peer_id=member.peer_id)
        reveal.check_against(commitment)
        result = decode_result(open_result(sealed.session, (reveal.result_nonce, reveal.sealed_result)))
        assert isinstance(result, EmbeddingsResult) and result.count == 1
        await _good_job(io, member, embed.model_id)  # the session goes on as before
        nursery.cancel_scope.cancel()


async def test_bad_requests_get_typed_errors_and_the_executor_keeps_serving(models):
    embed, _, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery)
        member = add_member(net, {embed.model_id: embed})
        io = await _session(nursery, member)
        mid = embed.model_id

        await io.write(b"\x93not a message")  # malformed msgpack
        await _expect_error(io, ErrorCode.BAD_REQUEST)
        await io.write(RevealRequest(job_id=b"x" * 16).to_wire())  # reveal of an unknown job
        await _expect_error(io, ErrorCode.BAD_REQUEST)

        expired, _ = _request(member, mid, deadline_ms=int((time.time() - 1) * 1000))
        await io.write(expired.to_wire())
        await _expect_error(io, ErrorCode.EXPIRED)

        too_far, _ = _request(member, mid, deadline_ms=int((time.time() + 3600) * 1000))
        await io.write(too_far.to_wire())
        await _expect_error(io, ErrorCode.BAD_REQUEST)

        unknown, _ = _request(member, "vn-model:" + "ab" * 32)
        await io.write(unknown.to_wire())
        await _expect_error(io, ErrorCode.UNKNOWN_MODEL)

        stranger_key = EncryptionKeyPair.generate().public
        wrong_key, _ = _request(member, mid, key=stranger_key)
        await io.write(wrong_key.to_wire())
        await _expect_error(io, ErrorCode.WRONG_KEY)

        # the clear-text deadline differs from the one the envelope authenticates (AAD)
        good, _ = _request(member, mid)
        tampered = JobRequest(**{**good.__dict__, "deadline_ms": good.deadline_ms + 1000})
        await io.write(tampered.to_wire())
        await _expect_error(io, ErrorCode.DECRYPT_FAILED)

        # the same job twice: the second is a replay
        await _good_job(io, member, mid)
        replayed, _ = _request(member, mid)
        await io.write(replayed.to_wire())
        first = decode_message(await io.read())
        assert isinstance(first, Commitment)
        await io.write(replayed.to_wire())
        await _expect_error(io, ErrorCode.REPLAY)

        # still serving on the same stream
        await _good_job(io, member, mid)
        assert member.executor.jobs_refused.get("replay") == 1
        nursery.cancel_scope.cancel()


async def test_oversized_frame_closes_only_that_session(models):
    embed, _, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery)
        member = add_member(net, {embed.model_id: embed})
        io = await _session(nursery, member)
        await io.write(b"\x00" * (MAX_FRAME + 1))
        await _expect_error(io, ErrorCode.TOO_LARGE)
        # a fresh session is served normally
        again = await _session(nursery, member)
        await _good_job(again, member, embed.model_id)
        nursery.cancel_scope.cancel()


async def test_previous_epoch_key_still_opens_jobs(models):
    embed, _, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery)
        member = add_member(net, {embed.model_id: embed})
        old = member.keys
        member.previous_keys, member.keys = old, EncryptionKeyPair.generate()
        io = await _session(nursery, member)
        request, _ = _request(member, embed.model_id, key=old.public)
        await io.write(request.to_wire())
        assert isinstance(decode_message(await io.read()), Commitment)
        member.previous_keys = None  # two rotations later the old key is gone
        request, _ = _request(member, embed.model_id, key=old.public)
        await io.write(request.to_wire())
        await _expect_error(io, ErrorCode.WRONG_KEY)
        nursery.cancel_scope.cancel()


async def test_wrong_task_for_the_model_is_refused(models):
    embed, chat, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery)
        member = add_member(net, {embed.model_id: embed, chat.model_id: chat})
        io = await _session(nursery, member)
        request, _ = _request(member, chat.model_id)  # an embeddings job for a chat model
        await io.write(request.to_wire())
        await _expect_error(io, ErrorCode.BAD_REQUEST)
        nursery.cancel_scope.cancel()


async def test_a_chat_prompt_too_long_for_the_context_is_refused_before_tokenizing(models):
    _, chat, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery)
        member = add_member(net, {chat.model_id: chat})
        io = await _session(nursery, member)
        per_message = MAX_TEXT_CHARS
        count = chat.max_prompt_bytes // per_message + 1
        messages = tuple(ChatMessage("user", "a" * per_message) for _ in range(count))
        job_id, deadline_ms = os.urandom(16), int((time.time() + 30) * 1000)
        key = member.keys.public
        sealed = seal_job(GenerateInput(messages, 4).to_bytes(), recipient_pubkey=key, job_id=job_id,
                          model_id=chat.model_id, deadline_ms=deadline_ms)
        request = JobRequest(
            job_id=job_id, model_id=chat.model_id, task=Task.CHAT, deadline_ms=deadline_ms,
            client_pubkey=sealed.client_keys.public, executor_enc_pubkey=key,
            input_nonce=sealed.envelope.nonce, sealed_input=sealed.envelope.ciphertext,
            mode=Mode.CONSENSUS, stream=False,
        )
        await io.write(request.to_wire())
        error = await _expect_error(io, ErrorCode.TOO_LARGE)
        assert "cannot fit the context" in error.message
        assert member.executor.jobs_refused == {"too_large": 1} and member.executor.active_jobs == 0
        nursery.cancel_scope.cancel()


async def test_one_requester_uses_idle_slots_beyond_its_share_but_leaves_a_reserve(models):
    embed, _, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery)
        settings = ExecutorSettings(max_active_jobs=4, max_active_jobs_per_peer=2)  # a reserve of 1
        member = add_member(
            net, {embed.model_id: embed}, fault=Fault.SLOW, slow_seconds=60, settings=settings
        )
        greedy = await _session(nursery, member)
        for _ in range(3):  # its share (2), then one idle slot while 2 stay free
            request, _ = _request(member, embed.model_id)
            await greedy.write(request.to_wire())
        fourth, _ = _request(member, embed.model_id)
        await greedy.write(fourth.to_wire())
        refusal = await _expect_error(greedy, ErrorCode.BUSY)
        assert refusal.job_id == fourth.job_id and "this requester" in refusal.message
        assert member.executor.active_jobs == 3
        other_end, executor_end = memory_frame_pair(Identity.generate().peer_id, member.peer_id)
        nursery.start_soon(member.executor.serve, executor_end)
        honest, _ = _request(member, embed.model_id)
        await other_end.write(honest.to_wire())
        with trio.fail_after(20):
            await trio.testing.wait_all_tasks_blocked()
        assert member.executor.active_jobs == 4  # the reserved slot went to the other requester
        assert member.executor.jobs_refused == {"busy_peer_share": 1}
        nursery.cancel_scope.cancel()
