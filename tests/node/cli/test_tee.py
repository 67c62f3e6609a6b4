"""``veilnet tee``: verify, detect, collateral cache — against the real vectors."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.attest.tee.collateral import CollateralCache, CollateralCacheError
from node.attest.tee.configfs import TeeUnavailable, TsmReport, collect_tsm_report, tsm_evidence
from node.attest.tee.detect import detect
from node.cli.main import app
from protocol.attestation import sev_snp
from protocol.attestation.evidence import EvidenceKind
from protocol.attestation.roots import amd_chain
from protocol.attestation.snp_report import build_cert_table
from tests.vectors import VECTORS

DCAP = VECTORS / "tdx" / "dcap-qvl"
SNP = VECTORS / "sev-snp" / "go-sev-guest"
GPU = VECTORS / "nvidia-gpu" / "nvtrust"
NOW_TDX = "1752919234"
runner = CliRunner()

POLICY = """
[tdx]
allow_dynamic_platform = true
allow_cached_keys = true
allow_smt = true
allow_any_measurement = true

[sev-snp]
allow_debug = true
allow_any_measurement = true

[nvidia-gpu]
require_ocsp = false
allow_any_measurement = true
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["tee", *map(str, args)])
    return result.exit_code, result.output


def test_verify_tdx_accepted_and_json(policy: Path, tmp_path: Path) -> None:
    rd = (DCAP / "tdx_quote").read_bytes()[568:632].hex()
    code, out = run(
        "verify",
        DCAP / "tdx_quote",
        "--collateral",
        DCAP / "tdx_quote_collateral.json",
        "--at",
        NOW_TDX,
        "--policy",
        policy,
        "--report-data",
        rd,
        "--json",
    )
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] and doc["tcb_status"] == "UpToDate" and doc["report_data_checked"]


def test_verify_exit_codes(policy: Path) -> None:
    base = [
        "verify",
        DCAP / "tdx_quote",
        "--collateral",
        DCAP / "tdx_quote_collateral.json",
        "--policy",
        policy,
    ]
    assert run(*base, "--at", NOW_TDX, "--report-data", "00" * 64)[0] == 1  # binding mismatch
    code, out = run(*base, "--at", str(int(NOW_TDX) + 86400))
    assert code == 1 and "expired" in out
    code, out = run(*base, "--at", NOW_TDX)
    assert code == 0 and "(not checked)" in out
    code, out = run(
        "verify", DCAP / "tdx_quote", "--collateral", DCAP / "tdx_quote_collateral.json", "--at", NOW_TDX
    )
    assert code == 1 and "measurement_not_allowed" in out  # no policy: unknown measurements refused


