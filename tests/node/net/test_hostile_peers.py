"""Issue 9's attacks, as bytes, against real node processes on 127.0.0.1.

The attacker holds the testnet's pre-shared key and nothing else (no attested bundle): it is a
py-libp2p host in the test process with a fresh identity per attack. Every test asserts that every
node is still alive and still serving its API, what the target counted, and that the attacker was
cut off where the attack calls for it. One three-node cluster is shared; the last test kills a node.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import multiaddr
import pytest
import trio
import varint
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.pb.kademlia_pb2 import Message, Record
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from node.config import load_testnet_config
from node.net.gossip import ATTEST_TOPIC
from node.net.host import build_host, dial
from node.testnet import NodeProcess
from protocol.identity import Identity
from tests.node.cluster import Cluster

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

LOCAL = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
KAD = TProtocol("/ipfs/kad/1.0.0")
RSS_BUDGET = 50 << 20  # issue 9: memory under a flood stays within +50 MB of idle


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Cluster:  # type: ignore[misc]
    cluster = Cluster(tmp_path_factory.mktemp("hostile3"), 3, reannounce_seconds=4)
    try:
        cluster.start()
        cluster.wait_registries_complete(timeout=90)
        yield cluster
    finally:
        cluster.close()


def rss(node: NodeProcess) -> int:
    with open(f"/proc/{node.process.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def counter(cluster: Cluster, node: NodeProcess, name: str) -> float:
    return cluster.metrics(node).get(name, 0.0)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Bounded poll of the nodes' HTTP views (sized for a loaded two-core machine)."""
    with trio.move_on_after(timeout):
        while True:
            try:
                if predicate():
                    return
            except Exception:  # a view that is not ready yet
                pass
            await trio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def all_alive_and_serving(cluster: Cluster) -> None:
    for node in cluster.honest:
        assert node.alive(), f"node {node.index} died"
        assert cluster.info(node)["peer_id"] == node.info["peer_id"]


@asynccontextmanager
async def attacker(cluster: Cluster, target: NodeProcess) -> AsyncIterator[tuple[IHost, ID]]:
    assert cluster.layout is not None
    psk = load_testnet_config(cluster.layout.testnet_path).psk
    host = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
    async with host.run(LOCAL):
        assert await dial(host, target.multiaddr)
        yield host, ID.from_base58(target.info["peer_id"])


async def send(host: IHost, peer: ID, protocol: str, payload: bytes) -> bool:
    """Open a stream and write ``payload``; False once the target no longer lets us."""
    try:
        with trio.fail_after(10):
            stream = await host.new_stream(peer, [TProtocol(protocol)])
            await stream.write(payload)
            await stream.close()
        return True
    except Exception:
        return False


def bad_gossip_rpc() -> bytes:
    message = rpc_pb2.Message(
        from_id=b"\x12\x20" + os.urandom(32),  # a sha256 multihash: no key can be extracted
        data=b"x",
        seqno=os.urandom(8),
        topicIDs=[ATTEST_TOPIC],
        signature=os.urandom(64),
        key=b"\x0a\x03bad",  # not a protobuf PublicKey
    )
    rpc = rpc_pb2.RPC(publish=[message]).SerializeToString()
    return bytes(varint.encode(len(rpc))) + rpc


async def test_three_bytes_random_bytes_and_a_keyless_gossip_message_stop_no_node(cluster3: Cluster) -> None:
    target = cluster3.nodes[1]
    attacks = {
        "three bytes": ("/meshsub/1.2.0", lambda: bytes.fromhex("020a05")),
        "random bytes": ("/meshsub/1.1.0", lambda: os.urandom(200)),
        "keyless gossip": ("/meshsub/1.2.0", bad_gossip_rpc),
    }
    sent: dict[str, int] = {}
    for name, (protocol, payload) in attacks.items():
        async with attacker(cluster3, target) as (host, peer):
            sent[name] = 0
            for _ in range(10):
                if not await send(host, peer, protocol, payload()):
                    break  # cut off
                sent[name] += 1
                await trio.sleep(0.05)
    await until(
        lambda: counter(cluster3, target, 'veilnet_stream_errors_total{protocol="/meshsub/1.2.0"}') >= 1,
        "the meshsub decode errors to be counted",
    )
    await until(
        lambda: counter(cluster3, target, 'veilnet_gossip_messages_dropped_total{reason="malformed"}') >= 1,
        "the keyless message to be dropped",
    )
    # The target scores each broken stream as it handles it, which may trail our last write.
    await until(
        lambda: counter(cluster3, target, "veilnet_peers_graylisted_total") >= 1,
        f"an attacker to be graylisted (streams sent per attack: {sent})",
    )
    all_alive_and_serving(cluster3)
    cluster3.wait_registries_complete(timeout=30)


async def test_a_graylisted_attacker_is_refused_when_it_reconnects(cluster3: Cluster) -> None:
    target = cluster3.nodes[2]
    async with attacker(cluster3, target) as (host, peer):
        for _ in range(20):
            if not await send(host, peer, "/meshsub/1.2.0", bytes.fromhex("020a05")):
                break
        await until(lambda: not host.get_network().get_connections(peer), "the target to cut us off")
        await dial(host, target.multiaddr)  # may complete on our side; the target's gate refuses it
        await until(
            lambda: counter(cluster3, target, 'veilnet_connections_refused_total{reason="banned"}') >= 1,
            "the reconnect to be refused at the gate",
        )
    all_alive_and_serving(cluster3)


