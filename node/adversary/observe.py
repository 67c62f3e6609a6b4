"""Watch target nodes while an attack runs: alive, event-loop stall, memory, CPU, honest latency.

The event-loop stall is measured from outside as the latency of ``GET /healthz``: the API is served
on the node's trio loop, so a loop frozen for ``t`` seconds answers ``t`` late. Memory is the
process's resident set (``/proc/PID/status``), CPU its user + system time (``/proc/PID/stat``).
Honest traffic is whatever callable the caller passes (tests and ``make bench`` send embeddings
jobs through node 0's API). Everything runs in threads, so it works beside any event loop.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = [
    "HonestStats",
    "NodeStats",
    "Observation",
    "Observer",
    "alive",
    "cpu_seconds",
    "embeddings_client",
    "percentile",
    "rss_mb",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HEALTH_TIMEOUT = 30.0


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB, or None if it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def alive(pid: int) -> bool:
    return rss_mb(pid) is not None


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class NodeStats:
    pid: int
    alive: bool
    worst_stall_s: float  # the slowest /healthz answer (or unanswered wait) seen
    health_failures: int
    peak_rss_mb: float
    rss_start_mb: float
    rss_end_mb: float
    cpu_percent: float


@dataclass
class HonestStats:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 0.95)


@dataclass
class Observation:
    seconds: float
    nodes: list[NodeStats]
    honest: HonestStats

    @property
    def deaths(self) -> int:
        return sum(not node.alive for node in self.nodes)

    @property
    def worst_stall_s(self) -> float:
        return max((node.worst_stall_s for node in self.nodes), default=0.0)

    @property
    def peak_rss_mb(self) -> float:
        return max((node.peak_rss_mb for node in self.nodes), default=0.0)

    def summary(self) -> dict[str, float | int]:
        return {
            "deaths": self.deaths,
            "honest_ok": len(self.honest.latencies),
            "honest_failures": len(self.honest.failures),
            "honest_p50_s": round(self.honest.p50, 4),
            "honest_p95_s": round(self.honest.p95, 4),
            "worst_stall_s": round(self.worst_stall_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


class Observer:
    """Polls every node in ``nodes`` ((pid, api_url) pairs) and runs ``honest`` in a loop until stopped.

    ``honest()`` returns None on success or a failure description; its wall time is the latency.
    """

    def __init__(
        self,
        nodes: Sequence[tuple[int, str]],
        honest: Callable[[], str | None] | None = None,
        interval: float = 0.1,
        honest_pause: float = 0.2,
    ) -> None:
        self._nodes = list(nodes)
        self._honest = honest
        self._interval = interval
        self._honest_pause = honest_pause
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stall = [0.0] * len(self._nodes)
        self._health_failures = [0] * len(self._nodes)
        self._peak = [0.0] * len(self._nodes)
        self._rss_start = [rss_mb(pid) or 0.0 for pid, _ in self._nodes]
        self._cpu_start = [cpu_seconds(pid) for pid, _ in self._nodes]
        self._honest_stats = HonestStats()
        self._started = 0.0

    def __enter__(self) -> Observer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._started = time.monotonic()
        for index in range(len(self._nodes)):
            self._spawn(self._poll, index)
        if self._honest is not None:
            self._spawn(self._honest_loop)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll(self, index: int) -> None:
        pid, api_url = self._nodes[index]
        with httpx.Client(timeout=HEALTH_TIMEOUT) as client:
            while not self._stop.is_set():
                rss = rss_mb(pid)
                if rss is None:
                    return
                self._peak[index] = max(self._peak[index], rss)
                started = time.monotonic()
                try:
                    client.get(f"{api_url}/healthz").raise_for_status()
                except httpx.HTTPError:
                    self._health_failures[index] += 1
                self._stall[index] = max(self._stall[index], time.monotonic() - started)
                self._stop.wait(self._interval)

    def _honest_loop(self) -> None:
        assert self._honest is not None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                failure = self._honest()
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
            if failure is None:
                self._honest_stats.latencies.append(time.monotonic() - started)
            else:
                self._honest_stats.failures.append(failure[:200])
            self._stop.wait(self._honest_pause)

    def stop(self, timeout: float = 90.0) -> Observation:
        """Stop polling (an honest request in flight is waited for, up to ``timeout``)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - self._started
        nodes = []
        for index, (pid, _api) in enumerate(self._nodes):
            end = rss_mb(pid)
            nodes.append(
                NodeStats(
                    pid=pid,
                    alive=end is not None,
                    worst_stall_s=self._stall[index],
                    health_failures=self._health_failures[index],
                    peak_rss_mb=self._peak[index],
                    rss_start_mb=self._rss_start[index],
                    rss_end_mb=end or 0.0,
                    cpu_percent=100 * (cpu_seconds(pid) - self._cpu_start[index]) / max(elapsed, 1e-6),
                )
            )
        return Observation(elapsed, nodes, self._honest_stats)


def embeddings_client(
    api_url: str, model: str, texts: Sequence[str], timeout: float = 60.0
) -> Callable[[], str | None]:
    """An honest user's request: ``POST /v1/embeddings`` through a node's API."""
    client = httpx.Client(timeout=timeout)
    body = {"model": model, "input": list(texts)}

    def request() -> str | None:
        response = client.post(f"{api_url}/v1/embeddings", json=body)
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:150]}"
        if len(response.json()["data"]) != len(texts):
            return "wrong number of embeddings"
        return None

    return request
