"""``veilnet tee``: verify evidence files, pin them in a policy, detect local TEEs, manage collateral.

``verify`` exits 0 only when the evidence verifies *and* the policy accepts it; 1 when it is
refused; 2 on unusable input. With ``--json`` every outcome, exit 2 included, prints one JSON
verdict with reason codes. Without an expected binding (``--report-data``, ``--binding-hash``
or ``--bundle``) the binding cannot be checked and the output says so ("report data: not
checked") — it does not count as a refusal. Every file is read with a size bound.

Why one module over 500 lines: one command group whose commands share the bounded input
readers, the verdict rendering (text and JSON) and the exit-code rules; the verification itself
lives in ``protocol.attestation``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from node.attest.tee.collateral import CollateralCache, CollateralCacheError
from node.attest.tee.configfs import TeeUnavailable, collect_tsm_report
from node.attest.tee.detect import detect as detect_kinds
from node.attest.tee.files import InputTooLarge, read_bounded
from protocol.attestation import nvidia_gpu, sev_snp, tdx
from protocol.attestation.binding_schemes import BindingSchemeError, decode_key, hashed_report_data
from protocol.attestation.bundle import AttestationBundle, BundleError
from protocol.attestation.evidence import (
    GPU_KINDS,
    Evidence,
    EvidenceKind,
    EvidenceVerdict,
    EvidenceVerifier,
    Reason,
)
from protocol.attestation.evidence_files import EvidenceFileError, LoadedEvidence, load_evidence
from protocol.attestation.pinning import permissive_section, pinning_section, policy_additions
from protocol.attestation.policy import Policy
from protocol.identity import SignatureError
from protocol.nesting import NestingError, check_text_depth, loads_toml

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
MAX_POLICY_FILE = 1 << 20
KINDS_HELP = "tdx, sev-snp or nvidia-gpu (default: detect)."
# Rich markup would read "[tdx]" as a style tag and print nothing: brackets are escaped.
POLICY_HELP = (
    "Appraisal policy TOML; the section named after the kind is used (\\[tdx], \\[sev-snp], \\[nvidia-gpu])."
)
EVENT_LOG_HELP = (
    "TDX event log for RTMR replay: binary CCEL, or dstack's JSON log (tcb_info.json or a list of events)."
)


class InputError(Exception):
    """Unusable input (exit 2): ``code`` is the stable reason code printed in JSON."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _read(path: Path, what: str, limit: int = MAX_INPUT_FILE) -> bytes:
    try:
        return read_bounded(path, limit)
    except InputTooLarge as exc:
        raise InputError("input_too_large", f"{what} {exc}") from exc
    except OSError as exc:
        raise InputError("unreadable_input", f"cannot read {what} {path}: {exc}") from exc


def _fail(error: InputError, as_json: bool) -> typer.Exit:
    """Report unusable input: a JSON verdict with its reason code under --json, else a line on stderr."""
    if as_json:
        typer.echo(
            json.dumps(
                {"ok": False, "exit_code": 2, "kind": None, "reasons": [error.code], "detail": error.message},
                indent=2,
            )
        )
    else:
        typer.echo(f"error: {error.message}", err=True)
    return typer.Exit(2)


def _kind(text: str | None) -> EvidenceKind | None:
    if text is None:
        return None
    try:
        kind = EvidenceKind(text)
    except ValueError:
        raise InputError("bad_argument", f"--kind must be tdx, sev-snp or nvidia-gpu, not {text!r}") from None
    if kind is EvidenceKind.SIMULATED:
        raise InputError("bad_argument", "simulated evidence is verified by the bundle layer, not here")
    return kind


def _time(text: str | None) -> int:
    if text is None:
        return int(time.time())
    try:
        return int(text)
    except ValueError:
        raise InputError(
            "bad_argument", f"--at must be an integer number of unix seconds, not {text!r}"
        ) from None


