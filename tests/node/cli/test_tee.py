"""``veilnet tee``: verify, detect, collateral cache — against the real vectors."""

from __future__ import annotations

import json
import logging
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
