"""The trio embedding batcher: batching, backpressure, cancellation, shutdown, failures."""

from __future__ import annotations

import threading
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing

from node.runtime import (
    MINILM_NAME,
    BatcherClosed,
    BatchFailed,
    Busy,
    EmbeddingBatcher,
    EmbeddingRuntime,
    InvalidInput,
    load_runtime,
)
from protocol.jobs.consensus import compare_embeddings

WAIT = 30  # seconds: generous bound for every wait on a loaded 2-core machine


@pytest.fixture(scope="module")
def runtime() -> EmbeddingRuntime:
    loaded = load_runtime(MINILM_NAME)
    assert isinstance(loaded, EmbeddingRuntime)
    return loaded


class GatedRuntime:
    """The real runtime behind a gate, so a test decides when a batch may finish computing."""

    def __init__(self, inner: EmbeddingRuntime, fail: bool = False) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.fail = fail

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        self.entered.set()
        if not self.gate.wait(WAIT):
            raise TimeoutError("gate never opened")
        if self.fail:
            raise RuntimeError("simulated model failure")
        return self.inner.embed(texts)


async def test_concurrent_requests_share_batches(runtime: EmbeddingRuntime) -> None:
    texts = [f"request number {i} about batching" for i in range(12)]
    expected = runtime.embed(texts)
    gated = GatedRuntime(runtime)
    batcher = EmbeddingBatcher(gated, max_batch_size=8, max_wait_ms=5)
    results: dict[int, np.ndarray] = {}

    async def one(i: int) -> None:
        results[i] = await batcher.embed([texts[i]])

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            async with trio.open_nursery() as callers:
                for i in range(12):
                    callers.start_soon(one, i)
                await trio.to_thread.run_sync(gated.entered.wait, WAIT)
                gated.gate.set()
            nursery.cancel_scope.cancel()
    assert sum(gated.calls) == 12 and max(gated.calls) <= 8 and len(gated.calls) < 12
    assert batcher.batches_run == len(gated.calls) and batcher.texts_run == 12
    for i in range(12):
        assert results[i].shape == (1, 384)
        assert compare_embeddings(results[i], expected[i : i + 1]).agree
    assert batcher.queued_texts == 0 and not batcher.running


async def test_multi_text_request_gets_its_own_rows(runtime: EmbeddingRuntime) -> None:
    batcher = EmbeddingBatcher(runtime, max_batch_size=4)
    texts = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            vectors = await batcher.embed(texts)  # larger than a batch: runs alone
            empty = await batcher.embed([])
            nursery.cancel_scope.cancel()
    assert vectors.shape == (6, 384) and empty.shape == (0, 384)
    assert compare_embeddings(vectors, runtime.embed(texts)).agree


async def test_full_queue_raises_busy_immediately(runtime: EmbeddingRuntime) -> None:
    gated = GatedRuntime(runtime)
    batcher = EmbeddingBatcher(gated, max_batch_size=2, max_wait_ms=0, max_queued_texts=3)
    outcomes: list[object] = []

    async def caller(texts: list[str]) -> None:
        try:
            outcomes.append((await batcher.embed(texts)).shape)
        except Busy as exc:
            outcomes.append(exc)

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            nursery.start_soon(caller, ["a", "b"])  # taken into the first batch, blocks in the gate
            await trio.to_thread.run_sync(gated.entered.wait, WAIT)
            async with trio.open_nursery() as callers:
                callers.start_soon(caller, ["c", "d"])
                callers.start_soon(caller, ["e"])
                await trio.testing.wait_all_tasks_blocked()
                assert batcher.queued_texts == 3
                with pytest.raises(Busy):
                    await batcher.embed(["overflow"])
                with pytest.raises(InvalidInput):
                    await batcher.embed(["x"] * 4)  # can never fit
                gated.gate.set()
            nursery.cancel_scope.cancel()
    assert sorted(o for o in outcomes if isinstance(o, tuple)) == [(1, 384), (2, 384), (2, 384)]


async def test_cancelled_caller_is_dropped_and_others_served(runtime: EmbeddingRuntime) -> None:
    gated = GatedRuntime(runtime)
    batcher = EmbeddingBatcher(gated, max_batch_size=1, max_wait_ms=0)
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            first = trio.CancelScope()

            async def blocked() -> None:
                with first:
                    await batcher.embed(["first"])

            nursery.start_soon(blocked)
            await trio.to_thread.run_sync(gated.entered.wait, WAIT)
            async with trio.open_nursery() as callers:
                withdrawn = trio.CancelScope()

                async def withdrawing() -> None:
                    with withdrawn:
                        await batcher.embed(["withdrawn"])

                callers.start_soon(withdrawing)
                await trio.testing.wait_all_tasks_blocked()
                withdrawn.cancel()
                await trio.testing.wait_all_tasks_blocked()
                gated.gate.set()
                result = await batcher.embed(["kept"])
            nursery.cancel_scope.cancel()
    assert result.shape == (1, 384)
    assert gated.calls == [1, 1]  # "withdrawn" never reached the model


