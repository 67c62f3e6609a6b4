"""The node's peerstore: py-libp2p's, except that asking for a peer's addresses never raises.

py-libp2p 0.8.1's ``PeerStore.addrs(peer)`` raises ``PeerStoreError`` when the peer was never
stored, was evicted (the store holds at most 1000 peers, oldest first), or when its addresses
outlived their TTL (120 s for a dialled peer). Departed peers stay in the Kademlia routing table,
so every loop that walks the table and asks for addresses met the error sooner or later, and one
that let it escape stopped the node (issue 9: ~60 identities that connect and leave were enough;
issue 18: a FIND_NODE answer that fills the store). Fixing each call site leaves the next one to
be written wrong, so the store itself answers "no known addresses" with an empty list, which is
what every py-libp2p caller already handles (``Swarm.dial_peer`` turns it into a dial error,
``PeerRouting`` skips the peer).

Upstream: the fix belongs in ``libp2p.peer.peerstore.PeerStore.addrs``; this subclass overrides
that one method and :func:`known_addrs` is the accessor for code that holds any ``IHost``.
"""

from __future__ import annotations

import logging

from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore, PeerStoreError
from multiaddr import Multiaddr

__all__ = ["SafePeerStore", "known_addrs"]

log = logging.getLogger("veilnet.net.peerstore")


class SafePeerStore(PeerStore):
    """A ``PeerStore`` whose :meth:`addrs` returns ``[]`` for unknown, evicted or expired peers."""

    def addrs(self, peer_id: ID) -> list[Multiaddr]:
        try:
            return super().addrs(peer_id)
        except PeerStoreError:
            return []


def known_addrs(host: IHost, peer: ID) -> list[Multiaddr]:
    """The addresses ``host`` knows for ``peer`` right now; ``[]`` when none, never an exception."""
    try:
        return list(host.get_peerstore().addrs(peer))
    except Exception as exc:  # any IPeerStore: a missing or expired entry is not an error here
        log.debug("no addresses for %s: %s", peer, exc)
        return []
