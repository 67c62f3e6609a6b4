"""``veilnet receipt verify``: check a job receipt offline, with no network and no running node.

Exit codes as ``veilnet tee verify``: 0 when every step passes (steps that could not be checked,
such as the answer when ``--answer`` is not given, are shown but do not fail), 1 when a step
fails, 2 on unusable input. With ``--json`` every outcome, exit 2 included, prints one JSON
verdict with reason codes. Every file is read with a size bound. The checks are
``protocol.jobs.receipts.verify_receipt``'s (``docs/protocol/receipts.md``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import typer

from node.attest.tee.files import InputTooLarge, read_bounded
from protocol.attestation.policy import Policy, PolicyError
from protocol.identity import peer_id_to_text
from protocol.jobs.receipts import (
    MAX_RECEIPT_SIZE,
    Receipt,
    ReceiptError,
    ReceiptVerdict,
    StepStatus,
    verify_receipt,
)
from protocol.nesting import NestingError, loads_toml

__all__ = ["receipt_app"]

receipt_app = typer.Typer(help="Job receipts: verify them offline.", no_args_is_help=True)

MAX_JSON_RECEIPT = 3 * MAX_RECEIPT_SIZE  # hex and base64 renderings are larger than the bytes
MAX_ANSWER = 8 << 20
MAX_POLICY_FILE = 1 << 20


class InputError(Exception):
    """Unusable input (exit 2): ``code`` is the stable reason code printed in JSON."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _read(path: Path, what: str, limit: int) -> bytes:
    try:
        return read_bounded(path, limit)
    except InputTooLarge as exc:
        raise InputError("input_too_large", f"{what} {exc}") from exc
    except OSError as exc:
        raise InputError("unreadable_input", f"cannot read {what} {path}: {exc}") from exc


def load_receipt(data: bytes) -> Receipt:
    """msgpack bytes, the JSON rendering, or the API's JSON answer (``wire`` is used when present)."""
    try:
        if data[:1] != b"{":
            return Receipt.from_wire(data)
        try:
            document = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError("malformed_receipt", f"receipt is not msgpack nor valid JSON: {exc}") from None
        if isinstance(document, dict) and isinstance(document.get("wire"), str):
            try:
                return Receipt.from_wire(base64.b64decode(document["wire"], validate=True))
            except binascii.Error as exc:
                raise InputError("malformed_receipt", f"wire: {exc}") from None
        if isinstance(document, dict) and isinstance(document.get("receipt"), dict):
            document = document["receipt"]
        return Receipt.from_json(document)
    except ReceiptError as exc:
        raise InputError("malformed_receipt", f"receipt: {exc}") from None


def _policy(path: Path | None) -> Policy:
    if path is None:
        return Policy()
    raw = _read(path, "policy", MAX_POLICY_FILE)
    try:
        text = raw.decode("utf-8")
        document = loads_toml(text)
        embedded = document.get("policy")  # a testnet.toml carries its policy as a string
        return Policy.from_toml(embedded) if isinstance(embedded, str) else Policy.from_mapping(document)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, NestingError, PolicyError) as exc:
        raise InputError("bad_policy", f"policy {path}: {exc}") from None


def _salt(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InputError("bad_argument", "--salt must be hex") from None


def verdict_json(verdict: ReceiptVerdict, at: int) -> dict[str, Any]:
    r = verdict.receipt
    return {
        "ok": verdict.ok,
        "exit_code": 0 if verdict.ok else 1,
        "reasons": list(verdict.reasons),
        "simulated": verdict.simulated,
        "job_id": r.job_id.hex(),
        "user": peer_id_to_text(r.user),
        "model_id": r.model_id,
        "task": r.task,
        "status": r.status,
        "verified_at": at,
        "steps": [s.to_json() for s in verdict.steps],
    }


@receipt_app.command(
    "verify", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def verify_command(
    ctx: typer.Context,
    receipt_file: Path | None = typer.Argument(
        None, metavar="RECEIPT", help="A receipt: msgpack, its JSON rendering, or the API's JSON answer."
    ),
    answer: Path | None = typer.Option(None, "--answer", help="The answer's bytes (the result payload)."),
    input_file: Path | None = typer.Option(None, "--input", help="The job input's bytes (with --salt)."),
    salt: str | None = typer.Option(None, "--salt", help="The input salt, hex (kept by the user's node)."),
    policy: Path | None = typer.Option(
        None, "--policy", help="Appraisal policy TOML, or a testnet.toml (default: real TEEs only)."
    ),
    at: str | None = typer.Option(
        None, "--at", help="Appraise bundles at this unix time (default: the job's)."
    ),
    bundle: list[Path] = typer.Option(
        [], "--bundle", help="A bundle file for an executor the receipt names by digest (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON (for every outcome)."),
) -> None:
    """Verify a job receipt offline; exit 0 only if every checkable step passes."""
    try:
        if ctx.args:
            raise InputError("bad_argument", f"unknown argument(s) {ctx.args}; see --help")
        if receipt_file is None:
            raise InputError("bad_argument", "a RECEIPT file is required; see --help")
        if (input_file is None) != (salt is None):
            raise InputError("bad_argument", "--input and --salt go together")
        receipt = load_receipt(_read(receipt_file, "receipt", MAX_JSON_RECEIPT))
        when: int | None = None
        if at is not None:
            try:
                when = int(at)
            except ValueError:
                raise InputError("bad_argument", f"--at must be unix seconds, not {at!r}") from None
        bundles = {}
        for path in bundle:
            data = _read(path, "bundle", MAX_RECEIPT_SIZE)
            bundles[hashlib.sha256(data).digest()] = data
        started = time.perf_counter()
        verdict = verify_receipt(
            receipt, policy=_policy(policy), at=when,
            answer=_read(answer, "answer", MAX_ANSWER) if answer is not None else None,
            job_input=_read(input_file, "input", MAX_ANSWER) if input_file is not None else None,
            salt=_salt(salt), bundles=bundles,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
    except InputError as exc:
        if as_json:
            out = {"ok": False, "exit_code": 2, "reasons": [exc.code], "detail": exc.message}
            typer.echo(json.dumps(out, indent=2))
        else:
            typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    result = verdict_json(verdict, when if when is not None else receipt.created_ms // 1000)
    result["verify_ms"] = round(elapsed_ms, 3)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print_human(result)
    raise typer.Exit(0 if verdict.ok else 1)


_MARK = {
    StepStatus.PASS.value: "ok  ",
    StepStatus.FAIL.value: "FAIL",
    StepStatus.SIMULATED.value: "SIM ",
    StepStatus.NOT_CHECKED.value: "--  ",
}


def _print_human(result: dict[str, Any]) -> None:
    status = "VERIFIED" if result["ok"] else "REFUSED"
    if result["ok"] and result["simulated"]:
        status += " (SIMULATED evidence: no hardware guarantee)"
    typer.echo(f"receipt {result['job_id']} ({result['task']}, {result['model_id']}): {status}")
    typer.echo(f"  signed by {result['user']}; job status {result['status']}")
    for step in result["steps"]:
        reason = f" [{step['reason']}]" if step["reason"] else ""
        detail = f" {step['detail']}" if step["detail"] else ""
        typer.echo(f"  {_MARK[step['status']]} {step['step']}{reason}{detail}")
    if result["reasons"]:
        typer.echo(f"  reasons: {', '.join(result['reasons'])}")
