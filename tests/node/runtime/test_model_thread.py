"""ModelThread: the batcher's own worker thread (results, errors, order, cancellation, shutdown)."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from node.runtime.model_thread import ModelThread

WAIT = 10.0


async def test_result_and_exception_come_back_from_one_dedicated_thread() -> None:
    failure = ValueError("bad input")

    def fail() -> None:
        raise failure

    with ModelThread("test") as thread:
        idents = [await thread.run_sync(threading.get_ident) for _ in range(3)]
        assert await thread.run_sync(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError) as raised:
            await thread.run_sync(fail)
        assert raised.value is failure
        assert await thread.run_sync(lambda: "still serving") == "still serving"
    assert len(set(idents)) == 1 and idents[0] != threading.get_ident()


async def test_concurrent_callers_run_one_at_a_time_in_the_thread() -> None:
    running = 0
    most = 0
    guard = threading.Lock()

    def work(n: int) -> int:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.002)
        with guard:
            running -= 1
        return n * n

    results: dict[int, int] = {}

    async def caller(n: int) -> None:
        results[n] = await thread.run_sync(work, n)

    with ModelThread("test") as thread, trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(caller, n)
    assert results == {n: n * n for n in range(8)} and most == 1


async def test_the_limiter_is_held_while_the_call_runs() -> None:
    limiter = trio.CapacityLimiter(1)
    with ModelThread("test") as thread:
        held = await thread.run_sync(lambda: limiter.borrowed_tokens, limiter=limiter)
    assert held == 1 and limiter.borrowed_tokens == 0


async def test_a_handed_over_call_is_waited_for_even_when_the_caller_is_cancelled() -> None:
    entered, release = threading.Event(), threading.Event()
    scope = trio.CancelScope()
    events: list[str] = []

    def slow() -> str:
        entered.set()
        release.wait(WAIT)
        events.append("call ended")
        return "done"

    async def caller() -> None:
        with scope:
            await thread.run_sync(slow)
        events.append("caller left")

    with ModelThread("test") as thread, trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.to_thread.run_sync(entered.wait, WAIT)
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert events == []  # cancelled, but still waiting for its call
            release.set()
        assert events == ["call ended", "caller left"]  # its result came back (as to_thread does)
        assert await thread.run_sync(lambda: "next") == "next"


async def test_an_already_cancelled_caller_hands_nothing_over() -> None:
    ran = threading.Event()
    with ModelThread("test") as thread:
        with trio.CancelScope() as scope:
            scope.cancel()
            await thread.run_sync(ran.set)
        assert await thread.run_sync(ran.is_set) is False


async def test_close_joins_the_thread_and_later_calls_are_refused() -> None:
    thread = ModelThread("test")
    ident = await thread.run_sync(threading.get_ident)
    thread.close()
    assert all(t.ident != ident for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        await thread.run_sync(threading.get_ident)
