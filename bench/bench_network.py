"""The peer network with real node processes on 127.0.0.1.

Rows:
- registry complete, N = 5, 10, 20: seconds from starting a testnet the way ``veilnet testnet up``
  does (node 0 first, every other node given only node 0's address) until every node's registry
  lists every node. Baseline: the same for N = 1 (process start, imports, host, first bundle),
  measured in the same run, so the ratio is what the network adds. Goal: N = 20 under 20 s. And
  the part of it after the last node is listening (what discovery, gossip and sync add once every
  process has imported and started). Goal: N = 20 within 5 s.
- re-announce propagation p50/p95: seconds from a node publishing a re-announced bundle to each
  other node accepting it (10 nodes re-announcing every 3 s; both timestamps come from the same
  clock). Baseline: fetching the same bundle directly over ``/veilnet/attest/1.0.0`` and
  appraising it (p50), i.e. one hop with no gossip. Goal: p95 under 2 s.
- idle CPU per node (mean and max over 10 nodes, measured over one whole 60 s re-announce
  period starting 65 s after start, once the first minute's frequent lookups and syncs are over;
  no jobs) and resident memory per node (max). Baseline: a Python process that imported trio
  and libp2p and sleeps.
  Goals: under 2 % CPU, under 150 MB, and torch not imported.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import multiaddr
import trio
from libp2p.peer.id import ID

from bench import QUICK, Result, quick
from node.attest.appraisal import make_appraise
from node.attest.service import ATTEST_PROTOCOL_ID
from node.config import NodeConfig, load_testnet_config
from node.net.host import build_host, dial, read_frame, write_frame
from node.testnet import (
    NodeProcess,
    create_testnet,
    snapshot_code,
    start_node_process,
    stop_processes,
    wait_for_info,
)
from protocol import codec
from protocol.identity import Identity

SIZES = (5,) if QUICK else (5, 10, 20)
COMPLETE_TIMEOUT = 120.0
PROPAGATION_NODES = 10
PROPAGATION_REANNOUNCE = 3
PROPAGATION_WINDOW = quick(24.0, 12.0)
IDLE_WINDOW = quick(60.0, 10.0)  # one whole re-announce period (quick: a sixth of one)
SETTLE_SECONDS = quick(65.0, 15.0)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Testnet:
    """N node processes of a fresh testnet under ``root``, started as ``testnet up`` starts them."""

    def __init__(self, root: Path, code_root: Path, nodes: int, reannounce_seconds: int = 60) -> None:
        self.root = root
        self.code_root = code_root
        self.size = nodes
        self.reannounce_seconds = reannounce_seconds
        self.nodes: list[NodeProcess] = []
        self.http = httpx.Client(timeout=5.0)
        self.started_at = time.monotonic()
        self.listening_s = 0.0

    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        return replace(config, log_level="WARNING")

    def start(self) -> float:
        """Start every node; returns seconds until every registry holds every node."""
        started = self.started_at = time.monotonic()
        layout = create_testnet(
            self.root,
            nodes=self.size,
            api_port=0,
            reannounce_seconds=self.reannounce_seconds,
            code_root=self.code_root,
            node_overrides=self._overrides,
        )
        self.layout = layout
        first = start_node_process(0, layout.node_configs[0], code_root=self.code_root)
        self.nodes.append(first)
        wait_for_info(first)
        for index, path in enumerate(layout.node_configs[1:], start=1):
            args = ("--bootstrap", first.multiaddr)
            self.nodes.append(start_node_process(index, path, args, code_root=self.code_root))
        for node in self.nodes[1:]:
            wait_for_info(node)
        self.listening_s = time.monotonic() - started  # the last node is listening
        expected = {node.info["peer_id"] for node in self.nodes}
        while time.monotonic() - started < COMPLETE_TIMEOUT:
            if all(expected <= self.peer_ids(node) for node in self.nodes):
                return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError(f"{self.size} nodes: registries incomplete after {COMPLETE_TIMEOUT:.0f} s")

    def get(self, node: NodeProcess, path: str) -> Any:
        response = self.http.get(f"{node.api_url}{path}")
        response.raise_for_status()
        return response.json()

    def peer_ids(self, node: NodeProcess) -> set[str]:
        try:
            return {peer["peer_id"] for peer in self.get(node, "/veilnet/v1/peers")["peers"]}
        except httpx.HTTPError:
            return set()

    def close(self) -> None:
        stop_processes(self.nodes)
        self.http.close()


def _with_testnet(nodes: int, reannounce: int, body: Callable[[Testnet, float], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="veilnet-bench-") as tmp:
        root = Path(tmp)
        testnet = Testnet(root / "testnet", snapshot_code(root / "code"), nodes, reannounce)
        try:
            body(testnet, testnet.start())
        finally:
            testnet.close()


# ------------------------------------------------------------------------------- the rows


def _registry_complete() -> list[Result]:
    times: dict[int, tuple[float, float]] = {}  # size -> (complete, last node listening)

    def keep(size: int) -> Callable[[Testnet, float], None]:
        return lambda testnet, seconds: times.__setitem__(size, (seconds, testnet.listening_s))

    for size in (1, *SIZES):
        _with_testnet(size, 60, keep(size))
    rows: list[Result] = []
    for size in SIZES:
        complete, listening = times[size]
        rows.append(Result(
            f"registry complete, {size} nodes", complete, "s", baseline=times[1][0],
            baseline_name="1 node up with its own bundle", ratio=complete / times[1][0],
            goal="< 20 s for 20 nodes" if size == 20 else "",
        ))
        rows.append(Result(
            f"registry complete after the last node listens, {size} nodes", complete - listening, "s",
            goal="≤ 5 s for 20 nodes" if size == 20 else "",
        ))
    return rows


def _propagation(testnet: Testnet, _complete: float) -> list[Result]:
    """Sample publisher announce times and receiver accept times of the same bundles."""
    announced: dict[str, float] = {}  # bundle digest -> publisher's announce time
    accepted: dict[tuple[str, str], float] = {}  # (receiver, digest) -> accept time
    deadline = time.monotonic() + PROPAGATION_WINDOW
    time.sleep(PROPAGATION_REANNOUNCE)  # let the start-up announce wave (pulled on connect) pass
    start_wall = time.time()
    while time.monotonic() < deadline:
        for node in testnet.nodes:
            info = testnet.get(node, "/veilnet/v1/node")
            if info["bundle_digest"] and info["announced_at"] and info["announced_at"] > start_wall:
                announced.setdefault(info["bundle_digest"], info["announced_at"])
            for peer in testnet.get(node, "/veilnet/v1/peers")["peers"]:
                if peer["peer_id"] != node.info["peer_id"]:
                    accepted.setdefault((node.info["peer_id"], peer["bundle_digest"]), peer["verified_at"])
        time.sleep(0.3)
    latencies = sorted(
        at - announced[digest] for (_receiver, digest), at in accepted.items() if digest in announced
    )
    if len(latencies) < 20:
        raise RuntimeError(f"only {len(latencies)} propagation samples")
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    direct = _direct_fetch_p50(testnet)
    name = f"re-announce propagation, {testnet.size} nodes"
    base = "direct fetch + appraisal (1 hop)"
    return [
        Result(f"{name} p50", p50, "s", baseline=direct, baseline_name=base, ratio=p50 / direct),
        Result(
            f"{name} p95", p95, "s", baseline=direct, baseline_name=base, ratio=p95 / direct, goal="< 2 s"
        ),
    ]


def _direct_fetch_p50(testnet: Testnet, samples: int = 20) -> float:
    testnet_config = load_testnet_config(testnet.layout.testnet_path)
    appraise = make_appraise(testnet_config)
    target = testnet.nodes[1]
    peer = ID.from_base58(target.info["peer_id"])

    async def measure() -> list[float]:
        host = build_host(Identity.generate(), testnet_config.psk, ["/ip4/127.0.0.1/tcp/0"])
        timings: list[float] = []
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            if not await dial(host, target.multiaddr):
                raise RuntimeError("cannot reach the node for the direct-fetch baseline")
            for _ in range(samples):
                started = time.perf_counter()
                stream = await host.new_stream(peer, [ATTEST_PROTOCOL_ID])  # type: ignore[list-item]
                await write_frame(stream, codec.encode({"v": 1, "type": "get-bundle"}))
                bundle = codec.decode(await read_frame(stream, 1 << 20))["bundle"]
                await stream.close()
                if not appraise(bundle, peer.to_bytes(), int(time.time())).ok:
                    raise RuntimeError("the directly fetched bundle did not appraise")
                timings.append(time.perf_counter() - started)
            await host.disconnect(peer)
        return timings

    return statistics.median(trio.run(measure))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _idle(testnet: Testnet, _complete: float) -> list[Result]:
    # Idle means steady state: past the first minute of frequent lookups and syncs.
    time.sleep(max(0.0, testnet.started_at + SETTLE_SECONDS - time.monotonic()))
    pids = [node.process.pid for node in testnet.nodes]
    baseline = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time, trio, libp2p, libp2p.pubsub.gossipsub, libp2p.kad_dht.kad_dht; time.sleep(600)",
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        time.sleep(4.0)  # the baseline finishes importing
        before = {pid: _cpu_seconds(pid) for pid in [*pids, baseline.pid]}
        started = time.monotonic()
        time.sleep(IDLE_WINDOW)
        elapsed = time.monotonic() - started
        cpu = {pid: 100 * (_cpu_seconds(pid) - before[pid]) / elapsed for pid in before}
        rss = {pid: _rss_mb(pid) for pid in before}
    finally:
        baseline.kill()
        baseline.wait()
    node_cpu = [cpu[pid] for pid in pids]
    node_rss = [rss[pid] for pid in pids]
    torch_loaded = [testnet.get(node, "/veilnet/v1/debug/modules")["torch"] for node in testnet.nodes]
    if any(torch_loaded):
        raise RuntimeError("a node that serves no model imported torch")
    base_name = "python + trio + libp2p imported, sleeping"
    return [
        Result(
            f"idle CPU per node (mean of {len(pids)})",
            statistics.mean(node_cpu),
            "%",
            baseline=cpu[baseline.pid],
            baseline_name=base_name,
            goal="< 2 %",
        ),
        Result(f"idle CPU per node (max of {len(pids)})", max(node_cpu), "%", goal="< 2 %"),
        Result(
            "resident memory per node (max, no model, torch not imported)",
            max(node_rss),
            "MB",
            baseline=rss[baseline.pid],
            baseline_name=base_name,
            ratio=max(node_rss) / rss[baseline.pid],
            goal="< 150 MB",
        ),
    ]


def run() -> list[Result]:
    results = _registry_complete()
    collected: list[Result] = []
    _with_testnet(
        PROPAGATION_NODES, PROPAGATION_REANNOUNCE, lambda t, c: collected.extend(_propagation(t, c))
    )
    _with_testnet(PROPAGATION_NODES, 60, lambda t, c: collected.extend(_idle(t, c)))
    return results + collected
