"""``veilnet sim``: live scenarios on real node processes, leftover cleanup, and the scale model.

Registered by ``node/cli/main.py`` as the ``sim`` command group; this is the only place node/ reaches
into simulations/.

Exit codes of ``sim run``: 0 the run finished and every check passed; 1 the run failed (the reason
is printed and recorded); 2 the scenario is invalid (nothing was started); 3 a check failed;
130 interrupted (results written anyway).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from simulations.runner import resolve_scenario, run_scenario

__all__ = ["sim_app"]

sim_app = typer.Typer(help="Simulations: live scenarios on real nodes, and the scale model.",
                      no_args_is_help=True)


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
    out: Path = typer.Option(Path("simulations/out"), help="Where the reports are written."),
    trials: int = typer.Option(4000, help="Monte Carlo trials per (f, k) cell of the selection check."),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="Calibration file (default: the one shipped, measured on 2 cores)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Fewer sizes and jobs (about 10 s)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The scale model: exact odds, a Monte Carlo over the router's real peer selection, and the
    calibrated discrete-event model of 1,000-10,000 nodes (propagation, churn, wrong answers)."""
    from rich.console import Console
    from rich.table import Table

    from simulations.__main__ import print_scale_report
    from simulations.scale import DEFAULT_CALIBRATION, load_calibration, run_scale, write_scale_plots

    print_scale_report(out, trials)
    console = Console()
    try:
        data = load_calibration(calibration or DEFAULT_CALIBRATION)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    report = run_scale(data, quick=quick, seed=seed)
    table = Table(title="Bundle propagation (discrete-event model, calibrated)")
    for column in ("nodes", "50 %", "95 %", "all", "copies/node/announce", "copies/node/s"):
        table.add_column(column, justify="right")
    for row in report["propagation"]:
        if row["saturated"]:
            load = f"appraisal load {row['appraisal_utilisation']:.0%}"
            table.add_row(str(row["nodes"]), "saturated", load, "-", "-", "-")
            continue
        table.add_row(
            str(row["nodes"]), f"{row['t50_s'] * 1000:.0f} ms", f"{row['t95_s'] * 1000:.0f} ms",
            f"{row['t100_s'] * 1000:.0f} ms", f"{row['messages_per_node_per_announce']:.1f}",
            f"{row['messages_per_node_per_s']:.1f}",
        )
    console.print(table)
    check = report["propagation_check"]
    if check["measured_mean_s"] and check["model_mean_s"] is None:
        console.print(f"{check['nodes']} nodes on {check['cores']} cores: the model says the machine"
                      " saturates"
                      f" (appraisal load {check['appraisal_utilisation']:.0%}); measured mean"
                      f" {check['measured_mean_s'] * 1000:.1f} ms")
    elif check["measured_mean_s"] and check["model_mean_s"] is not None:
        verdict = "within 25 %" if check["within_25_percent"] else "NOT within 25 %"
        console.print(f"{check['nodes']} nodes on {check['cores']} cores (their work took"
                      f" {check['slowdown']:.1f}x its CPU time): model mean"
                      f" {check['model_mean_s'] * 1000:.1f} ms, measured"
                      f" {check['measured_mean_s'] * 1000:.1f} ms"
                      f" ({check['relative_error']:.0%} apart, {verdict})")
    wrong = Table(title=f"P(wrong answer accepted), consensus, {report['network_for_jobs']} nodes")
    for column in ("f", "k", "exact", "model", "model + bans", "within 4σ"):
        wrong.add_column(column, justify="right")
    for row in report["consensus"]:
        wrong.add_row(
            f"{row['f']:.2f}", str(row["k"]), f"{row['exact']:.2e}", f"{row['no_bans']['p_wrong']:.2e}",
            f"{row['bans']['p_wrong']:.2e}", "yes" if row["within_4_sigma"] else "NO",
        )
    console.print(wrong)
    churn = Table(title="Jobs under churn (k=3; down 60 s each time)")
    for column in ("mean up", "accepted", "p50", "p95"):
        churn.add_column(column, justify="right")
    for row in report["churn"]:
        churn.add_row(
            "no churn" if row["mean_up_s"] is None else f"{row['mean_up_s']:.0f} s",
            f"{row['p_success']:.1%}", f"{row['latency_p50_s']:.2f} s", f"{row['latency_p95_s']:.2f} s",
        )
    console.print(churn)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale-model.json"
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    plots = write_scale_plots(report, out)
    console.print(f"wrote {path}, " + ", ".join(str(p) for p in plots))


@sim_app.command("calibrate")
def calibrate(
    out: Path = typer.Option(
        Path("sim-out/calibration"), "--out", help="Where the runs and calibration.json go."
    ),
    seconds: float = typer.Option(30.0, "--seconds", help="How long each propagation measurement samples."),
    check_nodes: int = typer.Option(20, "--check-nodes", help="Nodes of the propagation run the model is"
                                    " checked against."),
) -> None:
    """Measure the scale model's parameters on real nodes of this machine (per-hop time, propagation
    on 20 nodes, job latency); writes calibration.json for `veilnet sim scale --calibration`."""
    from simulations.measure import calibrate as measure

    measure(out, check_nodes=check_nodes, seconds=seconds)
