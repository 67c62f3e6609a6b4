"""Peer scores: one number per *peer* that every misbehaviour lowers, and the gate it drives.

Gossipsub v1.1's score (libp2p/specs ``pubsub/gossipsub/gossipsub-v1.1.md`` §Peer Scoring) is
the model: penalties decay exponentially, a positive application score marks peers we have
reason to trust, and thresholds turn the number into decisions. Ours is per peer across every
protocol, not per message or per topic, so one verdict covers a whole batch: a peer that sends
1,000 bad messages in one RPC is graylisted after the first few, and the rest are dropped before
anyone appraises them.

Rules:

1. :meth:`PeerScores.penalise` charges an :class:`Offence`'s weight; penalties halve every
   ``score_half_life_seconds``.
2. The score is ``bonus(peer) - penalty(peer)``; the bonus is injected (the node gives attested
   peers in its registry a positive one). Peer exchange is accepted only from peers whose score is
   positive (:meth:`accepts_px`), so a stranger can never steer our dials.
3. A score below ``graylist_score`` bans the peer: every listener is told (the connection admission
   disconnects it) and :meth:`is_banned` refuses it at the connection gate and the stream boundary
   for ``ban_seconds``, doubling on each repeat up to ``ban_max_seconds``. The penalty is cleared
   when a ban starts, so the back-off, not a slowly decaying debt, decides when it may return.
4. Transport failures (the peer went away mid-stream) are not offences: only what the peer *sent*
   is held against it (see :func:`offence_for`).
5. State is bounded: decayed penalties, ended bans and stale strike counts are deleted, and the
   tables never exceed ``max_peers`` entries (oldest dropped first).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

import trio

from node.metrics import Metrics
from node.net.limits import LimitExceeded, LimitSettings

__all__ = ["Offence", "PeerScores", "offence_for"]

log = logging.getLogger("veilnet.net.scoring")

_V = TypeVar("_V")


class Offence(StrEnum):
    INVALID_MESSAGE = "invalid_message"  # a gossip message that failed its signature or validator
    REFUSED_BUNDLE = "refused_bundle"  # an attestation bundle that failed appraisal
    BROKEN_STREAM = "broken_stream"  # bytes that made a protocol handler fail
    FLOOD = "flood"  # over a resource limit or rate
    TIMEOUT = "timeout"  # held a handler past its deadline


# With the default graylist score of -100: 4 broken streams, 5 refused bundles, 10 invalid
# messages or 20 refused reservations in quick succession ban a peer. An honest peer's bundle is
# refused at most once per re-announce when it goes stale, which decays away long before.
WEIGHTS: dict[Offence, float] = {
    Offence.INVALID_MESSAGE: 10.0,
    Offence.REFUSED_BUNDLE: 20.0,
    Offence.BROKEN_STREAM: 25.0,
    Offence.FLOOD: 5.0,
    Offence.TIMEOUT: 5.0,
}

# Failures that mean the connection or stream went away, not that the peer sent bad bytes.
_TRANSPORT_FAILURE_NAMES = frozenset(
    {
        "StreamEOF",
        "StreamReset",
        "StreamClosed",
        "StreamError",
        "MuxedConnUnavailable",
        "MuxedStreamEOF",
        "MuxedStreamReset",
        "MuxedStreamClosed",
        "RawConnError",
        "IOException",
        "ConnectionClosedError",  # py-libp2p's TCP stream: the peer reset or closed the socket
        "IncompleteReadError",
        "BrokenResourceError",
        "ClosedResourceError",
        "ConnectionResetError",
        "BrokenPipeError",
    }
)


def offence_for(exc: BaseException) -> Offence | None:
    """What a handler's failure says about the peer: None when the transport simply went away."""
    if isinstance(exc, BaseExceptionGroup):
        found = [offence_for(inner) for inner in exc.exceptions]
        offences = [offence for offence in found if offence is not None]
        return max(offences, key=lambda offence: WEIGHTS[offence]) if offences else None
    if isinstance(exc, trio.TooSlowError):
        return Offence.TIMEOUT
    if isinstance(exc, LimitExceeded):
        return Offence.FLOOD
    if type(exc).__name__ in _TRANSPORT_FAILURE_NAMES:
        return None
    return Offence.BROKEN_STREAM


