"""The node's peerstore: py-libp2p's, bounded, linear, and never raising for a missing peer.

Three fixes to py-libp2p 0.8.1's ``PeerStore`` (each belongs upstream; this subclass overrides
only the methods involved):

1. **Asking for a peer's addresses never raises.** ``addrs(peer)`` raised ``PeerStoreError``
   when the peer was never stored, was evicted, or when its addresses outlived their TTL (120 s
   for a dialled peer). Departed peers stay in the Kademlia routing table, so every loop that
   walks the table met the error sooner or later, and one that let it escape stopped the node
   (issue 9: ~60 identities that connect and leave; issue 18: a FIND_NODE answer that fills the
   store). Like go-libp2p's ``AddrBook.Addrs``, the store answers ``[]``, which every py-libp2p
   caller already handles (``Swarm.dial_peer`` turns it into a dial error).
2. **Nothing a peer sends costs more than linear time, or is stored unbounded.**
   ``PeerData.add_addrs`` de-duplicated with a membership test on a list: a signed peer record of
   n addresses cost O(n²) on the event loop (18,000 addresses, from one 1 MiB identify: 38 s).
   Records arrive in identify, identify push, every DHT message (``senderRecord``, up to 4 MiB)
   and gossipsub PX, are kept for 2 h and handed out in DHT answers. Here, before anything is
   stored (:class:`PeerstoreLimits`): a signed record over ``max_record_bytes`` or naming more than
   ``max_addrs_per_peer`` addresses is refused whole (a signed record cannot be trimmed, and a
   kept one is passed on verbatim); a peer keeps at most ``max_addrs_per_peer`` addresses of at
   most ``max_addr_bytes`` each, and ``max_protocols_per_peer`` protocol names of at most
   ``max_protocol_bytes`` (an identify listing ~0.9 MB of protocols kept +3.1 MiB per identity
   after it left); de-duplication uses sets.
3. **Hearsay never displaces peers we know.** The store holds ``max_peers`` peers and py-libp2p
   evicted by sorting everything (O(n log n) per insert once full), oldest first, honest neighbours
   included. Here a peer is *verified* once we hold its public key (identify ran on a live
   connection) and *protected* while connected (``set_protection``). To make room, the oldest
   *hearsay* entry (neither verified nor connected) goes first; a peer that is itself connected
   may also displace the oldest verified peer that is no longer connected (so churning identities
   cannot fill the store for good); connected peers are never evicted. Each eviction is O(1)
   amortised; when nothing may go, a new hearsay peer is not stored at all.

:func:`known_addrs` is the accessor for code that holds any ``IHost``.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from libp2p.abc import IHost
from libp2p.crypto.keys import PublicKey
from libp2p.peer.envelope import Envelope
from libp2p.peer.id import ID
from libp2p.peer.peerdata import PeerData
from libp2p.peer.peerstore import PeerStore, PeerStoreError
from multiaddr import Multiaddr

__all__ = ["PeerstoreLimits", "SafePeerStore", "known_addrs"]

log = logging.getLogger("veilnet.net.peerstore")


@dataclass(frozen=True)
class PeerstoreLimits:
    """Per-peer caps. An honest Veilnet node advertises 1–4 addresses of ~20 bytes (a
    ``/ip4/…/tcp/…`` is 8 bytes, ``/dns4/<name>/tcp/…`` under 100) and ~20 protocols of under 40
    characters; an honest signed record is under 1 KiB."""

    max_addrs_per_peer: int = 32
    max_addr_bytes: int = 128
    max_protocols_per_peer: int = 64
    max_protocol_bytes: int = 128
    max_record_bytes: int = 4096


class SafePeerStore(PeerStore):
    """A ``PeerStore`` with the three fixes of the module docstring."""

    def __init__(
        self, max_records: int = 2000, max_peers: int = 1000, limits: PeerstoreLimits | None = None
    ) -> None:
        super().__init__(max_records=max_records, max_peers=max_peers)
        self.limits = limits or PeerstoreLimits()
        self._hearsay: OrderedDict[ID, None] = OrderedDict()  # unverified entries, oldest first
        self._verified: OrderedDict[ID, None] = OrderedDict()  # verified entries, oldest first
        self._protected: Callable[[ID], bool] = lambda peer: False
        self.refused: Counter[str] = Counter()  # what was not stored, by reason

    def set_protection(self, is_protected: Callable[[ID], bool]) -> None:
        """``is_protected(peer)``: never evict this peer (``build_host`` passes "is connected")."""
        self._protected = is_protected

    # -------------------------------------------------------------------------------- reads

    def addrs(self, peer_id: ID) -> list[Multiaddr]:
        try:
            return super().addrs(peer_id)
        except PeerStoreError:
            return []

    # ------------------------------------------------------------------------------- writes

    def add_addrs(self, peer_id: ID, addrs: Sequence[Multiaddr], ttl: int = 0) -> None:
        if not self._admit(peer_id):
            return
        peer_data = self.peer_data_map.setdefault(peer_id, PeerData())
        limits = self.limits
        known = set(peer_data.addrs)
        for addr in addrs:
            if len(peer_data.addrs) >= limits.max_addrs_per_peer:
                self.refused["addrs_per_peer"] += 1
                break
            if addr in known:
                continue
            if len(addr.to_bytes()) > limits.max_addr_bytes:
                self.refused["addr_size"] += 1
                continue
            known.add(addr)
            peer_data.addrs.append(addr)
        peer_data.set_ttl(ttl)
        peer_data.update_last_identified()
        channel = self.addr_update_channels.get(peer_id)
        if channel is not None:
            for addr in addrs[: limits.max_addrs_per_peer]:
                try:
                    channel.send_nowait(addr)
                except Exception:
                    break
        self.maybe_delete_peer_record(peer_id)

    def add_protocols(self, peer_id: ID, protocols: Sequence[str]) -> None:
        peer_data = self.peer_data_map.setdefault(peer_id, PeerData())
        peer_data.protocols = self._bounded_protocols([*peer_data.protocols, *protocols])

    def set_protocols(self, peer_id: ID, protocols: Sequence[str]) -> None:
        peer_data = self.peer_data_map.setdefault(peer_id, PeerData())
        peer_data.protocols = self._bounded_protocols(protocols)

    def _bounded_protocols(self, protocols: Sequence[str]) -> list[str]:
        limits = self.limits
        kept: dict[str, None] = {}
        for protocol in protocols:
            if len(kept) >= limits.max_protocols_per_peer:
                self.refused["protocols_per_peer"] += 1
                break
            if isinstance(protocol, str) and len(protocol) <= limits.max_protocol_bytes:
                kept[protocol] = None
            else:
                self.refused["protocol_size"] += 1
        return list(kept)

    def add_pubkey(self, peer_id: ID, pubkey: PublicKey) -> None:
        if not self._admit(peer_id):
            return
        super().add_pubkey(peer_id, pubkey)
        self._hearsay.pop(peer_id, None)  # verified: identify gave us its key on a live connection
        self._verified.pop(peer_id, None)
        self._verified[peer_id] = None  # newest last

    def consume_peer_record(self, envelope: Envelope, ttl: int) -> bool:
        """Refuse a record too large or naming too many addresses, whole, before storing anything."""
        if len(envelope.raw_payload) > self.limits.max_record_bytes:
            self.refused["record_size"] += 1
            return False
        try:
            record = envelope.record()
        except Exception:
            self.refused["record_malformed"] += 1
            return False
        if len(record.addrs) > self.limits.max_addrs_per_peer:
            self.refused["record_addrs"] += 1
            return False
        if not self._admit(record.peer_id):
            return False
        return super().consume_peer_record(envelope, ttl)

    # ----------------------------------------------------------------------------- eviction

    def _admit(self, peer_id: ID) -> bool:
        """Make room for ``peer_id`` if it is new; False (nothing stored) when no room is left."""
        if peer_id in self.peer_data_map:
            return True
        if len(self.peer_data_map) >= self.max_peers and not self._evict_one(
            for_connected=self._protected(peer_id)
        ):
            self.refused["peers"] += 1
            return False
        self._hearsay[peer_id] = None
        for table in (self._hearsay, self._verified):  # drop ids of entries deleted elsewhere
            if len(table) > 2 * self.max_peers:
                for gone in [peer for peer in table if peer not in self.peer_data_map]:
                    del table[gone]
        return True

    def _evict_one(self, *, for_connected: bool = False) -> bool:
        """Drop the oldest hearsay entry or, for a connected newcomer, the oldest verified entry
        that is not connected; False if nothing may go."""
        if self._evict_from(self._hearsay, verified=False):
            return True
        return for_connected and self._evict_from(self._verified, verified=True)

    def _evict_from(self, table: OrderedDict[ID, None], *, verified: bool) -> bool:
        checked, size = 0, len(table)
        while table and checked <= size:
            peer, _ = table.popitem(last=False)
            data = self.peer_data_map.get(peer)
            if data is None or (data.pubkey is not None) != verified:
                continue  # gone, or moved to the other table since
            if self._protected(peer):
                table[peer] = None  # connected: look again later
                checked += 1
                continue
            del self.peer_data_map[peer]
            self.peer_record_map.pop(peer, None)
            return True
        return False

    def _enforce_peer_limit(self) -> None:
        while len(self.peer_data_map) > self.max_peers and self._evict_one():
            pass


def known_addrs(host: IHost, peer: ID) -> list[Multiaddr]:
    """The addresses ``host`` knows for ``peer`` right now; ``[]`` when none, never an exception."""
    try:
        return list(host.get_peerstore().addrs(peer))
    except Exception as exc:  # any IPeerStore: a missing or expired entry is not an error here
        log.debug("no addresses for %s: %s", peer, exc)
        return []
