"""Real node processes on 127.0.0.1: discovery, attestation gossip, hostile peers, garbage, PSK, restart.

All tests share one five-node cluster (``cluster5``); each leaves it with five healthy, mutually
attested nodes. The order matters only in that the restart test runs last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from typer.testing import CliRunner

from node.attest.service import ATTEST_PROTOCOL_ID
from node.cli.main import app
from node.config import TestEvidenceFault, load_testnet_config
from node.net.host import build_host, dial, read_exactly, read_frame, write_frame
from protocol import codec
from protocol.attestation.bundle import AttestationBundle
from protocol.identity import Identity
from tests.node.cluster import Cluster, start_cli

pytestmark = [pytest.mark.network, pytest.mark.timeout(240)]

HOSTILE_REASONS = {
    TestEvidenceFault.FORGED_SIGNATURE: "bad_signature",
    TestEvidenceFault.MEASUREMENT_OUTSIDE_POLICY: "measurement_not_allowed",
    TestEvidenceFault.WRONG_PLATFORM_KEY: "untrusted_platform",
}


def _counter(metrics: dict[str, float], name: str, **labels: str) -> float:
    rendered = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return metrics.get(f"{name}{{{rendered}}}" if labels else name, 0.0)


def test_five_nodes_from_one_bootstrap_attest_each_other(cluster5: Cluster) -> None:
    everyone = {node.info["peer_id"] for node in cluster5.honest}
    for node in cluster5.honest:
        peers = cluster5.peers(node)
        assert {peer["peer_id"] for peer in peers} == everyone
        for peer in peers:
            assert peer["kind"] == "simulated" and peer["label"] == "SIMULATED — not secure"
            assert len(bytes.fromhex(peer["enc_pubkey"])) == 32
            assert peer["expires_at"] > time.time()
            assert peer["addrs"], "registry entries carry dialable addresses"


def test_one_bootstrap_address_is_enough_to_connect_to_everyone(cluster5: Cluster) -> None:
    cluster5.wait_until(
        lambda: all(cluster5.info(node)["connected_peers"] >= 4 for node in cluster5.honest),
        "every node to be connected to the four others",
        timeout=30,
    )


def test_reannounced_bundles_propagate_by_gossip(cluster5: Cluster) -> None:
    publisher = cluster5.nodes[2]
    issued = cluster5.info(publisher)["bundle_issued_at"]
    publisher_id = publisher.info["peer_id"]

    def everyone_has_a_newer_bundle() -> bool:
        for node in cluster5.honest:
            entry = next(peer for peer in cluster5.peers(node) if peer["peer_id"] == publisher_id)
            if entry["issued_at"] <= issued:
                return False
        return True

    def everyone_took_one_by_gossip() -> bool:
        # The publisher's own registry holds its new bundle without gossip: it counts a bundle
        # gossiped by another node only once that node's re-announce reached it (own period).
        for node in cluster5.honest:
            metrics = cluster5.metrics(node)
            if _counter(metrics, "veilnet_bundles_accepted_total", source="gossip") < 1:
                return False
            if _counter(metrics, "veilnet_gossip_messages_out_total") < 1:
                return False
        return True

    cluster5.wait_until(
        everyone_has_a_newer_bundle, "a re-announced bundle to reach every registry", timeout=30
    )
    cluster5.wait_until(
        everyone_took_one_by_gossip, "every node to accept a bundle by gossip and to gossip", timeout=30
    )


def test_a_node_that_serves_no_model_does_not_import_torch(cluster5: Cluster) -> None:
    for node in cluster5.honest:
        assert cluster5.info(node)["models"] == []
        modules = cluster5.get(node, "/veilnet/v1/debug/modules")
        assert modules["torch"] is False, f"node {node.index} imported torch"


def test_metrics_are_prometheus_text(cluster5: Cluster) -> None:
    text = cluster5.get(cluster5.nodes[0], "/metrics")
    assert "# TYPE veilnet_registry_size gauge" in text
    assert "# TYPE veilnet_bundles_rejected_total counter" in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+', line), line
    metrics = cluster5.metrics(cluster5.nodes[0])
    assert metrics["veilnet_registry_size"] == 5
    assert metrics["veilnet_connected_peers"] >= 4


def test_hostile_nodes_are_rejected_by_every_honest_node(cluster5: Cluster) -> None:
    hostile = {fault: cluster5.add_node(fault=fault) for fault in HOSTILE_REASONS}
    hostile_ids = {node.info["peer_id"]: fault for fault, node in hostile.items()}
    try:

        def every_honest_node_refused_all() -> bool:
            for node in cluster5.honest:
                metrics = cluster5.metrics(node)
                for peer_id, fault in hostile_ids.items():
                    reason = HOSTILE_REASONS[fault]
                    if _counter(metrics, "veilnet_bundles_rejected_total", reason=reason) < 1:
                        return False
                    if _counter(metrics, "veilnet_bundles_rejected_by_peer_total", peer=peer_id) < 1:
                        return False
            return True

        cluster5.wait_until(
            every_honest_node_refused_all, "every honest node to refuse all three hostile nodes"
        )
        # Let a re-announce round pass: the hostile bundles still reach no registry.
        time.sleep(cluster5.reannounce_seconds + 1)
        everyone = {node.info["peer_id"] for node in cluster5.honest}
        for node in cluster5.honest:
            assert cluster5.get(node, "/healthz")["ok"] is True
            assert cluster5.peer_ids(node) == everyone
        for node in hostile.values():
            assert node.alive()
            assert not set(hostile_ids) & cluster5.peer_ids(node), (
                "a hostile node's own policy refuses it too"
            )
    finally:
        for node in hostile.values():
            assert cluster5.stop_node(node) == 0
    cluster5.wait_registries_complete(timeout=10)


async def test_garbage_on_a_stream_resets_only_that_stream(cluster5: Cluster) -> None:
    """Garbage on one stream ends that stream (the target resets or closes it; we never reset
    first), while a bystander stream on the same connection keeps working and the connection
    still opens new streams. Covers our handlers and py-libp2p's own (gossipsub).

    Each broken stream also costs its sender score (4 of them graylist it, which closes the
    connection on purpose), so each sender here breaks 3 streams and two senders share the work.
    """
    target = cluster5.nodes[1]
    before = cluster5.metrics(target)
    assert cluster5.layout is not None
    testnet = load_testnet_config(cluster5.layout.testnet_path)
    peer = ID.from_base58(target.info["peer_id"])
    senders = [
        [
            (ATTEST_PROTOCOL_ID, os.urandom(300)),  # random bytes: an absurd frame length
            (ATTEST_PROTOCOL_ID, b"\x00\x00\x00\x05" + b"\xc1" * 5),  # a frame that is not msgpack
            ("/meshsub/1.2.0", bytes.fromhex("020a05")),  # a length, then a cut-off protobuf field
        ],
        [
            (ATTEST_PROTOCOL_ID, b"\x00\x00\x00\x03" + codec.encode({"v": 9})),  # cut short of its map
            (ATTEST_PROTOCOL_ID, b"\x00\x00\x00\x07" + codec.encode({"v": 2, "x": 1})),  # wrong schema
            ("/meshsub/1.1.0", bytes.fromhex("020a05")),
        ],
    ]

    async def ping(stream: INetStream) -> None:
        token = os.urandom(32)
        await stream.write(token)
        with trio.fail_after(10):
            assert await read_exactly(stream, 32) == token

    async def one_sender(garbage: list[tuple[str, bytes]]) -> None:
        host = build_host(Identity.generate(), testnet.psk, ["/ip4/127.0.0.1/tcp/0"])
        ended: dict[int, str] = {}

        async def send_garbage(index: int, protocol_id: str, payload: bytes) -> None:
            stream = await host.new_stream(peer, [protocol_id])  # type: ignore[list-item]
            await stream.write(payload)
            with trio.fail_after(20):  # the target ends it; a loaded machine may take seconds
                try:
                    while await stream.read(4096):
                        pass
                    ended[index] = "closed"
                except StreamError:
                    ended[index] = "reset"

        async with host.run([_multiaddr("/ip4/127.0.0.1/tcp/0")]):
            assert await dial(host, target.multiaddr)
            bystander = await host.new_stream(peer, ["/ipfs/ping/1.0.0"])  # type: ignore[list-item]
            await ping(bystander)
            async with trio.open_nursery() as nursery:
                for index, (protocol_id, payload) in enumerate(garbage):
                    nursery.start_soon(send_garbage, index, protocol_id, payload)
                while len(ended) < len(garbage):  # keep the bystander busy (its handler idles out at 10 s)
                    await ping(bystander)
                    await trio.sleep(0.5)
            assert len(ended) == len(garbage)
            await ping(bystander)  # the other stream on the same connection is untouched
            stream = await host.new_stream(peer, [ATTEST_PROTOCOL_ID])  # type: ignore[list-item]
            assert stream.muxed_conn is bystander.muxed_conn, "the same connection serves a new stream"
            await write_frame(stream, codec.encode({"v": 1, "type": "get-bundle"}))
            with trio.fail_after(10):
                response = codec.decode(await read_frame(stream, 1 << 20))
            bundle = AttestationBundle.from_wire(response["bundle"])
            assert bundle.node_id == peer.to_bytes()
            await host.disconnect(peer)

    for garbage in senders:
        await one_sender(garbage)
    after = cluster5.metrics(target)

    def grew(name: str, **labels: str) -> float:
        return _counter(after, name, **labels) - _counter(before, name, **labels)

    assert grew("veilnet_stream_errors_total", protocol=ATTEST_PROTOCOL_ID) == 4
    meshsub = grew("veilnet_stream_errors_total", protocol="/meshsub/1.2.0")
    assert meshsub + grew("veilnet_stream_errors_total", protocol="/meshsub/1.1.0") == 2
    assert grew("veilnet_peers_graylisted_total") == 0
    for node in cluster5.honest:
        assert node.alive() and len(cluster5.peers(node)) == 5


async def test_a_different_pre_shared_key_cannot_connect(cluster5: Cluster) -> None:
    target = cluster5.nodes[0]
    outsider = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    async with outsider.run([_multiaddr("/ip4/127.0.0.1/tcp/0")]):
        started = trio.current_time()
        assert not await dial(outsider, target.multiaddr, timeout=3.0)
        assert trio.current_time() - started < 5.0
        assert ID.from_base58(target.info["peer_id"]) not in outsider.get_connected_peers()
    assert outsider.get_id().to_base58() not in cluster5.peer_ids(target)


def test_testnet_join_and_peers(cluster5: Cluster, tmp_path: Path) -> None:
    assert cluster5.layout is not None and cluster5.code_root is not None
    data_dir = tmp_path / "joiner"
    joiner = start_cli(
        "testnet", "join", cluster5.nodes[3].multiaddr,
        "--testnet-config", str(cluster5.layout.testnet_path),
        "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0",
        "--evidence", "simulated",
        code_root=cluster5.code_root,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        info_path = data_dir / "node-info.json"
        cluster5.wait_until(info_path.exists, "the joining node to come up", timeout=60)
        joined = json.loads(info_path.read_text())
        everyone = {node.info["peer_id"] for node in cluster5.honest} | {joined["peer_id"]}
        cluster5.wait_registries_complete(expected=everyone, timeout=60)


        def joiner_lists_everyone() -> bool:  # the joiner's own registry fills on its own schedule
            result = CliRunner().invoke(app, ["peers", "--api", joined["api_url"], "--json"])
            assert result.exit_code == 0, result.output
            return {peer["peer_id"] for peer in json.loads(result.output)["peers"]} == everyone

        cluster5.wait_until(joiner_lists_everyone, "the joining node to attest every peer", timeout=60)
        table = CliRunner().invoke(app, ["peers", "--api", joined["api_url"]])
        assert table.exit_code == 0 and "SIMULATED" in table.output and "(6)" in table.output
    finally:
        joiner.send_signal(signal.SIGTERM)
        joiner.communicate(timeout=20)
    assert joiner.returncode == 0


def test_sigterm_exits_cleanly_and_a_restarted_node_keeps_its_id(cluster5: Cluster) -> None:
    node = cluster5.nodes[4]
    peer_id = node.info["peer_id"]
    old_key = cluster5.info(node)["enc_pubkey"]
    node_log = node.data_dir / "node.log"
    log_offset = len(node_log.read_text(encoding="utf-8"))
    started = time.monotonic()
    assert cluster5.stop_node(node) == 0
    assert time.monotonic() - started < 5.0
    log = node_log.read_text(encoding="utf-8")[log_offset:]
    assert "received SIGTERM" in log
    bad = [line for line in log.splitlines() if "Traceback" in line or " ERROR " in line]
    assert not bad, "\n".join(bad)
    # The process's own output is the one "up: <peer id> on <addrs>; API <url>" line, nothing else.
    console = (node.data_dir / "stderr.log").read_text().splitlines()
    assert all(line.startswith("up: ") for line in console), console

    fresh = cluster5.restart_node(node)
    assert fresh.info["peer_id"] == peer_id
    new_key = cluster5.info(fresh)["enc_pubkey"]
    assert new_key != old_key, "job keys are never reused across restarts"

    def readmitted() -> bool:
        for other in cluster5.honest:
            entry = next((p for p in cluster5.peers(other) if p["peer_id"] == peer_id), None)
            if entry is None or entry["enc_pubkey"] != new_key:
                return False
        return True

    cluster5.wait_until(readmitted, "every node to re-admit the restarted node with its new key", timeout=30)


def _multiaddr(text: str) -> multiaddr.Multiaddr:
    return multiaddr.Multiaddr(text)
