"""The primary's side of a live chat job: generate in a worker thread, seal and send as it goes.

The model thread hands each token to the trio side through a ``_TokenFeed`` without waiting for the
event loop; one sender task takes whatever has arrived and sends it as one sealed ``StreamChunk``
(``protocol.jobs.live``), so the first token leaves at once. The secretstream's opening leaves in
the same write as the first tokens: one pass through the libp2p stack less before the first token,
and none while the prompt is being prefilled. The stream is finalised (FINAL tag, empty plaintext,
in the same write as the last tokens) before the executor commits, so the client can tell a
complete stream from a cut-off one.

Pacing. A write's CPU on the event loop (seal, frame, yamux, PSK, Noise) runs under the GIL that
the model thread needs for every token, so a write per token slows a fast model down by what the
writes cost. After each write the sender leaves the loop to the model for ``1 / WRITE_SHARE``
times the CPU that write took (at most ``MAX_PAUSE_S``); tokens made meanwhile leave together in
the next write. A model slower than that (any real model on a CPU) still has every token sent the
moment it is made.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from node import timeline
from node.jobs.faults import LiveFault
from protocol.jobs.live import LiveChunk
from protocol.jobs.messages import StreamChunk
from protocol.jobs.payloads import GenerateInput, GenerateResult
from protocol.sealing import JobSession, StreamSealer

if TYPE_CHECKING:
    from node.runtime.base import ModelRuntime

__all__ = ["generate_live"]

WRITE_SHARE = 0.05  # the event loop's writes take at most this share of a fast model's time
MAX_PAUSE_S = 0.02  # the longest pause after a write, so the longest a made token waits


class _TokenFeed:
    """Tokens from the model thread, taken by the sender in batches.

    The model thread wakes the event loop only when the sender is idle waiting for a token; while
    the sender writes or pauses, tokens just pile up, so a batch costs one wake-up, not one per
    token.
    """

    def __init__(self) -> None:
        self._loop = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._items: list[tuple[int, str]] = []
        self._waiting: trio.Event | None = None
        self._finished = trio.Event()  # set (on the loop) once the model thread has returned

    def push(self, token: int, text: str) -> None:
        """From the model thread: queue a token; wake the sender if it is idle waiting for one."""
        with self._lock:
            self._items.append((token, text))
            waiting = self._waiting
            if waiting is None:
                return
            self._waiting = None
        self._loop.run_sync_soon(waiting.set)

    def close(self) -> None:
        """From the event loop, once the model thread has returned: what is left goes at once."""
        self._finished.set()
        with self._lock:
            waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.set()

    async def take(self, pause: float) -> tuple[list[tuple[int, str]], bool]:
        """(the tokens made since the last call, whether they are the last), no sooner than ``pause`` s."""
        if pause > 0:
            with trio.move_on_after(pause):
                await self._finished.wait()
        while True:
            done = self._finished.is_set()
            with self._lock:
                if done or self._items:
                    items, self._items = self._items, []
                    return items, done
                waiting = self._waiting = trio.Event()
            await waiting.wait()


async def generate_live(
    send: Callable[..., Awaitable[None]], job_id: bytes, session: JobSession, runtime: ModelRuntime,
    job: GenerateInput, limiter: trio.CapacityLimiter, *, fault: LiveFault | None = None,
) -> tuple[GenerateResult, int, int]:
    """Stream ``job``'s generation to the client; returns (the result as sent, queue ms, compute ms)."""
    sealer, opening = StreamSealer.start(session)
    unsent_opening: list[bytes] = [
        StreamChunk(job_id=job_id, data=opening.ciphertext, opening_nonce=opening.nonce).to_wire()
    ]
    feed = _TokenFeed()
    sent: list[int] = []
    texts: list[str] = []
    messages = [m.to_map() for m in job.messages]
    timing: dict[str, float] = {}
    queued = time.monotonic()

    def generate() -> tuple[int, str]:
        timing["start"] = time.monotonic()
        gen = runtime.generate(messages, job.max_tokens, on_token=feed.push)  # type: ignore[attr-defined]
        return len(gen.prompt_tokens), gen.finish_reason

    async def forward() -> None:
        pause = 0.0
        last = False
        written = False
        while not last:
            batch, last = await feed.take(pause)
            cpu = time.thread_time()
            frames = [*unsent_opening]  # the opening rides with the first tokens
            unsent_opening.clear()
            if batch:
                tokens: list[int] = []
                for token, _ in batch:
                    position = len(sent) + len(tokens)
                    tokens.append(token if fault is None else fault.token(position, token))
                text = "".join(t for _, t in batch)
                sent.extend(tokens)
                texts.append(text)
                chunk = LiveChunk(tuple(tokens), text).to_bytes()
                frames.append(StreamChunk(job_id=job_id, data=sealer.push(chunk)).to_wire())
            if last:  # the last tokens and the end of the stream: one write
                frames.append(StreamChunk(job_id=job_id, data=sealer.final(b"")).to_wire())
            await send(*frames)
            if not written:
                timeline.mark("live.first_written")
                written = True
            pause = min(MAX_PAUSE_S, (time.thread_time() - cpu) / WRITE_SHARE)
            if fault is not None and fault.stall_after is not None and len(sent) >= fault.stall_after:
                await trio.sleep(fault.stall_seconds)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            prompt_tokens, finish = await trio.to_thread.run_sync(generate, limiter=limiter)
            feed.close()  # only once the model is done: a failed generation never reads as complete
    except BaseExceptionGroup as group:
        # One failure (the model's, e.g. its engine died mid-stream, or the write's) is raised as
        # itself, so the executor answers it as for any job (an error to the client, the session
        # kept) instead of losing the whole session to an exception group it cannot match.
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
    start = timing.get("start", queued)
    end = time.monotonic()
    result = GenerateResult(prompt_tokens, tuple(sent), "".join(texts), finish)
    return result, int((start - queued) * 1000), int((end - start) * 1000)
