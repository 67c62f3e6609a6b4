"""``results.json``: the data of one live run, first; the plots and the summary table are views of it.

The document's shape is fixed by ``simulations/results.schema.json`` (JSON Schema, draft 2020-12);
:func:`validate` checks a document against it (``jsonschema``), and the tests check every run's
output. Fields are described in ``simulations/README.md``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from simulations.live import LiveRun
from simulations.scenario import EVIDENCE_FAULTS, Behaviour

__all__ = ["SCHEMA_PATH", "SCHEMA_VERSION", "build_results", "percentile", "validate", "write_results"]

SCHEMA_VERSION = "veilnet-sim-results/1"
SCHEMA_PATH = Path(__file__).with_name("results.schema.json")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("veilnet", "libp2p", "trio", "torch", "httpx"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def _machine() -> dict[str, Any]:
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {
        "cpus": os.cpu_count() or 0, "memory_bytes": memory, "system": platform.system(),
        "kernel": platform.release(), "machine": platform.machine(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _summary(run: LiveRun) -> dict[str, Any]:
    jobs = run.jobs
    ok = [j for j in jobs if j.status == "ok"]
    by_status: dict[str, int] = {}
    for j in jobs:
        by_status[j.status] = by_status.get(j.status, 0) + 1
    latencies = [j.latency_ms for j in ok]
    elapsed = max(run.now(), 1e-9) if run.t0 is not None else 0.0
    offenders = run.offenders()
    adversaries = [s for s in run.nodes if s.role == "adversary"]
    flagged = sorted(s.index for s in adversaries if s.index in offenders)
    banned = sorted({int(d["node"]) for d in run.detections if d["banned_until"] and d["node"] is not None})
    honest_flagged = sorted(i for i in offenders if run.nodes[i].role != "adversary")
    return {
        "jobs": len(jobs), "ok": len(ok), "failed": len(jobs) - len(ok), "by_status": by_status,
        "shed": run.shed,
        "success_rate": (len(ok) / len(jobs)) if jobs else None,
        "latency_ms": {
            "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99), "mean": statistics.fmean(latencies) if latencies else None,
            "max": max(latencies) if latencies else None,
        },
        "throughput_per_s": (len(ok) / elapsed) if elapsed else None,
        "wrong_accepted": sum(1 for j in ok if j.wrong_accepted),
        "inconsistent": sum(1 for j in ok if j.consistent is False),
        "adversaries": [s.index for s in adversaries],
        "adversaries_flagged": flagged,
        "adversaries_banned": sorted(i for i in banned if run.nodes[i].role == "adversary"),
        "honest_flagged": honest_flagged,
        "forged_admitted": _forged_admitted(run),
        "merged_after_heal_s": _merged_after_heal(run),
        "bundles_rejected": _rejections(run),
        "attack_runs": len(run.attacks),
        "attack_outcomes": _attack_totals(run),
        "unexpected_exits": sorted({n for f in run.faults if f.kind == "exit" for n in f.nodes}),
    }


def _rejections(run: LiveRun) -> dict[str, float]:
    """Bundles honest nodes refused, by reason, summed over their last metrics sample: how
    forged evidence shows up (it never reaches a job, so job reports never mention it)."""
    last: dict[int, dict[str, float]] = {}
    for sample in run.metrics:
        if run.nodes[sample["node"]].role != "adversary":
            last[sample["node"]] = sample["values"]
    totals: dict[str, float] = {}
    prefix = 'veilnet_bundles_rejected_total{reason="'
    for values in last.values():
        for name, value in values.items():
            if name.startswith(prefix):
                reason = name[len(prefix):].split('"', 1)[0]
                totals[reason] = totals.get(reason, 0.0) + value
    return totals


def _attack_totals(run: LiveRun) -> dict[str, dict[str, float]]:
    """Per attack: runs, and the sums of what it sent and how the targets answered."""
    totals: dict[str, dict[str, float]] = {}
    for entry in run.attacks:
        row = totals.setdefault(entry["attack"], {"runs": 0, "sent": 0, "answered": 0, "refused": 0,
                                                  "errors": 0, "cut_off": 0})
        row["runs"] += 1
        outcome = entry["outcome"]
        for key in ("sent", "answered", "refused", "errors"):
            value = outcome.get(key)
            if isinstance(value, (int, float)):
                row[key] += value
        row["cut_off"] += outcome.get("cut_off_after") is not None
    return totals


def _forged_admitted(run: LiveRun) -> list[int]:
    """Forged-evidence nodes that ever appeared in an honest node's registry."""
    forged = {s.index for s in run.nodes if s.behaviour in EVIDENCE_FAULTS}
    seen: set[int] = set()
    for sample in run.registry:
        for node, members in sample["members"].items():
            if run.nodes[int(node)].role != "adversary":
                seen.update(i for i in members if i in forged)
    return sorted(seen)


