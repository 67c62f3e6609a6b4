"""Load as the router sees it: our own in-flight jobs push concurrent jobs towards idle executors."""

from __future__ import annotations

import os

from node.jobs.standing import Standing
from protocol.jobs.selection import Candidate, rank_peers


def test_in_flight_jobs_fill_an_executor_and_free_it_again() -> None:
    standing = Standing(None, lambda: 0.0)
    busy = b"busy-executor"
    assert standing.load_of(busy, 0.0) == 0.0
    standing.job_started(busy)
    assert standing.load_of(busy, 0.0) == 0.5
    standing.job_started(busy)
    assert standing.load_of(busy, 0.0) == 1.0
    standing.job_ended(busy)
    standing.job_ended(busy)
    assert standing.load_of(busy, 0.0) == 0.0


def test_a_concurrent_job_goes_to_an_idle_executor_far_more_often() -> None:
    standing = Standing(None, lambda: 0.0)
    busy, idle = b"busy-executor", (b"idle-executor-1", b"idle-executor-2")
    standing.job_started(busy)
    standing.job_started(busy)
    draws = 3000
    first_on_busy = 0
    for _ in range(draws):
        candidates = [Candidate(peer, load=standing.load_of(peer, 0.0)) for peer in (busy, *idle)]
        first_on_busy += rank_peers(os.urandom(16), candidates)[0] == busy
    # weights 0.2 : 1 : 1, so the busy executor comes first 1 time in 11 (about 273 of 3000);
    # the bound is 10 standard deviations above that, far below the 1 in 3 of an unweighted draw
    assert first_on_busy < 430
