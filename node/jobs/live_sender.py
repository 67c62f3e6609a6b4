"""The primary's side of a live chat job: generate in a worker thread, seal and send as it goes.

The model thread hands each token to the trio side through an unbounded memory channel (bounded
by ``max_tokens``) without waiting for the event loop (``run_sync_soon``: FIFO, so tokens keep
their order and all arrive before the thread's result); one sender task drains whatever has
arrived and sends it as one sealed ``StreamChunk`` (``protocol.jobs.live``), so the first token
leaves at once and chunks grow only when the link is slower than the model. The secretstream's
opening leaves in the same write as the first tokens: one pass through the libp2p stack less before
the first token, and none while the prompt is being prefilled. The stream is
finalised (FINAL tag, empty plaintext) before the executor commits, so the client can tell a
complete stream from a cut-off one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from node.jobs.faults import LiveFault
from protocol.jobs.live import LiveChunk
from protocol.jobs.messages import StreamChunk
from protocol.jobs.payloads import GenerateInput, GenerateResult
from protocol.sealing import JobSession, StreamSealer

if TYPE_CHECKING:
    from node.runtime.base import ModelRuntime

__all__ = ["generate_live"]


async def generate_live(
    send: Callable[..., Awaitable[None]], job_id: bytes, session: JobSession, runtime: ModelRuntime,
    job: GenerateInput, limiter: trio.CapacityLimiter, *, fault: LiveFault | None = None,
) -> tuple[GenerateResult, int, int]:
    """Stream ``job``'s generation to the client; returns (the result as sent, queue ms, compute ms)."""
    sealer, opening = StreamSealer.start(session)
    unsent_opening: list[bytes] = [StreamChunk(job_id=job_id, data=opening).to_wire()]
    tokens_in, tokens_out = trio.open_memory_channel[tuple[int, str]](math.inf)
    sent: list[int] = []
    texts: list[str] = []
    messages = [m.to_map() for m in job.messages]
    timing: dict[str, float] = {}
    queued = time.monotonic()

    loop = trio.lowlevel.current_trio_token()

    def deliver(item: tuple[int, str]) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            tokens_in.send_nowait(item)  # the sender is gone only when the job is being cancelled

    def on_token(token: int, text: str) -> None:
        loop.run_sync_soon(deliver, (token, text))  # no round trip: the model goes on at once

    def generate() -> tuple[int, str]:
        timing["start"] = time.monotonic()
        gen = runtime.generate(messages, job.max_tokens, on_token=on_token)  # type: ignore[attr-defined]
        return len(gen.prompt_tokens), gen.finish_reason

    async def forward() -> None:
        async with tokens_out:
            async for first in tokens_out:
                batch = [first]
                while True:
                    try:
                        batch.append(tokens_out.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                tokens: list[int] = []
                for token, _ in batch:
                    position = len(sent) + len(tokens)
                    tokens.append(token if fault is None else fault.token(position, token))
                text = "".join(t for _, t in batch)
                sent.extend(tokens)
                texts.append(text)
                chunk = LiveChunk(tuple(tokens), text).to_bytes()
                frame = StreamChunk(job_id=job_id, data=sealer.push(chunk)).to_wire()
                await send(*unsent_opening, frame)  # the opening rides with the first tokens
                unsent_opening.clear()
                if fault is not None and fault.stall_after is not None and len(sent) >= fault.stall_after:
                    await trio.sleep(fault.stall_seconds)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward)
        async with tokens_in:
            prompt_tokens, finish = await trio.to_thread.run_sync(generate, limiter=limiter)
    await send(*unsent_opening, StreamChunk(job_id=job_id, data=sealer.final(b"")).to_wire())
    start = timing.get("start", queued)
    end = time.monotonic()
    result = GenerateResult(prompt_tokens, tuple(sent), "".join(texts), finish)
    return result, int((start - queued) * 1000), int((end - start) * 1000)
