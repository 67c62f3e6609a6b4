"""Peer records and identify: capped before anything is stored, linear time, bounded per identity.

Issue 18: a signed peer record of ~18,000 addresses (1 MiB identify) froze a node 10-15 s in
py-libp2p's quadratic de-duplication and was then handed out in DHT answers; an identify listing
~0.9 MB of protocols kept +3.1 MiB per identity after it left; a FIND_NODE answer of fabricated
peers evicted live peerstore entries.
"""

from __future__ import annotations

import tracemalloc

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.identity.update import update_peerstore_from_identify
from libp2p.peer.envelope import consume_envelope
from libp2p.peer.id import ID
from libp2p.peer.peerstore import create_signed_peer_record
from multiaddr import Multiaddr

from node.net.peerstore import PeerstoreLimits, SafePeerStore

DOMAIN = "libp2p-peer-record"


def identity() -> tuple[ID, KeyPair]:
    pair = create_new_key_pair()
    return ID.from_pubkey(pair.public_key), pair


def many_addrs(count: int) -> list[Multiaddr]:
    return [
        Multiaddr(f"/ip4/10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/tcp/{1000 + i % 60000}")
        for i in range(count)
    ]


def signed_record(count: int) -> tuple[ID, bytes]:
    peer, pair = identity()
    return peer, create_signed_peer_record(peer, many_addrs(count), pair.private_key).marshal_envelope()


def test_a_huge_signed_record_is_refused_whole() -> None:
    store = SafePeerStore()
    peer, wire = signed_record(18_000)
    envelope, _record = consume_envelope(wire, DOMAIN)  # what every py-libp2p caller does first
    assert store.consume_peer_record(envelope, 7200) is False  # py-libp2p's store: 38 s here
    assert store.addrs(peer) == [] and store.get_peer_record(peer) is None
    assert store.refused["record_size"] == 1


def test_a_record_just_over_the_address_cap_is_refused_and_one_within_it_is_kept() -> None:
    store = SafePeerStore(limits=PeerstoreLimits(max_addrs_per_peer=8))
    over, wire = signed_record(9)
    assert store.consume_peer_record(consume_envelope(wire, DOMAIN)[0], 7200) is False
    assert store.refused["record_addrs"] == 1 and store.addrs(over) == []
    within, wire = signed_record(8)
    assert store.consume_peer_record(consume_envelope(wire, DOMAIN)[0], 7200) is True
    assert len(store.addrs(within)) == 8 and store.get_peer_record(within) is not None


class CountedAddr(Multiaddr):
    """A multiaddr that counts equality tests: the unit of py-libp2p's quadratic de-duplication."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountedAddr.comparisons += 1
        return super().__eq__(other)

    __hash__ = Multiaddr.__hash__


def test_storing_addresses_costs_linear_time() -> None:
    """n addresses, each sent twice, take O(n) equality tests (py-libp2p's list membership test
    took n²/2: 200 million for the 20,000 addresses here). Counted, not timed."""
    count = 20_000
    store = SafePeerStore(limits=PeerstoreLimits(max_addrs_per_peer=count))
    peer, _ = identity()
    addrs = [CountedAddr(str(addr)) for addr in many_addrs(count)]
    CountedAddr.comparisons = 0
    store.add_addrs(peer, addrs + addrs, 3600)
    assert len(store.addrs(peer)) == count
    assert CountedAddr.comparisons <= 4 * count


def test_unsigned_addresses_are_capped_per_peer() -> None:
    store = SafePeerStore()
    peer, _ = identity()
    addrs = many_addrs(5_000)
    store.add_addrs(peer, addrs, 3600)
    for addr in addrs[:1000]:  # identify's path: one add_addr per address
        store.add_addr(peer, addr, 7200)
    assert store.addrs(peer) == addrs[:32]


def _identify_from(pair: KeyPair, protocols: int, addrs: int) -> Identify:
    message = Identify()
    message.public_key = pair.public_key.serialize()
    message.listen_addrs.extend(addr.to_bytes() for addr in many_addrs(addrs))
    message.protocols.extend(f"/attack/{i:06d}/{'p' * 40}" for i in range(protocols))
    return message


async def test_a_huge_identify_leaves_little_behind_per_identity() -> None:
    store = SafePeerStore()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(5):  # five identities, each identifying with ~0.9 MB then leaving
        peer, pair = identity()
        message = _identify_from(pair, protocols=16_000, addrs=1000)
        await update_peerstore_from_identify(store, peer, message)
        del message
        assert len(store.get_protocols(peer)) == 64 and len(store.addrs(peer)) == 32
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert kept / 5 < 64 * 1024  # py-libp2p kept +3.1 MiB per identity


def test_hearsay_never_evicts_verified_or_connected_peers() -> None:
    store = SafePeerStore(max_peers=50)
    verified, connected = [], set()
    for index in range(40):
        peer, pair = identity()
        store.add_addrs(peer, many_addrs(2), 7200)
        if index % 2:
            store.add_pubkey(peer, pair.public_key)  # identify ran on a live connection
            verified.append(peer)
        else:
            connected.add(peer)
    store.set_protection(lambda peer: peer in connected)
    fabricated = [identity()[0] for _ in range(3000)]
    for peer in fabricated:
        store.add_addrs(peer, many_addrs(3), 3600)
    assert len(store.peer_ids()) == 50
    assert all(store.addrs(peer) for peer in verified) and all(store.addrs(peer) for peer in connected)
    assert sum(1 for peer in fabricated if store.addrs(peer)) == 10  # the room left, newest kept


def test_with_no_room_left_a_new_hearsay_peer_is_not_stored() -> None:
    store = SafePeerStore(max_peers=3)
    for _ in range(3):
        peer, pair = identity()
        store.add_addrs(peer, many_addrs(1), 7200)
        store.add_pubkey(peer, pair.public_key)
    stranger, _ = identity()
    store.add_addrs(stranger, many_addrs(1), 3600)
    assert store.addrs(stranger) == [] and store.refused["peers"] == 1


def test_protocol_names_are_deduplicated_and_oversized_ones_dropped() -> None:
    store = SafePeerStore()
    peer, _ = identity()
    store.add_protocols(peer, ["/a", "/a", "/b", "x" * 500])
    assert store.get_protocols(peer) == ["/a", "/b"] and store.refused["protocol_size"] == 1


def test_identities_that_came_and_went_make_room_for_a_connected_newcomer_not_for_hearsay() -> None:
    store = SafePeerStore(max_peers=20)
    departed = []
    for _ in range(20):  # churn: each identified on a live connection, then gone
        peer, pair = identity()
        store.add_pubkey(peer, pair.public_key)
        store.add_addrs(peer, many_addrs(1), 7200)
        departed.append(peer)
    hearsay, _ = identity()
    store.add_addrs(hearsay, many_addrs(1), 3600)
    assert store.addrs(hearsay) == []  # verified peers are not displaced by hearsay
    newcomer, pair = identity()
    store.set_protection(lambda peer: peer == newcomer)
    store.add_pubkey(newcomer, pair.public_key)  # identify on its live connection
    store.add_addrs(newcomer, many_addrs(1), 7200)
    assert store.addrs(newcomer) and len(store.peer_ids()) == 20
    assert store.addrs(departed[0]) == [] and store.addrs(departed[1])  # the oldest went
