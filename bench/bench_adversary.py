"""Honest service under attack: the project's adversary against a live four-node testnet.

One testnet (four executors serving all-MiniLM-L6-v2, one torch thread each), node 1 the target,
honest embeddings requests sent one after another through node 0's API. First an idle window,
then each attack of :mod:`node.adversary.attacks` for ``ATTACK_SECONDS`` (the gossip flood runs at
1,000 msg/s from rotating identities; the others at their default counts). Rows per attack:

- honest p50 and p95 during the attack; baseline: idle p50 / p95 in the same run. Goal ≤ 2× idle p50.
- target peak RSS (baseline: its idle RSS) and CPU % during the attack.
- worst event-loop stall of any node (slowest ``/healthz`` answer; baseline: idle worst).
- honest failures and node deaths (goal 0 each), and seconds until the target cut the attacker off
  (-1: never, within the attack).

A node that dies is restarted before the next attack, so one fatal attack does not hide the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx

from bench import Result
from node.adversary.attacks import ATTACKS
from node.adversary.campaign import AttackRun, observe_attack
from node.adversary.observe import Observer, embeddings_client
from node.config import NodeConfig
from node.testnet import wait_for_info
from tests.node.cluster import Cluster, ClusterTimeout

ATTACK_SECONDS = 6.0
IDLE_SECONDS = 12.0
EMBED = "all-MiniLM-L6-v2"
TARGET = 1


class ModelCluster(Cluster):
    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        config = super()._overrides(index, config)
        return replace(config, models=(EMBED,), log_level="WARNING")


def _serving(cluster: Cluster) -> bool:
    observer = cluster.nodes[0]
    peers = cluster.peers(observer)
    wanted = {node.info["peer_id"] for node in cluster.honest}
    return wanted <= {peer["peer_id"] for peer in peers if peer["models"]}


def _nodes(cluster: Cluster) -> list[tuple[int, str]]:
    return [(node.process.pid, node.api_url) for node in cluster.honest]


def _revive(cluster: Cluster) -> bool:
    """Restart dead nodes and frozen ones (no /healthz answer in 5 s); node 0 bootstraps from node 1,
    as its OS-assigned port changes. True when every executor is attested again at node 0."""
    for node in list(cluster.honest):
        if node.alive():
            try:
                httpx.get(f"{node.api_url}/healthz", timeout=5.0).raise_for_status()
                continue
            except httpx.HTTPError:
                print(f"    node {node.index} was frozen; restarting it", flush=True)
                node.process.kill()
                node.process.wait()
        else:
            print(f"    node {node.index} was dead; restarting it", flush=True)
        args = ("--bootstrap", cluster.nodes[1 if node.index == 0 else 0].multiaddr)
        wait_for_info(cluster._spawn(node.index, node.config_path, args))
    try:
        cluster.wait_until(lambda: _serving(cluster), "every executor attested again", timeout=90)
    except ClusterTimeout:
        return False
    return True


def _start(root: Path) -> ModelCluster:
    cluster = ModelCluster(root, 4, reannounce_seconds=10)
    cluster.start()
    cluster.wait_until(lambda: _serving(cluster), "four executors serving", timeout=180)
    honest = embeddings_client(cluster.nodes[0].api_url, EMBED, ["an honest user's sentence"])
    for _ in range(3):
        honest()  # warm up every path once
    return cluster


def _honest(cluster: Cluster) -> Callable[[], str | None]:
    return embeddings_client(cluster.nodes[0].api_url, EMBED, ["an honest user's sentence"])


def run() -> list[Result]:
    root = Path(tempfile.mkdtemp(prefix="veilnet-bench-adversary-"))
    previous = os.environ.get("VEILNET_TORCH_THREADS")
    os.environ["VEILNET_TORCH_THREADS"] = "1"
    generation = 0
    cluster = _start(root / f"testnet-{generation}")
    try:
        with Observer(_nodes(cluster), _honest(cluster)) as idle_observer:
            time.sleep(IDLE_SECONDS)
        idle = idle_observer.stop()
        runs: list[AttackRun] = []
        for name in ATTACKS:
            assert cluster.layout is not None
            target = cluster.nodes[TARGET]
            runs.append(
                observe_attack(
                    name,
                    target.multiaddr,
                    cluster.layout.testnet_path,
                    _nodes(cluster),
                    _honest(cluster),
                    duration=ATTACK_SECONDS,
                    code_root=cluster.code_root,
                )
            )
            print(f"  {name}: {json.dumps(runs[-1].row())} {json.dumps(runs[-1].outcome)}", flush=True)
            if not _revive(cluster):  # a node that cannot rejoin: go on with a fresh testnet
                cluster.close()
                generation += 1
                cluster = _start(root / f"testnet-{generation}")
        return _rows(idle, runs)
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
        if previous is None:
            os.environ.pop("VEILNET_TORCH_THREADS", None)
        else:
            os.environ["VEILNET_TORCH_THREADS"] = previous


def _rows(idle: object, runs: list[AttackRun]) -> list[Result]:
    from node.adversary.observe import Observation

    assert isinstance(idle, Observation)
    idle_p50, idle_p95 = idle.honest.p50, idle.honest.p95
    idle_rss = idle.nodes[TARGET].peak_rss_mb
    results = [
        Result("idle: honest embeddings p50", idle_p50, "s"),
        Result("idle: honest embeddings p95", idle_p95, "s"),
        Result("idle: target RSS", idle_rss, "MB"),
        Result("idle: target CPU", idle.nodes[TARGET].cpu_percent, "%"),
        Result("idle: worst /healthz stall", idle.worst_stall_s, "s"),
    ]
    for run in runs:
        observation = run.observation
        target = observation.nodes[TARGET]
        name = run.attack
        p50, p95 = observation.honest.p50, observation.honest.p95
        cut_off = run.outcome.get("cut_off_after")
        results += [
            Result(f"{name}: honest p50", p50, "s", idle_p50, "idle p50", p50 / idle_p50, "≤ 2× idle"),
            Result(f"{name}: honest p95", p95, "s", idle_p95, "idle p95", p95 / idle_p95),
            Result(
                f"{name}: target peak RSS",
                target.peak_rss_mb,
                "MB",
                idle_rss,
                "idle RSS",
                target.peak_rss_mb / idle_rss,
                "≤ idle + 50 MB",
            ),
            Result(f"{name}: target CPU", target.cpu_percent, "%"),
            Result(
                f"{name}: worst stall",
                observation.worst_stall_s,
                "s",
                idle.worst_stall_s,
                "idle worst",
                goal="≤ 1 s",
            ),
            Result(f"{name}: honest failures", len(observation.honest.failures), "count", goal="0"),
            Result(f"{name}: node deaths", observation.deaths, "count", goal="0"),
            Result(f"{name}: attacker cut off after", -1.0 if cut_off is None else float(cut_off), "s"),
        ]
    return results
