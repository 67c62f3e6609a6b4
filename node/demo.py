"""What ``veilnet testnet up --demo`` shows once every node is up: node 0's attested peers, one
confidential embeddings job and one chat question to SmolLM2-135M-Instruct, each with its
verification report. Steps run in order; a step raising :class:`node.testnet.TestnetError` ends
the demo with that message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from node.config import load_node_config
from node.console import format_report, print_peer_table
from node.testnet import RunningTestnet, TestnetError

__all__ = ["DEMO_STEPS", "demo_chat", "demo_job", "demo_registry"]

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


def _wait_providers(run: RunningTestnet, model: str, wanted: int) -> float:
    """Wait until node 0 sees ``wanted`` attested executors of ``model``; returns seconds waited."""
    api = run.nodes[0].api_url
    started = time.monotonic()
    with httpx.Client(timeout=10.0) as client:
        while True:
            try:
                models = client.get(f"{api}/v1/models").json().get("data", [])
                entry = next((m for m in models if m.get("id") == model), None)
                providers = entry["veilnet"]["attested_providers"] if entry else 0
            except (httpx.HTTPError, ValueError, KeyError):
                providers = 0
            if providers >= wanted:
                return time.monotonic() - started
            if time.monotonic() - started > DEMO_TIMEOUT:
                raise TestnetError(f"only {providers} executors serve {model} after {DEMO_TIMEOUT:.0f} s")
            time.sleep(1.0)


def _request(method: str, url: str, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One call to node 0's API; a failure of any kind is a ``TestnetError`` that says which."""
    try:
        response = httpx.request(method, url, json=body, timeout=180.0)
        answer: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TestnetError(f"the demo {what} failed: {exc}") from None
    if response.status_code != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        raise TestnetError(f"the demo {what} failed ({error.get('code')}): {error.get('message')}")
    return answer


def demo_job(run: RunningTestnet) -> None:
    """``testnet up --demo`` step: once node 0 sees three executors serving the embedding model,
    send one confidential embeddings request through its API and print answer and report."""
    if DEMO_MODEL not in load_node_config(run.layout.node_configs[0]).models:
        print(f"(the nodes serve no {DEMO_MODEL}: no demo job)", flush=True)
        return
    api = run.nodes[0].api_url
    wanted = min(3, len(run.nodes))
    waited = _wait_providers(run, DEMO_MODEL, wanted)
    print(f"{wanted} attested executors serve {DEMO_MODEL} (models loaded after "
          f"{waited:.1f} s). Sending one confidential job:", flush=True)
    print(f'  veilnet infer --api {api} --replicas {wanted} "{DEMO_TEXT}"', flush=True)
    body = {
        "model": DEMO_MODEL, "input": [DEMO_TEXT], "encoding_format": "float", "veilnet": {"replicas": wanted}
    }
    answer = _request("POST", f"{api}/v1/embeddings", "embeddings job", body)
    vector = answer["data"][0]["embedding"]
    head = ", ".join(f"{x:+.4f}" for x in vector[:6])
    print(f"\nanswer: embedding with {len(vector)} dimensions [{head}, …]", flush=True)
    report = answer["veilnet"]
    if report.get("settled") is False:  # answered at a majority: show the report with every executor
        agreeing = report["agreement"]["agreeing"]
        print(f"answered in {report['total_ms']:.1f} ms, once {agreeing} executors agreed", flush=True)
        report = _request("GET", f"{api}/veilnet/v1/jobs/{report['job_id']}", "report")
    print("verification report:\n" + format_report(report), flush=True)


DEMO_CHAT_MODEL = "SmolLM2-135M-Instruct"
DEMO_QUESTION = "What is the capital of France? One sentence."


def demo_chat(run: RunningTestnet) -> None:
    """``testnet up --demo`` step: ask SmolLM2 one question through node 0's OpenAI-style API, one
    executor generating and the others re-scoring its tokens, and print the answer and report."""
    api = run.nodes[0].api_url
    if DEMO_CHAT_MODEL in load_node_config(run.layout.node_configs[0]).models:
        wanted = min(3, len(run.nodes))
        _wait_providers(run, DEMO_CHAT_MODEL, wanted)
        print(f"\n{wanted} attested executors serve {DEMO_CHAT_MODEL}. Asking it:", flush=True)
        print(f'  veilnet infer --api {api} --model {DEMO_CHAT_MODEL} --replicas {wanted} "{DEMO_QUESTION}"',
              flush=True)
        body = {
            "model": DEMO_CHAT_MODEL, "messages": [{"role": "user", "content": DEMO_QUESTION}],
            "max_tokens": 48, "veilnet": {"replicas": wanted},
        }
        answer = _request("POST", f"{api}/v1/chat/completions", "chat question", body)
        print(f"\nanswer: {answer['choices'][0]['message']['content']}", flush=True)
        print("verification report:\n" + format_report(answer["veilnet"]), flush=True)
    else:
        print(f"(the nodes serve no {DEMO_CHAT_MODEL}: no chat question)", flush=True)
    print(
        f"\nTry your own: veilnet infer --api {api} \"your text\"  (chat: --model {DEMO_CHAT_MODEL})\n"
        f"or any OpenAI client with base_url={api}/v1; reports: {api}/veilnet/v1/jobs/<job id>\n",
        flush=True,
    )


DEMO_STEPS: list[Callable[[RunningTestnet], None]] = [demo_registry, demo_job, demo_chat]
