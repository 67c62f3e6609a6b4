"""Where the wall time of one embeddings job goes: a merged timeline of every process it crosses.

Topology as ``bench_jobs`` (node 0 answers the API and serves no model; executors serve
all-MiniLM-L6-v2), every node started with ``VEILNET_JOB_TIMELINE`` (``node.timeline``): each
stage a job passes in the API node and the executors is a line with a ``CLOCK_MONOTONIC``
timestamp, one clock for all processes of the machine. This process adds ``client.sent`` and
``client.received`` around each HTTP request. Jobs are sent one at a time (k = 1, then k = 3).

For each job the stages are placed relative to ``client.sent``; the rows are the median offset
of each stage and the median time since the stage before it (in median order), in µs. An
executor's stages are suffixed ``#n``: the n-th executor the router sent the job to (its order of
``router.attempt``), so a k = 3 job shows whether its three attempts were sent at once and
whether their computations overlapped.

Run ``python -m bench timeline`` for the rows, or ``python -m bench.bench_timeline`` for the
full table printed stage by stage.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench import Result, quick
from bench.bench_jobs import _Network
from node import timeline
from node.testnet import snapshot_code
from protocol.identity import peer_id_from_text

SAMPLES = int(quick(60, 25))
WARMUP = 5

Timeline = dict[str, int]  # stage → monotonic ns
Turns = dict[str, tuple[int, int]]  # stage → (pid, event-loop turns of that process)
Row = tuple[str, float, float, float]
_LAST_OF = ("batch.thread_running", "batch.torch_done", "router.event.Committed", "router.event.Revealed")


def _client_mark(path: Path, job_hex: str, stage: str, ns: int) -> None:
    with open(path, "a", encoding="ascii") as handle:
        handle.write(f"{job_hex} {stage} {ns} {os.getpid()} 0\n")


Mark = tuple[str, int, int, int]  # stage, ns, pid, event-loop turns of that process


def read_timelines(path: Path, peer_tags: dict[int, str]) -> dict[str, list[Mark]]:
    """job id hex → its marks; executor stages (by pid) get their executor's tag."""
    jobs: dict[str, list[Mark]] = defaultdict(list)
    for line in path.read_text(encoding="ascii").splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        job, stage, ns, pid, turns = parts[0], parts[1], int(parts[2]), int(parts[3]), int(parts[4])
        tag = peer_tags.get(pid)
        if tag is not None and ":" not in stage:
            stage = f"{stage}:{tag}"
        jobs[job].append((stage, ns, pid, turns))
    return jobs


def normalise(marks: list[Mark]) -> tuple[Timeline, Turns] | None:
    """Stages relative to ``client.sent``, executor tags replaced by #n in order of attempt; and
    each stage's (process, loop turns)."""
    order: list[str] = []
    for stage, *_ in sorted(marks, key=lambda m: m[1]):
        name, _, tag = stage.partition(":")
        if name == "router.attempt" and tag not in order:
            order.append(tag)
    start = next((ns for stage, ns, *_ in marks if stage == "client.sent"), None)
    if start is None or not any(stage == "client.received" for stage, *_ in marks):
        return None
    out: Timeline = {}
    turns: Turns = {}
    for stage, ns, pid, turn in marks:
        name, _, tag = stage.partition(":")
        if tag:
            if tag not in order:
                continue
            name = f"{name}#{order.index(tag) + 1}"
        if name not in out:  # the first time a stage is reached
            out[name] = ns - start
            turns[name] = (pid, turn)
    if len(order) > 1:  # when the slowest executor reached the stages a k > 1 job waits for
        for stage in _LAST_OF:
            reached = [ns for name, ns in out.items() if name.partition("#")[0] == stage]
            if len(reached) == len(order):
                out[f"{stage}#last"] = max(reached)
    return out, turns


def summarise(jobs: list[tuple[Timeline, Turns]]) -> list[Row]:
    """(stage, median offset µs, median µs since the previous stage in that order, median event-
    loop turns since the previous stage when both are in one process, else NaN)."""
    timelines = [t for t, _ in jobs]
    stages: dict[str, list[int]] = defaultdict(list)
    for t in timelines:
        for stage, ns in t.items():
            stages[stage].append(ns)
    wanted = len(timelines) // 2  # a stage most jobs reach (drops the odd late duplicate)
    medians = sorted(
        ((stage, statistics.median(v)) for stage, v in stages.items() if len(v) > wanted), key=lambda s: s[1]
    )
    rows: list[Row] = []
    previous: str | None = None
    for stage, offset in medians:
        step, turn_step = 0.0, float("nan")
        if previous is not None:
            steps = [t[stage] - t[previous] for t in timelines if stage in t and previous in t]
            step = statistics.median(steps) / 1000.0 if steps else float("nan")
            counted = [
                u[stage][1] - u[previous][1]
                for _, u in jobs
                if stage in u and previous in u and u[stage][0] == u[previous][0] and u[stage][1]
            ]
            if len(counted) > wanted:
                turn_step = float(statistics.median(counted))
        rows.append((stage, offset / 1000.0, step, turn_step))
        previous = stage
    return rows


