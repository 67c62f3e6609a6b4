"""A departed peer's expired or evicted peerstore entry answers "no addresses", never an exception."""

from __future__ import annotations

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore, PeerStoreError
from multiaddr import Multiaddr

from node.net.peerstore import SafePeerStore

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
