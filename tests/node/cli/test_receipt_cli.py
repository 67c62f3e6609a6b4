"""``veilnet receipt verify``: per-step verdicts and exit codes, offline."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from node.cli.main import app
from tests.protocol.jobs.receipt_fixtures import ANSWER, INPUT_SALT, ISSUED, JOB_INPUT, make_receipt, policy

runner = CliRunner()


def _files(tmp_path: Path) -> tuple[Path, Path]:
    receipt = tmp_path / "job.receipt"
    receipt.write_bytes(make_receipt(wrong_third=True).to_wire())
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy().to_toml())
    return receipt, policy_file


def test_a_good_receipt_exits_0_and_names_every_step(tmp_path: Path) -> None:
    receipt, policy_file = _files(tmp_path)
    (tmp_path / "answer").write_bytes(ANSWER)
    (tmp_path / "input").write_bytes(JOB_INPUT)
    result = runner.invoke(
        app,
        [
            "receipt",
            "verify",
            str(receipt),
            "--policy",
            str(policy_file),
            "--answer",
            str(tmp_path / "answer"),
            "--input",
            str(tmp_path / "input"),
            "--salt",
            INPUT_SALT.hex(),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "VERIFIED (SIMULATED evidence" in result.output
    for step in ("receipt_signature", "answer_in_winning_cluster", "majority", "answer", "input"):
        assert f"ok   {step}" in result.output


def test_json_verdict_and_refusals_exit_1(tmp_path: Path) -> None:
    receipt, policy_file = _files(tmp_path)
    (tmp_path / "answer").write_bytes(b"not the answer")
    result = runner.invoke(
        app,
        [
            "receipt",
            "verify",
            str(receipt),
            "--policy",
            str(policy_file),
            "--answer",
            str(tmp_path / "answer"),
            "--json",
        ],
    )
    assert result.exit_code == 1
    verdict = json.loads(result.output)
    assert verdict["reasons"] == ["answer_mismatch"] and verdict["exit_code"] == 1 and verdict["simulated"]
    late = runner.invoke(
        app,
        [
            "receipt",
            "verify",
            str(receipt),
            "--policy",
            str(policy_file),
            "--at",
            str(ISSUED + 2 * 86400),
            "--json",
        ],
    )
    assert late.exit_code == 1 and "bundle_expired" in json.loads(late.output)["reasons"]
    default = runner.invoke(app, ["receipt", "verify", str(receipt), "--json"])
    assert default.exit_code == 1 and "bundle_kind_not_allowed" in json.loads(default.output)["reasons"]


def test_the_json_rendering_verifies_like_the_wire_form(tmp_path: Path) -> None:
    _, policy_file = _files(tmp_path)
    rendered = tmp_path / "receipt.json"
    rendered.write_text(json.dumps(make_receipt().to_json()))
    result = runner.invoke(app, ["receipt", "verify", str(rendered), "--policy", str(policy_file)])
    assert result.exit_code == 0, result.output


def test_unusable_input_exits_2_with_a_reason(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x93\x01\x02")
    cases = [
        (["receipt", "verify", str(junk), "--json"], "malformed_receipt"),
        (["receipt", "verify", str(tmp_path / "missing"), "--json"], "unreadable_input"),
        (["receipt", "verify", "--json"], "bad_argument"),
        (["receipt", "verify", str(junk), "--salt", "00", "--json"], "bad_argument"),
    ]
    for args, reason in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert json.loads(result.output)["reasons"] == [reason]
