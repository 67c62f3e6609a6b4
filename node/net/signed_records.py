"""Signed peer records: open each distinct record once, not once per message that carries it.

py-libp2p 0.8.1 attaches the sender's signed peer record (an Envelope) to every pubsub RPC,
every DHT message and every identify answer, and the receiver opens it each time: protobuf
parse, Ed25519 verification, and a peer-record parse whose multiaddrs are decoded in pure
Python. A peer sends the same bytes until its addresses change, so at start-up, when each node
exchanges hundreds of RPCs with its peers, most of that work repeated an answer already known.

:func:`install` replaces ``consume_envelope`` in the py-libp2p modules that open sender records
with :func:`consume_envelope_once`, which remembers the result for the exact bytes (a bounded
LRU). Opening is a pure function of the bytes and the domain, so the answer is the same; only
successes are remembered (a record that fails is opened, and fails, every time). Everything
after opening still runs per message: the check that the record names the peer that sent it,
and the peerstore's own rules (size, address cap, newer-sequence-only, TTL refresh).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict

from libp2p.peer.envelope import Envelope
from libp2p.peer.envelope import consume_envelope as _consume_envelope
from libp2p.peer.peer_record import PeerRecord

__all__ = ["MAX_REMEMBERED", "consume_envelope_once", "install"]

MAX_REMEMBERED = 1024  # distinct records (a few hundred bytes each); ~one per known peer
MAX_RECORD_BYTES = 4096  # larger envelopes are opened every time and never remembered

# Modules that bound ``consume_envelope`` by name at import and open peers' records with it.
_USERS = (
    "libp2p.pubsub.utils",
    "libp2p.pubsub.gossipsub",
    "libp2p.kad_dht.utils",
    "libp2p.identity.update",
)

_opened: OrderedDict[tuple[bytes, str], tuple[Envelope, PeerRecord]] = OrderedDict()


def consume_envelope_once(data: bytes, domain: str) -> tuple[Envelope, PeerRecord]:
    """``libp2p.peer.envelope.consume_envelope``, answered from memory for bytes seen before."""
    if len(data) > MAX_RECORD_BYTES:
        return _consume_envelope(data, domain)
    key = (bytes(data), domain)
    known = _opened.get(key)
    if known is not None:
        _opened.move_to_end(key)
        return known
    opened: tuple[Envelope, PeerRecord] = _consume_envelope(data, domain)  # raises when invalid
    _opened[key] = opened
    if len(_opened) > MAX_REMEMBERED:
        _opened.popitem(last=False)
    return opened


def install() -> None:
    """Route py-libp2p's record opening through :func:`consume_envelope_once` (idempotent)."""
    for name in _USERS:
        module = importlib.import_module(name)
        if getattr(module, "consume_envelope", None) is not consume_envelope_once:
            module.consume_envelope = consume_envelope_once  # type: ignore[attr-defined]


def forget() -> None:
    """Drop every remembered record (tests)."""
    _opened.clear()
