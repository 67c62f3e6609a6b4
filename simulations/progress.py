"""What a person watching a live run sees: a rich panel while it runs, a summary table at the end.

On a terminal the panel redraws twice a second; elsewhere (CI logs, ``make sim > log``) one line is
printed every ten seconds instead, so logs stay readable.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from simulations.live import LiveRun
from simulations.results import percentile

__all__ = ["Progress", "summary_table"]

LINE_EVERY_S = 10.0


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _status_line(run: LiveRun) -> str:
    ok = [j.latency_ms for j in run.jobs if j.status == "ok"]
    failed = len(run.jobs) - len(ok)
    sizes = [len(m) for m in (run.registry[-1]["members"].values() if run.registry else [])]
    registry = f"{min(sizes)}-{max(sizes)}" if sizes else "-"
    offenders = run.offenders()
    detected = ", ".join(f"{i}" for i in sorted(offenders)) or "none"
    duration = run.scenario.workload.duration_s
    return (f"t={run.now():5.1f}/{duration:.0f}s  {run.phase}  jobs ok {len(ok)} failed {failed}  "
            f"p50 {_fmt_ms(percentile(ok, 50))} p95 {_fmt_ms(percentile(ok, 95))}  "
            f"registries {registry}  offenders {detected}")


class Progress:
    """Feeds :class:`LiveRun` updates to a rich Live panel (or to periodic lines off a terminal)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self._last_line = 0.0
        self._notes_shown = 0

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, run: LiveRun) -> None:
        if self.live is not None:
            self.live.update(self._panel(run))
            return
        for message in run.messages[self._notes_shown:]:
            self.console.print(message, highlight=False)
        self._notes_shown = len(run.messages)
        now = time.monotonic()
        if now - self._last_line >= LINE_EVERY_S or run.phase in ("stopping", "done"):
            self._last_line = now
            self.console.print(_status_line(run), highlight=False)

    def _panel(self, run: LiveRun) -> Panel:
        ok = [j.latency_ms for j in run.jobs if j.status == "ok"]
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        duration = run.scenario.workload.duration_s
        table.add_row("phase", run.phase)
        table.add_row("time", f"{run.now():.1f} / {duration:.0f} s")
        table.add_row("links", f"{run.links.description['mode']}, delay {run.links.description['delay']}")
        table.add_row("jobs", f"[green]{len(ok)} ok[/]  [red]{len(run.jobs) - len(ok)} failed[/]")
        table.add_row("latency", f"p50 {_fmt_ms(percentile(ok, 50))}   p95 {_fmt_ms(percentile(ok, 95))}")
        if run.registry:
            sizes = run.registry[-1]["sizes"]
            table.add_row("registries", "  ".join(f"{k}:{'-' if v is None else v}" for k, v in sizes.items()))
        offenders = run.offenders()
        table.add_row("offenders", ", ".join(f"node {i} ({'/'.join(sorted(o))})" for i, o in
                                             sorted(offenders.items())) or "none detected")
        if run.faults:
            last = run.faults[-1]
            table.add_row("last fault", f"{last.kind} {list(last.nodes)} at {last.t:.1f} s")
        notes = Text("\n".join(run.messages[-4:]), style="dim")
        return Panel(Group(table, notes), title=f"veilnet sim: {run.scenario.name}", expand=False)


def summary_table(results: dict[str, Any]) -> Table:
    s = results["summary"]
    table = Table(title=f"{results['scenario']['name']}: summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    latency = s["latency_ms"]
    rows = [
        ("duration (workload)", f"{results['duration_s']:.1f} s"),
        ("setup (start + settle)", f"{results['setup_s']:.1f} s"),
        ("links", f"{results['links']['mode']}: delay {results['links']['delay']}, loss"
                  f" {results['links']['loss']}, partitions {results['links']['partitions']}"),
        ("jobs", str(s["jobs"])),
        ("accepted", f"{s['ok']}" + (f" ({s['success_rate']:.1%})" if s["success_rate"] is not None else "")),
        ("failed by status",
         ", ".join(f"{k}: {v}" for k, v in s["by_status"].items() if k != "ok") or "none"),
        ("latency p50 / p95", f"{_fmt_ms(latency['p50'])} / {_fmt_ms(latency['p95'])}"),
        ("throughput", "-" if s["throughput_per_s"] is None else f"{s['throughput_per_s']:.2f} jobs/s"),
        ("wrong answers accepted", str(s["wrong_accepted"])),
        ("hostile-peer attack runs", str(s["attack_runs"])),
        ("nodes that died unexpectedly", ", ".join(map(str, s["unexpected_exits"])) or "none"),
        ("bundles refused (honest nodes)",
         ", ".join(f"{k}: {v:.0f}" for k, v in s["bundles_rejected"].items()) or "none"),
        ("adversaries (flagged / banned)",
         f"{s['adversaries']} ({s['adversaries_flagged']} / {s['adversaries_banned']})"),
    ]
    for check in results["checks"]:
        mark = "[green]pass[/]" if check["passed"] else "[red]FAIL[/]"
        rows.append((f"check {check['name']}", f"{mark} {check['detail']}"))
    for name, value in rows:
        table.add_row(name, value)
    return table
