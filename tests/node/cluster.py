"""A cluster of real node processes on 127.0.0.1, for multi-node tests and benchmarks.

Every node is a separate ``veilnet node start`` process with its own data dir under a tmp root,
OS-assigned ports (no free-port races: each node reports its addresses in ``node-info.json``),
and its log captured to ``node-<i>/node.log`` (stderr to ``stderr.log``). Every wait is bounded.
:meth:`Cluster.close` always kills what is still running, so use it as a context manager or a
fixture with teardown.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from node.config import NodeConfig, TestEvidenceFault, load_node_config
from node.testnet import (
    NodeProcess,
    TestnetLayout,
    create_testnet,
    snapshot_code,
    start_node_process,
    stop_processes,
    wait_for_info,
)

__all__ = ["Cluster", "ClusterTimeout", "parse_metrics", "read_until", "start_cli"]

DEFAULT_TIMEOUT = 60.0


class ClusterTimeout(AssertionError):
    """A bounded wait ran out; the message says what was expected and what was seen."""


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (labels kept verbatim, as rendered)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def start_cli(*args: str, code_root: Path, cwd: Path) -> subprocess.Popen[str]:
    """Run ``veilnet ARGS`` as an operator would, with the packages under ``code_root``."""
    env = dict(os.environ, PYTHONPATH=str(code_root))
    return subprocess.Popen(
        [sys.executable, "-c", "from node.cli.main import main; main()", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Read the process's output until it contains ``marker`` (bounded); returns what was read.

    Reads the raw file descriptor: a text wrapper's readline buffers ahead, after which select()
    no longer sees the data that is already waiting.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
            if marker.encode() in seen:
                return seen.decode(errors="replace")
    process.kill()
    raise AssertionError(f"{marker!r} not printed within {timeout} s:\n{seen.decode(errors='replace')}")


class Cluster:
    """N honest nodes of one testnet, plus any extra (e.g. hostile) nodes added later."""

    def __init__(
        self,
        root: Path,
        nodes: int,
        *,
        reannounce_seconds: int = 60,
        bundle_lifetime_seconds: int = 300,
        target_peers: int = 12,
        log_level: str = "INFO",
    ) -> None:
        self.root = root
        self.size = nodes
        self.reannounce_seconds = reannounce_seconds
        self.bundle_lifetime_seconds = bundle_lifetime_seconds
        self.target_peers = target_peers
        self.log_level = log_level
        self.nodes: list[NodeProcess] = []
        self.layout: TestnetLayout | None = None
        self.code_root: Path | None = None
        self._http = httpx.Client(timeout=5.0)

    # ------------------------------------------------------------------------- lifecycle

    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        return replace(config, target_peers=self.target_peers, log_level=self.log_level)

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> Cluster:
        """Create the testnet and start every node; node i > 0 knows only node 0's address.

        The nodes run a snapshot of the ``protocol`` and ``node`` packages copied into the cluster
        dir, so their measurement (a digest of their own sources) cannot drift while files in the
        checkout are being edited, and a restarted node measures what it measured before.
        """
        self.code_root = snapshot_code(self.root / "code")
        self.layout = create_testnet(
            self.root,
            nodes=self.size,
            base_port=0,
            api_port=0,
            reannounce_seconds=self.reannounce_seconds,
            bundle_lifetime_seconds=self.bundle_lifetime_seconds,
            node_overrides=self._overrides,
            code_root=self.code_root,
        )
        first = self._spawn(0, self.layout.node_configs[0], ())
        wait_for_info(first, timeout)
        for index, path in enumerate(self.layout.node_configs[1:], start=1):
            self._spawn(index, path, ("--bootstrap", first.multiaddr))
        for node in self.nodes[1:]:
            wait_for_info(node, timeout)
        return self

    def _spawn(self, index: int, config_path: Path, args: Sequence[str]) -> NodeProcess:
        node = start_node_process(index, config_path, args, code_root=self.code_root)
        if index < len(self.nodes):
            self.nodes[index] = node
        else:
            self.nodes.append(node)
        return node

    def add_node(
        self,
        *,
        fault: TestEvidenceFault | None = None,
        testnet_path: Path | None = None,
        bootstrap: str | None = None,
        extra_args: Sequence[str] = (),
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> NodeProcess:
        """Start one more node of this testnet (or of ``testnet_path``), bootstrapping from node 0."""
        assert self.layout is not None, "start() first"
        index = len(self.nodes)
        template = load_node_config(self.layout.node_configs[0])
        node_dir = self.root / f"node-{index}"
        config = replace(
            template,
            data_dir=node_dir,
            testnet_config=testnet_path or self.layout.testnet_path,
            listen=("/ip4/127.0.0.1/tcp/0",),
            api="127.0.0.1:0",
            log_file=node_dir / "node.log",
            label=f"node-{index}",
            test_evidence_fault=fault,
        )
        path = node_dir / "node.toml"
        config.save(path)
        args = ["--bootstrap", bootstrap or self.nodes[0].multiaddr, *extra_args]
        node = self._spawn(index, path, args)
        if wait:
            wait_for_info(node, timeout)
        return node

    def stop_node(
        self, node: NodeProcess, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0
    ) -> int:
        """Signal one node and wait for it; returns its exit code (raises if it does not exit)."""
        node.process.send_signal(sig)
        try:
            return node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
            raise ClusterTimeout(f"node {node.index} did not exit within {timeout} s of {sig.name}") from None

    def restart_node(self, node: NodeProcess, timeout: float = DEFAULT_TIMEOUT) -> NodeProcess:
        """Start ``node``'s config again in a new process (same data dir, so the same identity)."""
        assert not node.alive()
        args = [] if node.index == 0 else ["--bootstrap", self.nodes[0].multiaddr]
        fresh = self._spawn(node.index, node.config_path, args)
        wait_for_info(fresh, timeout)
        return fresh

    def close(self) -> dict[int, int | None]:
        codes = stop_processes(self.nodes, timeout=6.0)
        self._http.close()
        return codes

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- views

    @property
    def honest(self) -> list[NodeProcess]:
        return self.nodes[: self.size]

    def get(self, node: NodeProcess, path: str) -> Any:
        response = self._http.get(f"{node.api_url}{path}")
        response.raise_for_status()
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def peers(self, node: NodeProcess) -> list[dict[str, Any]]:
        return list(self.get(node, "/veilnet/v1/peers")["peers"])

    def peer_ids(self, node: NodeProcess) -> set[str]:
        return {peer["peer_id"] for peer in self.peers(node)}

    def metrics(self, node: NodeProcess) -> dict[str, float]:
        return parse_metrics(self.get(node, "/metrics"))

    def info(self, node: NodeProcess) -> dict[str, Any]:
        return dict(self.get(node, "/veilnet/v1/node"))

    def log_text(self, node: NodeProcess) -> str:
        parts = []
        for name in ("node.log", "stderr.log"):
            path = node.data_dir / name
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    # ----------------------------------------------------------------------------- waits

    def wait_until(
        self,
        predicate: Callable[[], bool],
        what: str,
        timeout: float = DEFAULT_TIMEOUT,
        interval: float = 0.2,
    ) -> float:
        """Poll ``predicate`` until true; returns seconds waited, raises ClusterTimeout with ``what``."""
        started = time.monotonic()
        last_error = ""
        while time.monotonic() - started < timeout:
            try:
                if predicate():
                    return time.monotonic() - started
            except (httpx.HTTPError, KeyError, json.JSONDecodeError) as exc:
                last_error = f" (last error: {exc})"
            time.sleep(interval)
        raise ClusterTimeout(f"timed out after {timeout:.0f} s waiting for {what}{last_error}")

    def wait_registries_complete(
        self,
        nodes: Iterable[NodeProcess] | None = None,
        expected: set[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> float:
        """Wait until every node in ``nodes`` (default: the honest ones) lists ``expected`` peers."""
        watched = list(nodes) if nodes is not None else self.honest
        want = expected if expected is not None else {node.info["peer_id"] for node in self.honest}

        def complete() -> bool:
            return all(want <= self.peer_ids(node) for node in watched)

        return self.wait_until(
            complete, f"registries of {len(watched)} nodes to hold {len(want)} peers", timeout
        )
