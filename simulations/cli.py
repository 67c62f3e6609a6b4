"""``veilnet sim``: live scenarios on real node processes, leftover cleanup, and the scale model.

Registered by ``node/cli.py`` as the ``sim`` command group; this is the only place node/ reaches
into simulations/.

Exit codes of ``sim run``: 0 the run finished and every check passed; 1 the run failed (the reason
is printed and recorded); 2 the scenario is invalid (nothing was started); 3 a check failed;
130 interrupted (results written anyway).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

__all__ = ["SCENARIO_DIR", "resolve_scenario", "run_scenario", "sim_app"]

SCENARIO_DIR = Path(__file__).with_name("scenarios")

sim_app = typer.Typer(help="Simulations: live scenarios on real nodes, and the scale model.",
                      no_args_is_help=True)


def resolve_scenario(name_or_path: str) -> Path:
    """A path to a scenario file, or the name of a shipped one (``smoke`` → scenarios/smoke.toml)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    return SCENARIO_DIR / f"{name_or_path}.toml"


def run_scenario(path: Path, out: Path, *, seed: int | None = None, duration_s: float | None = None,
                 loopback: bool = False, console: Console | None = None) -> tuple[dict[str, object], int]:
    """Run one scenario end to end; returns (results document, exit code). Writes into ``out``."""
    import trio

    from simulations.links import choose_links
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


@sim_app.command("run")
def run(
    scenario: str = typer.Argument(..., help="Scenario file, or a shipped name: smoke, byzantine, churn,"
                                   " partition, hostile, forged."),
    out: Path | None = typer.Option(None, "--out", help="Output dir (default sim-out/<scenario>)."),
    seed: int | None = typer.Option(None, "--seed", help="Override the scenario's seed."),
    duration: float | None = typer.Option(None, "--duration", help="Override workload.duration_s (seconds)."),
    loopback: bool = typer.Option(False, "--loopback", help="Never use network namespaces."),
) -> None:
    """Start the scenario's nodes, drive its workload, inject its faults; write results and plots."""
    from simulations.links import LinkUnavailable
    from simulations.scenario import ScenarioError, load_scenario

    path = resolve_scenario(scenario)
    try:
        name = load_scenario(path).name
    except ScenarioError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        _, code = run_scenario(path, out or Path("sim-out") / name, seed=seed, duration_s=duration,
                               loopback=loopback)
    except LinkUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@sim_app.command("check")
def check(scenario: str = typer.Argument(..., help="Scenario file or shipped name.")) -> None:
    """Validate a scenario file without starting anything."""
    from simulations.scenario import ScenarioError, load_scenario

    try:
        parsed = load_scenario(resolve_scenario(scenario))
    except ScenarioError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{parsed.name}: {parsed.nodes.count} nodes, {parsed.adversary_count} adversarial, "
               f"{parsed.workload.duration_s:.0f} s workload — valid")


@sim_app.command("clean")
def clean() -> None:
    """Remove leftovers of interrupted runs: network namespaces, bridges, veths, iptables rules."""
    from simulations.netns import clean_leftovers

    for line in clean_leftovers():
        typer.echo(line)


@sim_app.command("scale")
def scale(
    out: Path = typer.Option(Path("simulations/out"), help="Where the report is written."),
    trials: int = typer.Option(4000, help="Monte Carlo trials per (f, k) cell."),
) -> None:
    """The scale model: exact odds and a Monte Carlo over the router's real peer selection."""
    from simulations.__main__ import print_scale_report

    print_scale_report(out, trials)
