"""Locks whose uncontended acquire is not a schedule point, for the per-write path of the stack.

Every ``trio.Lock.acquire`` (and ``Semaphore.acquire``) yields to the scheduler even when the
lock is free, and one frame written to a peer passes about half a dozen of them (the job
stream's frame lock, yamux's stream write lock and window lock, the connection's write lock, the
PSK layer's lock); a frame read, a few more. Each yield is a full turn of the event loop (an
``epoll`` call and a pass over the run queue), so a message between two nodes cost a millisecond
of scheduling on top of its CPU (issue 12's job timeline; ``bench_hotpath`` has the row).

These wrappers take a free lock at once and wait (with trio's own fair hand-off) only when it is
held or others already wait, so ordering and mutual exclusion are trio's. What is dropped is the
schedule point itself: the caller still yields at its next real I/O (a socket send or receive
always does), so no task can run unbounded.
"""

from __future__ import annotations

from types import TracebackType

import trio

__all__ = ["PromptLock", "PromptSemaphore"]


class _Prompt:
    """Take ``inner`` at once when it is free; otherwise wait with trio's fair hand-off."""

    def __init__(self, inner: trio.Lock | trio.Semaphore) -> None:
        self._inner = inner

    async def acquire(self) -> None:
        try:
            self._inner.acquire_nowait()
        except trio.WouldBlock:
            await self._inner.acquire()

    def acquire_nowait(self) -> None:
        self._inner.acquire_nowait()

    def release(self) -> None:
        self._inner.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class PromptLock(_Prompt):
    """A ``trio.Lock`` (non-reentrant, fair) that does not yield when it is free."""

    def __init__(self) -> None:
        self._lock = trio.Lock()
        super().__init__(self._lock)

    def locked(self) -> bool:
        return self._lock.locked()


class PromptSemaphore(_Prompt):
    """A ``trio.Semaphore`` that does not yield when a unit is free."""

    def __init__(self, initial_value: int, *, max_value: int | None = None) -> None:
        self._semaphore = trio.Semaphore(initial_value, max_value=max_value)
        super().__init__(self._semaphore)

    @property
    def value(self) -> int:
        return self._semaphore.value
