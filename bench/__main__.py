"""Run every benchmark module (``bench/bench_*.py``), print a table, write bench/results.json.

Usage: ``python -m bench [NAME ...]`` where each NAME selects the modules whose topic contains it
(``python -m bench sealing``). A module that fails is reported and the others still run; the exit
status is non-zero if any failed.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import bench
from bench import Result

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"


def discover(selectors: list[str]) -> list[str]:
    names = sorted(
        info.name for info in pkgutil.iter_modules(bench.__path__) if info.name.startswith("bench_")
    )
    if selectors:
        names = [n for n in names if any(s in n.removeprefix("bench_") for s in selectors)]
    return names


def run_module(name: str) -> tuple[list[Result], str | None, float]:
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        results = list(module.run())
        bad = [r for r in results if not isinstance(r, Result)]
        if bad:
            raise TypeError(f"run() returned {type(bad[0]).__name__}, expected bench.Result")
    except Exception:
        return [], traceback.format_exc(limit=8), time.perf_counter() - start
    return results, None, time.perf_counter() - start


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0 or 0.01 <= abs(value) < 100_000:
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:.3g}"


def main(argv: list[str]) -> int:
    # Rich assumes 80 columns when writing to a pipe or log; a benchmark table needs more.
    console = Console(width=None if sys.stdout.isatty() else 160)
    names = discover(argv)
    if not names:
        console.print(f"[red]no benchmark module matches {argv}[/red]")
        return 2
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    table = Table(title="Veilnet benchmarks")
    for column in ("module", "benchmark", "value", "unit", "baseline", "ratio", "goal"):
        table.add_column(column, justify="right" if column in ("value", "baseline", "ratio") else "left")
    for name in names:
        console.print(f"running {name} …")
        results, error, seconds = run_module(name)
        if error is not None:
            failures[name] = error
            console.print(f"[red]{name} failed after {seconds:.1f}s[/red]\n{error}")
            table.add_row(
                name.removeprefix("bench_"),
                "[red]FAILED[/red]",
                "",
                "",
                "",
                "",
                error.strip().splitlines()[-1][:80],
            )
            rows.append({"module": name, "name": name, "error": error.strip().splitlines()[-1]})
            continue
        for r in results:
            baseline = f"{_fmt(r.baseline)} ({r.baseline_name})" if r.baseline is not None else ""
            table.add_row(
                name.removeprefix("bench_"), r.name, _fmt(r.value), r.unit, baseline, _fmt(r.ratio), r.goal
            )
            rows.append({"module": name, **r.to_dict()})
    console.print(table)
    RESULTS_PATH.write_text(json.dumps(rows, indent=2) + "\n")
    console.print(f"wrote {RESULTS_PATH}")
    if failures:
        console.print(f"[red]{len(failures)} benchmark module(s) failed: {', '.join(failures)}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
