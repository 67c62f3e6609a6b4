"""``veilnet sim`` is registered on the CLI and refuses a bad scenario before starting anything."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from node.cli.main import app


def test_sim_check_accepts_a_shipped_scenario() -> None:
    result = CliRunner().invoke(app, ["sim", "check", "byzantine"])
    assert result.exit_code == 0, result.output
    assert "byzantine: 10 nodes, 3 adversarial, 90 s workload — valid" in result.output


def test_sim_run_refuses_a_bad_scenario_with_its_line_and_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "bad"\n[nodes]\ncount = 4\n[workload]\nduration_s = 5\nconcurrency = 1\nspeed = 9\n'
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sim", "run", str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert f"{bad}:7: workload.speed: unknown key" in result.output
    assert not out.exists()


def test_sim_clean_and_scale_are_registered() -> None:
    result = CliRunner().invoke(app, ["sim", "--help"])
    assert result.exit_code == 0
    for command in ("run", "check", "clean", "scale", "calibrate"):
        assert command in result.output
