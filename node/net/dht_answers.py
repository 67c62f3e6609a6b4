"""What one Kademlia FIND_NODE answer may add to this node: a bounded, checked handful of hints.

py-libp2p 0.8.1's ``PeerRouting._query_peer_for_closest`` takes every peer of an answer: it
stores each one's addresses for an hour, puts each one into the routing table (a full bucket
pings its oldest entry, and evicts it if that ping fails on a busy node), and collects the list
with a quadratic membership test. An answer of thousands of fabricated peers filled the
peerstore's cap, live entries were evicted, and discovery died on ``peer ID not found`` ~25 s
later (issue 18). The rules here, for each answer (go-libp2p's query logic is the model):

1. At most ``MAX_CLOSER_PEERS`` peers (Kademlia's k = 20) of an answer are looked at; a longer
   answer is cut there and its sender charged a flood offence (a spec-following server sends k).
2. Each peer is checked as upstream does (its signed record, if any, must be its own) and keeps
   at most the peerstore's address cap (:mod:`node.net.peerstore`); a peer named twice counts once.
3. Peers from answers are *hints*: their addresses go to the peerstore (which evicts only other
   unverified hearsay, never a verified or connected peer) and they are returned to the lookup,
   but they enter the routing table only once *they* answer a query of ours. The queried peer is
   added after it answered, not before (upstream added it "regardless of query outcome").
4. An answer whose sender record is invalid drops the sender from the routing table and charges
   it an invalid-message offence, as upstream drops it.

Installed on one ``KadDHT`` by :func:`bound_find_node_answers` (it replaces that one method of
its ``PeerRouting`` instance, which the provider store shares). Upstream: a per-answer cap and
"add to the table only peers that answered" belong in ``PeerRouting`` itself.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import trio
import varint
from libp2p.kad_dht.common import MAX_DHT_MESSAGE_SIZE, PROTOCOL_ID, QUERY_TIMEOUT
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.kad_dht.peer_routing import PeerRouting
from libp2p.kad_dht.utils import maybe_consume_signed_record
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.utils.varint import read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr

from node.net.peerstore import known_addrs
from node.net.scoring import Offence, PeerScores

__all__ = ["MAX_CLOSER_PEERS", "bound_find_node_answers"]

log = logging.getLogger("veilnet.net.dht")

MAX_CLOSER_PEERS = 20  # Kademlia's k (py-libp2p BUCKET_SIZE): what a server puts in one answer
_HINT_TTL = 600  # seconds: a hint that never answers is gone before py-libp2p's hour
_MAX_HINT_ADDRS = 8  # addresses parsed per hinted peer (the peerstore caps what it keeps)


def bound_find_node_answers(dht: KadDHT, scores: PeerScores | None = None) -> None:
    """Make ``dht``'s lookups follow the module docstring's rules (once per DHT)."""
    routing: Any = dht.peer_routing
    if getattr(routing, "_veilnet_bounded", False):
        return
    routing._query_peer_for_closest = types.MethodType(_bounded_query(scores), routing)
    routing._veilnet_bounded = True


def _bounded_query(scores: PeerScores | None) -> Any:
    async def query(routing: PeerRouting, peer: ID, target_key: bytes) -> list[ID]:
        host = routing.host
        if peer == host.get_id():
            return []
        response: Message | None = None
        stream = None
        try:
            with trio.move_on_after(QUERY_TIMEOUT):
                stream = await host.new_stream(peer, [PROTOCOL_ID])
                request = Message()
                request.type = Message.MessageType.FIND_NODE
                request.key = target_key
                request.senderRecord = env_to_send_in_RPC(host)[0]
                payload = request.SerializeToString()
                await stream.write(varint.encode(len(payload)) + payload)
                raw = await read_varint_prefixed_bytes_limited(stream, MAX_DHT_MESSAGE_SIZE)
                response = Message()
                response.ParseFromString(raw)
        except Exception as exc:
            log.debug("FIND_NODE to %s failed: %s", peer, exc)
            response = None
        finally:
            if stream is not None:
                with trio.move_on_after(1.0) as scope:
                    scope.shield = True
                    try:
                        await stream.close()
                    except Exception as exc:
                        log.debug("closing the FIND_NODE stream to %s: %s", peer, exc)
        if response is None or response.type != Message.MessageType.FIND_NODE:
            return []
        return await _take_answer(routing, peer, response, scores)

    return query


async def _take_answer(
    routing: PeerRouting, sender: ID, response: Message, scores: PeerScores | None
) -> list[ID]:
    host = routing.host
    if not maybe_consume_signed_record(response, host, sender):
        routing.routing_table.remove_peer(sender)
        if scores is not None:
            scores.penalise(sender.to_bytes(), Offence.INVALID_MESSAGE)
        return []
    # The sender answered: it is live and speaks kad, so it may hold a routing-table slot.
    sender_addrs = known_addrs(host, sender)
    if sender_addrs:
        await routing.routing_table.add_peer(PeerInfo(sender, sender_addrs))
    closer = response.closerPeers
    if len(closer) > MAX_CLOSER_PEERS and scores is not None:
        log.info("FIND_NODE answer from %s names %d peers; taking %d", sender, len(closer), MAX_CLOSER_PEERS)
        scores.penalise(sender.to_bytes(), Offence.FLOOD)
    me = host.get_id()
    found: dict[ID, None] = {}
    peerstore = host.get_peerstore()
    for entry in closer[:MAX_CLOSER_PEERS]:
        if not entry.id or not maybe_consume_signed_record(entry, host):
            continue
        try:
            peer = ID(entry.id)
        except Exception:
            continue
        if peer == me or peer in found:
            continue
        found[peer] = None
        addrs = []
        for raw in entry.addrs[:_MAX_HINT_ADDRS]:
            try:
                addrs.append(Multiaddr(raw))
            except Exception:
                continue
        if addrs and not peerstore.addrs(peer):  # never overwrite what we learnt first-hand
            peerstore.add_addrs(peer, addrs, _HINT_TTL)
    return list(found)
