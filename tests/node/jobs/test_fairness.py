"""Executor fairness with real processes: a greedy client, or one that never reads its results,
cannot make another requester's jobs fail (per-peer slots and queue share, round-robin batches,
write deadlines).

Two nodes of one testnet: node 0 serves no model and answers the API, node 1 is the only
executor. The project's adversary (node.adversary) attacks node 1 from this test process while
honest embeddings requests go through node 0's API, so every honest job needs node 1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node.adversary.attacks import Context, Outcome, run_attack
from node.adversary.wire import Target
from node.config import NodeConfig, load_testnet_config
from tests.node.cluster import Cluster

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

EMBED = "all-MiniLM-L6-v2"
ATTACK_SECONDS = 20.0
WRITE_TIMEOUT_S = 3  # short, so the no-read attack is cut off well within the attack


class FairnessCluster(Cluster):
    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        config = super()._overrides(index, config)
        extra = {"commit_timeout_s": 30, "reveal_timeout_s": 10, "deadline_s": 60,
                 "job_write_timeout": WRITE_TIMEOUT_S}
        return replace(config, models=(EMBED,) if index == 1 else (), extra=extra)


@pytest.fixture(scope="module")
def cluster() -> Iterator[FairnessCluster]:
    root = Path(tempfile.mkdtemp(prefix="veilnet-fairness-"))
    c = FairnessCluster(root, 2, reannounce_seconds=4)
    # One torch thread per node (children inherit the environment): two cores, shared.
    previous_threads = os.environ.get("VEILNET_TORCH_THREADS")
    os.environ["VEILNET_TORCH_THREADS"] = "1"
    try:
        c.start()
        executor = c.nodes[1].info["peer_id"]
        c.wait_until(
            lambda: any(p["peer_id"] == executor and p["models"] for p in c.peers(c.nodes[0])),
            "node 0 sees node 1 serving the embedding model", 120,
        )
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)
        if previous_threads is None:
            os.environ.pop("VEILNET_TORCH_THREADS", None)
        else:
            os.environ["VEILNET_TORCH_THREADS"] = previous_threads


def _honest(cluster: Cluster, index: int) -> tuple[int, str]:
    body: dict[str, Any] = {"model": EMBED, "input": [f"an honest question, number {index}"],
                            "veilnet": {"replicas": 1}}
    response = httpx.post(f"{cluster.nodes[0].api_url}/v1/embeddings", json=body, timeout=90.0)
    return response.status_code, response.text[:300]


def _attack_in_background(
    cluster: Cluster, name: str, scale: float = 1.0
) -> tuple[threading.Thread, list[Outcome]]:
    assert cluster.layout is not None
    psk = load_testnet_config(cluster.layout.testnet_path).psk
    target = Target.parse(cluster.nodes[1].multiaddr)
    outcomes: list[Outcome] = []

    context = Context(target, psk, duration=ATTACK_SECONDS, scale=scale)

    def attack() -> None:
        outcomes.append(trio.run(run_attack, name, context))

    thread = threading.Thread(target=attack, name=f"adversary-{name}", daemon=True)
    thread.start()
    return thread, outcomes


def _honest_during(cluster: Cluster, thread: threading.Thread, least: int) -> list[tuple[int, str]]:
    """Honest requests one after another while the attack runs (at least ``least`` of them)."""
    answers: list[tuple[int, str]] = []
    while thread.is_alive() or len(answers) < least:
        answers.append(_honest(cluster, len(answers)))
        if len(answers) >= 200:
            break
    thread.join(60)
    assert not thread.is_alive(), "the attack overran its budget"
    return answers


def test_a_greedy_client_cannot_make_honest_requests_fail(cluster: FairnessCluster) -> None:
    # 32 jobs of 64 texts in flight: twice what the executor's whole embedding queue holds.
    thread, outcomes = _attack_in_background(cluster, "greedy-client", scale=2.0)
    answers = _honest_during(cluster, thread, least=5)
    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} honest requests failed: {failed[:3]}"
    (outcome,) = outcomes
    assert outcome.sent > 0 and outcome.errors == 0, outcome
    assert cluster.nodes[1].process.poll() is None


def test_a_client_that_never_reads_cannot_pin_the_executor(cluster: FairnessCluster) -> None:
    thread, outcomes = _attack_in_background(cluster, "job-no-read")
    answers = _honest_during(cluster, thread, least=5)
    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} honest requests failed: {failed[:3]}"
    (outcome,) = outcomes
    assert outcome.sent > 0, outcome
    # The write deadline cut the unread sessions off while the attacker still held them.
    assert "client stopped reading" in cluster.log_text(cluster.nodes[1])
    cluster.wait_until(
        lambda: cluster.metrics(cluster.nodes[1]).get("veilnet_executor_active_jobs", -1.0) == 0,
        "every job slot released after the attack", 60,
    )
    assert cluster.nodes[1].process.poll() is None