async def test_model_failure_reaches_every_caller_and_batcher_survives(runtime: EmbeddingRuntime) -> None:
    gated = GatedRuntime(runtime, fail=True)
    batcher = EmbeddingBatcher(gated, max_batch_size=8, max_wait_ms=50)
    errors: list[BaseException] = []

    async def caller(text: str) -> None:
        try:
            await batcher.embed([text])
        except BatchFailed as exc:
            errors.append(exc)

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            gated.gate.set()
            async with trio.open_nursery() as callers:
                for text in ("one", "two", "three"):
                    callers.start_soon(caller, text)
            gated.fail = False
            assert (await batcher.embed(["after"])).shape == (1, 384)
            nursery.cancel_scope.cancel()
    assert len(errors) == 3 and all("simulated model failure" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 3


async def test_shutdown_answers_waiting_callers(runtime: EmbeddingRuntime) -> None:
    gated = GatedRuntime(runtime)
    batcher = EmbeddingBatcher(gated, max_batch_size=1, max_wait_ms=0)
    with pytest.raises(BatcherClosed):
        await batcher.embed(["not running"])
    outcomes: dict[str, object] = {}

    async def caller(text: str) -> None:
        try:
            outcomes[text] = (await batcher.embed([text])).shape
        except BatcherClosed as exc:
            outcomes[text] = exc

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as outer, trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            outer.start_soon(caller, "in flight")
            await trio.to_thread.run_sync(gated.entered.wait, WAIT)
            outer.start_soon(caller, "queued")
            await trio.testing.wait_all_tasks_blocked()
            gated.gate.set()
            nursery.cancel_scope.cancel()  # a running thread is never abandoned
    assert outcomes["in flight"] == (1, 384)  # computed rows are still delivered
    assert isinstance(outcomes["queued"], BatcherClosed)
    assert not batcher.running and batcher.queued_texts == 0


def test_parameters_are_validated(runtime: EmbeddingRuntime) -> None:
    with pytest.raises(ValueError):
        EmbeddingBatcher(runtime, max_batch_size=0)
    with pytest.raises(ValueError):
        EmbeddingBatcher(runtime, max_wait_ms=-1)


class RecordingRuntime(GatedRuntime):
    """A gated runtime that also keeps the texts of every batch, in order."""

    def __init__(self, inner: EmbeddingRuntime) -> None:
        super().__init__(inner)
        self.batches: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return super().embed(texts)


async def test_a_greedy_requester_cannot_fill_the_queue_or_delay_others_by_more_than_a_batch(
    runtime: EmbeddingRuntime,
) -> None:
    recording = RecordingRuntime(runtime)
    batcher = EmbeddingBatcher(
        recording, max_batch_size=8, max_wait_ms=0, max_queued_texts=64, max_queued_texts_per_owner=32
    )
    greedy, honest = b"greedy", b"honest"
    answered: list[str] = []

    async def ask(owner: bytes, texts: list[str]) -> None:
        await batcher.embed(texts, owner=owner)
        answered.append(texts[0])

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            async with trio.open_nursery() as callers:
                callers.start_soon(ask, b"first", ["blocker"])  # computing, held in the gate
                await trio.to_thread.run_sync(recording.entered.wait, WAIT)
                for job in range(4):  # the greedy requester's whole share: 4 jobs x 8 texts
                    callers.start_soon(ask, greedy, [f"greedy {job}.{i}" for i in range(8)])
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(Busy, match="this requester"):
                    await batcher.embed(["one more"], owner=greedy)
                callers.start_soon(ask, honest, ["honest"])  # the queue still has room for others
                await trio.testing.wait_all_tasks_blocked()
                assert batcher.queued_texts == 33
                recording.gate.set()
            nursery.cancel_scope.cancel()
    assert len(answered) == 6 and batcher.queued_texts == 0
    order = [batch[0].split(" ")[0] for batch in recording.batches]
    # First-come first-served would run all four greedy batches first; the honest text goes in
    # the batch after the one already being filled when it arrived.
    assert order.index("honest") <= 2, recording.batches
    assert sum(len(b) for b in recording.batches) == 34


async def test_owners_take_turns_within_a_batch(runtime: EmbeddingRuntime) -> None:
    recording = RecordingRuntime(runtime)
    batcher = EmbeddingBatcher(recording, max_batch_size=8, max_wait_ms=0)
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            async with trio.open_nursery() as callers:
                callers.start_soon(batcher.embed, ["blocker"])
                await trio.to_thread.run_sync(recording.entered.wait, WAIT)
                for i in range(12):
                    callers.start_soon(partial(batcher.embed, [f"a{i}"], owner=b"a"))
                for i in range(4):
                    callers.start_soon(partial(batcher.embed, [f"b{i}"], owner=b"b"))
                await trio.testing.wait_all_tasks_blocked()
                recording.gate.set()
            nursery.cancel_scope.cancel()
    second = recording.batches[1]
    assert len(second) == 8
    assert sorted(t for t in second if t.startswith("b")) == ["b0", "b1", "b2", "b3"], second
