"""bench_timeline's merging of the per-process marks into one timeline per job (no network)."""

from __future__ import annotations

from pathlib import Path

from bench.bench_timeline import loop_turns, normalise, read_timelines, summarise

API, EXEC_A, EXEC_B, CLIENT = 100, 200, 300, 400


def _trace(tmp_path: Path) -> Path:
    job = "ab" * 16
    lines = [
        (job, "client.sent", 1_000, CLIENT, 0),
        (job, "api.handler", 2_000, API, 10),
        (job, "router.attempt:00000002", 2_500, API, 11),
        (job, "router.attempt:00000001", 2_600, API, 11),
        (job, "exec.request_decoded", 4_000, EXEC_A, 50),
        (job, "exec.request_decoded", 4_500, EXEC_B, 70),
        (job, "router.event.Committed:00000001", 9_000, API, 20),
        (job, "router.event.Committed:00000002", 8_000, API, 19),
        (job, "api.response_built", 9_500, API, 25),
        (job, "client.received", 11_000, CLIENT, 0),
        ("cd" * 16, "api.handler", 5_000, API, 30),  # a job the client never finished: dropped
    ]
    path = tmp_path / "timeline.txt"
    path.write_text("".join(f"{j} {s} {ns} {pid} {t}\n" for j, s, ns, pid, t in lines))
    return path


def test_executors_are_numbered_by_attempt_order_and_the_last_one_is_found(tmp_path: Path) -> None:
    marks = read_timelines(_trace(tmp_path), {EXEC_A: "00000001", EXEC_B: "00000002"})
    jobs = [j for j in (normalise(m) for m in marks.values()) if j is not None]
    assert len(jobs) == 1
    timeline, turns = jobs[0]
    # 00000002 was attempted first, so it is #1; EXEC_B's pid carries its tag
    assert timeline["router.attempt#1"] == 1_500 and timeline["router.attempt#2"] == 1_600
    assert timeline["exec.request_decoded#1"] == 3_500 and timeline["exec.request_decoded#2"] == 3_000
    assert timeline["router.event.Committed#last"] == 8_000
    assert turns["api.response_built"] == (API, 25)
    assert loop_turns(jobs, "api.handler", "api.response_built") == 15


def test_rows_are_in_time_order_with_steps_and_same_process_turns(tmp_path: Path) -> None:
    marks = read_timelines(_trace(tmp_path), {EXEC_A: "00000001", EXEC_B: "00000002"})
    jobs = [j for j in (normalise(m) for m in marks.values()) if j is not None]
    rows = summarise(jobs)
    names = [name for name, *_ in rows]
    assert names[0] == "client.sent" and names[-1] == "client.received"
    by_name = {name: (offset, step, turns) for name, offset, step, turns in rows}
    assert by_name["api.handler"][:2] == (1.0, 1.0)
    assert by_name["router.attempt#1"][2] == 1  # API node: 11 - 10
    assert by_name["exec.request_decoded#2"][2] != by_name["exec.request_decoded#2"][2]  # other process: NaN