class PeerScores:
    """Per-peer scores and bans (see module docstring). Use from the trio thread only."""

    def __init__(
        self,
        settings: LimitSettings | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_peers: int = 50_000,
    ) -> None:
        self.settings = settings or LimitSettings()
        self._clock = clock
        self._max_peers = max_peers
        self._decay_rate = math.log(2) / self.settings.score_half_life_seconds
        self._penalties: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # peer -> (value, at)
        self._bans: OrderedDict[bytes, float] = OrderedDict()  # peer -> banned until
        self._strikes: OrderedDict[bytes, tuple[int, float]] = OrderedDict()  # peer -> (bans, last end)
        self._bonus: Callable[[bytes], float] = lambda peer: 0.0
        self._listeners: list[Callable[[bytes], None]] = []
        metrics = metrics or Metrics()
        self.penalties = metrics.counter(
            "veilnet_peer_penalties_total", "Offences charged to peers' scores, by offence", ("offence",)
        )
        self.graylisted = metrics.counter(
            "veilnet_peers_graylisted_total", "Times a peer's score fell below the graylist threshold"
        )
        self.refused = metrics.counter(
            "veilnet_banned_peer_refusals_total",
            "Connections and streams of banned peers refused, by where",
            ("where",),
        )
        metrics.gauge("veilnet_peers_banned", "Peers currently banned", self.banned_count)

    # ------------------------------------------------------------------------------ wiring

    def set_bonus(self, bonus: Callable[[bytes], float]) -> None:
        """``bonus(peer)`` is the positive part of the score (must be cheap, must not raise)."""
        self._bonus = bonus

    def add_graylist_listener(self, listener: Callable[[bytes], None]) -> None:
        """``listener(peer)`` runs synchronously when a peer is banned; it must not block."""
        self._listeners.append(listener)

    # ----------------------------------------------------------------------------- charging

    def penalise(self, peer: bytes, offence: Offence, count: int = 1) -> float:
        """Charge ``count`` offences to ``peer``; returns its new score (bans it below the threshold)."""
        now = self._clock()
        self.penalties.inc(count, offence=offence.value)
        if self._banned_until(peer, now) is not None:
            return self.score(peer)  # already cut off: nothing more to decide
        penalty = self._penalty(peer, now) + WEIGHTS[offence] * count
        self._penalties.pop(peer, None)
        self._penalties[peer] = (penalty, now)
        self._trim(self._penalties)
        score = self._safe_bonus(peer) - penalty
        if score < self.settings.graylist_score:
            self._ban(peer, now, offence)
        return score

    def _ban(self, peer: bytes, now: float, offence: Offence) -> None:
        strikes, last_end = self._strikes.pop(peer, (0, now))
        if now - last_end > self.settings.ban_max_seconds:
            strikes = 0  # it behaved for a long while: start the back-off again
        duration = min(self.settings.ban_seconds * (2**strikes), self.settings.ban_max_seconds)
        self._strikes[peer] = (strikes + 1, now + duration)
        self._trim(self._strikes)
        self._bans.pop(peer, None)
        self._bans[peer] = now + duration
        self._trim(self._bans)
        self._penalties.pop(peer, None)
        self.graylisted.inc()
        log.warning(
            "peer %s graylisted (%s); disconnected and banned for %.0f s",
            _text(peer),
            offence.value,
            duration,
        )
        for listener in list(self._listeners):
            try:
                listener(peer)
            except Exception:
                log.exception("graylist listener failed")

    # ------------------------------------------------------------------------------ reading

    def score(self, peer: bytes) -> float:
        return self._safe_bonus(peer) - self._penalty(peer, self._clock())

    def penalty(self, peer: bytes) -> float:
        return self._penalty(peer, self._clock())

    def is_banned(self, peer: bytes) -> bool:
        return self._banned_until(peer, self._clock()) is not None

    def refuse_if_banned(self, peer: bytes, where: str) -> bool:
        """True (and counted) when ``peer`` is banned: the caller refuses it ``where``."""
        if not self.is_banned(peer):
            return False
        self.refused.inc(where=where)
        return True

    def accepts_px(self, peer: bytes) -> bool:
        """Peer exchange only from peers with a positive score (never from a stranger)."""
        return not self.is_banned(peer) and self.score(peer) > 0

    def banned_count(self) -> int:
        now = self._clock()
        for peer in [peer for peer, until in self._bans.items() if until <= now]:
            del self._bans[peer]
        return len(self._bans)

    # ----------------------------------------------------------------------------- internals

    def _penalty(self, peer: bytes, now: float) -> float:
        entry = self._penalties.get(peer)
        if entry is None:
            return 0.0
        value, at = entry
        decayed = value * math.exp(-self._decay_rate * max(0.0, now - at))
        if decayed < 0.5:
            del self._penalties[peer]
            return 0.0
        return decayed

    def _banned_until(self, peer: bytes, now: float) -> float | None:
        until = self._bans.get(peer)
        if until is None:
            return None
        if until <= now:
            del self._bans[peer]
            return None
        return until

    def _safe_bonus(self, peer: bytes) -> float:
        try:
            return max(0.0, float(self._bonus(peer)))
        except Exception:
            log.exception("score bonus function failed")
            return 0.0

    def _trim(self, table: OrderedDict[bytes, _V]) -> None:
        while len(table) > self._max_peers:
            table.popitem(last=False)


def _text(peer: bytes) -> str:
    try:
        from protocol.identity import peer_id_to_text

        return peer_id_to_text(peer)
    except Exception:
        return peer.hex()[:16]
