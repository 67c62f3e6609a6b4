"""Which stream muxers the node offers, and the limits every muxed connection lives under.

Why this module exists (py-libp2p 0.8.1; see docs/protocol/limits.md):

* ``new_host`` registers ``/mplex/6.7.0`` next to ``/yamux/1.0.0`` whatever ``muxer_preference``
  says. Mplex's reader lets a malformed frame (or a lock re-entry it provokes) escape
  ``Mplex.start``, which the Swarm runs as a service task: one frame ended the process. We offer
  yamux alone, and our yamux (:mod:`node.net.yamux`) turns every parser failure into closing
  that one connection and a :class:`MuxerFault` reported against its peer.
* ``MuxerMultistream.new_conn`` builds ``Yamux`` by name for ``/yamux/1.0.0`` and ignores the
  class in the muxer options, so :class:`GuardedMuxerMultistream` replaces it on the upgrader.
* ``Swarm._stream_semaphore`` (10,000) is one semaphore for every peer and both directions:
  streams held open by one peer blocked the node's own ``new_stream``. We switch it off; inbound
  streams are counted per connection, per peer and for the whole node by :class:`StreamBudget`,
  and a stream over a limit is refused with a yamux RST (go-yamux does the same when its accept
  backlog is full), never queued. Outbound streams keep yamux's per-connection backlog (256).

Scopes follow go-libp2p's resource manager (system, peer, connection); a refusal names the scope.

What belongs upstream: an explicit muxer list in ``new_host`` (no silent mplex), muxer classes
taken from the options, per-peer stream scopes instead of the global semaphore, and the
``Mplex.start`` error handling. Each would shrink this module to its settings.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from libp2p.abc import IHost, ISecureConn
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID

from node.net.guard import guard_of
from node.net.limits import ConnectionReservation, LimitSettings
from node.net.scoring import Offence, PeerScores

if TYPE_CHECKING:
    from libp2p.abc import IMuxedConn

__all__ = [
    "YAMUX_PROTOCOL_ID",
    "FaultListener",
    "GuardedMuxerMultistream",
    "MuxerFault",
    "MuxerLimits",
    "StreamBudget",
    "install_muxer",
    "muxer_guard",
]

log = logging.getLogger("veilnet.net.muxer")

KIB = 1024
MIB = 1024 * KIB


class MuxerFault(enum.Enum):
    """Why a muxed connection was closed (a violation) or a stream refused (a limit)."""

    # Violations: the peer broke the yamux spec; the connection is closed and the peer reported.
    BAD_VERSION = "bad_version"
    BAD_TYPE = "bad_type"
    BAD_STREAM_ID = "bad_stream_id"
    DUPLICATE_STREAM = "duplicate_stream"
    WINDOW_EXCEEDED = "window_exceeded"
    WINDOW_OVERFLOW = "window_overflow"
    FRAME_TIMEOUT = "frame_timeout"
    PARSER_ERROR = "parser_error"
    # Refusals: the peer stayed within the spec but over our limits; one stream is reset.
    STREAM_LIMIT = "stream_limit"
    BUFFER_LIMIT = "buffer_limit"

    @property
    def is_violation(self) -> bool:
        return self not in (MuxerFault.STREAM_LIMIT, MuxerFault.BUFFER_LIMIT)


FaultListener = Callable[[ID, MuxerFault], None]


@dataclass(frozen=True)
class MuxerLimits:
    """Muxer-level limits. Defaults keep a node within tens of MiB whatever its peers send.

    * Stream counts: an honest Veilnet peer holds a handful of streams to us at a time
      (gossipsub 1, kad/identify/ping short-lived, jobs a few); go-libp2p's default per-peer
      inbound stream limit is 256 for a whole peer across protocols. 128 per peer leaves room
      for bursts; 2,048 for the node is ~16 busy peers' worth.
    * ``max_stream_window``: yamux's receive window starts at 256 KiB (the spec) and py-libp2p
      auto-tunes it up to 16 MiB per stream; 1 MiB still fills loopback and LAN links (bulk
      throughput with 1 MiB matched 16 MiB within noise on loopback) and bounds one stream.
    * Unread bytes per connection and for the node: data a peer sends within its windows but our
      side has not read yet. Over the limit the stream that received it is reset (not the
      connection: the peer kept to the spec).
    * ``frame_body_timeout``: a DATA frame whose body does not arrive in time closes the
      connection (py-libp2p waits 60 s; 16 MiB frames that never finished held +355 MiB).
    """

    max_inbound_streams_per_conn: int = 128
    max_inbound_streams_per_peer: int = 128
    max_inbound_streams_total: int = 2048
    max_stream_window: int = 1 * MIB
    max_unread_per_conn: int = 4 * MIB
    max_unread_total: int = 32 * MIB
    frame_body_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> MuxerLimits:
        """The node's ``[limits]`` stream counts, applied where streams are born (the muxer)."""
        return cls(
            max_inbound_streams_per_conn=settings.inbound_streams_per_peer,
            max_inbound_streams_per_peer=settings.inbound_streams_per_peer,
            max_inbound_streams_total=settings.inbound_streams,
        )

    def __post_init__(self) -> None:
        if self.max_stream_window < 256 * KIB:
            raise ValueError("max_stream_window is at least yamux's initial window (256 KiB)")
        if min(self.max_inbound_streams_per_conn, self.max_inbound_streams_per_peer) < 1:
            raise ValueError("stream limits are at least 1")
        if self.frame_body_timeout <= 0:
            raise ValueError("frame_body_timeout must be positive")


