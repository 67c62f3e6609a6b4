"""What ``veilnet testnet up --demo`` shows once every node is up: node 0's attested peers, then one
confidential embeddings job with its verification report. Steps run in order; a step raising
:class:`node.testnet.TestnetError` ends the demo with that message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from node.config import load_node_config
from node.console import format_report, print_peer_table
from node.testnet import RunningTestnet, TestnetError

__all__ = ["DEMO_STEPS", "demo_job", "demo_registry"]

REGISTRY_TIMEOUT = 60.0


def _wait_registry_complete(run: RunningTestnet, timeout: float = REGISTRY_TIMEOUT) -> list[dict[str, Any]]:
    expected = {node.info["peer_id"] for node in run.nodes}
    deadline = time.monotonic() + timeout
    peers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            peers = run.peers_of(0)
        except Exception:
            peers = []
        if {peer["peer_id"] for peer in peers} >= expected:
            return peers
        time.sleep(0.25)
    raise TestnetError(f"node 0 attested {len(peers)} of {len(expected)} peers within {timeout:.0f} s")


def demo_registry(run: RunningTestnet) -> None:
    """Demo step: wait until node 0 has attested every node, then print its registry."""
    started = time.monotonic()
    peers = _wait_registry_complete(run)
    print(f"node 0 attested all {len(run.nodes)} peers after {time.monotonic() - started:.1f} s:")
    print_peer_table(peers, title="Node 0's attested peers")


DEMO_TEXT = "Veilnet runs this sentence on attested TEEs that cannot see each other's answers."
DEMO_MODEL = "all-MiniLM-L6-v2"
DEMO_TIMEOUT = 180.0


def demo_job(run: RunningTestnet) -> None:
    """``testnet up --demo`` step: once node 0 sees three executors serving the embedding model,
    send one confidential embeddings request through its API and print answer and report."""
    if DEMO_MODEL not in load_node_config(run.layout.node_configs[0]).models:
        print(f"(the nodes serve no {DEMO_MODEL}: no demo job)", flush=True)
        return
    api = run.nodes[0].api_url
    wanted = min(3, len(run.nodes))
    started = time.monotonic()
    with httpx.Client(timeout=10.0) as client:
        while True:
            try:
                models = client.get(f"{api}/v1/models").json().get("data", [])
                entry = next((m for m in models if m.get("id") == DEMO_MODEL), None)
                providers = entry["veilnet"]["attested_providers"] if entry else 0
            except (httpx.HTTPError, ValueError, KeyError):
                providers = 0
            if providers >= wanted:
                break
            if time.monotonic() - started > DEMO_TIMEOUT:
                waited = f"{DEMO_TIMEOUT:.0f} s"
                raise TestnetError(f"only {providers} executors serve {DEMO_MODEL} after {waited}")
            time.sleep(1.0)
    print(f"{providers} attested executors serve {DEMO_MODEL} (models loaded after "
          f"{time.monotonic() - started:.1f} s). Sending one confidential job:", flush=True)
    print(f'  veilnet infer --api {api} --replicas {wanted} "{DEMO_TEXT}"', flush=True)
    body = {
        "model": DEMO_MODEL, "input": [DEMO_TEXT], "encoding_format": "float", "veilnet": {"replicas": wanted}
    }
    try:
        response = httpx.post(f"{api}/v1/embeddings", json=body, timeout=120.0)
        answer = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TestnetError(f"the demo job failed: {exc}") from None
    if response.status_code != 200:
        error = answer.get("error", {})
        raise TestnetError(f"the demo job failed ({error.get('code')}): {error.get('message')}")
    vector = answer["data"][0]["embedding"]
    head = ", ".join(f"{x:+.4f}" for x in vector[:6])
    print(f"\nanswer: embedding with {len(vector)} dimensions [{head}, …]", flush=True)
    print("verification report:\n" + format_report(answer["veilnet"]), flush=True)
    print(
        f"\nTry your own: veilnet infer --api {api} \"your text\"  (chat: --model veilnet-tiny-random-lm)\n"
        f"or any OpenAI client with base_url={api}/v1; reports: {api}/veilnet/v1/jobs/<job id>\n",
        flush=True,
    )


DEMO_STEPS: list[Callable[[RunningTestnet], None]] = [demo_registry, demo_job]
