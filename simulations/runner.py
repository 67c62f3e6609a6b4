"""One live run end to end: scenario file in; results.json, plots and a summary table out.

Used by ``veilnet sim run`` (simulations/cli.py), by ``veilnet sim calibrate``
(simulations/measure.py) and by the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["SCENARIO_DIR", "resolve_scenario", "run_scenario"]

SCENARIO_DIR = Path(__file__).with_name("scenarios")


def resolve_scenario(name_or_path: str) -> Path:
    """A path to a scenario file, or the name of a shipped one (``smoke`` → scenarios/smoke.toml)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    return SCENARIO_DIR / f"{name_or_path}.toml"


def run_scenario(path: Path, out: Path, *, seed: int | None = None, duration_s: float | None = None,
                 loopback: bool = False, console: Console | None = None) -> tuple[dict[str, Any], int]:
    """Run one scenario end to end; returns (results document, exit code). Writes into ``out``."""
    import trio

    from simulations.link_choice import choose_links
    from simulations.live import LiveRun
    from simulations.plots import write_plots
    from simulations.progress import Progress, summary_table
    from simulations.results import build_results, validate, write_results
    from simulations.scenario import load_scenario

    console = console or Console(width=None if Console().is_terminal else 110)
    scenario = load_scenario(path)
    if seed is not None:
        scenario = scenario.with_seed(seed)
    if duration_s is not None:
        scenario = scenario.with_duration(duration_s)
    links = choose_links(scenario, force_loopback=loopback)
    for message in links.description["messages"]:
        console.print(f"links: {message}", highlight=False)
    text = path.read_text(encoding="utf-8")
    with Progress(console) as progress:
        run = LiveRun(scenario, out, links, on_update=progress.update)
        trio.run(run.run)
    document = build_results(run, text)
    document["plots"] = []
    results_path = write_results(document, out)
    try:
        document["plots"] = [p.name for p in write_plots(document, out)]
    except Exception as exc:  # a plot must never cost the data
        run.messages.append(f"plots failed: {type(exc).__name__}: {exc}")
        document["messages"] = run.messages
    validate(document)
    write_results(document, out)
    console.print(summary_table(document))
    console.print(f"report: {results_path.resolve()}  plots: {', '.join(document['plots']) or 'none'}"
                  f"  node logs: {(out / 'testnet').resolve()}/node-*/node.log", highlight=False)
    if run.interrupted:
        return document, 130
    if run.error:
        console.print(f"[red]run failed:[/] {run.error}")
        return document, 1
    if not all(check["passed"] for check in document["checks"]):
        return document, 3
    return document, 0
