"""``veilnet infer``: one confidential inference through your own node's API, with its report.

The command talks to the local node's OpenAI-compatible API (never to executors directly): the
node seals the input to k attested TEE executors, cross-checks their answers and returns the
majority answer with a verification report, which this command prints.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import httpx
import typer

from node.cli.errors import CliError
from node.cli.peers import call_api
from node.console import format_report

__all__ = ["infer", "register"]

DEFAULT_API = "http://127.0.0.1:8700"


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)


def infer(
    text: str = typer.Argument(..., help="The text to embed, or the user message for a chat model."),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model", "-m", help="Model name or vn-model id."),
    replicas: int = typer.Option(3, "--replicas", "-k", min=1, max=15, help="Executors that must agree."),
    mode: str = typer.Option("consensus", "--mode", help="consensus | spot-check"),
    api: str = typer.Option(DEFAULT_API, "--api", help="Your node's API: http://HOST:PORT or HOST:PORT."),
    task: str = typer.Option("auto", "--task", help="auto | embeddings | chat (auto asks the node)."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, max=4096, help="Chat: completion budget."),
    challenge: bool = typer.Option(False, "--challenge", help="Demand fresh attestation first."),
    timeout: float = typer.Option(
        120.0, "--timeout", min=0.1, max=3600.0, help="Seconds to wait for the answer (0.1..3600)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the raw API answer."),
    receipt: Path | None = typer.Option(
        None, "--receipt", help="Write the job's signed receipt here (msgpack), and beside it FILE.answer, "
        "FILE.input and FILE.salt, the private parts that prove it is about your input and answer.",
    ),
) -> None:
    """Run one confidential inference on attested executors and print the verification report."""
    if mode not in ("consensus", "spot-check"):
        raise typer.BadParameter("mode must be consensus or spot-check", param_hint="--mode")
    if task not in ("auto", "embeddings", "chat"):
        raise typer.BadParameter("task must be auto, embeddings or chat", param_hint="--task")
    if not math.isfinite(timeout):
        raise typer.BadParameter("must be a finite number of seconds", param_hint="--timeout")
    base = call_api(api)
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
    except httpx.TimeoutException:
        raise CliError(f"--api {base}", f"no answer within {timeout:g} s", "raise --timeout") from None
    except httpx.HTTPError as exc:
        raise CliError(f"--api {base}", f"cannot reach the node API: {exc}", "is the node running?") from None
    try:
        answer = response.json()
    except json.JSONDecodeError:
        why = f"HTTP {response.status_code}, not JSON: {response.text[:200]!r}"
        raise CliError(f"--api {base}", why) from None
    if receipt is not None and response.status_code == 200:
        _save_receipt(base, answer["veilnet"]["job_id"], receipt, timeout)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        raise typer.Exit(0 if response.status_code == 200 else 1)
    if response.status_code != 200:
        error = answer.get("error", {})
        typer.echo(f"error ({error.get('code')}): {error.get('message')}", err=True)
        if answer.get("veilnet"):
            typer.echo(format_report(answer["veilnet"]), err=True)
        raise typer.Exit(2 if 400 <= response.status_code < 500 else 1)
    if chosen == "chat":
        typer.echo(answer["choices"][0]["message"]["content"])
    else:
        vector = answer["data"][0]["embedding"]
        head = ", ".join(f"{x:+.4f}" for x in vector[:6])
        typer.echo(f"embedding ({len(vector)} dimensions): [{head}, …]")
    typer.echo(format_report(answer["veilnet"]))


def _save_receipt(base: str, job_id: str, path: Path, timeout: float) -> None:
    """Fetch the job's receipt from the node and write it with its private parts beside it."""
    try:
        response = httpx.get(f"{base}/veilnet/v1/jobs/{job_id}/receipt", timeout=timeout)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot fetch the receipt: {exc}", err=True)
        raise typer.Exit(2) from None
    if response.status_code != 200:
        typer.echo(f"error: no receipt (HTTP {response.status_code}): {response.text[:300]}", err=True)
        raise typer.Exit(1)
    body = response.json()
    private = body["private"]
    try:
        path.write_bytes(base64.b64decode(body["wire"]))
        Path(f"{path}.answer").write_bytes(base64.b64decode(private["answer"]))
        Path(f"{path}.input").write_bytes(base64.b64decode(private["input"]))
        Path(f"{path}.salt").write_text(private["input_salt"] + "\n")
    except OSError as exc:
        typer.echo(f"error: cannot write the receipt: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"receipt written to {path} (check it: veilnet receipt verify {path} --answer {path}.answer "
               f"--input {path}.input --salt {private['input_salt']})", err=True)


def _task_of(client: httpx.Client, base: str, model: str) -> str:
    """Ask the node which task ``model`` has (embeddings when it cannot tell)."""
    response = client.get(f"{base}/v1/models")
    response.raise_for_status()
    for entry in response.json().get("data", []):
        veilnet = entry.get("veilnet", {})
        if model in (entry.get("id"), veilnet.get("model_id")):
            return str(veilnet.get("task") or "embeddings")
    return "embeddings"
