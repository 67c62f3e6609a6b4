"""A k = 3 job when one of its three executors is late: the answer comes at a majority.

Two networks shaped as ``bench_jobs``'s (node 0 answers the API and serves no model; three
executors serve all-MiniLM-L6-v2, one torch thread each). In the second, one executor waits
``LATE_S`` before each job (the test-only ``slow`` fault, allowed on simulated evidence only), as a
slower machine or a busier GPU would. The router answers once two of three agree
(docs/protocol/jobs.md §4, rule 6) and judges the late one afterwards, so the late executor should
not set the pace: the row is k = 3 p50 with one late executor against k = 3 p50 with none, both
measured in this run. On this machine the late executor's own model call, once its wait is over,
still shares the two cores with the next jobs, hence a goal of 1.5× rather than 1×. Before rule 6
the job waited for the late one: 3.1× and 3.6× in the eighth session (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from bench import Result, quick
from bench.bench_jobs import NODES, _Network
from node.config import NodeConfig
from node.testnet import snapshot_code

LATE_S = 0.1
SAMPLES = int(quick(60, 30))
WARMUP = 3


class _Straggling(_Network):
    """``bench_jobs``'s network; with ``late``, its last executor waits ``LATE_S`` per job."""

    def __init__(self, root: Path, code_root: Path, *, late: bool) -> None:
        super().__init__(root, code_root)
        self.late = late

    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        config = super()._overrides(index, config)
        if self.late and index == NODES - 1:
            config = replace(config, extra={**config.extra, "fault": "slow", "fault_slow_seconds": LATE_S})
        return config


def _k3_p50(*, late: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="veilnet-bench-stragglers-") as tmp:
        root = Path(tmp)
        network = _Straggling(root / "testnet", snapshot_code(root / "code"), late=late)
        try:
            network.start(executors=3)
            for _ in range(WARMUP):
                network.timed(3)
            return statistics.median(network.timed(3) for _ in range(SAMPLES))
        finally:
            network.close()


def run() -> list[Result]:
    prompt = _k3_p50(late=False)
    late = _k3_p50(late=True)
    return [
        Result(
            f"job k=3, one executor {LATE_S * 1000:.0f} ms late, p50", late * 1000.0, "ms", prompt * 1000.0,
            "k=3, no executor late, p50", late / prompt, "≤ 1.5× (its work still shares the cores)",
        )
    ]
