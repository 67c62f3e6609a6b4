"""The one isolation point for every inbound stream, py-libp2p's own protocols included.

py-libp2p hands each inbound stream to ``Swarm.common_stream_handler`` (``BasicHost``'s
``_swarm_stream_handler``), which negotiates the protocol and awaits the handler with no guard
around it; an exception escaping it ends the connection's stream loop or the whole Swarm service,
and the process with it (issue 9: three bytes ``02 0a 05`` on ``/meshsub/1.2.0`` made gossipsub's
handler raise ``DecodeError``). Wrapping handlers one by one left gossipsub, kad, identify and
ping unguarded, and would leave the next protocol unguarded too. So :class:`StreamBoundary`
*replaces* the swarm's stream handler: every inbound stream, whatever its protocol, goes through
:meth:`StreamBoundary.__call__`, which

1. refuses streams of banned peers (:mod:`node.net.scoring`);
2. reserves the stream in the resource manager (per peer, then per protocol once negotiated) and
   applies per-peer stream rates (challenges), each refusal a reset, a counted limit hit and a
   small penalty;
3. negotiates the protocol (multistream-select) under a deadline, as ``BasicHost`` does;
4. runs the handler; anything it raises resets *that stream only*, is counted in
   ``veilnet_stream_errors_total{protocol}`` and, unless it only says the transport went away,
   charges the peer (:func:`node.net.scoring.offence_for`);
5. releases the reservation, whatever happened.

Handlers registered through :func:`node.net.host.wrap_handler` catch their own errors (to close
or reset the stream politely); they report them with :func:`report_stream_failure`, which charges
the peer of the stream being handled through a context variable the boundary sets, so the score
sees those failures too. Cancellation (the node stopping) always propagates.

Divergence from ``BasicHost._swarm_stream_handler``: the QUIC-only negotiation semaphores are not
reproduced (Veilnet runs TCP only); a failed negotiation is a reset, as there.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio
from libp2p.abc import IHost, INetStream
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

from node.metrics import Metrics
from node.net.limits import ConnectionReservation, LimitExceeded, ResourceManager, StreamReservation
from node.net.scoring import Offence, PeerScores, offence_for

__all__ = ["StreamBoundary", "current_inbound_peer", "report_stream_failure"]

log = logging.getLogger("veilnet.net.boundary")

# Multistream-select must finish within this (py-libp2p's inbound default is also ~5-10 s).
NEGOTIATION_TIMEOUT = 10.0
_RESET_GRACE = 1.0
_UNNEGOTIATED = "(negotiation)"

# Streams of these protocols are admitted at a per-peer rate (ResourceManager.allow names).
STREAM_RATES: dict[str, str] = {"/veilnet/challenge/1.0.0": "challenge"}


@dataclass
class _Inbound:
    peer: bytes
    protocol: str
    boundary: StreamBoundary
    charged: bool = False


_current: contextvars.ContextVar[_Inbound | None] = contextvars.ContextVar(
    "veilnet_inbound_stream", default=None
)


def current_inbound_peer() -> bytes | None:
    """The peer whose inbound stream the current task is handling (None outside one)."""
    inbound = _current.get()
    return inbound.peer if inbound is not None else None


def report_stream_failure(exc: BaseException) -> None:
    """A handler that handled its own failure tells the boundary, which charges the stream's peer.

    Outside an inbound stream (an outbound exchange, a test) this does nothing.
    """
    inbound = _current.get()
    if inbound is not None and not inbound.charged:
        inbound.charged = True
        inbound.boundary.charge(inbound.peer, exc)


class StreamBoundary:
    """Installed as the swarm's stream handler by :meth:`install`; see the module docstring."""

    def __init__(
        self,
        host: IHost,
        resources: ResourceManager,
        scores: PeerScores,
        metrics: Metrics,
        connection_of: Callable[[object], ConnectionReservation | None] = lambda muxed: None,
    ) -> None:
        self._host = host
        self._resources = resources
        self._scores = scores
        self._connection_of = connection_of
        self.errors = metrics.counter(
            "veilnet_stream_errors_total", "Inbound streams reset because their handler failed", ("protocol",)
        )
        self.refused = metrics.counter(
            "veilnet_streams_refused_total",
            "Inbound streams reset before their handler ran, by reason",
            ("reason",),
        )

    def install(self) -> None:
        self._host.get_network().set_stream_handler(self)

    def charge(self, peer: bytes, exc: BaseException) -> None:
        offence = offence_for(exc)
        if offence is not None:
            self._scores.penalise(peer, offence)

    async def __call__(self, stream: INetStream) -> None:
        try:
            peer = stream.muxed_conn.peer_id.to_bytes()
        except Exception:
            await _reset(stream)
            return
        if self._scores.refuse_if_banned(peer, "stream"):
            await _reset(stream)
            return
        try:
            reservation = self._resources.open_stream(peer, self._connection_of(stream.muxed_conn))
        except LimitExceeded as exc:
            await self._refuse(stream, peer, "limit", exc)
            return
        try:
            await self._serve(stream, peer, reservation)
        finally:
            reservation.release()

    async def _serve(self, stream: INetStream, peer: bytes, reservation: StreamReservation) -> None:
        protocol = await self._negotiate(stream, peer)
        if protocol is None:
            return
        protocol_id, handler = protocol
        try:
            reservation.set_protocol(protocol_id)
        except LimitExceeded as exc:
            await self._refuse(stream, peer, "limit", exc)
            return
        rate = STREAM_RATES.get(protocol_id)
        if rate is not None and not self._resources.allow(rate, peer):
            await self._refuse(stream, peer, "rate", None)
            return
        inbound = _Inbound(peer, protocol_id, self)
        token = _current.set(inbound)
        try:
            await handler(stream)
        except BaseException as exc:
            failure, rest = _split(exc)
            if failure is None:
                raise
            self._failed(stream, inbound, failure)
            await _reset(stream)
            if rest is not None:
                raise rest from None  # cancellation inside a group: the node is stopping
        finally:
            _current.reset(token)

    async def _negotiate(self, stream: INetStream, peer: bytes) -> tuple[str, Callable] | None:
        try:
            with trio.fail_after(NEGOTIATION_TIMEOUT):
                protocol, handler = await self._host.get_mux().negotiate(
                    MultiselectCommunicator(stream), int(NEGOTIATION_TIMEOUT)
                )
        except Exception as exc:  # garbage, a cut-off header, an unknown protocol, a silent peer
            log.debug("stream from %s: negotiation failed: %s", _short(peer), exc)
            self.refused.inc(reason="negotiation")
            if isinstance(exc, trio.TooSlowError):
                self._scores.penalise(peer, Offence.TIMEOUT)
            await _reset(stream)
            return None
        if protocol is None or handler is None:
            self.refused.inc(reason="no_handler")
            await _reset(stream)
            return None
        stream.set_protocol(protocol)
        return str(protocol), handler

    async def _refuse(self, stream: INetStream, peer: bytes, reason: str, exc: LimitExceeded | None) -> None:
        self.refused.inc(reason=reason)
        self._scores.penalise(peer, Offence.FLOOD)
        log.debug("stream from %s refused: %s", _short(peer), exc or reason)
        await _reset(stream)

    def _failed(self, stream: INetStream, inbound: _Inbound, exc: BaseException) -> None:
        self.errors.inc(protocol=inbound.protocol)
        offence = offence_for(exc)
        level = logging.INFO if offence is not None else logging.DEBUG
        log.log(level, "%s: stream from %s reset: %s", inbound.protocol, _short(inbound.peer), _describe(exc))
        if offence is not None and not inbound.charged:
            inbound.charged = True
            self._scores.penalise(inbound.peer, offence)


def _split(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(the failures in ``exc``, the rest: cancellation, KeyboardInterrupt, SystemExit)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(Exception)
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


async def _reset(stream: INetStream) -> None:
    with trio.CancelScope(deadline=trio.current_time() + _RESET_GRACE, shield=True):
        try:
            await stream.reset()
        except Exception as exc:
            log.debug("reset failed: %s", exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _short(peer: bytes) -> str:
    try:
        from protocol.identity import peer_id_to_text

        return peer_id_to_text(peer)[-8:]
    except Exception:
        return peer.hex()[:8]
