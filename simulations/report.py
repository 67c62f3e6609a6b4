"""The scale report: exact odds, a Monte Carlo over the router's real selection, and a plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protocol.jobs.selection import Candidate, select_peers
from simulations.scale_model import (
    monte_carlo,
    p_all_bad,
    p_bad_majority,
    p_caught_spot_check,
    spot_check_cost,
)

FRACTIONS = (0.05, 0.1, 0.2, 0.33)
REPLICAS = (1, 3, 5, 7)
NETWORK_SIZE = 200


def _select(job_id: bytes, peers: Sequence[bytes], k: int) -> list[bytes]:
    return select_peers(job_id, [Candidate(peer) for peer in peers], k)


def scale_report(trials: int = 4000, seed: bytes = b"veilnet-sim") -> dict[str, Any]:
    """Rows of (fraction bad, k) with exact and simulated probabilities that a wrong answer wins."""
    rows = []
    for fraction in FRACTIONS:
        bad = round(fraction * NETWORK_SIZE)
        for k in REPLICAS:
            mc = monte_carlo(_select, NETWORK_SIZE, bad, k, trials, seed=seed)
            rows.append(
                {
                    "fraction_bad": fraction,
                    "k": k,
                    "p_bad_majority_exact": p_bad_majority(NETWORK_SIZE, bad, k),
                    "p_bad_majority_simulated": mc.p_bad_majority,
                    "p_all_bad_exact": p_all_bad(NETWORK_SIZE, bad, k),
                    "f_pow_k": fraction**k,
                }
            )
    spot = [
        {"p": p, "k": 3, "cost_per_job": spot_check_cost(p, 3), **{
            f"caught_within_{n}": p_caught_spot_check(p, n) for n in (10, 20, 50)}}
        for p in (0.05, 0.1, 0.25)
    ]
    return {"network_size": NETWORK_SIZE, "trials": trials, "consensus": rows, "spot_check": spot}


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fraction in FRACTIONS:
        rows = [r for r in report["consensus"] if r["fraction_bad"] == fraction]
        ks = [r["k"] for r in rows]
        ax.plot(ks, [max(r["p_bad_majority_exact"], 1e-9) for r in rows], marker="o",
                label=f"exact, f={fraction}")
        ax.plot(ks, [max(r["p_bad_majority_simulated"], 1e-9) for r in rows], linestyle="none",
                marker="x", color=ax.lines[-1].get_color())
    ax.set_yscale("log")
    ax.set_xlabel("executors per job (k)")
    ax.set_ylabel("P(colluders hold the majority)")
    ax.set_title(f"Wrong answer wins the vote (N={report['network_size']}; x = Monte Carlo)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "scale.json"
    json_path.write_text(json.dumps(report, indent=2))
    png_path = out_dir / "scale.png"
    write_plot(report, png_path)
    return [json_path, png_path]
