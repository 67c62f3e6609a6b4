"""Run every benchmark module (``bench/bench_*.py``), print a table, write bench/results.json.

Usage: ``python -m bench [--quick] [NAME ...]`` where each NAME selects the modules whose topic contains it
(``python -m bench sealing``). A module that fails is reported and the others still run; the exit
status is non-zero if any failed.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
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
    if value is None or value != value:  # None or NaN
        return ""
    if value == 0 or 0.01 <= abs(value) < 100_000:
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:.3g}"


def _cell(value: object) -> str:
    """Table cells are text: a float or None slipped into one must not crash the whole run."""
    if value is None or isinstance(value, (int, float)):
        return _fmt(value)
    return value if isinstance(value, str) else str(value)


def _environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str] = {}
    for package in ("veilnet", "torch", "libp2p", "trio", "pynacl"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "quick": bench.QUICK,
        "versions": versions,
    }


def _write(environment: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Rewritten after every module, so a later crash (or Ctrl-C) keeps what already ran."""
    tmp = RESULTS_PATH.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"environment": environment, "results": rows}, indent=2) + "\n")
    tmp.replace(RESULTS_PATH)


def main(argv: list[str]) -> int:
    if "--quick" in argv:
        argv = [a for a in argv if a != "--quick"]
        os.environ["VEILNET_BENCH_QUICK"] = "1"
        bench.QUICK = True  # modules are imported later and read it then
    # Rich assumes 80 columns when writing to a pipe or log; a benchmark table needs more.
    console = Console(width=None if sys.stdout.isatty() else 160)
    names = discover(argv)
    if not names:
        console.print(f"[red]no benchmark module matches {argv}[/red]")
        return 2
    rows: list[dict[str, Any]] = []
    environment = _environment()
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
            last_line = (error.strip().splitlines() or ["failed"])[-1]
            table.add_row(name.removeprefix("bench_"), "[red]FAILED[/red]", "", "", "", "", last_line[:80])
            rows.append({"module": name, "name": name, "error": last_line})
            _write(environment, rows)
            continue
        for r in results:
            baseline = f"{_cell(r.baseline)} ({_cell(r.baseline_name)})" if r.baseline is not None else ""
            cells = (name.removeprefix("bench_"), r.name, r.value, r.unit, baseline, r.ratio, r.goal)
            table.add_row(*(_cell(c) for c in cells))
            rows.append({"module": name, **r.to_dict()})
        _write(environment, rows)
        console.print(f"{name}: {len(results)} result(s) in {seconds:.1f}s, written to {RESULTS_PATH}")
    try:
        console.print(table)
    except Exception as exc:  # the results are already on disk; say why the table could not print
        console.print(f"[red]could not print the table: {type(exc).__name__}: {exc}[/red]")
    console.print(f"wrote {RESULTS_PATH}")
    if failures:
        console.print(f"[red]{len(failures)} benchmark module(s) failed: {', '.join(failures)}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
