"""Resource limits by named scope: what one peer, connection, stream or protocol may hold at once.

Modelled on go-libp2p's resource manager (``core/network/rcmgr.go``), reduced to what a Veilnet
node needs. Every resource is reserved when used and released when done, in every scope it
belongs to at once::

    system ─┬─ transient            (a connection before its peer is known)
            ├─ peer ── connection ── stream
            └─ protocol              (a stream once its protocol is negotiated)

Rules:

1. A reservation either succeeds in *every* scope it touches or in none: a refused one changes no
   count. A refusal raises :class:`LimitExceeded` carrying the scope, resource, current use,
   the amount asked for and the limit (as go-libp2p's ``error.go`` does), and is counted in
   ``veilnet_limit_hits_total{scope,resource}``.
2. Every reservation is a :class:`Reservation` whose ``release()`` is idempotent; use it as a
   context manager where the lifetime is lexical.
3. Usage entries whose counts fall to zero are deleted, so churning identities leave no state
   behind; rate buckets are bounded in number (:class:`RateLimiter`).
4. No I/O, no trio, no libp2p here: callers pass peer ids as bytes, addresses as text and the
   clock as a function, so every rule is tested by feeding it decisions directly.

Who uses what (the calls are the whole API): :meth:`ResourceManager.open_connection` (admission
in :mod:`node.net.admission`), :meth:`ResourceManager.open_stream` and
:meth:`StreamReservation.set_protocol` (the inbound-stream boundary, :mod:`node.net.boundary`),
:meth:`Reservation.reserve_memory` (buffers below the streams), :meth:`ResourceManager.allow`
(per-peer rates: challenges, DHT queries).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from node.config import LimitSettings
from node.metrics import Metrics

__all__ = [
    "ConnectionReservation",
    "LimitExceeded",
    "LimitSettings",
    "RateLimiter",
    "Reservation",
    "Resource",
    "ResourceManager",
    "Scope",
    "StreamReservation",
]


class Scope(StrEnum):
    SYSTEM = "system"
    TRANSIENT = "transient"
    PEER = "peer"
    CONNECTION = "connection"
    STREAM = "stream"
    PROTOCOL = "protocol"


class Resource(StrEnum):
    CONNECTIONS = "connections"
    INBOUND_STREAMS = "inbound_streams"
    MEMORY = "memory"  # bytes buffered on a peer's behalf (pending frames, reassembly)
    RATE = "rate"  # a per-peer rate (see ResourceManager.allow)
    DHT_RECORDS = "dht_records"


class LimitExceeded(Exception):
    """A reservation would take ``scope`` over its ``limit`` for ``resource``; nothing was reserved."""

    def __init__(
        self,
        scope: Scope,
        resource: Resource,
        *,
        current: float,
        attempted: float,
        limit: float,
        key: str = "",
    ) -> None:
        self.scope = scope
        self.resource = resource
        self.current = current
        self.attempted = attempted
        self.limit = limit
        self.key = key
        where = f"{scope.value} {key}" if key else scope.value
        super().__init__(
            f"{where}: {resource.value} limit {limit:g} reached (using {current:g}, asked for {attempted:g})"
        )


_Key = tuple[Scope, Any]
_Entry = tuple[Scope, Any, Resource, float]  # scope, key within the scope, resource, limit


class Reservation:
    """Resources held in a set of scopes; ``release()`` gives back everything, once."""

    def __init__(
        self,
        manager: ResourceManager,
        entries: list[_Entry],
        amounts: dict[Resource, float],
        memory_scopes: Sequence[_Key] = (),
    ) -> None:
        self._manager = manager
        self._entries = entries
        self._memory_scopes = list(memory_scopes)
        self._held: dict[Resource, float] = dict(amounts)
        self.released = False

    def reserve_memory(self, size: int) -> None:
        """Account ``size`` more bytes buffered under this reservation (raises LimitExceeded)."""
        if self.released:
            raise RuntimeError("reservation already released")
        self._manager._reserve(self._memory_entries(), Resource.MEMORY, size)
        self._held[Resource.MEMORY] = self._held.get(Resource.MEMORY, 0) + size

    def release_memory(self, size: int) -> None:
        size = min(size, int(self._held.get(Resource.MEMORY, 0)))
        if size > 0 and not self.released:
            self._manager._release(self._memory_entries(), Resource.MEMORY, size)
            self._held[Resource.MEMORY] -= size

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        for resource, amount in self._held.items():
            if amount:
                entries = self._memory_entries() if resource is Resource.MEMORY else self._entries
                self._manager._release(entries, resource, amount)
        self._held.clear()

    def _memory_entries(self) -> list[_Entry]:
        return self._manager._memory_entries(self._memory_scopes)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ConnectionReservation(Reservation):
    """One connection: in the transient scope until :meth:`set_peer`, then in its peer's scope."""

    def __init__(
        self, manager: ResourceManager, entries: list[_Entry], ip: str | None, peer: bytes | None, serial: int
    ) -> None:
        self.key: _Key = (Scope.CONNECTION, serial)
        memory = [
            (Scope.SYSTEM, None),
            (Scope.PEER, peer) if peer is not None else (Scope.TRANSIENT, None),
            self.key,
        ]
        super().__init__(manager, entries, {Resource.CONNECTIONS: 1}, memory)
        self.ip = ip
        self.peer = peer

    def set_peer(self, peer: bytes) -> None:
        """Move the connection from the transient scope to ``peer``'s (checks the per-peer limit)."""
        if self.released or self.peer is not None:
            return
        manager = self._manager
        limits = manager.settings
        added: list[_Entry] = [(Scope.PEER, peer, Resource.CONNECTIONS, limits.connections_per_peer)]
        manager._reserve(added, Resource.CONNECTIONS, 1)
        transient = [entry for entry in self._entries if entry[0] is Scope.TRANSIENT]
        manager._release(transient, Resource.CONNECTIONS, 1)
        self._entries = [entry for entry in self._entries if entry[0] is not Scope.TRANSIENT] + added
        self._memory_scopes = [(Scope.SYSTEM, None), (Scope.PEER, peer), self.key]
        self.peer = peer


