"""Replay window: once per job id until its deadline, bounded memory, typed refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.jobs.replay import ReplayError, ReplayWindow

NOW = 1_800_000_000_000


def refused(window: ReplayWindow, job_id: bytes, deadline: int, now: int) -> str:
    with pytest.raises(ReplayError) as info:
        window.check_and_add(job_id, deadline, now)
    return info.value.reason


def test_a_job_id_is_accepted_once() -> None:
    window = ReplayWindow()
    window.check_and_add(b"a" * 16, NOW + 1000, NOW)
    assert refused(window, b"a" * 16, NOW + 1000, NOW + 1) == "replay"
    assert refused(window, b"a" * 16, NOW + 5000, NOW + 1) == "replay"  # any deadline
    window.check_and_add(b"b" * 16, NOW + 1000, NOW)
    assert len(window) == 2 and b"a" * 16 in window


def test_expired_and_far_future_deadlines_are_refused() -> None:
    window = ReplayWindow(max_ahead_ms=60_000)
    assert refused(window, b"a" * 16, NOW, NOW) == "expired"
    assert refused(window, b"a" * 16, NOW - 1, NOW) == "expired"
    assert refused(window, b"a" * 16, NOW + 60_001, NOW) == "too_far"
    window.check_and_add(b"a" * 16, NOW + 60_000, NOW)


def test_replay_after_the_deadline_is_refused_as_expired() -> None:
    window = ReplayWindow()
    window.check_and_add(b"a" * 16, NOW + 1000, NOW)
    assert window.expire(NOW + 1000) == 1
    assert b"a" * 16 not in window
    # the replayed request carries the same authenticated deadline, so it is expired now
    assert refused(window, b"a" * 16, NOW + 1000, NOW + 1000) == "expired"


def test_full_window_refuses_instead_of_forgetting() -> None:
    window = ReplayWindow(max_entries=3)
    for i in range(3):
        window.check_and_add(bytes([i]) * 16, NOW + 1000 + i, NOW)
    assert refused(window, b"z" * 16, NOW + 1000, NOW) == "full"
    for i in range(3):  # nothing unexpired was evicted
        assert refused(window, bytes([i]) * 16, NOW + 1000 + i, NOW + 1) == "replay"
    window.check_and_add(b"z" * 16, NOW + 2000, NOW + 1000)  # the first one expired: room again
    assert len(window) == 3


def test_clock_stepping_back_does_not_resurrect_forgotten_ids() -> None:
    window = ReplayWindow()
    window.check_and_add(b"a" * 16, NOW + 1000, NOW)
    window.expire(NOW + 5000)
    assert refused(window, b"a" * 16, NOW + 1000, NOW) == "expired"


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(max_entries=0)
    with pytest.raises(ValueError):
        ReplayWindow(max_ahead_ms=0)


events = st.lists(
    st.tuples(st.integers(0, 7), st.integers(-50, 400), st.integers(0, 60)), min_size=1, max_size=60
)


@given(events)
def test_window_matches_a_simple_model(steps: list[tuple[int, int, int]]) -> None:
    """Against a model that remembers everything forever: same accept/refuse decisions."""
    window = ReplayWindow(max_entries=4, max_ahead_ms=300)
    accepted: dict[bytes, int] = {}
    now = NOW
    for ident, ahead, advance in steps:
        now += advance
        job_id, deadline = bytes([ident]) * 16, now + ahead
        live = {j for j, d in accepted.items() if d > now}
        if deadline <= now:
            expected = "expired"
        elif ahead > 300:
            expected = "too_far"
        elif job_id in live:
            expected = "replay"
        elif len(live) >= 4:
            expected = "full"
        else:
            expected = "ok"
        if expected == "ok":
            window.check_and_add(job_id, deadline, now)
            accepted[job_id] = deadline
        else:
            assert refused(window, job_id, deadline, now) == expected
        assert len(window) <= 4
        # a job accepted earlier whose deadline is still ahead can never be accepted twice
        for j, d in accepted.items():
            if d > now:
                assert j in window
