"""Limits on what peers may make this node's Kademlia DHT store and answer.

py-libp2p 0.8.1's KadDHT stores ``PUT_VALUE`` records of up to 1 MiB under any key (its default
validator accepts keys outside every namespace), keeps them for 48 h, and answers as many queries
on one stream as a peer can send (issue 9: +147 MiB in 8 s from one stream; 512 queries/s). So:

1. :class:`VeilnetRecordValidator` accepts records only under Veilnet's namespace (``/veilnet/``),
   at most ``dht_record_bytes`` each, and charges each stored key to the peer that stored it
   (``dht_records_per_peer``, ``dht_records`` in all). The ``pk`` and ``ipns`` validators stay
   registered because py-libp2p's config check requires them, but their namespaces are refused
   before they are reached. Veilnet itself publishes provider records (``ADD_PROVIDER``, which
   py-libp2p caps per key and rate-limits) and no values today, so the namespace is reserved for
   future records; the first record stored under a key is kept (``select`` returns 0).
2. :func:`rate_limited_handler` meters every DHT *message* a peer sends (``dht_queries_per_second``
   with a burst): a stream whose peer is over its rate is reset before the message is parsed, and
   the peer is charged a flood offence.
3. The same meter refuses an inbound message whose length prefix says it is larger than any
   request an honest peer sends (:func:`inbound_message_limit`: one record value plus two signed
   peer records and slack), before its body is read. py-libp2p reads up to 4 MiB and parses the
   whole message on the event loop, sender record included: a FIND_NODE carrying a signed record
   of 40,000 addresses cost 0.3 s of CPU per message in one synchronous step (a 1.4 s stall on a
   loaded machine); the peerstore's record cap comes only after that parse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from libp2p.abc import INetStream
from libp2p.kad_dht.common import MAX_RECORD_AGE
from libp2p.records.pubkey import PublicKeyValidator
from libp2p.records.validator import NamespacedValidator, Validator

from node.net.boundary import current_inbound_peer
from node.net.limits import LimitExceeded, Reservation, Resource, ResourceManager, Scope
from node.net.scoring import Offence, PeerScores

__all__ = [
    "VEILNET_NAMESPACE",
    "RecordRefused",
    "VeilnetRecordValidator",
    "inbound_message_limit",
    "rate_limited_handler",
]

log = logging.getLogger("veilnet.net.dht")

VEILNET_NAMESPACE = "veilnet"


class RecordRefused(ValueError):
    """A PUT_VALUE this node will not store (py-libp2p resets the stream on any validator error)."""


class _SizeLimited(Validator):
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes

    def validate(self, key: str, value: bytes) -> None:
        if len(value) > self._max_bytes:
            raise RecordRefused(f"record of {len(value)} bytes over the {self._max_bytes}-byte limit")

    def select(self, key: str, values: list[bytes]) -> int:
        return 0


class VeilnetRecordValidator(NamespacedValidator):
    """The DHT's validator: see the module docstring, rule 1."""

    def __init__(
        self,
        resources: ResourceManager,
        scores: PeerScores | None = None,
        clock: Callable[[], float] = time.monotonic,
        record_lifetime: float = float(MAX_RECORD_AGE),
    ) -> None:
        from libp2p.records.ipns import IPNSValidator

        max_bytes = resources.settings.dht_record_bytes
        super().__init__(
            {"pk": PublicKeyValidator(), "ipns": IPNSValidator(), VEILNET_NAMESPACE: _SizeLimited(max_bytes)},
            strict_validation=True,
        )
        self._resources = resources
        self._scores = scores
        self._clock = clock
        self._lifetime = record_lifetime
        self._held: dict[str, tuple[Reservation, float]] = {}  # key -> (slot of its first writer, expiry)
        self.refused = resources.metrics.counter(
            "veilnet_dht_records_refused_total", "PUT_VALUE records refused, by reason", ("reason",)
        )
        resources.metrics.gauge("veilnet_dht_records_held", "DHT value records charged to peers", self.held)

    def held(self) -> int:
        return len(self._held)

    def validate(self, key: str, value: bytes) -> None:
        namespace = key.split("/")[1] if key.startswith("/") and key.count("/") >= 2 else ""
        if namespace != VEILNET_NAMESPACE:
            self._charge_sender(Offence.INVALID_MESSAGE)
            self._refuse("namespace", f"key outside /{VEILNET_NAMESPACE}/")
        if len(value) > self._resources.settings.dht_record_bytes:
            self._charge_sender(Offence.INVALID_MESSAGE)
            self._refuse("size", f"record of {len(value)} bytes")
        super().validate(key, value)
        self._charge(key)

    def _charge_sender(self, offence: Offence) -> None:
        peer = current_inbound_peer()
        if peer is not None and self._scores is not None:
            self._scores.penalise(peer, offence)

    def _charge(self, key: str) -> None:
        now = self._clock()
        self._expire(now)
        if key in self._held:
            return  # one slot per key: a replacement costs nothing more
        peer = current_inbound_peer()
        if peer is None:
            return  # our own put_value (none today)
        try:
            slot = self._resources.reserve_dht_record(peer)
        except LimitExceeded as exc:
            if self._scores is not None:
                self._scores.penalise(peer, Offence.FLOOD)
            self._refuse("quota", str(exc))
        self._held[key] = (slot, now + self._lifetime)

    def _expire(self, now: float) -> None:
        if len(self._held) < 64 and not any(expiry <= now for _slot, expiry in self._held.values()):
            return
        for key in [key for key, (_slot, expiry) in self._held.items() if expiry <= now]:
            self._held.pop(key)[0].release()

    def _refuse(self, reason: str, detail: str) -> None:
        self.refused.inc(reason=reason)
        raise RecordRefused(detail)


