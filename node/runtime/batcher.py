"""Dynamic batching of concurrent embedding requests for one model (trio side of the runtime).

Batched inference is several times faster per text on a CPU than one text per call, so concurrent
jobs for the same model share forward passes: the batcher takes every request already waiting,
waits at most ``max_wait_ms`` for more until ``max_batch_size`` texts are gathered, runs one
``embed`` call in the model's own thread (``ModelThread``), and hands each caller its own rows.
Under load, requests pile up while a batch computes and the next batch starts with all of them,
with no extra wait.

Backpressure: at most ``max_queued_texts`` texts may wait; beyond that ``embed`` raises ``Busy`` at
once, so the router can try another executor instead of queueing behind a saturated one.

Fairness between requesters: a request larger than a batch is split into batch-sized pieces,
and every request names its ``owner`` (the requesting peer). Each owner's share is
``max_queued_texts_per_owner`` texts; beyond it an owner may use idle queue space only while one
share stays free for others, so one greedy client cannot fill the queue and make everyone else's
requests fail with ``Busy`` (yet an API node relaying many users, one owner, is not capped when
nobody else is waiting); and batches are filled by deficit
round-robin over owners (Shreedhar & Varghese, 1995), counting texts, so a client with thousands
of texts waiting delays another client's one-text request by at most about one batch.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import trio

from node import timeline
from node.runtime.errors import BatcherClosed, Busy, InvalidInput, ModelRuntimeError
from node.runtime.model_thread import ModelThread

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
    owner: bytes = b""
    done: trio.Event = field(default_factory=trio.Event)
    result: np.ndarray | None = None
    error: ModelRuntimeError | None = None
    abandoned: bool = False
    job: bytes | None = None  # for the debug timeline only (node.timeline)

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
        max_queued_texts_per_owner: int | None = None,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        per_owner = max_queued_texts if max_queued_texts_per_owner is None else max_queued_texts_per_owner
        if max_batch_size < 1 or max_queued_texts < 1 or per_owner < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and the queue limits must be >= 1, max_wait_ms >= 0")
        self.runtime = runtime
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queued_texts = max_queued_texts
        self.max_queued_texts_per_owner = min(per_owner, max_queued_texts)
        # Beyond its share an owner may use the queue only up to this, leaving one share free.
        self._shared_room = max(self.max_queued_texts - self.max_queued_texts_per_owner, per_owner)
        self._limiter = limiter or trio.CapacityLimiter(1)
        # Owner → its waiting requests, in round-robin order (the next owner to serve first).
        self._queues: OrderedDict[bytes, deque[_Request]] = OrderedDict()
        self._owner_texts: dict[bytes, int] = {}
        self._deficit: dict[bytes, int] = {}
        self._quantum = max(1, max_batch_size // 4)
        self._arrived = trio.Event()
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

    async def embed(self, texts: Sequence[str], owner: bytes = b"") -> np.ndarray:
        """Embed ``texts`` as part of a batch; returns float32 ``[len(texts), dim]`` (caller-owned).

        ``owner`` names the requester whose share of the queue this request uses. Raises ``Busy``
        immediately when the queue or the owner's share of it is full, ``BatcherClosed`` when the
        batcher is not running (or stops before the result is ready), ``InvalidInput`` for bad input and
        ``BatchFailed`` when the model call fails. Cancelling the caller withdraws its request.
        """
        if not self._running:
            raise BatcherClosed("the batcher is not running")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidInput("texts must be a sequence of str")
        count = len(texts)
        if count == 0:
            return np.empty((0, self.runtime.dim), dtype=np.float32)
        if count > self.max_queued_texts_per_owner:
            limit = self.max_queued_texts_per_owner
            raise InvalidInput(f"{count} texts exceed the per-request limit of {limit}")
        if self._queued_texts + count > self.max_queued_texts:
            raise Busy(f"{self._queued_texts} texts already queued (limit {self.max_queued_texts})")
        mine = self._owner_texts.get(owner, 0)
        if mine + count > self.max_queued_texts_per_owner and self._queued_texts + count > self._shared_room:
            share = self.max_queued_texts_per_owner
            raise Busy(f"this requester has {mine} texts queued (its share: {share})")
        # A request larger than a batch is queued as batch-sized pieces, so other requesters'
        # texts are served between them instead of waiting for one huge forward pass.
        step = self.max_batch_size
        job = timeline.current_job()
        pieces = [_Request(list(texts[i : i + step]), owner, job=job) for i in range(0, count, step)]
        timeline.mark("batch.queued")
        for piece in pieces:
            self._enqueue(piece)
        try:
            for piece in pieces:
                await piece.done.wait()
        except BaseException:
            for piece in pieces:
                self._withdraw(piece)  # dropped if still queued, rows discarded if already running
            raise
        for piece in pieces:
            if piece.error is not None:
                raise piece.error  # one instance per request: no traceback shared between tasks
        results: list[np.ndarray] = []
        for piece in pieces:
            assert piece.result is not None
            results.append(piece.result)
        return results[0] if len(results) == 1 else np.concatenate(results)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve batches until cancelled. Start with ``await nursery.start(batcher.run)``."""
        if self._running:
            raise RuntimeError("this batcher is already running")
        self._running = True
        try:
            with ModelThread(f"embed {getattr(self.runtime, 'name', 'model')}") as thread:
                task_status.started()
                while True:
                    await self._collect()
                    if self._batch:
                        await self._compute(thread, self._batch)
                    self._batch = []
        finally:
            self._running = False
            self._fail_all()

    # -- the per-owner queues -----------------------------------------------------------------

    def _enqueue(self, request: _Request) -> None:
        count = len(request.texts)
        self._queued_texts += count
        self._owner_texts[request.owner] = self._owner_texts.get(request.owner, 0) + count
        queue = self._queues.get(request.owner)
        if queue is None:
            queue = self._queues[request.owner] = deque()
            self._deficit[request.owner] = 0
        queue.append(request)
        self._arrived.set()

    def _dequeue(self, owner: bytes) -> _Request:
        queue = self._queues[owner]
        request = queue.popleft()
        self._forget(request)
        if not queue:  # an idle owner keeps no credit (DRR): it cannot save up for a burst
            del self._queues[owner]
            del self._deficit[owner]
        return request

    def _forget(self, request: _Request) -> None:
        count = len(request.texts)
        self._queued_texts -= count
        left = self._owner_texts[request.owner] - count
        if left:
            self._owner_texts[request.owner] = left
        else:
            del self._owner_texts[request.owner]

    def _withdraw(self, request: _Request) -> None:
        request.abandoned = True
        queue = self._queues.get(request.owner)
        if queue is None or request not in queue:
            return  # already in a batch: its rows are discarded
        queue.remove(request)
        self._forget(request)
        if not queue:
            del self._queues[request.owner]
            del self._deficit[request.owner]

    async def _collect(self) -> None:
        while not self._queues:
            self._arrived = trio.Event()
            await self._arrived.wait()
        self._batch = []
        self._fill()
        if self.max_wait > 0 and self._size() < self.max_batch_size:
            with trio.move_on_after(self.max_wait):
                while self._size() < self.max_batch_size:
                    self._arrived = trio.Event()
                    await self._arrived.wait()
                    if not self._fill():
                        break

    def _size(self) -> int:
        return sum(len(r.texts) for r in self._batch)

    def _fill(self) -> bool:
        """Deficit round-robin over owners into the current batch; False once the batch is full.

        Each visit credits an owner ``quantum`` texts and takes its waiting requests while they fit
        the credit and the batch (pieces are never larger than a batch). The owner visited
        last moves to the back, so the next batch starts with someone else.
        """
        size = self._size()
        while self._queues:
            for owner in list(self._queues):
                self._queues.move_to_end(owner)
                self._deficit[owner] += self._quantum
                queue = self._queues[owner]
                while queue:
                    count = len(queue[0].texts)
                    if self._batch and size + count > self.max_batch_size:
                        return False
                    if count > self._deficit[owner] and self._batch:
                        break
                    self._deficit[owner] = max(0, self._deficit[owner] - count)
                    self._batch.append(self._dequeue(owner))
                    size += count
                    if size >= self.max_batch_size:
                        return False
        return True

    async def _compute(self, thread: ModelThread, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]
        embed = self.runtime.embed
        if timeline.enabled():
            jobs = [request.job for request in batch]
            timeline.mark_many("batch.started", jobs)

            def embed(texts: list[str]) -> np.ndarray:
                timeline.mark_many("batch.thread_running", jobs)
                try:
                    return self.runtime.embed(texts)
                finally:
                    timeline.mark_many("batch.torch_done", jobs)

        try:
            vectors = await thread.run_sync(embed, texts, limiter=self._limiter)
        except ModelRuntimeError as exc:
            for request in batch:
                request.finish(error=BatchFailed(str(exc)))
            return
        except Exception as exc:  # a model failure must reach every caller, not kill the node
            for request in batch:
                request.finish(error=BatchFailed(f"{type(exc).__name__}: {exc}"))
            return
        timeline.mark_many("batch.back_in_loop", [request.job for request in batch])
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
        for queue in self._queues.values():
            pending.extend(queue)
        self._queues.clear()
        self._deficit.clear()
        self._owner_texts.clear()
        for request in pending:
            request.finish(error=BatcherClosed("the batcher stopped"))
        self._queued_texts = 0
