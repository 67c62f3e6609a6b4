"""``veilnet sim calibrate``: measure the scale model's parameters on real nodes of this machine.

Three measurements, each on real ``veilnet node start`` processes started through
:mod:`node.testnet`:

1. **Per-hop time** (transport + decoding + appraisal of a bundle): ``hop_nodes`` nodes that serve
   no model (so no torch), re-announcing every few seconds. With at most D+1 nodes every peer is in
   every mesh, so each delivery is one hop. A delay is ``verified_at`` of a bundle in a receiver's
   registry minus ``announced_at`` of the same bundle (same digest) at its publisher; both are
   wall-clock times on this machine.
2. **Propagation on a larger mesh** (default 20 nodes), measured the same way: what the model's
   N=20 prediction is checked against (within 25 %).
3. **Job latency**: a short live run (4 nodes, k=3 consensus embeddings) through the API; its
   accepted jobs' latencies are what the model draws job latencies from.

Configured values that are not measured (gossip mesh degree and heartbeat, router timeouts) are
copied from the node's sources and recorded beside the measurements, with where they come from.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from node.config import NodeConfig
from node.testnet import create_testnet, snapshot_code, start_node_process, stop_processes, wait_for_info

__all__ = ["GOSSIP", "ROUTER", "calibrate", "measure_propagation"]

# node/net/gossip.py: GossipSub(degree=6, degree_low=4, degree_high=12, heartbeat_interval=1).
GOSSIP = {"degree": 6, "degree_low": 4, "degree_high": 12, "heartbeat_s": 1.0, "source": "node/net/gossip.py"}
# node/jobs/router.py RouterSettings defaults.
ROUTER = {"commit_timeout_s": 10.0, "deadline_s": 30.0, "source": "node/jobs/router.py RouterSettings"}
HOP_REANNOUNCE_S = 3  # 6 nodes: many one-hop deliveries, appraisal load ~10 % of 2 cores
CHECK_REANNOUNCE_S = 10  # 20 nodes: 20·19 appraisals per period; at 3 s two cores saturate
SETTLE_TIMEOUT_S = 120.0

JOB_SCENARIO = """\
name = "calibration-jobs"
description = "job latencies for the scale model: 4 nodes, k=3 consensus embeddings"
[nodes]
count = 4
[workload]
duration_s = {duration}
concurrency = 1
replicas = 3
texts_per_job = 2
"""


def _snapshot(
    client: httpx.Client, urls: list[str]
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Every node's info and registry, read in parallel (a sequential sweep of 20 loaded nodes
    takes longer than a re-announce period)."""

    def one(url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        info = client.get(f"{url}/veilnet/v1/node").json()
        return info, client.get(f"{url}/veilnet/v1/peers").json()["peers"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = list(pool.map(one, urls))
    return [info for info, _ in pairs], [peers for _, peers in pairs]


class MachineLoad:
    """What else wanted this machine's CPU while a measurement ran (``with MachineLoad() as load``).

    Samples ``procs_running`` (tasks running or waiting for a core, this sampler excluded) every
    ``interval`` seconds and reads the cores' busy time from ``/proc/stat`` at both ends. The scale
    model needs it: a node's work on a machine where R tasks share C cores runs at C/R of a core.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._runnable: list[int] = []
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._start: tuple[int, int] = (0, 0)
        self.summary: dict[str, float] = {}

    def __enter__(self) -> MachineLoad:
        self._start = _cpu_jiffies()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        busy, total = (end - start for end, start in zip(_cpu_jiffies(), self._start, strict=True))
        self.summary = {
            "cores": os.cpu_count() or 1,
            "busy_fraction": round(busy / total, 4) if total else 0.0,
            "runnable_mean": round(statistics.fmean(self._runnable), 3) if self._runnable else 0.0,
        }

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            with open("/proc/stat", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("procs_running "):
                        self._runnable.append(max(0, int(line.split()[1]) - 1))
                        break


def sched_seconds(pids: list[int]) -> tuple[float, float]:
    """(on a core, waiting for one) seconds of every thread of ``pids`` so far (``schedstat``).

    Their ratio is what contention cost the nodes themselves: work that needs ``c`` seconds of a
    core took ``c · (1 + waiting / running)`` while the node was runnable.
    """
    running = waiting = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                fields = task.read_text(encoding="ascii").split()
            except OSError:
                continue  # a thread that just ended
            running += int(fields[0])
            waiting += int(fields[1])
    return running / 1e9, waiting / 1e9


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (idle and iowait are not busy)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _messages_in(client: httpx.Client, url: str) -> float:
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line.startswith("veilnet_gossip_messages_in_total "):
            return float(line.split()[1])
    return 0.0


def measure_propagation(root: Path, nodes: int, seconds: float, reannounce_s: int) -> dict[str, Any]:
    """Delays (s) from a bundle's publication to its verification at every other node."""
    code_root = snapshot_code(root / "code")

    def no_models(index: int, config: NodeConfig) -> NodeConfig:
        return replace(config, models=(), reannounce_seconds=reannounce_s, bundle_lifetime_seconds=60)

    layout = create_testnet(root, nodes=nodes, api_port=0, node_overrides=no_models, code_root=code_root)
    processes = []
    delays: dict[tuple[str, str], float] = {}  # (bundle digest, receiver) -> seconds
    try:
        first = start_node_process(0, layout.node_configs[0], code_root=code_root)
        processes.append(first)
        wait_for_info(first, 120)
        for index, path in enumerate(layout.node_configs[1:], start=1):
            bootstrap = ("--bootstrap", first.multiaddr)
            processes.append(start_node_process(index, path, bootstrap, code_root=code_root))
        for process in processes[1:]:
            wait_for_info(process, 240)
        urls = [p.api_url for p in processes]
        with httpx.Client(timeout=5.0) as client:
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while time.monotonic() < deadline:
                _, registries = _snapshot(client, urls)
                if all(len(r) >= nodes for r in registries):
                    break
                time.sleep(0.5)
            settled = time.monotonic()
            cpu_before = sum(_cpu_seconds(p.process.pid) for p in processes)
            messages_before = sum(_messages_in(client, url) for url in urls)
            end = settled + seconds
            published: dict[str, float] = {}  # every bundle seen at its publisher -> announced_at
            load = MachineLoad()
            pids = [p.process.pid for p in processes]
            sched_before = sched_seconds(pids)
            with load:
                _collect_delays(client, urls, end, reannounce_s, published, delays)
            running, waiting = (b - a for b, a in zip(sched_seconds(pids), sched_before, strict=True))
            cpu_spent = sum(_cpu_seconds(p.process.pid) for p in processes) - cpu_before
            messages = sum(_messages_in(client, url) for url in urls) - messages_before
    finally:
        stop_processes(processes)
    values = sorted(delays.values())
    return {
        "nodes": nodes, "reannounce_s": reannounce_s, "window_s": seconds,
        "cpu_seconds": round(cpu_spent, 3), "messages_in": messages,
        # Upper bound of the CPU one received bundle costs: all of the nodes' CPU over the
        # window (idle work included, ~0.3 % per node) divided by the bundles they received.
        "cpu_per_message_s": round(cpu_spent / messages, 6) if messages else None,
        "machine_load": load.summary,
        # How much longer the nodes' work took than its CPU time: time waiting for a core while
        # runnable, over time on one (all threads of all nodes, from schedstat).
        "slowdown": round(1.0 + waiting / running, 3) if running else None,
        "samples": len(values), "delays_s": [round(v, 6) for v in values],
        "mean_s": statistics.fmean(values) if values else None,
        "median_s": statistics.median(values) if values else None,
    }


def _collect_delays(
    client: httpx.Client, urls: list[str], end: float, reannounce_s: int,
    published: dict[str, float], delays: dict[tuple[str, str], float],
) -> None:
    """Until ``end``: pair each bundle's publication with its verification at every receiver."""
    while time.monotonic() < end:
        infos, registries = _snapshot(client, urls)
        published.update(
            (i["bundle_digest"], float(i["announced_at"])) for i in infos if i.get("announced_at")
        )
        for receiver, entries in zip(infos, registries, strict=True):
            for entry in entries:
                digest = entry.get("bundle_digest")
                if entry["peer_id"] == receiver["peer_id"] or digest not in published:
                    continue
                delay = float(entry["verified_at"]) - float(published[digest])
                if 0 <= delay < reannounce_s * 10:  # a stale pairing would be negative or huge
                    delays.setdefault((str(digest), str(receiver["peer_id"])), delay)
        time.sleep(0.5)


def calibrate(out: Path, *, hop_nodes: int = 6, check_nodes: int = 20, seconds: float = 30.0,
              job_seconds: float = 30.0) -> dict[str, Any]:
    """Run the three measurements under ``out`` and return the calibration document."""
    from rich.console import Console

    from simulations.runner import run_scenario

    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    console.print(f"1/3 per-hop time: {hop_nodes} nodes without models, {seconds:.0f} s")
    hop = measure_propagation(out / "hop", hop_nodes, seconds, HOP_REANNOUNCE_S)
    console.print(f"    {hop['samples']} deliveries, median {hop['median_s']}")
    console.print(f"2/3 propagation: {check_nodes} nodes without models, {seconds:.0f} s")
    check = measure_propagation(out / "check", check_nodes, max(seconds, 4 * CHECK_REANNOUNCE_S),
                                 CHECK_REANNOUNCE_S)
    console.print(f"    {check['samples']} deliveries, mean {check['mean_s']}")
    console.print(f"3/3 job latency: 4 nodes, k=3, {job_seconds:.0f} s")
    scenario = out / "jobs.toml"
    scenario.write_text(JOB_SCENARIO.format(duration=job_seconds), encoding="utf-8")
    document, _ = run_scenario(scenario, out / "jobs", console=Console(quiet=True))
    jobs = [j for j in document["jobs"] if j["status"] == "ok"]
    latencies = sorted(round(j["latency_ms"] / 1000, 6) for j in jobs)
    calibration = {
        "schema": "veilnet-scale-calibration/1",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": document["machine"],
        "hop_latency_s": hop["delays_s"],
        "hop_nodes": hop_nodes,
        "hop_run": {k: v for k, v in hop.items() if k != "delays_s"},
        "appraisal_s": hop["cpu_per_message_s"],
        "propagation_check": {k: v for k, v in check.items() if k != "delays_s"},
        "job_latency_s": latencies,
        "gossip": GOSSIP,
        "router": ROUTER,
    }
    path = out / "calibration.json"
    path.write_text(json.dumps(calibration, indent=1), encoding="utf-8")
    console.print(f"wrote {path}")
    return calibration
