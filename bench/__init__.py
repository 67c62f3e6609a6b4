"""Benchmark framework: every ``bench/bench_<topic>.py`` exposes ``run() -> list[Result]``.

Each benchmark measures its own baseline in the same run (same machine, same load), so the ratio
is meaningful even where absolute numbers are not. ``python -m bench`` runs them all;
``python -m bench --quick`` (``VEILNET_BENCH_QUICK=1``) shortens every module to under about a
minute, for checking after a change (fewer samples: noisier ratios).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["QUICK", "Result", "measure", "measure_pair", "quick"]

QUICK = os.environ.get("VEILNET_BENCH_QUICK") == "1"


def quick(full: float, short: float) -> float:
    """``short`` in quick mode, else ``full`` (sample counts, windows, sizes)."""
    return short if QUICK else full


@dataclass
class Result:
    """One measured figure. ``ratio`` compares ``value`` to ``baseline`` in whatever sense ``goal`` states."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    goal: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loops_for(fn: Callable[[], object], target: float) -> int:
    """How many calls make one timed sample last about ``target`` seconds."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= target or loops >= 1 << 24:
            return loops
        loops = max(loops * 2, int(loops * target / max(elapsed, 1e-9)))


def _sample(fn: Callable[[], object], loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - start) / loops


def measure(fn: Callable[[], object], min_time: float = 0.5, repeat: int = 7) -> float:
    """Seconds per call of ``fn``: the median of ``repeat`` samples lasting ``min_time / repeat`` each.

    The median (not the mean) keeps one noisy sample (GC, another process) from moving the figure.
    """
    if QUICK:
        min_time, repeat = min_time / 5, max(3, repeat // 3)
    fn()  # warm up caches and lazy initialisation
    loops = _loops_for(fn, min_time / repeat)
    return statistics.median(_sample(fn, loops) for _ in range(repeat))


def measure_pair(
    fn: Callable[[], object], baseline: Callable[[], object], min_time: float = 1.5, repeat: int = 15
) -> tuple[float, float]:
    """Seconds per call of ``fn`` and of ``baseline``, sampled alternately.

    Interleaving means both see the same machine load, which matters more for a ratio than
    either absolute number.
    """
    if QUICK:
        min_time, repeat = min_time / 5, max(3, repeat // 3)
    fn()
    baseline()
    loops_fn = _loops_for(fn, min_time / (2 * repeat))
    loops_base = _loops_for(baseline, min_time / (2 * repeat))
    fn_samples, base_samples = [], []
    for _ in range(repeat):
        fn_samples.append(_sample(fn, loops_fn))
        base_samples.append(_sample(baseline, loops_base))
    return statistics.median(fn_samples), statistics.median(base_samples)
