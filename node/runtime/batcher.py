"""Dynamic batching of concurrent embedding requests for one model (trio side of the runtime).

Batched inference is several times faster per text on a CPU than one text per call, so concurrent
jobs for the same model share forward passes: the batcher takes every request already waiting,
waits at most ``max_wait_ms`` for more until ``max_batch_size`` texts are gathered, runs one
``embed`` call in a worker thread, and hands each caller its own rows. Under load, requests pile up
while a batch computes and the next batch starts with all of them, with no extra wait.

Backpressure: at most ``max_queued_texts`` texts may wait; beyond that ``embed`` raises ``Busy`` at
once, so the router can try another executor instead of queueing behind a saturated one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import trio

from node.runtime.errors import BatcherClosed, Busy, InvalidInput, ModelRuntimeError

if TYPE_CHECKING:
    # The installed trio-stubs (pulled in by libp2p) shadow trio's own annotations and lack
    # trio.TaskStatus; trio_typing's class is what those stubs use for nursery.start.
    from trio_typing import TaskStatus

__all__ = ["BatchFailed", "Embedder", "EmbeddingBatcher"]


class Embedder(Protocol):
    """What the batcher needs from a runtime (``EmbeddingRuntime`` satisfies it)."""

    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


class BatchFailed(ModelRuntimeError):
    """The batched model call raised; every request in that batch receives this error."""

    reason = "inference_failed"


@dataclass(eq=False)
class _Request:
    texts: list[str]
    done: trio.Event = field(default_factory=trio.Event)
    result: np.ndarray | None = None
    error: ModelRuntimeError | None = None
    abandoned: bool = False

    def finish(self, result: np.ndarray | None = None, error: ModelRuntimeError | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class EmbeddingBatcher:
    """Gathers concurrent ``embed`` calls for one model into batched worker-thread calls.

    Usage (structured concurrency: the batcher lives in the caller's nursery)::

        batcher = EmbeddingBatcher(runtime, limiter=compute_limiter)
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            vectors = await batcher.embed(["some text"])   # from any task

    ``limiter`` bounds model compute across all batchers/runtimes of a node (default: a private
    CapacityLimiter(1) — one call already uses every core).
    """

    def __init__(
        self,
        runtime: Embedder,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 1.0,
        max_queued_texts: int = 1024,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queued_texts < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queued_texts must be >= 1, max_wait_ms >= 0")
        self.runtime = runtime
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queued_texts = max_queued_texts
        self._limiter = limiter or trio.CapacityLimiter(1)
        self._send, self._receive = trio.open_memory_channel[_Request](math.inf)
        self._carry: _Request | None = None
        self._batch: list[_Request] = []  # taken from the queue, not yet answered
        self._queued_texts = 0
        self._running = False
        self.batches_run = 0
        self.texts_run = 0

    @property
    def queued_texts(self) -> int:
        """Texts accepted but not yet handed to the model (the load figure an executor advertises)."""
        return self._queued_texts

    @property
    def running(self) -> bool:
        return self._running

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` as part of a batch; returns float32 ``[len(texts), dim]`` (caller-owned).

        Raises ``Busy`` immediately when the queue is full, ``BatcherClosed`` when the batcher is
        not running (or stops before the result is ready), ``InvalidInput`` for bad input and
        ``BatchFailed`` when the model call fails. Cancelling the caller withdraws its request.
        """
        if not self._running:
            raise BatcherClosed("the batcher is not running")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidInput("texts must be a sequence of str")
        count = len(texts)
        if count == 0:
            return np.empty((0, self.runtime.dim), dtype=np.float32)
        if count > self.max_queued_texts:
            raise InvalidInput(f"{count} texts exceed the per-request limit of {self.max_queued_texts}")
        if self._queued_texts + count > self.max_queued_texts:
            raise Busy(f"{self._queued_texts} texts already queued (limit {self.max_queued_texts})")
        request = _Request(list(texts))
        self._queued_texts += count
        self._send.send_nowait(request)
        try:
            await request.done.wait()
        except BaseException:
            request.abandoned = True  # dropped unqueued, or its rows discarded if already running
            raise
        if request.error is not None:
            raise request.error  # one instance per request: no traceback shared between tasks
        assert request.result is not None
        return request.result

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve batches until cancelled. Start with ``await nursery.start(batcher.run)``."""
        if self._running:
            raise RuntimeError("this batcher is already running")
        self._running = True
        try:
            task_status.started()
            while True:
                await self._collect()
                if self._batch:
                    await self._compute(self._batch)
                self._batch = []
        finally:
            self._running = False
            self._fail_all()

    def _take(self, request: _Request) -> bool:
        """Dequeue bookkeeping; False for a request whose caller already gave up."""
        self._queued_texts -= len(request.texts)
        return not request.abandoned

    async def _collect(self) -> None:
        first = self._carry or await self._receive.receive()
        self._carry = None
        if not self._take(first):
            return
        batch = self._batch = [first]
        size = len(first.texts)

        def admit(request: _Request) -> bool:
            nonlocal size
            if request.abandoned:
                self._take(request)
                return True
            if size + len(request.texts) > self.max_batch_size:
                self._carry = request  # stays counted as queued; first in the next batch
                return False
            self._take(request)
            batch.append(request)
            size += len(request.texts)
            return True

        while size < self.max_batch_size:  # everything already waiting, without yielding
            try:
                if not admit(self._receive.receive_nowait()):
                    return
            except trio.WouldBlock:
                break
        if size < self.max_batch_size and self.max_wait > 0:
            with trio.move_on_after(self.max_wait):
                while size < self.max_batch_size:
                    if not admit(await self._receive.receive()):
                        break

    async def _compute(self, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]
        try:
            vectors = await trio.to_thread.run_sync(self.runtime.embed, texts, limiter=self._limiter)
        except ModelRuntimeError as exc:
            for request in batch:
                request.finish(error=BatchFailed(str(exc)))
            return
        except Exception as exc:  # a model failure must reach every caller, not kill the node
            for request in batch:
                request.finish(error=BatchFailed(f"{type(exc).__name__}: {exc}"))
            return
        self.batches_run += 1
        self.texts_run += len(texts)
        offset = 0
        for request in batch:
            rows = vectors[offset : offset + len(request.texts)]
            offset += len(request.texts)
            request.finish(result=np.array(rows, dtype=np.float32, copy=True))

    def _fail_all(self) -> None:
        """On shutdown every waiting caller gets BatcherClosed; nobody waits forever."""
        pending, self._batch = self._batch, []
        if self._carry is not None:
            pending.append(self._carry)
            self._carry = None
        while True:
            try:
                pending.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        for request in pending:
            request.finish(error=BatcherClosed("the batcher stopped"))
        self._queued_texts = 0
