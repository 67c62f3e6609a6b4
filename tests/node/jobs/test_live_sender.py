"""The primary's live sender: what each write carries, checked with the real tiny chat model.

The secretstream opening must ride in the same write as the first tokens (no write of its own
before the first token), every later write carries what the model produced meanwhile, the FINAL
chunk rides with the last tokens, and the client's opener reads the frames back in order.
"""

from __future__ import annotations

import itertools
import os
import time

import pytest
import trio

from node.jobs.live_sender import generate_live
from node.runtime.engine_client import EngineUnavailable
from node.runtime.generation import Generation
from protocol.jobs.live import decode_live_chunk
from protocol.jobs.messages import StreamChunk, decode_message
from protocol.jobs.payloads import ChatMessage, GenerateInput
from protocol.sealing import EncryptionKeyPair, StreamOpener, seal_job
from tests.node.jobs.harness import models

__all__ = ["models"]

MESSAGES = [{"role": "user", "content": "Tell me about enclaves."}]


async def test_the_opening_leaves_with_the_first_tokens_and_the_stream_reads_back_whole(models):
    _, chat, _ = models
    direct = chat.generate(MESSAGES, 12)  # type: ignore[attr-defined]
    job_id = os.urandom(16)
    executor = EncryptionKeyPair.generate()
    sealed = seal_job(b"x", recipient_pubkey=executor.public, job_id=job_id, model_id=chat.model_id,
                      deadline_ms=int(time.time() * 1000) + 60_000)
    writes: list[tuple[bytes, ...]] = []

    async def send(*frames: bytes) -> None:
        writes.append(frames)
        await trio.lowlevel.checkpoint()

    job = GenerateInput(tuple(ChatMessage(m["role"], m["content"]) for m in MESSAGES), 12)
    with trio.fail_after(60):
        result, _, _ = await generate_live(send, job_id, sealed.session, chat, job, trio.CapacityLimiter(1))
    assert result.tokens == direct.tokens and result.text == direct.text
    assert len(writes[0]) == 2  # the opening and the first tokens: one write
    assert all(len(frames) == 1 for frames in writes[1:-1])
    assert 1 <= len(writes[-1]) <= 2  # the FINAL chunk rides with the last tokens if any are left
    chunks = [decode_message(frame) for frames in writes for frame in frames]
    assert all(isinstance(c, StreamChunk) and c.job_id == job_id for c in chunks)
    opener = StreamOpener.start(sealed.session, (chunks[0].opening_nonce, chunks[0].data))  # type: ignore[attr-defined]
    tokens: list[int] = []
    text = ""
    for chunk in chunks[1:-1]:
        piece = decode_live_chunk(opener.pull(chunk.data))  # type: ignore[attr-defined]
        tokens.extend(piece.tokens)
        text += piece.text
    assert opener.pull(chunks[-1].data) == b"" and opener.finished  # type: ignore[attr-defined]
    assert tuple(tokens) == direct.tokens and text == direct.text


class _ScriptedModel:
    """A model that makes ``count`` tokens ``interval`` s apart (0: as fast as the thread can)."""

    def __init__(self, count: int, interval: float) -> None:
        self.count, self.interval = count, interval

    def generate(self, messages: object, max_tokens: int, on_token: object) -> Generation:
        tokens = tuple(range(7, 7 + self.count))
        for token in tokens:
            if self.interval:
                time.sleep(self.interval)
            on_token(token, "x")  # type: ignore[operator]
        return Generation((1, 2), tokens, "x" * self.count, "length")


