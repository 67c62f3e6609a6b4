"""``veilnet tee``: verify evidence files, detect local TEEs, manage the DCAP collateral cache.

``verify`` exits 0 only when the evidence verifies *and* the policy accepts it; 1 when it is
refused; 2 on unusable input. Without ``--report-data`` the binding cannot be checked and the
output says so ("report data: not checked") — it does not count as a refusal.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from node.attest.tee.collateral import CollateralCache, CollateralCacheError
from node.attest.tee.configfs import TeeUnavailable, collect_tsm_report
from node.attest.tee.detect import detect as detect_kinds
from protocol.attestation import nvidia_gpu, sev_snp, tdx
from protocol.attestation.evidence import EvidenceKind, EvidenceVerdict, EvidenceVerifier
from protocol.attestation.evidence_files import EvidenceFileError, LoadedEvidence, load_evidence

tee_app = typer.Typer(
    help="TEE evidence: verify files, detect local hardware, manage collateral.", no_args_is_help=True
)
collateral_app = typer.Typer(help="The local DCAP collateral cache (for TDX quotes).", no_args_is_help=True)
tee_app.add_typer(collateral_app, name="collateral")

VERIFIERS: dict[EvidenceKind, EvidenceVerifier] = {
    EvidenceKind.TDX: tdx.VERIFIER,
    EvidenceKind.SEV_SNP: sev_snp.VERIFIER,
    EvidenceKind.NVIDIA_GPU: nvidia_gpu.VERIFIER,
}
MAX_INPUT_FILE = 4 * 1024 * 1024


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_INPUT_FILE:
            raise typer.BadParameter(f"{what} {path} is larger than {MAX_INPUT_FILE} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {what} {path}: {exc}") from exc


def _policy_section(path: Path | None, kind: EvidenceKind) -> Mapping[str, Any]:
    if path is None:
        return {}
    try:
        doc = tomllib.loads(_read(path, "policy").decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"policy {path} is not TOML: {exc}") from exc
    section = doc.get(kind.value, {})
    if not isinstance(section, dict):
        raise typer.BadParameter(f"policy section [{kind.value}] must be a table")
    return section


def _verdict_json(verdict: EvidenceVerdict, report_data_checked: bool) -> dict[str, Any]:
    return {
        "kind": verdict.kind,
        "ok": verdict.ok,
        "label": verdict.label,
        "reasons": [r.value for r in verdict.reasons],
        "detail": verdict.detail,
        "tcb_status": verdict.tcb_status,
        "advisories": list(verdict.advisories),
        "debug": verdict.debug,
        "revocation": verdict.revocation,
        "report_data": verdict.report_data.hex(),
        "report_data_checked": report_data_checked,
        "measurements": dict(verdict.measurements),
        "extra": dict(verdict.extra),
    }


@tee_app.command()
def verify(
    evidence_file: Path = typer.Argument(..., help="Evidence: binary, hex text, or NVIDIA SDK JSON."),
    kind: EvidenceKind | None = typer.Option(
        None, "--kind", help="tdx, sev-snp or nvidia-gpu (default: detect)."
    ),
    collateral: Path | None = typer.Option(None, "--collateral", help="DCAP collateral JSON (TDX)."),
    vcek: Path | None = typer.Option(None, "--vcek", help="VCEK certificate, DER or PEM (SEV-SNP)."),
    cert_chain: Path | None = typer.Option(
        None, "--cert-chain", help="PEM chain: AMD ASK+ARK (SEV-SNP) or GPU device chain (NVIDIA)."
    ),
    rim: list[Path] = typer.Option([], "--rim", help="NVIDIA reference measurement file (repeatable)."),
    event_log: Path | None = typer.Option(None, "--event-log", help="TDX CCEL event log for RTMR replay."),
    at: int | None = typer.Option(None, "--at", help="Verification time (unix seconds; default now)."),
    policy: Path | None = typer.Option(
        None, "--policy", help="Appraisal policy TOML ([tdx], [sev-snp], ...)."
    ),
    report_data: str | None = typer.Option(
        None, "--report-data", help="Expected report data / GPU nonce, hex."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Collateral cache directory."),
) -> None:
    """Verify an evidence file and appraise it; exit 0 only if it verifies and the policy accepts it."""
    if kind is EvidenceKind.SIMULATED:
        raise typer.BadParameter("simulated evidence is verified by the bundle layer, not here")
    endorsements: dict[str, bytes] = {}
    if collateral is not None:
        endorsements["collateral"] = _read(collateral, "collateral")
    if vcek is not None:
        endorsements["vcek"] = _read(vcek, "VCEK")
    if cert_chain is not None:
        endorsements["cert_chain"] = _read(cert_chain, "certificate chain")
    for i, path in enumerate(rim):
        endorsements[f"rim{i}"] = _read(path, "RIM")
    if event_log is not None:
        endorsements["event_log"] = _read(event_log, "event log")
    try:
        expected = bytes.fromhex(report_data) if report_data is not None else None
    except ValueError as exc:
        raise typer.BadParameter("--report-data must be hex") from exc
    try:
        loaded = load_evidence(_read(evidence_file, "evidence"), kind, endorsements)
    except EvidenceFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    now = at if at is not None else int(time.time())
    results = [_verify_one(item, expected, policy, now, cache_dir) for item in loaded]
    if as_json:
        typer.echo(json.dumps(results if len(results) > 1 else results[0], indent=2, default=str))
    else:
        for i, result in enumerate(results):
            _print_human(result, i if len(results) > 1 else None)
    raise typer.Exit(0 if all(r["ok"] for r in results) else 1)


def _verify_one(
    item: LoadedEvidence, expected: bytes | None, policy: Path | None, now: int, cache_dir: Path | None
) -> dict[str, Any]:
    evidence = item.evidence
    kind = EvidenceKind(evidence.kind)
    if kind is EvidenceKind.TDX and "collateral" not in evidence.endorsements:
        cached = CollateralCache(cache_dir).for_quote(evidence.data)
        if cached is not None:
            evidence = type(evidence)(
                evidence.kind, evidence.data, {**evidence.endorsements, "collateral": cached}
            )
    section = _policy_section(policy, kind)
    verifier = VERIFIERS[kind]
    verdict = verifier.verify(evidence, expected_report_data=expected or b"", policy=section, now=now)
    if expected is None and verdict.report_data:
        # No binding to check against: appraise everything else by expecting what the evidence carries.
        verdict = verifier.verify(evidence, expected_report_data=verdict.report_data, policy=section, now=now)
    out = _verdict_json(verdict, expected is not None)
    out["form"] = item.form
    out["verified_at"] = now
    if item.declared_nonce is not None:
        out["declared_nonce"] = item.declared_nonce.hex()
    return out


def _print_human(result: Mapping[str, Any], index: int | None) -> None:
    prefix = f"[{index}] " if index is not None else ""
    status = "ACCEPTED" if result["ok"] else "REFUSED"
    typer.echo(f"{prefix}{result['label'] or result['kind']}: {status}")
    if result["reasons"]:
        typer.echo(f"  reasons:     {', '.join(result['reasons'])}")
    typer.echo(f"  detail:      {result['detail']}")
    if result["tcb_status"]:
        typer.echo(f"  tcb:         {result['tcb_status']} {' '.join(result['advisories'])}")
    typer.echo(f"  debug:       {result['debug']}")
    typer.echo(
        f"  report data: {result['report_data']}"
        + ("" if result["report_data_checked"] else " (not checked)")
    )
    if result["kind"] == EvidenceKind.NVIDIA_GPU.value:
        typer.echo(f"  revocation:  {result['revocation']}")
    for name, value in result["measurements"].items():
        if not name.startswith("index"):
            typer.echo(f"  {name + ':':<12} {value}")
    for name, value in result["extra"].items():
        typer.echo(f"  {name + ':':<12} {value}")


@tee_app.command()
def detect() -> None:
    """Say which evidence kinds this machine can produce, and why not the others."""
    for item in detect_kinds():
        mark = "yes" if item.available else "no "
        typer.echo(f"{item.kind.value:<11} {mark}  {item.reason}")


@collateral_app.command("import")
def collateral_import(
    file: Path = typer.Argument(..., help="QuoteCollateralV3 JSON."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir"),
) -> None:
    """Import collateral into the local cache (offline)."""
    cache = CollateralCache(cache_dir)
    try:
        info = cache.import_file(file)
    except CollateralCacheError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    left = info.not_after - int(time.time())
    typer.echo(
        f"imported {info.tee}-{info.fmspc} into {cache.directory}; valid until {info.not_after}"
        + (" (ALREADY EXPIRED)" if left <= 0 else f" ({left / 86400:.1f} days left)")
    )


@collateral_app.command("fetch")
def collateral_fetch(
    pccs: str = typer.Option(..., "--pccs", help="PCCS base URL to fetch from."),
    quote: Path | None = typer.Option(
        None, "--quote", help="A quote of the platform (default: collect one)."
    ),
    cache_dir: Path | None = typer.Option(None, "--cache-dir"),
) -> None:
    """Fetch collateral for this platform (or for --quote) from a PCCS and cache it."""
    try:
        raw = _read(quote, "quote") if quote is not None else collect_tsm_report(bytes(64)).outblob
        info = CollateralCache(cache_dir).fetch(pccs, raw)
    except (CollateralCacheError, TeeUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"fetched {info.tee}-{info.fmspc}; valid until {info.not_after}")


@collateral_app.command("status")
def collateral_status(
    cache_dir: Path | None = typer.Option(None, "--cache-dir"),
    warn_days: float = typer.Option(
        7.0, "--warn-days", help="Warn when an entry expires within this many days."
    ),
) -> None:
    """List cached collateral; exit 1 if any entry has expired or expires within --warn-days."""
    cache = CollateralCache(cache_dir)
    now = int(time.time())
    entries = cache.entries()
    if not entries:
        typer.echo(f"no collateral cached in {cache.directory}")
    for info in entries:
        left = info.not_after - now
        state = "EXPIRED" if left <= 0 else ("expires soon" if left <= warn_days * 86400 else "ok")
        typer.echo(f"{info.tee}-{info.fmspc}  valid until {info.not_after}  {state}")
    raise typer.Exit(1 if cache.expiring(now, int(warn_days * 86400)) else 0)
