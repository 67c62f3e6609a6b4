"""The debug job timeline (node.timeline): lines per stage, held HTTP stages, threads, batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio

from node import timeline
from node.runtime.batcher import EmbeddingBatcher


@pytest.fixture
def trace(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "timeline.txt"
    timeline.configure(str(path))
    yield path
    timeline.configure(None)


def _lines(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        job, stage, ns, pid, turns = line.split()
        assert int(ns) > 0 and int(pid) > 0 and int(turns) >= 0
        out.append((job, stage))
    return out


def test_off_writes_nothing_and_keeps_no_job(tmp_path: Path) -> None:
    timeline.configure(None)
    timeline.enter(b"\x01" * 16)
    timeline.mark("stage")
    assert timeline.current_job() is None
    assert not any(tmp_path.iterdir())


async def test_stages_before_the_job_id_are_written_under_it(trace: Path) -> None:
    job = bytes(range(16))

    async def request() -> None:
        timeline.start_request()
        timeline.mark("http.in")
        timeline.mark("http.parsed")
        assert not trace.exists()  # held: no job id yet
        timeline.enter(job)
        timeline.mark("routed", peer=b"peer-0001")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
    assert _lines(trace) == [(job.hex(), "http.in"), (job.hex(), "http.parsed"),
                             (job.hex(), "routed:" + b"0001".hex())]
    assert timeline.current_job() is None  # the request task's job did not leak into this one


async def test_a_worker_thread_and_the_batcher_mark_the_job_of_the_calling_task(trace: Path) -> None:
    class Runtime:
        dim = 2

        def embed(self, texts: list[str]) -> np.ndarray:
            return np.zeros((len(texts), 2), dtype=np.float32)

    batcher = EmbeddingBatcher(Runtime(), max_wait_ms=0.0)
    jobs = [bytes([n]) * 16 for n in range(1, 3)]

    async def job(job_id: bytes) -> None:
        timeline.enter(job_id)
        await trio.to_thread.run_sync(timeline.mark, "in.thread")  # the thread marks this task's job
        await batcher.embed(["text"])  # the batcher's task marks the jobs of the batch it runs

    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)
        async with trio.open_nursery() as jobs_nursery:
            for job_id in jobs:
                jobs_nursery.start_soon(job, job_id)
        nursery.cancel_scope.cancel()
    lines = _lines(trace)
    for job_id in jobs:
        stages = [stage for j, stage in lines if j == job_id.hex()]
        assert stages == ["in.thread", "batch.queued", "batch.started", "batch.thread_running",
                          "batch.torch_done", "batch.back_in_loop"]


async def test_marks_carry_the_event_loop_turns_between_them(trace: Path) -> None:
    timeline.count_loop_turns()
    job = b"\x07" * 16
    timeline.enter(job)
    timeline.mark("before")
    for _ in range(3):
        await trio.sleep(0.001)  # each sleep waits for I/O once at least
    timeline.mark("after")
    counts = [int(line.split()[4]) for line in trace.read_text().splitlines()]
    assert counts[1] - counts[0] >= 3
