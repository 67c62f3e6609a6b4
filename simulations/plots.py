"""PNG plots of a live run, drawn from ``results.json`` alone (so a saved run can be re-plotted).

1. ``latency.png`` — distribution of job latency, accepted and failed jobs apart, p50/p95 marked.
2. ``throughput.png`` — accepted and failed jobs per 5 s over time, with a marker per fault.
3. ``detection.png`` — for each adversarial node, how many routers' jobs had penalised it so far
   (a step per detection; a cross where a penalty came with a ban).
4. ``registry.png`` — the size of every node's attested registry over time, faults marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_plots"]

BIN_S = 5.0
_FAULT_COLOURS = {"crash": "red", "stop": "darkred", "restart": "green", "partition": "purple",
                  "heal": "teal", "identity-churn": "orange", "attack": "black", "exit": "magenta"}


def _mark_faults(ax: Any, faults: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for fault in faults:
        kind = fault["kind"]
        label = kind if kind not in seen else None
        seen.add(kind)
        nodes = ",".join(map(str, fault["nodes"])) if kind not in ("partition", "heal") else ""
        ax.axvline(fault["t"], color=_FAULT_COLOURS.get(kind, "grey"), linestyle="--", linewidth=0.8,
                   alpha=0.7, label=label)
        if nodes:
            ax.annotate(nodes, (fault["t"], 1.0), xycoords=("data", "axes fraction"), fontsize=6,
                        rotation=90, va="top", ha="right", color=_FAULT_COLOURS.get(kind, "grey"))


EVIDENCE_BEHAVIOURS = ("forged-signature", "measurement-outside-policy", "wrong-platform-key")
_REFUSED = 'veilnet_bundles_rejected_by_peer_total{peer="'


def _refusals_over_time(results: dict[str, Any]) -> dict[int, list[tuple[float, float]]]:
    """Adversary index → (t, bundles of it refused by honest nodes so far, summed over them)."""
    owner = {peer: n["index"] for n in results["nodes"] for peer in n["peer_ids"]}
    honest = {n["index"] for n in results["nodes"] if n["role"] != "adversary"}
    latest: dict[int, dict[int, float]] = {}  # adversary -> honest node -> count
    by_time: dict[int, dict[float, float]] = {}  # adversary -> t -> total (last write per t wins)
    for sample in results["timeline"]["metrics"]:
        if sample["node"] not in honest:
            continue
        for name, value in sample["values"].items():
            if name.startswith(_REFUSED):
                index = owner.get(name[len(_REFUSED):].split('"', 1)[0])
                if index is not None:
                    latest.setdefault(index, {})[sample["node"]] = value
                    by_time.setdefault(index, {})[sample["t"]] = sum(latest[index].values())
    return {index: sorted(points.items()) for index, points in by_time.items()}


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    name = results["scenario"]["name"]
    jobs = results["jobs"]
    faults = results["timeline"]["faults"]
    duration = max(results["duration_s"], 1.0)
    paths: list[Path] = []

    # 1. latency distribution
    fig, ax = plt.subplots(figsize=(7, 4))
    ok = [j["latency_ms"] for j in jobs if j["status"] == "ok"]
    failed = [j["latency_ms"] for j in jobs if j["status"] != "ok"]
    bins = 30
    if ok:
        ax.hist(ok, bins=bins, color="tab:blue", alpha=0.8, label=f"accepted ({len(ok)})")
    if failed:
        ax.hist(failed, bins=bins, color="tab:red", alpha=0.6, label=f"failed ({len(failed)})")
    latency = results["summary"]["latency_ms"]
    for key, style in (("p50", "-"), ("p95", "--")):
        if latency.get(key) is not None:
            ax.axvline(latency[key], color="black", linestyle=style, linewidth=1,
                       label=f"{key} {latency[key]:.0f} ms")
    ax.set_xlabel("job latency (ms)")
    ax.set_ylabel("jobs")
    ax.set_title(f"{name}: latency distribution")
    if jobs:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no jobs completed", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    paths.append(out_dir / "latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 2. throughput over time
    fig, ax = plt.subplots(figsize=(8, 4))
    bins_n = max(1, int(duration // BIN_S) + 1)
    edges = [i * BIN_S for i in range(bins_n + 1)]
    done_ok = [0] * bins_n
    done_failed = [0] * bins_n
    for job in jobs:
        finished = job["started_s"] + job["latency_ms"] / 1000
        index = min(bins_n - 1, max(0, int(finished // BIN_S)))
        (done_ok if job["status"] == "ok" else done_failed)[index] += 1
    centres = [e + BIN_S / 2 for e in edges[:-1]]
    ax.bar(centres, [c / BIN_S for c in done_ok], width=BIN_S * 0.9, color="tab:blue", label="accepted")
    ax.bar(centres, [c / BIN_S for c in done_failed], width=BIN_S * 0.9, bottom=[c / BIN_S for c in done_ok],
           color="tab:red", label="failed")
    _mark_faults(ax, faults)
    ax.set_xlabel("time since the workload began (s)")
    ax.set_ylabel(f"jobs/s (per {BIN_S:.0f} s)")
    ax.set_title(f"{name}: throughput, faults marked")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    paths.append(out_dir / "throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 3. detection of each adversarial executor
    fig, ax = plt.subplots(figsize=(8, 4))
    adversaries = [n for n in results["nodes"] if n["role"] == "adversary"]
    detections = results["timeline"]["detections"]
    refusals = _refusals_over_time(results)
    for node in adversaries:
        if node["behaviour"] in EVIDENCE_BEHAVIOURS:
            # Forged evidence never reaches a job: its detection is honest nodes refusing its bundles.
            points = refusals.get(node["index"], [])
            ax.plot([t for t, _ in points], [v for _, v in points], linestyle=":",
                    label=f"node {node['index']} ({node['behaviour']}): bundles refused")
            continue
        mine = sorted((d for d in detections if d["node"] == node["index"]), key=lambda d: d["t"])
        times = [0.0] + [d["t"] for d in mine] + [duration]
        counts = [0, *range(1, len(mine) + 1), len(mine)]
        line = ax.step(times, counts, where="post", label=f"node {node['index']} ({node['behaviour']})")
        bans = [d for d in mine if d["banned_until"]]
        if bans:
            ax.plot([bans[0]["t"]], [mine.index(bans[0]) + 1], marker="x", markersize=9,
                    color=line[0].get_color())
    if not adversaries:
        ax.text(0.5, 0.5, "no adversarial executors in this scenario", transform=ax.transAxes, ha="center")
    _mark_faults(ax, faults)
    ax.set_xlabel("time since the workload began (s)")
    ax.set_ylabel("penalties in job reports / bundles refused")
    ax.set_title(f"{name}: detection of adversarial executors (x = first ban)")
    if adversaries or faults:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    paths.append(out_dir / "detection.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 4. registry size per node
    fig, ax = plt.subplots(figsize=(8, 4))
    samples = results["timeline"]["registry"]
    for node in results["nodes"]:
        key = str(node["index"])
        points = [(s["t"], s["sizes"].get(key)) for s in samples]
        xs = [t for t, v in points]
        ys = [float("nan") if v is None else v for t, v in points]
        style = ":" if node["role"] == "adversary" else "-"
        ax.plot(xs, ys, style, linewidth=1, label=f"node {node['index']}")
    _mark_faults(ax, faults)
    ax.set_xlabel("time since the workload began (s)")
    ax.set_ylabel("attested peers in registry")
    ax.set_ylim(-0.5, len(results["nodes"]) + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{name}: registry size per node (gaps: node down)")
    ax.legend(fontsize=6, ncol=4, loc="lower left")
    fig.tight_layout()
    paths.append(out_dir / "registry.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
