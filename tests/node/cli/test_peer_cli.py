"""The CLI as an operator uses it: ``testnet up`` (its supervisor, Ctrl-C/SIGTERM) and ``peers``."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from node.cli.main import app
from node.testnet import create_testnet, snapshot_code, start_node_process, stop_processes, wait_for_info
from tests.node.cluster import read_until, start_cli

pytestmark = [pytest.mark.network, pytest.mark.timeout(180)]


def test_testnet_up_runs_every_node_and_stops_them_all_on_sigterm(tmp_path: Path) -> None:
    code_root = snapshot_code(tmp_path / "code")
    up = start_cli(
        "testnet", "up", "--nodes", "3", "--api-port", "0", "--data-dir", str(tmp_path / "tn"),
        "--model", "none",
        code_root=code_root,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        output = read_until(up, "Press Ctrl-C", timeout=120)
        api = re.search(r"Registry: veilnet peers --api (\S+)", output)
        assert api is not None, output
        peers: list[str] = []
        deadline = time.monotonic() + 60
        while len(peers) < 3 and time.monotonic() < deadline:
            result = CliRunner().invoke(app, ["peers", "--api", api.group(1), "--json"])
            peers = (
                [peer["peer_id"] for peer in json.loads(result.output)["peers"]]
                if result.exit_code == 0
                else []
            )
            time.sleep(0.2)
        assert len(peers) == 3, output
    finally:
        up.send_signal(signal.SIGTERM)
    rest, _ = up.communicate(timeout=20)
    assert up.returncode == 0, output + rest
    assert output.count("/p2p/12D3KooW") >= 4  # three nodes and the join hint
    assert "veilnet testnet join" in output
    assert "stopped 3 nodes" in rest and "non-zero" not in rest
    for index in range(3):
        node_dir = tmp_path / "tn" / f"node-{index}"
        assert not (node_dir / "node-info.json").exists(), "every node shut down"
        assert "Traceback" not in (node_dir / "node.log").read_text()


def test_peers_reports_an_unreachable_api() -> None:
    result = CliRunner().invoke(app, ["peers", "--api", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --api http://127.0.0.1:9: cannot read the peers")


def test_mdns_finds_a_peer_without_any_bootstrap_address(tmp_path: Path) -> None:
    """Two nodes of one testnet, neither given an address, meet over mDNS (on when asked)."""
    code_root = snapshot_code(tmp_path / "code")
    layout = create_testnet(tmp_path / "tn", nodes=2, api_port=0, code_root=code_root)
    nodes = [
        start_node_process(i, path, ("--mdns",), code_root=code_root)
        for i, path in enumerate(layout.node_configs)
    ]
    try:
        for node in nodes:
            wait_for_info(node)
        expected = {node.info["peer_id"] for node in nodes}
        deadline = time.monotonic() + 60
        seen: list[set[str]] = []
        while time.monotonic() < deadline:
            seen = [
                {peer["peer_id"] for peer in httpx.get(f"{node.api_url}/veilnet/v1/peers").json()["peers"]}
                for node in nodes
            ]
            if all(found == expected for found in seen):
                break
            time.sleep(0.5)
        assert all(found == expected for found in seen), seen
    finally:
        codes = stop_processes(nodes)
    assert set(codes.values()) == {0}