def _policy_doc(path: Path | None) -> Mapping[str, Any]:
    if path is None:
        return {}
    raw = _read(path, "policy", MAX_POLICY_FILE)
    try:
        return loads_toml(raw.decode("utf-8"))
    except NestingError as exc:
        raise InputError("too_deeply_nested", f"policy {path} is {exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError("bad_policy", f"policy {path} is not TOML: {exc}") from exc


def _policy_section(doc: Mapping[str, Any], kind: EvidenceKind) -> Mapping[str, Any]:
    section = doc.get(kind.value, {})
    if not isinstance(section, dict):
        raise InputError("bad_policy", f"policy section [{kind.value}] must be a table")
    return section


class Binding:
    """The expected report data, from one documented scheme (or none: "not checked")."""

    def __init__(
        self, exact: bytes | None, scheme: tuple[str, list[bytes], bytes] | None, bundle: Any
    ) -> None:
        self.exact = exact
        self.scheme = scheme
        self.bundle = bundle

    @property
    def given(self) -> bool:
        return self.exact is not None or self.scheme is not None or self.bundle is not None

    def expected(self, kind: EvidenceKind) -> bytes | None:
        size = 32 if kind in GPU_KINDS else 64
        if self.exact is not None:
            return self.exact
        if self.scheme is not None:
            algorithm, keys, prefix = self.scheme
            try:
                return hashed_report_data(algorithm, keys, prefix, size)
            except BindingSchemeError as exc:
                raise InputError("bad_binding", f"--binding-hash: {exc}") from exc
        if self.bundle is not None:
            return (
                self.bundle.expected_gpu_nonce() if kind in GPU_KINDS else self.bundle.expected_report_data()
            )
        return None


def _binding(
    report_data: str | None, algorithm: str | None, keys: list[str], prefix: str | None, bundle: Path | None
) -> Binding:
    if sum(x is not None for x in (report_data, algorithm, bundle)) > 1:
        raise InputError("bad_binding", "give one of --report-data, --binding-hash or --bundle")
    if (keys or prefix is not None) and algorithm is None:
        raise InputError("bad_binding", "--binding-key and --binding-prefix need --binding-hash")
    exact = None
    if report_data is not None:
        digits = report_data.strip().removeprefix("0x")
        if len(digits) % 2:
            raise InputError("bad_binding", f"--report-data has an odd number of hex digits ({len(digits)})")
        try:
            exact = bytes.fromhex(digits)
        except ValueError:
            raise InputError("bad_binding", "--report-data must be hex") from None
    scheme = None
    if algorithm is not None:
        try:
            decoded = [decode_key(key) for key in keys]
            scheme = (algorithm, decoded, bytes.fromhex((prefix or "").removeprefix("0x")))
            hashed_report_data(algorithm, decoded, scheme[2], 64)  # validate now, sized per kind later
        except BindingSchemeError as exc:
            raise InputError("bad_binding", f"--binding-hash: {exc}") from exc
        except ValueError:
            raise InputError("bad_binding", "--binding-prefix must be hex") from None
    loaded = None
    if bundle is not None:
        try:
            loaded = AttestationBundle.from_wire(_read(bundle, "bundle"))
            loaded.verify_signature()
        except (BundleError, SignatureError) as exc:
            raise InputError("bad_binding", f"--bundle {bundle}: {exc}") from exc
    return Binding(exact, scheme, loaded)


def _endorsements(
    collateral: Path | None,
    vcek: Path | None,
    cert_chain: Path | None,
    rim: list[Path],
    event_log: Path | None,
) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if collateral is not None:
        out["collateral"] = _bounded_depth(_read(collateral, "collateral"), f"collateral {collateral}")
    if vcek is not None:
        out["vcek"] = _read(vcek, "VCEK")
    if cert_chain is not None:
        out["cert_chain"] = _read(cert_chain, "certificate chain")
    for i, path in enumerate(rim):
        out[f"rim{i}"] = _read(path, "RIM")
    if event_log is not None:
        out["event_log"] = _bounded_depth(_read(event_log, "event log"), f"event log {event_log}")
    return out


def _bounded_depth(data: bytes, what: str) -> bytes:
    """JSON nested past the limit is unusable input (exit 2), not a refusal of the evidence."""
    try:
        check_text_depth(data.decode("utf-8", "replace"))
    except NestingError as exc:
        raise InputError("too_deeply_nested", f"{what} is {exc}") from exc
    return data


def _load(path: Path, kind: EvidenceKind | None, endorsements: dict[str, bytes]) -> list[LoadedEvidence]:
    try:
        return load_evidence(_read(path, "evidence"), kind, endorsements)
    except EvidenceFileError as exc:
        code = "too_deeply_nested" if "nested deeper" in str(exc) else "not_evidence"
        raise InputError(code, str(exc)) from exc


def _with_cached_collateral(evidence: Evidence, cache_dir: Path | None) -> Evidence:
    if EvidenceKind(evidence.kind) is not EvidenceKind.TDX or "collateral" in evidence.endorsements:
        return evidence
    cached = CollateralCache(cache_dir).for_quote(evidence.data)
    if cached is None:
        return evidence
    return Evidence(evidence.kind, evidence.data, {**evidence.endorsements, "collateral": cached})


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


@tee_app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def verify(
    ctx: typer.Context,
    evidence_file: Path | None = typer.Argument(
        None, metavar="EVIDENCE_FILE", help="Evidence: binary, hex text, JSON byte array or NVIDIA SDK JSON."
    ),
    kind: str | None = typer.Option(None, "--kind", help=KINDS_HELP),
    collateral: Path | None = typer.Option(None, "--collateral", help="DCAP collateral JSON (TDX)."),
    vcek: Path | None = typer.Option(None, "--vcek", help="VCEK certificate, DER or PEM (SEV-SNP)."),
    cert_chain: Path | None = typer.Option(
        None, "--cert-chain", help="PEM chain: AMD ASK and ARK (SEV-SNP) or GPU device chain (NVIDIA)."
    ),
    rim: list[Path] = typer.Option([], "--rim", help="NVIDIA reference measurement file (repeatable)."),
    event_log: Path | None = typer.Option(None, "--event-log", help=EVENT_LOG_HELP),
    at: str | None = typer.Option(None, "--at", help="Verification time (unix seconds; default now)."),
    policy: Path | None = typer.Option(None, "--policy", help=POLICY_HELP),
    report_data: str | None = typer.Option(
        None, "--report-data", help="Expected report data (64 bytes) or GPU nonce (32 bytes), exact hex."
    ),
    binding_hash: str | None = typer.Option(
        None,
        "--binding-hash",
        help="Expected report data = PREFIX ‖ HASH(key ‖ key …), zero-padded: sha256, sha384, sha512, "
        "sha3-256, sha3-384, sha3-512, blake2b-256 or blake2b-512.",
    ),
    binding_key: list[str] = typer.Option(
        [],
        "--binding-key",
        metavar="KEY",
        help="A key for --binding-hash: hex, text:<utf-8> or ed25519:<base58> (repeatable, in order).",
    ),
    binding_prefix: str | None = typer.Option(
        None, "--binding-prefix", help="Hex bytes before the hash (e.g. 0001 for NEAR MPC)."
    ),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="A Veilnet attestation bundle: expect its own binding (signature checked)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON (for every outcome)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Collateral cache directory."),
) -> None:
    """Verify an evidence file and appraise it; exit 0 only if it verifies and the policy accepts it."""
    try:
        # Argument problems are ours to report (not click's usage text), so --json covers them too.
        if ctx.args:
            raise InputError("bad_argument", f"unknown argument(s) {ctx.args}; see --help")
        if evidence_file is None:
            raise InputError("bad_argument", "an EVIDENCE_FILE is required; see --help")
        wanted = _kind(kind)
        now = _time(at)
        binding = _binding(report_data, binding_hash, binding_key, binding_prefix, bundle)
        endorsements = _endorsements(collateral, vcek, cert_chain, rim, event_log)
        loaded = _load(evidence_file, wanted, endorsements)
        doc = _policy_doc(policy)
        results = [_verify_one(item, binding, doc, now, cache_dir) for item in loaded]
    except InputError as exc:
        raise _fail(exc, as_json) from exc
    if as_json:
        typer.echo(json.dumps(results if len(results) > 1 else results[0], indent=2, default=str))
    else:
        for i, result in enumerate(results):
            _print_human(result, i if len(results) > 1 else None)
    raise typer.Exit(0 if all(r["ok"] for r in results) else 1)


