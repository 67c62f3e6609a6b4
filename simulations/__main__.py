"""``python -m simulations``: the scale model (``make sim`` runs a live scenario: ``veilnet sim run``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from simulations.report import scale_report, write_outputs

app = typer.Typer(add_completion=False, help="Veilnet simulations.", invoke_without_command=True)
console = Console()


@app.callback()
def main(
    ctx: typer.Context,
    out: Path = typer.Option(Path("simulations/out"), help="Where reports are written."),
    trials: int = typer.Option(4000, help="Monte Carlo trials per (f, k) cell."),
) -> None:
    """Run the scale model (also ``veilnet sim scale``; live scenarios: ``veilnet sim run``)."""
    if ctx.invoked_subcommand is not None:
        return
    print_scale_report(out, trials)


def print_scale_report(out: Path, trials: int) -> None:
    """Print the scale model's tables and write scale.json and scale.png under ``out``."""
    report = scale_report(trials=trials)
    table = Table(title="P(wrong answer wins the vote): colluders among the k executors")
    for column in ("f bad", "k", "exact", "simulated", "all k bad", "f^k"):
        table.add_column(column, justify="right")
    for row in report["consensus"]:
        table.add_row(
            f"{row['fraction_bad']:.2f}", str(row["k"]), f"{row['p_bad_majority_exact']:.2e}",
            f"{row['p_bad_majority_simulated']:.2e}", f"{row['p_all_bad_exact']:.2e}",
            f"{row['f_pow_k']:.2e}",
        )
    console.print(table)
    spot = Table(title="Spot-check mode (k=3 verifiers with probability p)")
    for column in ("p", "executions/job", "caught in 10", "in 20", "in 50"):
        spot.add_column(column, justify="right")
    for row in report["spot_check"]:
        spot.add_row(f"{row['p']:.2f}", f"{row['cost_per_job']:.2f}", f"{row['caught_within_10']:.1%}",
                     f"{row['caught_within_20']:.1%}", f"{row['caught_within_50']:.1%}")
    console.print(spot)
    for path in write_outputs(report, out):
        console.print(f"wrote {path}")


if __name__ == "__main__":
    app()