def _merged_after_heal(run: LiveRun) -> float | None:
    """Seconds from the last heal until every up honest node's registry holds every up node with
    valid evidence *and stays so* to the end of the run; None if it is not whole at the end.

    "Stays so" matters: bundles learnt before the split outlive a short partition, so registries
    can look whole right after the heal and only fall apart once those bundles expire.
    """
    heal = max((p.heal_s for p in run.scenario.network.partitions), default=None)
    if heal is None:
        return None
    valid = {s.index for s in run.nodes if s.behaviour not in EVIDENCE_FAULTS}
    whole_since: float | None = None
    for sample in run.registry:
        if sample["t"] < heal:
            continue
        up = {int(node) for node, size in sample["sizes"].items() if size is not None}
        honest = [int(node) for node in sample["members"] if run.nodes[int(node)].role != "adversary"]
        whole = bool(honest) and all(set(sample["members"][str(node)]) >= (valid & up) for node in honest)
        if not whole:
            whole_since = None
        elif whole_since is None:
            whole_since = float(sample["t"])
    return None if whole_since is None else max(0.0, whole_since - heal)


def _checks(run: LiveRun, summary: dict[str, Any]) -> list[dict[str, Any]]:
    c = run.scenario.checks
    out: list[dict[str, Any]] = []
    if c.min_success_rate is not None:
        rate = summary["success_rate"]
        out.append({"name": "min_success_rate", "passed": rate is not None and rate >= c.min_success_rate,
                    "detail": f"{summary['ok']}/{summary['jobs']} ok (need {c.min_success_rate:.0%})"})
    if c.no_wrong_accepted:
        passed = summary["wrong_accepted"] == 0 and summary["ok"] > 0
        out.append({"name": "no_wrong_accepted", "passed": passed,
                    "detail": f"{summary['wrong_accepted']} wrong of {summary['ok']} accepted"})
    if c.all_wrong_flagged:
        wrong = sorted(s.index for s in run.nodes if s.behaviour is Behaviour.WRONG_OUTPUT)
        missing = sorted(set(wrong) - set(summary["adversaries_flagged"]))
        out.append({"name": "all_wrong_flagged", "passed": not missing,
                    "detail": f"wrong-output nodes {wrong}; not flagged: {missing or 'none'};"
                              f" banned: {summary['adversaries_banned']}"})
    if c.merge_within_s is not None:
        merged = _merged_after_heal(run)
        heal = max((p.heal_s for p in run.scenario.network.partitions), default=0.0)
        out.append({"name": "merge_within_s", "passed": merged is not None and merged <= c.merge_within_s,
                    "detail": (f"registries whole again {merged:.1f} s after the heal at {heal:.0f} s"
                               if merged is not None
                               else f"registries not whole again after the heal at {heal:.0f} s")
                              + f" (need {c.merge_within_s:.0f} s)"})
    if c.forged_never_admitted:
        admitted = summary["forged_admitted"]
        out.append({"name": "forged_never_admitted", "passed": not admitted,
                    "detail": f"admitted: {admitted or 'none'}"})
    return out


def build_results(run: LiveRun, scenario_text: str) -> dict[str, Any]:
    summary = _summary(run)
    scenario = asdict(run.scenario)
    return {
        "schema": SCHEMA_VERSION,
        "scenario": {"name": run.scenario.name, "source": run.scenario.source, "text": scenario_text,
                     "parsed": json.loads(json.dumps(scenario, default=str))},
        "seed": run.scenario.seed,
        "versions": _versions(),
        "machine": _machine(),
        "command": " ".join(sys.argv),
        "links": run.links.description,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started_wall)),
        "setup_s": round(run.setup_s, 3),
        "settle_s": None if run.settle_s is None else round(run.settle_s, 3),
        "duration_s": round(run.now(), 3) if run.t0 is not None else 0.0,
        "interrupted": run.interrupted or None,
        "error": run.error or None,
        "nodes": [s.to_json() for s in run.nodes],
        "jobs": [j.to_json() for j in run.jobs],
        "timeline": {
            "registry": run.registry, "detections": run.detections,
            "faults": [f.to_json() for f in run.faults], "resources": run.resources,
            "metrics": run.metrics,
        },
        "attacks": run.attacks,
        "messages": run.messages,
        "summary": summary,
        "checks": _checks(run, summary),
    }


def validate(document: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` matches the schema."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(document)


def write_results(document: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)
    return path