async def test_oversized_and_foreign_dht_records_are_refused_and_memory_stays_flat(cluster3: Cluster) -> None:
    target = cluster3.nodes[0]
    idle = rss(target)
    refused_before = sum(
        value
        for key, value in cluster3.metrics(target).items()
        if key.startswith("veilnet_dht_records_refused")
    )
    hits = 'veilnet_limit_hits_total{scope="peer",resource="dht_message_bytes"}'
    hits_before = cluster3.metrics(target).get(hits, 0.0)
    stored_attempts = 0
    # Over the 16 KiB record limit but a message size an honest request may have: the validator
    # refuses them (namespace, size); just under kad's 1 MiB cap: refused from the length prefix.
    offers = (("/anything/", 20 << 10), ("/veilnet/flood/", 20 << 10), ("/veilnet/", (1 << 20) - 256))
    for key_prefix, size in offers:
        async with attacker(cluster3, target) as (host, peer):
            for index in range(48):  # up to 48 MiB offered per identity: issue 9 stored 147 MiB in 8 s
                key = f"{key_prefix}{index}".encode()
                record = Record(key=key, value=os.urandom(size))
                message = Message(type=Message.MessageType.PUT_VALUE, key=key, record=record)
                wire = message.SerializeToString()
                if not await send(host, peer, "/ipfs/kad/1.0.0", bytes(varint.encode(len(wire))) + wire):
                    break
                stored_attempts += 1
    await until(
        lambda: (
            sum(
                value
                for key, value in cluster3.metrics(target).items()
                if key.startswith("veilnet_dht_records_refused")
            )
            > refused_before
        ),
        "the records to be refused",
    )
    await until(lambda: cluster3.metrics(target).get(hits, 0.0) > hits_before, "1 MiB messages to be refused")
    assert cluster3.metrics(target).get("veilnet_dht_records_held", 0) == 0
    grown = rss(target) - idle
    assert grown < RSS_BUDGET, f"RSS grew by {grown >> 20} MiB after {stored_attempts} MiB offered"
    all_alive_and_serving(cluster3)


async def test_a_dht_query_flood_on_one_stream_is_cut_off(cluster3: Cluster) -> None:
    target = cluster3.nodes[0]
    async with attacker(cluster3, target) as (host, peer):
        query = Message(type=Message.MessageType.FIND_NODE, key=os.urandom(34)).SerializeToString()
        framed = bytes(varint.encode(len(query))) + query
        stream = await host.new_stream(peer, [KAD])
        answered = 0
        with trio.move_on_after(20):
            try:
                await stream.write(framed * 500)  # 500 queries at once, on one stream
                while True:
                    await stream.read(65536)
                    answered += 1
            except Exception:
                pass  # reset by the target once our rate ran out
    hits = counter(cluster3, target, 'veilnet_limit_hits_total{scope="peer",resource="dht_query_rate"}')
    assert hits >= 1
    all_alive_and_serving(cluster3)


async def test_one_identity_reconnecting_hundreds_of_times_does_not_lock_the_node_out(
    cluster3: Cluster,
) -> None:
    target = cluster3.nodes[2]
    assert cluster3.layout is not None
    psk = load_testnet_config(cluster3.layout.testnet_path).psk
    host = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
    peer = ID.from_base58(target.info["peer_id"])
    banned = 'veilnet_connections_refused_total{reason="banned"}'
    graylisted = 'veilnet_peers_disconnected_total{reason="graylisted"}'
    before = cluster3.metrics(target)
    connected = 0
    started = time.monotonic()
    async with host.run(LOCAL):
        for _ in range(300):  # more than the 288 inbound slots the swarm has
            if await dial(host, target.multiaddr):
                connected += 1
            await host.disconnect(peer)
            with trio.move_on_after(5):
                while host.get_network().get_connections(peer):
                    await trio.sleep(0.01)
    assert connected == 300, f"{connected} of 300 reconnects accepted in {time.monotonic() - started:.0f} s"
    # A dial can succeed on our side while the node refuses the connection right after the
    # handshake, so ask the node: hanging up fast is no offence (issue 12: a write that met the
    # closed socket was scored as a parser error, and the fifth reconnect banned the identity).
    after = cluster3.metrics(target)
    assert after.get(graylisted, 0.0) == before.get(graylisted, 0.0)
    assert after.get(banned, 0.0) == before.get(banned, 0.0)
    await until(
        lambda: cluster3.metrics(target)["veilnet_inbound_slots_free"] >= 280, "the slots to come back"
    )
    all_alive_and_serving(cluster3)


def test_a_killed_node_leaves_the_registries_within_a_liveness_check(cluster3: Cluster) -> None:
    """Last: it kills a node. Bundles live 300 s; the registries must not wait for that."""
    victim = cluster3.nodes[2]
    victim_id = victim.info["peer_id"]
    killed_at = time.monotonic()
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    survivors = cluster3.nodes[:2]
    waited = cluster3.wait_until(
        lambda: all(victim_id not in cluster3.peer_ids(node) for node in survivors),
        "the killed node to leave both registries",
        timeout=45,
    )
    assert waited < 45 and time.monotonic() - killed_at < 60
    for node in survivors:
        assert node.alive()
        assert counter(cluster3, node, 'veilnet_registry_removals_total{cause="liveness"}') >= 1