def test_verify_tdx_from_collateral_cache(policy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code, out = run("collateral", "import", DCAP / "tdx_quote_collateral.json", "--cache-dir", cache)
    assert code == 0 and "TDX-B0C06F000000" in out
    code, out = run("verify", DCAP / "tdx_quote", "--at", NOW_TDX, "--policy", policy, "--cache-dir", cache)
    assert code == 0, out


def test_verify_sgx_refused(policy: Path) -> None:
    code, out = run(
        "verify",
        DCAP / "sgx_quote",
        "--kind",
        "tdx",
        "--collateral",
        DCAP / "sgx_quote_collateral.json",
        "--at",
        "1752919277",
        "--policy",
        policy,
    )
    assert code == 1 and "not_cpu_evidence" in out


def test_verify_snp_debug_refused_without_test_policy(policy: Path) -> None:
    code, out = run("verify", SNP / "attestation.bin", "--vcek", SNP / "vcek.testcer", "--at", NOW_TDX)
    assert code == 1 and "debug" in out
    code, out = run(
        "verify",
        SNP / "attestation.bin",
        "--vcek",
        SNP / "vcek.testcer",
        "--at",
        NOW_TDX,
        "--policy",
        policy,
        "--report-data",
        "0102030405" + "00" * 59,
    )
    assert code == 0, out


def test_verify_gpu_forms(policy: Path) -> None:
    code, out = run("verify", GPU / "ppcie_gpu_evidence.json", "--at", NOW_TDX, "--policy", policy, "--json")
    assert code == 0
    assert len(json.loads(out)) == 8
    code, out = run(
        "verify",
        GPU / "hopperAttestationReport.txt",
        "--cert-chain",
        GPU / "hopperCertChain.txt",
        "--at",
        NOW_TDX,
        "--policy",
        policy,
    )
    assert code == 0 and "revocation:  not checked" in out
    code, out = run(
        "verify",
        GPU / "hopperAttestationReport.txt",
        "--cert-chain",
        GPU / "hopperCertChain.txt",
        "--at",
        NOW_TDX,
        "--policy",
        policy,
        "--rim",
        GPU / "Driver_RIM_test_no_gpu.swidtag",
    )
    assert code == 1 and "measurement_not_allowed" in out
    bad = VECTORS / "nvidia-gpu" / "nvat-sdk" / "hopperAttestationReportInvalidSignature.txt"
    code, out = run(
        "verify", bad, "--cert-chain", GPU / "hopperCertChain.txt", "--at", NOW_TDX, "--policy", policy
    )
    assert code == 1 and "bad_signature" in out


def test_verify_unusable_input(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello")
    assert run("verify", junk)[0] == 2
    assert run("verify", tmp_path / "missing.bin")[0] == 2


def test_detect_explains_each_kind() -> None:
    code, out = run("detect")
    assert code == 0
    for kind in ("tdx", "sev-snp", "nvidia-gpu"):
        assert kind in out


def test_detect_with_absent_interfaces(tmp_path: Path) -> None:
    result = detect(tsm_root=tmp_path / "none", dev=tmp_path, cpuinfo=tmp_path / "cpuinfo")
    assert [r.kind for r in result] == [EvidenceKind.TDX, EvidenceKind.SEV_SNP, EvidenceKind.NVIDIA_GPU]
    assert not any(r.available for r in result[:2])
    (tmp_path / "cpuinfo").write_text("flags\t: fpu tdx_guest\n")
    hinted = detect(tsm_root=tmp_path / "none", dev=tmp_path, cpuinfo=tmp_path / "cpuinfo")
    assert "tdx_guest" in hinted[0].reason and "CONFIG_TSM_REPORTS" in hinted[0].reason


def test_configfs_unavailable_is_explained(tmp_path: Path) -> None:
    with pytest.raises(TeeUnavailable, match="CONFIG_TSM_REPORTS"):
        collect_tsm_report(bytes(64), root=tmp_path / "absent")
    with pytest.raises(ValueError):
        collect_tsm_report(bytes(65), root=tmp_path)


def test_tsm_snp_report_with_auxblob_verifies() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = amd_chain("Milan")
    aux = build_cert_table(
        {
            "vcek": (SNP / "vcek.testcer").read_bytes(),
            "ask": chain.ask.public_bytes(Encoding.DER),
            "ark": chain.ark.public_bytes(Encoding.DER),
        }
    )
    report = TsmReport("sev_guest", (SNP / "attestation.bin").read_bytes(), aux, 1)
    evidence = tsm_evidence(report)
    assert evidence.kind == "sev-snp"
    verdict = sev_snp.VERIFIER.verify(
        evidence,
        expected_report_data=evidence.data[0x50:0x90],
        policy={"allow_debug": True, "allow_any_measurement": True},
        now=int(NOW_TDX),
    )
    assert verdict.ok, verdict.detail
    with pytest.raises(TeeUnavailable):
        tsm_evidence(TsmReport("mystery", b"", None, 1))


def test_collateral_cache_expiry_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = CollateralCache(tmp_path)
    info = cache.import_file(DCAP / "tdx_quote_collateral.json")
    assert cache.for_quote((DCAP / "tdx_quote").read_bytes()) is not None
    assert cache.expiring(info.not_after - 30 * 86400) == []
    with caplog.at_level(logging.WARNING):
        soon = cache.warn_expiring(info.not_after - 86400)
    assert len(soon) == 1 and "expires in 1.0 days" in caplog.text
    with pytest.raises(CollateralCacheError):
        cache.import_bytes(b"{}")
    code, out = run("collateral", "status", "--cache-dir", tmp_path)
    assert code == 1 and "EXPIRED" in out


def test_collateral_fetch_needs_reachable_pccs(tmp_path: Path) -> None:
    code, out = run(
        "collateral",
        "fetch",
        "--pccs",
        "http://127.0.0.1:9",
        "--quote",
        DCAP / "tdx_quote",
        "--cache-dir",
        tmp_path,
    )
    assert code == 2 and "failed" in out
    assert run("collateral", "fetch", "--pccs", "ftp://x", "--quote", DCAP / "tdx_quote")[0] == 2


# -- issue 10: unusable input, --json for every outcome, bounded reads and depth -----------------

NEAR = VECTORS / "tdx" / "near-mpc"
NOW_NEAR = "1786618038"
NEAR_KEYS = [
    (NEAR / f).read_text().strip() for f in ("near_p2p_public_key.pub", "near_account_public_key.pub")
]


def near(*args: object) -> tuple[int, str]:
    return run(
        "verify",
        NEAR / "quote.json",
        "--collateral",
        NEAR / "collateral.json",
        "--at",
        NOW_NEAR,
        *map(str, args),
    )


def json_error(code: int, out: str) -> str:
    """The reason code of a JSON exit-2 verdict."""
    assert code == 2, out
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["detail"]
    [reason] = doc["reasons"]
    return str(reason)


def test_every_exit_2_outcome_prints_a_json_verdict(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello")
    cases = {
        "unreadable_input": ("verify", tmp_path / "missing.bin", "--json"),
        "not_evidence": ("verify", junk, "--json"),
        "bad_argument": ("verify", DCAP / "tdx_quote", "--kind", "sgx", "--json"),
        "bad_binding": ("verify", DCAP / "tdx_quote", "--report-data", "abc", "--json"),
    }
    for reason, args in cases.items():
        assert json_error(*run(*args)) == reason
    assert json_error(*run("verify", "--json")) == "bad_argument"  # no evidence file
    assert json_error(*run("verify", DCAP / "tdx_quote", "--frobnicate", "1", "--json")) == "bad_argument"
    assert json_error(*run("verify", DCAP / "tdx_quote", "--at", "soon", "--json")) == "bad_argument"


def test_dev_zero_and_an_endless_pipe_are_read_only_up_to_the_limit(tmp_path: Path) -> None:
    """Before: a size-0 stat was trusted and /dev/zero was read until memory ran out."""
    assert json_error(*run("verify", "/dev/zero", "--json")) == "input_too_large"
    assert json_error(*near("--policy", "/dev/zero", "--json")) == "input_too_large"
    assert (
        json_error(*run("verify", DCAP / "tdx_quote", "--collateral", "/dev/zero", "--json"))
        == "input_too_large"
    )
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def endless_writer() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as f:
            for _ in range(64):  # 8 MiB, twice the limit; the reader stops after limit + 1
                f.write(bytes(128 * 1024))

    writer = threading.Thread(target=endless_writer)
    writer.start()
    try:
        assert json_error(*run("verify", fifo, "--json")) == "input_too_large"
    finally:
        writer.join(timeout=30)
    assert not writer.is_alive()


def test_deep_nesting_is_a_typed_exit_2_on_every_input(tmp_path: Path) -> None:
    """Before: 200 KB of "[" raised RecursionError via evidence, --collateral, --policy, import (exit 1)."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    deep_toml = tmp_path / "deep.toml"
    deep_toml.write_text("a = " + "[" * 200_000)
    assert json_error(*run("verify", deep, "--json")) == "too_deeply_nested"
    assert (
        json_error(*run("verify", NEAR / "quote.json", "--collateral", deep, "--json")) == "too_deeply_nested"
    )
    assert json_error(*near("--policy", deep_toml, "--json")) == "too_deeply_nested"
    assert json_error(*near("--event-log", deep, "--json")) == "too_deeply_nested"
    code, out = run("collateral", "import", deep, "--cache-dir", tmp_path / "cache")
    assert code == 2 and "nested deeper" in out


@pytest.mark.parametrize("at", [str(10**30), str(-(10**30)), "253402300800", "-1"])
def test_at_out_of_range_gives_a_verdict_for_every_kind(at: str) -> None:
    """Before: SEV-SNP and NVIDIA raised ValueError/OverflowError for times outside years 1..9999."""
    runs = [
        run("verify", SNP / "attestation.bin", "--vcek", SNP / "vcek.testcer", "--at", at, "--json"),
        run(
            "verify",
            GPU / "hopperAttestationReport.txt",
            "--cert-chain",
            GPU / "hopperCertChain.txt",
            "--at",
            at,
            "--json",
        ),
        run("verify", NEAR / "quote.json", "--collateral", NEAR / "collateral.json", "--at", at, "--json"),
    ]
    for code, out in runs:
        assert code == 1, out
        assert json.loads(out)["reasons"][0] in ("expired", "future_dated")


def test_help_shows_the_policy_section_names() -> None:
    """Before: rich markup ate "[tdx]", rendering "Appraisal policy TOML (, , ...)"."""
    result = runner.invoke(app, ["tee", "verify", "--help"], env={"COLUMNS": "240"}, terminal_width=240)
    assert "[tdx], [sev-snp], [nvidia-gpu]" in result.output
    assert "\\[" not in result.output


def test_trailing_bytes_after_a_quote_are_ignored_in_auto_detect_mode(tmp_path: Path) -> None:
    """Before: "not a DCAP quote" (exit 2, no JSON); now the real verdict, like Intel's QVL."""
    quote = tmp_path / "quote.bin"
    quote.write_bytes(bytes(json.loads((NEAR / "quote.json").read_text())) + b"trailing junk")
    code, out = run("verify", quote, "--collateral", NEAR / "collateral.json", "--at", NOW_NEAR, "--json")
    assert code == 1 and json.loads(out)["extra"]["trailing_bytes_ignored"] == 70 + len(b"trailing junk")


def test_near_binding_by_hash_scheme_and_dstack_event_log(policy: Path) -> None:
    scheme = ["--binding-hash", "sha3-384", "--binding-prefix", "0001"]
    keys = [arg for key in NEAR_KEYS for arg in ("--binding-key", key)]
    code, out = near("--policy", policy, *scheme, *keys, "--event-log", NEAR / "tcb_info.json", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["report_data_checked"] and doc["extra"]["event_log_format"] == "dstack-json"
    code, out = near("--policy", policy, *scheme, *keys[2:], *keys[:2], "--json")  # keys swapped
    assert code == 1 and json.loads(out)["reasons"] == ["report_data_mismatch"]


def test_veilnet_binding_from_a_bundle(policy: Path, tmp_path: Path) -> None:
    """A genuine quote checked against a Veilnet bundle's binding: the expected value is the bundle's."""
    from protocol.attestation.bundle import build_bundle
    from protocol.attestation.evidence import Evidence
    from protocol.identity import Identity

    bundle = build_bundle(
        Identity(bytes([7]) * 32),
        bytes(range(32)),
        issued_at=1_786_618_000,
        epoch_seconds=600,
        collect_cpu_evidence=lambda rd: Evidence("simulated", rd),
    )
    path = tmp_path / "bundle.bin"
    path.write_bytes(bundle.to_wire())
    code, out = near("--policy", policy, "--bundle", path, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["reasons"] == ["report_data_mismatch"]
    assert bundle.expected_report_data().hex() in doc["detail"]
    tampered = bytearray(bundle.to_wire())
    tampered[-10] ^= 1
    path.write_bytes(bytes(tampered))
    assert json_error(*near("--bundle", path, "--json")) == "bad_binding"


def test_policy_from_evidence_pins_it_and_verdicts_print_what_to_add(tmp_path: Path) -> None:
    pinned = tmp_path / "pinned.toml"
    code, out = run(
        "policy",
        "--from",
        NEAR / "quote.json",
        "--collateral",
        NEAR / "collateral.json",
        "--at",
        NOW_NEAR,
        "--out",
        pinned,
    )
    assert code == 0, out
    assert near("--policy", pinned)[0] == 0
    text = pinned.read_text().replace("allow_smt = true\n", "")
    partial = tmp_path / "partial.toml"
    partial.write_text(text)
    code, out = near("--policy", partial)
    assert (
        code == 1 and "to accept it, add to the policy's [tdx] section:" in out and "allow_smt = true" in out
    )
    code, out = near("--policy", partial, "--json")
    assert json.loads(out)["policy_additions"] == {"allow_smt": True}


def test_policy_from_evidence_that_does_not_verify_writes_nothing(tmp_path: Path) -> None:
    code, out = run(
        "policy", "--from", NEAR / "quote.json", "--collateral", NEAR / "collateral.json", "--at", "1"
    )
    assert code == 1 and "no policy written" in out


def test_collateral_import_keeps_the_machines_chain_out_of_the_fmspc_cache(
    tmp_path: Path, policy: Path
) -> None:
    cache = tmp_path / "cache"
    code, out = run("collateral", "import", NEAR / "collateral.json", "--cache-dir", cache)
    assert code == 0, out
    [entry] = list(cache.glob("*.json"))
    assert "pck_certificate_chain" not in json.loads(entry.read_text())
    code, out = run("verify", NEAR / "quote.json", "--at", NOW_NEAR, "--policy", policy, "--cache-dir", cache)
    assert code == 0, out


def test_an_old_cache_entry_holding_a_machines_chain_is_served_without_it(tmp_path: Path) -> None:
    """Entries written before import dropped ``pck_certificate_chain`` must not poison other machines."""
    cache = CollateralCache(tmp_path)
    info = cache.import_file(NEAR / "collateral.json")
    path = tmp_path / f"TDX-{info.fmspc}.json"
    path.write_text((NEAR / "collateral.json").read_text())  # as an older version stored it
    served = cache.get(info.fmspc)
    assert served is not None and "pck_certificate_chain" not in json.loads(served)


def test_collateral_fetch_reads_its_quote_with_a_bound(tmp_path: Path) -> None:
    code, out = run(
        "collateral", "fetch", "--pccs", "http://127.0.0.1:9", "--quote", "/dev/zero", "--cache-dir", tmp_path
    )
    assert code == 2 and "larger than" in out