class StreamBudget:
    """Inbound stream counts per peer and for the node, plus the node's unread bytes.

    Synchronous on purpose: a check and its reservation happen with no checkpoint between them,
    so concurrent connections cannot both pass a limit (trio is cooperative).
    """

    def __init__(self, limits: MuxerLimits) -> None:
        self.limits = limits
        self._per_peer: Counter[ID] = Counter()
        self.inbound_total = 0
        self.unread_total = 0
        self.faults: Counter[MuxerFault] = Counter()
        self._listeners: list[FaultListener] = []
        # The connection's reservation in the node's resource manager, once admitted: unread
        # bytes are charged to its memory scopes (connection, peer, system) as well.
        self.reservation_of: Callable[[object], ConnectionReservation | None] = lambda muxed: None
        # Called when a peer proposes only muxers we do not offer (mplex): not an offence (an
        # old honest peer may), but counted, since it is what an attack on mplex now meets.
        self.on_unoffered_muxer: Callable[[ID], None] = lambda peer: None

    def inbound_of(self, peer: ID) -> int:
        return self._per_peer.get(peer, 0)

    def try_open_inbound(self, peer: ID) -> str | None:
        """Reserve one inbound stream for ``peer``; None, or the name of the scope that is full."""
        if self.inbound_total >= self.limits.max_inbound_streams_total:
            return "system"
        if self._per_peer[peer] >= self.limits.max_inbound_streams_per_peer:
            return "peer"
        self._per_peer[peer] += 1
        self.inbound_total += 1
        return None

    def close_inbound(self, peer: ID, count: int = 1) -> None:
        held = self._per_peer.get(peer, 0)
        released = min(held, count)
        if held - released > 0:
            self._per_peer[peer] = held - released
        else:
            self._per_peer.pop(peer, None)
        self.inbound_total -= released

    def add_listener(self, listener: FaultListener) -> None:
        """``listener(peer, fault)`` runs synchronously for every fault (scoring, gating, metrics)."""
        self._listeners.append(listener)

    def report(self, peer: ID, fault: MuxerFault) -> None:
        self.faults[fault] += 1
        for listener in self._listeners:
            try:
                listener(peer, fault)
            except Exception:
                log.exception("muxer fault listener failed")


class GuardedMuxerMultistream(MuxerMultistream):
    """Negotiates ``/yamux/1.0.0`` only and builds :class:`node.net.yamux.GuardedYamux`."""

    def __init__(self, budget: StreamBudget, negotiate_timeout: int, yamux_class: Any) -> None:
        super().__init__({TProtocol(YAMUX_PROTOCOL_ID): yamux_class}, negotiate_timeout)
        self.budget = budget
        self._yamux_class = yamux_class  # node.net.yamux.GuardedYamux (passed in: yamux imports us)

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        try:
            protocol, _ = await self._selector.select(conn, conn.is_initiator, self.negotiate_timeout)
        except Exception:  # "na" to every proposal, or the peer gave up: no muxer in common
            self.budget.on_unoffered_muxer(peer_id)
            raise
        if protocol != YAMUX_PROTOCOL_ID:  # the selector only knows yamux; kept as a guard
            raise RuntimeError(f"negotiated an unoffered muxer {protocol}")
        muxed = self._yamux_class(conn, peer_id, budget=self.budget, is_initiator=conn.is_initiator)
        return self._annotate_connection(muxed, conn, protocol)


# A spec violation is as bad as bytes that broke a handler; a refused stream is a flood.
OFFENCE_OF: dict[bool, Offence] = {True: Offence.BROKEN_STREAM, False: Offence.FLOOD}


def penalise_faults(scores: PeerScores) -> FaultListener:
    """A fault listener that charges the peer's score (violations heavily, refusals lightly)."""

    def listener(peer: ID, fault: MuxerFault) -> None:
        scores.penalise(peer.to_bytes(), OFFENCE_OF[fault.is_violation])

    return listener


def install_muxer(host: IHost, yamux_class: Any, limits: MuxerLimits | None = None) -> StreamBudget:
    """Offer yamux alone on ``host``, with our frame checks and stream limits; returns the budget.

    With the host's guard (:mod:`node.net.guard`) installed first, the limits come from its
    ``[limits]`` settings, faults lower the peer's score and are counted in
    ``veilnet_muxer_faults_total{fault}``, and unread bytes are charged to the connection's
    reservation. Call before the host runs (``build_host`` does). Idempotent per host.
    """
    network: Any = host.get_network()
    upgrader = network.upgrader
    current = upgrader.muxer_multistream
    if isinstance(current, GuardedMuxerMultistream):
        return current.budget
    guard = guard_of(host)
    if limits is None:
        limits = MuxerLimits.from_settings(guard.settings) if guard is not None else MuxerLimits()
    budget = StreamBudget(limits)
    if guard is not None:
        budget.reservation_of = guard.admission.reservation_of
        budget.add_listener(penalise_faults(guard.scores))
        faults = guard.metrics.counter(
            "veilnet_muxer_faults_total", "Muxer violations (connection closed) and refusals", ("fault",)
        )
        budget.add_listener(lambda _peer, fault: faults.inc(fault=fault.value))
        refused = guard.admission.refused
        budget.on_unoffered_muxer = lambda _peer: refused.inc(reason="muxer")
    upgrader.muxer_multistream = GuardedMuxerMultistream(budget, current.negotiate_timeout, yamux_class)
    # One global semaphore for all peers and both directions is what let held streams block
    # everyone; per-peer limits replace it (see the module docstring).
    network._stream_semaphore = None
    return budget


def muxer_guard(host: IHost) -> StreamBudget:
    """The budget :func:`install_muxer` put on ``host`` (to add fault listeners or read counts)."""
    current = host.get_network().upgrader.muxer_multistream  # type: ignore[attr-defined]
    if not isinstance(current, GuardedMuxerMultistream):
        raise RuntimeError("install_muxer() has not been called on this host")
    return current.budget