def _verify_one(
    item: LoadedEvidence, binding: Binding, doc: Mapping[str, Any], now: int, cache_dir: Path | None
) -> dict[str, Any]:
    evidence = _with_cached_collateral(item.evidence, cache_dir)
    kind = EvidenceKind(evidence.kind)
    section = _policy_section(doc, kind)
    verifier = VERIFIERS[kind]
    expected = binding.expected(kind)
    verdict = verifier.verify(evidence, expected_report_data=expected or b"", policy=section, now=now)
    if expected is None and verdict.report_data:
        # No binding to check against: appraise everything else by expecting what the evidence carries.
        verdict = verifier.verify(evidence, expected_report_data=verdict.report_data, policy=section, now=now)
    out = _verdict_json(verdict, expected is not None)
    out["form"] = item.form
    out["verified_at"] = now
    out["policy_additions"] = policy_additions(verdict, section)
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
    typer.echo(f"  revocation:  {result['revocation']}")
    for name, value in result["measurements"].items():
        if not name.startswith("index"):
            typer.echo(f"  {name + ':':<12} {value}")
    for name, value in result["extra"].items():
        typer.echo(f"  {name + ':':<12} {value}")
    additions = result.get("policy_additions")
    if additions:
        typer.echo(f"  to accept it, add to the policy's [{result['kind']}] section:")
        for line in (
            Policy(allowed_kinds=(result["kind"],), sections={result["kind"]: additions})
            .to_toml()
            .splitlines()
        ):
            if line and not line.startswith("[") and line.split(" = ")[0] in additions:
                typer.echo(f"    {line}")