class StreamReservation(Reservation):
    """One inbound stream of a peer; :meth:`set_protocol` adds it to its protocol's scopes."""

    def __init__(
        self, manager: ResourceManager, entries: list[_Entry], peer: bytes, memory: list[_Key]
    ) -> None:
        super().__init__(manager, entries, {Resource.INBOUND_STREAMS: 1}, memory)
        self.peer = peer
        self.protocol: str | None = None

    def set_protocol(self, protocol: str) -> None:
        if self.released or self.protocol is not None:
            return
        limits = self._manager.settings
        added: list[_Entry] = [
            (Scope.PROTOCOL, protocol, Resource.INBOUND_STREAMS, limits.inbound_streams_per_protocol),
            (
                Scope.PROTOCOL,
                (protocol, self.peer),
                Resource.INBOUND_STREAMS,
                limits.inbound_streams_per_peer_protocol,
            ),
        ]
        self._manager._reserve(added, Resource.INBOUND_STREAMS, 1)
        self._entries = self._entries + added
        self.protocol = protocol


class RateLimiter:
    """Token buckets keyed by anything hashable, at most ``max_keys`` of them (least recently used
    dropped first: a dropped bucket comes back full, which only ever favours the peer)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float], max_keys: int = 20_000) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[Any, tuple[float, float]] = OrderedDict()

    def allow(self, key: Any, cost: float = 1.0) -> bool:
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class ResourceManager:
    """Counts what every scope holds and refuses what would go over a limit (see module docstring).

    Not thread-safe: use it from the trio thread only.
    """

    RATES = ("dht_query", "challenge")

    def __init__(
        self,
        settings: LimitSettings | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or LimitSettings()
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._usage: dict[_Key, dict[Resource, float]] = {}
        self._serial = 0
        s = self.settings
        self._rates: dict[str, RateLimiter] = {
            "dht_query": RateLimiter(s.dht_queries_per_second, s.dht_query_burst, clock),
            "challenge": RateLimiter(s.challenges_per_second, s.challenge_burst, clock),
        }
        self.hits = self.metrics.counter(
            "veilnet_limit_hits_total",
            "Reservations refused by a resource limit, by scope and resource",
            ("scope", "resource"),
        )
        self.metrics.gauge(
            "veilnet_connections",
            "Established connections (resource manager's count)",
            lambda: self.usage(Scope.SYSTEM, None, Resource.CONNECTIONS),
        )
        self.metrics.gauge(
            "veilnet_inbound_streams",
            "Open inbound streams (resource manager's count)",
            lambda: self.usage(Scope.SYSTEM, None, Resource.INBOUND_STREAMS),
        )
        self.metrics.gauge(
            "veilnet_reserved_memory_bytes",
            "Bytes buffered for peers (resource manager's count)",
            lambda: self.usage(Scope.SYSTEM, None, Resource.MEMORY),
        )

    # ------------------------------------------------------------------------------ reserving

    def open_connection(self, peer: bytes | None, ip: str | None) -> ConnectionReservation:
        """Admit a connection (``peer`` None: not yet known, held in the transient scope)."""
        s = self.settings
        entries: list[_Entry] = [(Scope.SYSTEM, None, Resource.CONNECTIONS, s.connections)]
        if ip is not None:  # the system's connections, partitioned by source address
            entries.append((Scope.SYSTEM, ("ip", ip), Resource.CONNECTIONS, s.connections_per_ip))
        if peer is None:
            entries.append((Scope.TRANSIENT, None, Resource.CONNECTIONS, s.connections))
        else:
            entries.append((Scope.PEER, peer, Resource.CONNECTIONS, s.connections_per_peer))
        self._reserve(entries, Resource.CONNECTIONS, 1)
        self._serial += 1
        return ConnectionReservation(self, entries, ip, peer, self._serial)

    def open_stream(self, peer: bytes, connection: ConnectionReservation | None = None) -> StreamReservation:
        """Admit one inbound stream of ``peer`` (its protocol is added once negotiated)."""
        s = self.settings
        entries: list[_Entry] = [
            (Scope.SYSTEM, None, Resource.INBOUND_STREAMS, s.inbound_streams),
            (Scope.PEER, peer, Resource.INBOUND_STREAMS, s.inbound_streams_per_peer),
        ]
        self._reserve(entries, Resource.INBOUND_STREAMS, 1)
        self._serial += 1
        memory: list[_Key] = [(Scope.SYSTEM, None), (Scope.PEER, peer)]
        if connection is not None:
            memory.append(connection.key)
        memory.append((Scope.STREAM, self._serial))
        return StreamReservation(self, entries, peer, memory)

    def allow(self, rate: str, peer: bytes, cost: float = 1.0) -> bool:
        """Take ``cost`` from ``peer``'s bucket for ``rate`` (one of :attr:`RATES`); False is a hit."""
        allowed = self._rates[rate].allow(peer, cost)
        if not allowed:
            self.hits.inc(scope=Scope.PEER.value, resource=f"{rate}_rate")
        return allowed

    def reserve_dht_record(self, peer: bytes) -> Reservation:
        """A stored-record slot charged to ``peer``; release it when the record goes."""
        s = self.settings
        entries: list[_Entry] = [
            (Scope.SYSTEM, None, Resource.DHT_RECORDS, s.dht_records),
            (Scope.PEER, peer, Resource.DHT_RECORDS, s.dht_records_per_peer),
        ]
        self._reserve(entries, Resource.DHT_RECORDS, 1)
        return Reservation(self, entries, {Resource.DHT_RECORDS: 1})

    # ------------------------------------------------------------------------------- reading

    def usage(self, scope: Scope, key: Any, resource: Resource) -> float:
        return self._usage.get((scope, key), {}).get(resource, 0)

    def scopes_in_use(self) -> int:
        """How many (scope, key) entries hold anything (bounded by what is live, never by history)."""
        return len(self._usage)

    # ------------------------------------------------------------------------------ internals

    def _memory_entries(self, scopes: list[_Key]) -> list[_Entry]:
        s = self.settings
        limit_of = {
            Scope.SYSTEM: s.memory,
            Scope.TRANSIENT: s.memory_per_peer,
            Scope.PEER: s.memory_per_peer,
            Scope.CONNECTION: s.memory_per_connection,
            Scope.STREAM: s.memory_per_stream,
            Scope.PROTOCOL: s.memory,
        }
        return [(scope, key, Resource.MEMORY, limit_of[scope]) for scope, key in scopes]

    def _reserve(self, entries: list[_Entry], resource: Resource, amount: float) -> None:
        for scope, key, _resource, limit in entries:
            current = self.usage(scope, key, resource)
            if current + amount > limit:
                self.hits.inc(scope=scope.value, resource=resource.value)
                raise LimitExceeded(
                    scope, resource, current=current, attempted=amount, limit=limit, key=_describe_key(key)
                )
        for scope, key, _resource, _limit in entries:
            counts = self._usage.setdefault((scope, key), {})
            counts[resource] = counts.get(resource, 0) + amount

    def _release(self, entries: list[_Entry], resource: Resource, amount: float) -> None:
        for scope, key, _resource, _limit in entries:
            counts = self._usage.get((scope, key))
            if counts is None:
                continue
            left = counts.get(resource, 0) - amount
            if left > 0:
                counts[resource] = left
            else:
                counts.pop(resource, None)
                if not counts:
                    del self._usage[(scope, key)]


def _describe_key(key: Any) -> str:
    if key is None:
        return ""
    if isinstance(key, bytes):
        return _peer_text(key)
    if isinstance(key, tuple):
        return " ".join(_describe_key(part) for part in key)
    return str(key)


def _peer_text(peer: bytes) -> str:
    try:
        from protocol.identity import peer_id_to_text

        return peer_id_to_text(peer)
    except Exception:
        return peer.hex()[:16]
