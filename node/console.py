"""What a person sees in a terminal: the peer table and the plain-text verification report.

Shared by the CLI and the testnet demo, so both print the same thing; imports no subsystem.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["format_report", "print_peer_table"]


def print_peer_table(entries: list[dict[str, Any]], title: str = "Attested peers") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} ({len(entries)})")
    for column in ("peer id", "TEE", "measurement", "models", "epoch", "expires in", "address"):
        table.add_column(column)
    now = time.time()
    for entry in entries:
        table.add_row(
            entry["peer_id"],
            entry["label"] or entry["kind"],
            entry["measurement"][:16] + "…",
            ", ".join(entry["models"]) or "-",
            str(entry["epoch"]),
            f"{max(0, int(entry['expires_at'] - now))} s",
            entry["addrs"][0] if entry["addrs"] else "-",
        )
    Console(file=sys.stdout, width=200).print(table)


def format_report(report: dict[str, Any]) -> str:
    """A plain-text verification report (also used by the testnet demo)."""
    lines = [
        f"job {report.get('job_id')}  model {report.get('model')}  mode {report.get('mode')}"
        f"  replicas {report.get('replicas')}  status {report.get('status')}"
        f"{'  (escalated)' if report.get('escalated') else ''}",
    ]
    agreement = report.get("agreement") or {}
    if agreement:
        parts = [f"{agreement.get('agreeing')} of {agreement.get('of')} revealed results agree"]
        if "min_cosine" in agreement:
            parts.append(f"min cosine {agreement['min_cosine']:.9f}")
        if "max_rel_l2" in agreement:
            parts.append(f"max rel. L2 {agreement['max_rel_l2']:.2e}")
        if agreement.get("comparator"):
            parts.append(f"comparator {agreement['comparator']}")
        lines.append("agreement: " + ", ".join(parts))
    lines.append("executors:")
    for row in report.get("executors", []):
        timings = row.get("timings_ms") or {}
        running = row.get("state") not in ("revealed", "failed")  # answered before it finished
        fault = row.get("offence") or row.get("failure") or ("still running" if running else "outvoted")
        verdict = "agrees" if row.get("in_majority") else fault
        lines.append(
            f"  {row.get('peer_id')}  {row.get('role'):<8} {row.get('tee_label') or row.get('tee_kind')}"
            f"  {verdict}  commit {_ms(timings.get('commit'))}  reveal {_ms(timings.get('reveal'))}"
        )
    for penalty in report.get("penalties", []):
        banned = f" (banned until {penalty['banned_until']:.0f})" if penalty.get("banned_until") else ""
        lines.append(f"penalised: {penalty.get('peer_id')} for {penalty.get('offence')}{banned}")
    if report.get("total_ms") is not None:
        lines.append(f"total {report['total_ms']:.1f} ms")
    if report.get("settled") is False:
        lines.append(
            "answered once a majority of the quorum agreed; the final report, with every executor "
            f"judged: GET /veilnet/v1/jobs/{report.get('job_id')}"
        )
    return "\n".join(lines)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} ms"