def _merge_pins(pins: list[dict[str, Any]]) -> dict[str, Any]:
    """One section for several pieces of evidence of a kind (e.g. the GPUs of one host)."""
    merged: dict[str, Any] = {}
    for pin in pins:
        for key, value in pin.items():
            if isinstance(value, list):
                merged[key] = merged.get(key, []) + [v for v in value if v not in merged.get(key, [])]
            elif isinstance(value, dict):  # min_tcb: the lowest of each component
                current = merged.setdefault(key, dict(value))
                for name, minimum in value.items():
                    current[name] = min(current.get(name, minimum), minimum)
            else:
                merged[key] = merged.get(key, False) or value
    return merged


@tee_app.command("policy")
def policy_from(
    from_file: Path = typer.Option(..., "--from", help="Known-good evidence to pin (any form verify reads)."),
    kind: str | None = typer.Option(None, "--kind", help=KINDS_HELP),
    collateral: Path | None = typer.Option(None, "--collateral", help="DCAP collateral JSON (TDX)."),
    vcek: Path | None = typer.Option(None, "--vcek", help="VCEK certificate, DER or PEM (SEV-SNP)."),
    cert_chain: Path | None = typer.Option(None, "--cert-chain", help="PEM chain (SEV-SNP or NVIDIA)."),
    event_log: Path | None = typer.Option(None, "--event-log", help=EVENT_LOG_HELP),
    at: str | None = typer.Option(None, "--at", help="Verification time (unix seconds; default now)."),
    out: Path | None = typer.Option(None, "--out", help="Write the policy here (default: print it)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Collateral cache directory."),
) -> None:
    """Write a policy TOML that pins the measurements of verified, known-good evidence.

    The evidence is fully verified first (chains, signatures, collateral); a policy is written
    only for evidence that verifies. The binding is not pinned (it changes with every quote).
    """
    try:
        now = _time(at)
        loaded = _load(from_file, _kind(kind), _endorsements(collateral, vcek, cert_chain, [], event_log))
    except InputError as exc:
        raise _fail(exc, False) from exc
    pins: list[dict[str, Any]] = []
    kinds = {item.evidence.kind for item in loaded}
    if len(kinds) != 1:
        typer.echo(f"error: the file holds several kinds of evidence {sorted(kinds)}", err=True)
        raise typer.Exit(2)
    notes: list[str] = []
    for item in loaded:
        evidence = _with_cached_collateral(item.evidence, cache_dir)
        verifier = VERIFIERS[EvidenceKind(evidence.kind)]
        claims = verifier.verify(
            evidence, expected_report_data=b"", policy=permissive_section(evidence.kind), now=now
        )
        claims = verifier.verify(
            evidence,
            expected_report_data=claims.report_data,
            policy=permissive_section(evidence.kind),
            now=now,
        )
        if not claims.ok and set(claims.reasons) != {Reason.DEBUG}:
            typer.echo(
                f"error: the evidence does not verify ({', '.join(claims.reasons)}): {claims.detail}; "
                "no policy written",
                err=True,
            )
            raise typer.Exit(1)
        if claims.debug:
            notes.append("this evidence has its DEBUG bit set: the pinned policy still refuses it")
        if evidence.kind == EvidenceKind.NVIDIA_GPU.value:
            notes.append(
                "GPU revocation (OCSP) cannot be checked offline; require_ocsp stays true (the default) "
                "until you decide otherwise"
            )
        pins.append(pinning_section(claims))
    kind_name = kinds.pop()
    text = Policy(allowed_kinds=(kind_name,), sections={kind_name: _merge_pins(pins)}).to_toml()
    header = (
        f"# Pins the measurements of {from_file.name} ({len(loaded)} evidence, verified at {now}),\n"
        "# written by `veilnet tee policy`. The report-data binding is checked per quote, not pinned.\n"
    )
    text = header + "".join(f"# NOTE: {note}\n" for note in dict.fromkeys(notes)) + text
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)
    typer.echo(f"wrote {out}")


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
    except InputError as exc:
        raise _fail(exc, False) from exc
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