async def _writes_for(model: _ScriptedModel, write_cpu_s: float) -> list[tuple[float, list[int]]]:
    """(when, the tokens carried) for each write ``generate_live`` makes for ``model``, each write
    costing ``write_cpu_s`` of CPU on the event loop as libp2p's does."""
    job_id = os.urandom(16)
    sealed = seal_job(b"x", recipient_pubkey=EncryptionKeyPair.generate().public, job_id=job_id,
                      model_id="m", deadline_ms=int(time.time() * 1000) + 60_000)
    writes: list[tuple[float, tuple[bytes, ...]]] = []

    async def send(*frames: bytes) -> None:
        writes.append((time.monotonic(), frames))
        spent = time.thread_time() + write_cpu_s
        while time.thread_time() < spent:
            pass
        await trio.lowlevel.checkpoint()

    job = GenerateInput((ChatMessage("user", "hi"),), model.count)
    with trio.fail_after(60):
        result, _, _ = await generate_live(send, job_id, sealed.session, model, job,  # type: ignore[arg-type]
                                           trio.CapacityLimiter(1))
    assert result.tokens == tuple(range(7, 7 + model.count))
    opening = decode_message(writes[0][1][0])
    opener = StreamOpener.start(sealed.session, (opening.opening_nonce, opening.data))  # type: ignore[union-attr]
    carried: list[tuple[float, list[int]]] = []
    for when, frames in writes:
        tokens: list[int] = []
        for frame in frames[1:] if not carried else frames:
            plaintext = opener.pull(decode_message(frame).data)  # type: ignore[union-attr]
            tokens.extend(decode_live_chunk(plaintext).tokens if plaintext else ())
        carried.append((when, tokens))
    assert opener.finished and [t for _, ts in carried for t in ts] == list(result.tokens)
    return carried


async def test_after_each_write_the_sender_leaves_the_loop_to_the_model_twenty_times_as_long():
    # a token every ~1 ms; each write costs 0.5 ms of loop CPU, so the sender waits 10 ms after it
    # and what the model made meanwhile leaves in the next write (the FINAL write may come sooner)
    writes = await _writes_for(_ScriptedModel(150, 0.001), write_cpu_s=0.0005)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(writes[:-1])]
    assert gaps and min(gaps) >= 0.0095
    assert len(writes) < 75  # a write per token would be 150


async def test_a_slow_model_has_every_token_sent_alone_as_it_is_made():
    # 200 ms between tokens: far longer than any pause, so no token ever waits for the next one
    writes = await _writes_for(_ScriptedModel(5, 0.2), write_cpu_s=0.001)
    assert [tokens for _, tokens in writes if tokens] == [[7], [8], [9], [10], [11]]


class _DyingModel:
    """A model whose engine dies after ``count`` tokens, as a vLLM killed mid-stream does."""

    def __init__(self, count: int) -> None:
        self.count = count

    def generate(self, messages: object, max_tokens: int, on_token: object) -> Generation:
        for token in range(7, 7 + self.count):
            on_token(token, "x")  # type: ignore[operator]
        raise EngineUnavailable("POST /v1/completions: RemoteProtocolError: peer closed connection")


async def test_a_model_that_fails_mid_stream_raises_its_own_error_not_a_group():
    # The executor answers a ModelRuntimeError with an error frame and keeps the client's job
    # session; an ExceptionGroup would match none of its handlers and end the whole session.
    job_id = os.urandom(16)
    sealed = seal_job(b"x", recipient_pubkey=EncryptionKeyPair.generate().public, job_id=job_id,
                      model_id="m", deadline_ms=int(time.time() * 1000) + 60_000)
    writes: list[tuple[bytes, ...]] = []

    async def send(*frames: bytes) -> None:
        writes.append(frames)
        await trio.lowlevel.checkpoint()

    job = GenerateInput((ChatMessage("user", "hi"),), 10)
    with trio.fail_after(60), pytest.raises(EngineUnavailable, match="peer closed"):
        await generate_live(send, job_id, sealed.session, _DyingModel(3), job,  # type: ignore[arg-type]
                            trio.CapacityLimiter(1))
    opening = decode_message(writes[0][0])
    opener = StreamOpener.start(sealed.session, (opening.opening_nonce, opening.data))  # type: ignore[union-attr]
    frames = [frame for batch in writes for frame in batch][1:]
    pulled = [opener.pull(decode_message(frame).data) for frame in frames]  # type: ignore[union-attr]
    assert not opener.finished  # a failed generation never reads as complete
    tokens = [t for plaintext in pulled for t in decode_live_chunk(plaintext).tokens]
    assert tokens == [7, 8, 9][: len(tokens)]  # what was sent before the failure is in order