StreamHandler = Callable[[INetStream], Awaitable[None]]

# An inbound request's bytes beyond its record value: key, a signed sender record and, in
# ADD_PROVIDER, the provider's own (each capped at PeerstoreLimits.max_record_bytes, 4 KiB), framing.
_REQUEST_OVERHEAD_BYTES = 16 << 10


def inbound_message_limit(resources: ResourceManager) -> int:
    """The largest DHT request a peer may send this node (see the module docstring, rule 3)."""
    return resources.settings.dht_record_bytes + _REQUEST_OVERHEAD_BYTES


def rate_limited_handler(
    handler: StreamHandler, resources: ResourceManager, scores: PeerScores
) -> StreamHandler:
    """``handler`` (the DHT's) fed through a meter that charges one token per inbound message."""

    async def metered(stream: INetStream) -> None:
        await handler(_MessageMeter(stream, stream.muxed_conn.peer_id.to_bytes(), resources, scores))  # type: ignore[arg-type]

    return metered


class _MessageMeter:
    """A stream proxy that sees each varint-prefixed message start and charges the peer's rate.

    It follows the framing on the bytes it hands out (whatever sizes the reader asks for), so a
    message is charged exactly once, before its handler parses it.
    """

    def __init__(
        self, stream: INetStream, peer: bytes, resources: ResourceManager, scores: PeerScores
    ) -> None:
        self._stream = stream
        self._peer = peer
        self._resources = resources
        self._scores = scores
        self._max_bytes = inbound_message_limit(resources)
        self._varint = 0  # bytes of the current length prefix seen
        self._length = 0
        self._body_left = 0

    async def read(self, n: int | None = None) -> bytes:
        data = await self._stream.read(n)
        self._follow(data)
        return data

    def _follow(self, data: bytes) -> None:
        index = 0
        while index < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - index)
                self._body_left -= step
                index += step
                continue
            if self._varint == 0:
                self._charge()
            byte = data[index]
            self._length |= (byte & 0x7F) << (7 * self._varint)
            self._varint += 1
            index += 1
            self._check_size(self._length)  # a prefix's value only grows with its later bytes
            if not byte & 0x80:
                self._body_left = self._length
                self._varint = 0
                self._length = 0

    def _charge(self) -> None:
        if not self._resources.allow("dht_query", self._peer):
            self._scores.penalise(self._peer, Offence.FLOOD)
            raise LimitExceeded(
                Scope.PEER,
                Resource.RATE,
                current=self._resources.settings.dht_query_burst,
                attempted=1,
                limit=self._resources.settings.dht_queries_per_second,
                key="dht queries per second",
            )

    def _check_size(self, length: int) -> None:
        if length <= self._max_bytes:
            return
        self._resources.hits.inc(scope=Scope.PEER.value, resource="dht_message_bytes")
        self._scores.penalise(self._peer, Offence.INVALID_MESSAGE)
        raise LimitExceeded(
            Scope.PEER,
            Resource.MEMORY,
            current=0,
            attempted=length,
            limit=self._max_bytes,
            key="dht message bytes",
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
