"""``veilnet infer``: one confidential inference through your own node's API, with its report.

The command talks to the local node's OpenAI-compatible API (never to executors directly): the
node seals the input to k attested TEE executors, cross-checks their answers and returns the
majority answer with a verification report, which this command prints.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import typer

__all__ = ["format_report", "infer", "register"]

DEFAULT_API = "http://127.0.0.1:8700"


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)


def infer(
    text: str = typer.Argument(..., help="The text to embed, or the user message for a chat model."),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model", "-m", help="Model name or vn-model id."),
    replicas: int = typer.Option(3, "--replicas", "-k", min=1, max=15, help="Executors that must agree."),
    mode: str = typer.Option("consensus", "--mode", help="consensus | spot-check"),
    api: str = typer.Option(DEFAULT_API, "--api", help="Your node's API URL."),
    task: str = typer.Option("auto", "--task", help="auto | embeddings | chat (auto asks the node)."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, max=4096, help="Chat: completion budget."),
    challenge: bool = typer.Option(False, "--challenge", help="Demand fresh attestation first."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the answer."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw API answer."),
) -> None:
    """Run one confidential inference on attested executors and print the verification report."""
    if mode not in ("consensus", "spot-check"):
        raise typer.BadParameter("mode must be consensus or spot-check", param_hint="--mode")
    base = api.rstrip("/")
    options = {"replicas": replicas, "mode": mode, "challenge": challenge}
    try:
        with httpx.Client(timeout=timeout) as client:
            chosen = task if task != "auto" else _task_of(client, base, model)
            if chosen == "chat":
                body: dict[str, Any] = {
                    "model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                    "veilnet": options,
                }
                response = client.post(f"{base}/v1/chat/completions", json=body)
            elif chosen == "embeddings":
                body = {"model": model, "input": [text], "encoding_format": "float", "veilnet": options}
                response = client.post(f"{base}/v1/embeddings", json=body)
            else:
                raise typer.BadParameter("task must be auto, embeddings or chat", param_hint="--task")
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the node API at {base}: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        answer = response.json()
    except json.JSONDecodeError:
        typer.echo(f"error: HTTP {response.status_code}: {response.text[:500]}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        raise typer.Exit(0 if response.status_code == 200 else 1)
    if response.status_code != 200:
        error = answer.get("error", {})
        typer.echo(f"error ({error.get('code')}): {error.get('message')}", err=True)
        if answer.get("veilnet"):
            typer.echo(format_report(answer["veilnet"]), err=True)
        raise typer.Exit(1)
    if chosen == "chat":
        typer.echo(answer["choices"][0]["message"]["content"])
    else:
        vector = answer["data"][0]["embedding"]
        head = ", ".join(f"{x:+.4f}" for x in vector[:6])
        typer.echo(f"embedding ({len(vector)} dimensions): [{head}, …]")
    typer.echo(format_report(answer["veilnet"]))


def _task_of(client: httpx.Client, base: str, model: str) -> str:
    """Ask the node which task ``model`` has (embeddings when it cannot tell)."""
    response = client.get(f"{base}/v1/models")
    response.raise_for_status()
    for entry in response.json().get("data", []):
        veilnet = entry.get("veilnet", {})
        if model in (entry.get("id"), veilnet.get("model_id")):
            return str(veilnet.get("task") or "embeddings")
    return "embeddings"


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
        fault = row.get("offence") or row.get("failure") or "outvoted"
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
    return "\n".join(lines)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# ------------------------------------------------------------------------------ testnet demo

DEMO_TEXT = "Veilnet runs this sentence on attested TEEs that cannot see each other's answers."
DEMO_MODEL = "all-MiniLM-L6-v2"
DEMO_TIMEOUT = 180.0


def demo_job(run: Any) -> None:
    """``testnet up --demo`` step: once node 0 sees three executors serving the embedding model,
    send one confidential embeddings request through its API and print answer and report."""
    import time

    from node.config import load_node_config
    from node.testnet import TestnetError

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
