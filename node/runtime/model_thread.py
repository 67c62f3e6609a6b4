"""A long-lived worker thread for one model's calls, handed work and answered with fewer wake-ups.

Why not ``trio.to_thread.run_sync``: it hands each call to its thread cache and reports back
through the run loop's entry queue, a task of its own that then reschedules the caller. On the
2-core machine the tests and benchmarks run on that was ~90–140 µs to reach the thread and
~160–400 µs back per call (the executor's loop wakes from epoll, runs the entry-queue task, and
only then the caller). An embeddings job crosses once each way. Here the call goes in on a
``queue.SimpleQueue`` and the thread answers with one byte on a socket pair that the caller awaits
with ``trio.lowlevel.wait_readable``, so epoll wakes the caller itself: ~30–90 µs there and
~60–300 µs back (``docs/PERFORMANCE.md``).

Semantics follow ``to_thread.run_sync`` without ``abandon_on_cancel``: once a call is handed over
it runs to the end and the caller waits for it even when cancelled (a model call cannot be
interrupted, and abandoning it would let the next call overlap it). Calls run one at a time.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import trio

__all__ = ["ModelThread"]

T = TypeVar("T")

_Call = tuple[Callable[..., Any], tuple[Any, ...]]


class ModelThread:
    """Runs calls in one dedicated thread, one at a time. Use as a context manager::

        with ModelThread("embed all-MiniLM-L6-v2") as thread:
            vectors = await thread.run_sync(runtime.embed, texts, limiter=compute_limiter)

    Leaving the block stops the thread (after the call in progress, if any) and joins it.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._outcome: tuple[Any, BaseException | None] = (None, None)
        self._lock = trio.Lock()  # one call in flight: the outcome slot and the wake byte are shared
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def __enter__(self) -> ModelThread:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread once its current call (if any) returns, and release the sockets."""
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join()
        self._wake_read.close()
        self._wake_write.close()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, args = call
            try:
                self._outcome = (fn(*args), None)
            except BaseException as exc:  # handed to the caller, which re-raises it
                self._outcome = (None, exc)
            self._wake_write.send(b"\0")

    async def run_sync(
        self, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        """``fn(*args)`` in the thread; its result, or its exception re-raised here.

        ``limiter`` (e.g. the node's compute limiter) is held while the call runs, as
        ``to_thread.run_sync`` holds its own. Free locks are taken without a schedule point; a
        cancelled caller is refused before its call is handed over.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if limiter is not None:
            await _take(limiter)
        try:
            await _take(self._lock)
            try:
                return await self._call(fn, args)
            finally:
                self._lock.release()
        finally:
            if limiter is not None:
                limiter.release()

    async def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if not self._thread.is_alive():
            raise RuntimeError("the model thread is closed")
        self._calls.put((fn, args))
        with trio.CancelScope(shield=True):  # handed over: wait for it to end (module docstring)
            await trio.lowlevel.wait_readable(self._wake_read.fileno())
        self._wake_read.recv(16)
        value, error = self._outcome
        self._outcome = (None, None)
        if error is not None:
            raise error
        return value


async def _take(lock: trio.Lock | trio.CapacityLimiter) -> None:
    """Take ``lock`` at once when it is free, else wait with trio's fair hand-off: the same rule
    as ``node.net.prompt_lock``, which this layer (below ``node.net``) cannot import."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
