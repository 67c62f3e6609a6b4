"""A departed peer's expired or evicted peerstore entry answers "no addresses", never an exception."""

from __future__ import annotations

import os

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStore, PeerStoreError
from multiaddr import Multiaddr

from node.metrics import Metrics
from node.net.discovery import Discovery
from node.net.host import build_host
from node.net.peerstore import SafePeerStore
from protocol.identity import Identity

ADDR = Multiaddr("/ip4/127.0.0.1/tcp/4001")


def fresh_peer() -> ID:
    return ID.from_pubkey(create_new_key_pair().public_key)


def expire(store: PeerStore, peer: ID) -> None:
    store.peer_data_map[peer].last_identified -= 10_000  # as if its 120 s TTL ran out long ago


def test_plain_py_libp2p_raises_for_an_expired_peer() -> None:
    """The behaviour SafePeerStore exists for; if py-libp2p fixes it upstream this test says so."""
    store = PeerStore()
    peer = fresh_peer()
    store.add_addrs(peer, [ADDR], 120)
    expire(store, peer)
    with pytest.raises(PeerStoreError, match="expired"):
        store.addrs(peer)


def test_expired_unknown_and_evicted_peers_have_no_addresses() -> None:
    store = SafePeerStore(max_peers=2)
    live, stale = fresh_peer(), fresh_peer()
    store.add_addrs(live, [ADDR], 120)
    store.add_addrs(stale, [ADDR], 120)
    assert store.addrs(live) == [ADDR]
    expire(store, stale)
    assert store.addrs(stale) == []
    assert store.addrs(fresh_peer()) == []  # never stored
    for _ in range(3):  # fill the store past its cap: the oldest entries are evicted
        store.add_addrs(fresh_peer(), [ADDR], 120)
    assert store.addrs(live) == []


async def test_discovery_walks_a_routing_table_of_departed_peers_without_failing() -> None:
    """Issue 9's crash: peers in the routing table whose peerstore addresses expired (or were never
    stored) made Discovery._dial_known_peers raise PeerStoreError, which stopped the node."""
    host = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    discovery = Discovery(host, Metrics())
    store = host.get_peerstore()
    assert isinstance(store, SafePeerStore)
    async with host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        departed = [fresh_peer() for _ in range(60)]
        for index, peer in enumerate(departed):
            store.add_addrs(peer, [Multiaddr(f"/ip4/127.0.0.1/tcp/{20000 + index}")], 120)
            assert await discovery.dht.routing_table.add_peer(PeerInfo(peer, store.addrs(peer)))
            if index % 2:
                expire(store, peer)  # its 120 s address TTL ran out
            else:
                store.peer_data_map.pop(peer)  # or it was evicted from the store
        assert discovery.dht.routing_table.size() >= 30
        with trio.fail_after(30):
            await discovery._dial_known_peers(10)
            await discovery._join_lookup()
        assert discovery.dials.total() == 0, "no departed peer is dialled without addresses"