def loop_turns(jobs: list[tuple[Timeline, Turns]], first: str, last: str) -> float:
    """Median event-loop turns one process made between two of a job's stages (NaN if unknown)."""
    counts = [
        u[last][1] - u[first][1] for _, u in jobs if first in u and last in u and u[first][0] == u[last][0]
    ]
    return float(statistics.median(counts)) if counts else float("nan")


def _http_floor(network: _Network) -> float:
    """Median µs of ``GET /healthz`` on the API node: what HTTP alone costs a request here."""
    url = f"{network.nodes[0].api_url}/healthz"
    times = []
    for _ in range(SAMPLES):
        started = time.monotonic_ns()
        network.http.get(url).raise_for_status()
        times.append(time.monotonic_ns() - started)
    return statistics.median(times) / 1000.0


def _measure(replicas: int) -> tuple[list[Row], dict[str, float]]:
    """The stage rows, and the event-loop turns per job in the API node and in an executor."""
    with tempfile.TemporaryDirectory(prefix="veilnet-bench-timeline-") as tmp:
        root = Path(tmp)
        trace = root / "timeline.txt"
        os.environ[timeline.ENV] = str(trace)
        network = _Network(root / "testnet", snapshot_code(root / "code"))
        try:
            network.start(executors=replicas)
            tags = {  # executor process → the tag its peer id has in router stages
                int(node.info["pid"]): peer_id_from_text(node.info["peer_id"])[-4:].hex()
                for node in network.nodes[1:]
            }
            for _ in range(WARMUP):
                network.embed(replicas)
            trace.write_bytes(b"")  # the nodes keep it open (append mode): empty it, do not unlink
            floor = _http_floor(network)
            for _ in range(SAMPLES):
                sent = time.monotonic_ns()
                answer = network.embed(replicas)
                received = time.monotonic_ns()
                job = answer["veilnet"]["job_id"]
                _client_mark(trace, job, "client.sent", sent)
                _client_mark(trace, job, "client.received", received)
        finally:
            os.environ.pop(timeline.ENV, None)
            network.close()
        marks = read_timelines(trace, tags)
    jobs = [j for j in (normalise(m) for m in marks.values()) if j is not None]
    turns = {
        "API node, api.handler → api.response_built": loop_turns(jobs, "api.handler", "api.response_built"),
        "executor #1, exec.request_decoded → exec.written": loop_turns(
            jobs, "exec.request_decoded#1", "exec.written#1"
        ),
    }
    reference = ("http GET /healthz round trip (reference)", floor, floor, float("nan"))
    return [reference, *summarise(jobs)], turns


_SUMMARY = {  # (first stage, last stage) → row name; the full table: python -m bench.bench_timeline
    ("client.sent", "client.received"): "client send → answer received",
    ("batch.thread_running#1", "batch.torch_done#1"): "model call (first executor)",
    ("client.sent", "router.sealed#1"): "HTTP in + routing + sealing",
    ("router.sealed#1", "exec.request_decoded#1"): "libp2p hop to the executor",
    ("router.event.Committed#last", "router.event.Revealed#last"): "reveal round after the last commitment",
    ("client.sent", "router.answered"): "client send → answered at a majority (k > 1)",
    ("api.response_built", "client.received"): "HTTP out",
}


def run() -> list[Result]:
    """Summary rows (medians); the stage-by-stage table is printed by running the module."""
    results: list[Result] = []
    for replicas in (1, 3):
        rows, turns = _measure(replicas)
        offsets = {stage: offset for stage, offset, _, _ in rows}
        for (first, last), name in _SUMMARY.items():
            if first in offsets and last in offsets:
                results.append(Result(f"k={replicas} {name}", offsets[last] - offsets[first], "µs",
                                       goal="informational"))
        for where, count in turns.items():
            results.append(Result(f"k={replicas} event-loop turns per job, {where}", count, "turns",
                                  goal="informational"))
    return results


if __name__ == "__main__":
    for replicas in (1, 3):
        rows, turns = _measure(replicas)
        print(f"k = {replicas}: stage, median offset from client.sent (µs), median step from previous (µs),"
              " event-loop turns since previous (same process)")
        for stage, offset, step, turn_step in rows:
            shown = "" if turn_step != turn_step else f"{turn_step:>6.0f}"
            print(f"  {stage:<42} {offset:>10.0f} {step:>10.0f} {shown}")
        for where, count in turns.items():
            print(f"  event-loop turns per job, {where}: {count:.0f}")
