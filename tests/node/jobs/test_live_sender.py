"""The primary's live sender: what each write carries, checked with the real tiny chat model.

The secretstream opening must ride in the same write as the first tokens (no write of its own
before the first token), every later write carries what the model produced meanwhile, and the
client's opener reads the frames back in order, ending with the FINAL chunk.
"""

from __future__ import annotations

import os
import time

import trio

from node.jobs.live_sender import generate_live
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
    assert all(len(frames) == 1 for frames in writes[1:])
    chunks = [decode_message(frame) for frames in writes for frame in frames]
    assert all(isinstance(c, StreamChunk) and c.job_id == job_id for c in chunks)
    opener = StreamOpener.start(sealed.session, chunks[0].data)  # type: ignore[attr-defined]
    tokens: list[int] = []
    text = ""
    for chunk in chunks[1:-1]:
        piece = decode_live_chunk(opener.pull(chunk.data))  # type: ignore[attr-defined]
        tokens.extend(piece.tokens)
        text += piece.text
    assert opener.pull(chunks[-1].data) == b"" and opener.finished  # type: ignore[attr-defined]
    assert tuple(tokens) == direct.tokens and text == direct.text
