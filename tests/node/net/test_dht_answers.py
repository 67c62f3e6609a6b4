"""FIND_NODE answers naming thousands of fabricated peers (issue 18), against real hosts in-process.

A hostile host answers every FIND_NODE with 5,000 made-up peers. The node under test must take at
most k of them, as hints only (peerstore with a short TTL, not the routing table), keep its live
and verified peers, charge the sender, and keep looking up within bounded time.
"""

from __future__ import annotations

import os

import multiaddr
import trio
import varint
from libp2p.abc import INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht.common import PROTOCOL_ID as KAD
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from node.metrics import Metrics
from node.net.dht_answers import MAX_CLOSER_PEERS
from node.net.discovery import Discovery
from node.net.guard import guard_of
from node.net.host import build_host, dial
from node.net.peerstore import SafePeerStore
from protocol.identity import Identity

FABRICATED = 5000
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


def fabricated_answer() -> bytes:
    answer = Message()
    answer.type = Message.MessageType.FIND_NODE
    for index in range(FABRICATED):
        peer = answer.closerPeers.add()
        peer.id = ID.from_pubkey(create_new_key_pair().public_key).to_bytes()
        address = multiaddr.Multiaddr(f"/ip4/10.9.{index >> 8 & 255}.{index & 255}/tcp/4001")
        peer.addrs.append(address.to_bytes())
    return answer.SerializeToString()


async def test_a_find_node_answer_of_thousands_of_made_up_peers_adds_k_hints_and_evicts_no_one() -> None:
    psk = os.urandom(32)
    answer = fabricated_answer()
    target = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
    honest = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
    hostile = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
    served = trio.Event()

    async def lie(stream: INetStream) -> None:
        while True:
            await read_varint_prefixed_bytes_limited(stream, 1 << 20)
            await stream.write(varint.encode(len(answer)) + answer)
            served.set()

    hostile.set_stream_handler(KAD, lie)
    discovery = Discovery(target, Metrics())
    store = target.get_peerstore()
    assert isinstance(store, SafePeerStore)
    store.max_peers = 200  # a small store, so a flood would fill it many times over
    async with (
        target.run(LISTEN),
        honest.run(LISTEN),
        hostile.run(LISTEN),
        trio.open_nursery() as nursery,
    ):
        await nursery.start(discovery.run)
        for other in (honest, hostile):
            assert await dial(target, f"{other.get_addrs()[0]}")
        with trio.fail_after(20):  # identify has told us both peers' keys and addresses
            while not all(store.addrs(p.get_id()) for p in (honest, hostile)):
                await trio.sleep(0.05)
        for _ in range(5):  # five answers: 25,000 fabricated peers offered
            with trio.fail_after(20):
                found = await discovery.dht.peer_routing._query_peer_for_closest(
                    hostile.get_id(), os.urandom(32)
                )
            assert len(found) == MAX_CLOSER_PEERS
        assert served.is_set()
        assert len(store.peer_ids()) <= 3 + 5 * MAX_CLOSER_PEERS
        table = set(discovery.dht.routing_table.get_peer_ids())
        assert not table - {honest.get_id(), hostile.get_id()}, "no made-up peer in the routing table"
        assert store.addrs(honest.get_id()), "the live honest peer is still known"
        guard = guard_of(target)
        assert guard is not None and guard.scores.penalty(hostile.get_id().to_bytes()) > 0
        with trio.fail_after(60):  # a full lookup through the liar still ends
            await discovery.dht.peer_routing.find_closest_peers_network(os.urandom(32))
        assert store.addrs(honest.get_id())
        nursery.cancel_scope.cancel()
