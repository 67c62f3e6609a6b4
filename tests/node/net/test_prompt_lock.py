"""PromptLock / PromptSemaphore: trio's exclusion and fair hand-off, without a yield when free."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from node.net.prompt_lock import PromptLock, PromptSemaphore


@pytest.mark.parametrize("make", [PromptLock, lambda: PromptSemaphore(1)])
async def test_a_free_lock_is_taken_without_letting_another_task_run(make: object) -> None:
    lock = make()  # type: ignore[operator]
    ran = trio.Event()

    async def other() -> None:
        ran.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)  # runs at this task's next schedule point
        await lock.acquire()
        assert not ran.is_set()
        lock.release()
        await ran.wait()


@pytest.mark.parametrize("make", [PromptLock, lambda: PromptSemaphore(1)])
async def test_a_held_lock_excludes_and_hands_off_in_arrival_order(make: object) -> None:
    lock = make()  # type: ignore[operator]
    order: list[int] = []
    inside = 0

    async def user(n: int) -> None:
        nonlocal inside
        async with lock:
            inside += 1
            assert inside == 1
            order.append(n)
            await trio.sleep(0.001)
            inside -= 1

    async with trio.open_nursery() as nursery:
        await lock.acquire()  # held while the users queue up
        for n in range(5):
            nursery.start_soon(user, n)
            await trio.testing.wait_all_tasks_blocked()  # user n parked before n + 1 starts
        lock.release()
    assert order == [0, 1, 2, 3, 4]


async def test_a_late_arrival_does_not_overtake_waiters() -> None:
    lock = PromptLock()
    order: list[str] = []

    async def waiter() -> None:
        async with lock:
            order.append("waiter")

    async with trio.open_nursery() as nursery:
        await lock.acquire()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()  # the waiter parks
        lock.release()  # handed to the waiter, which has not run yet
        with pytest.raises(trio.WouldBlock):
            lock.acquire_nowait()
        async with lock:
            order.append("late")
    assert order == ["waiter", "late"]


async def test_cancelling_a_waiter_leaves_the_lock_usable() -> None:
    lock = PromptLock()

    async def impatient() -> None:
        with trio.move_on_after(0.01):
            await lock.acquire()

    await lock.acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(impatient)
    lock.release()
    assert not lock.locked()
    async with lock:
        assert lock.locked()
