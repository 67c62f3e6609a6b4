"""Connection admission: who may hold a connection, how many, and for how long a slot is taken.

Three fixes to py-libp2p 0.8.1's ``Swarm``, installed on one swarm instance by
:meth:`ConnectionAdmission.install` (the fixes belong upstream; these wrappers stay small):

1. **Inbound slots come back when the connection closes.** ``Swarm._handle_inbound_connection``
   takes a slot of its inbound limiter (``max_connections - min_connections`` = 288) and, after the
   upgrade, waits for *the swarm* to stop before returning it, so a node that had accepted ~288
   connections in its life refused every new one (issue 9: one identity reconnecting 287 times
   locked a node out for good). :meth:`_handle_inbound` is the same path, but it waits for *that
   connection* to close.
2. **A gate on every established connection**, both directions, once the peer id is known (after
   Noise): banned peers (:mod:`node.net.scoring`) are refused, and every connection is reserved in
   the resource manager (per peer, per source IP, system) until it closes.
3. **Graylisted peers are disconnected** at once (every connection closed).

Divergence: the inbound path here handles stream transports (TCP) only; a pre-multiplexed inbound
connection (QUIC, which Veilnet does not enable) is handed to py-libp2p's own path unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IMuxedConn, INetConn
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from node.metrics import Metrics
from node.net.limits import ConnectionReservation, LimitExceeded, ResourceManager
from node.net.scoring import PeerScores

__all__ = ["ConnectionAdmission", "remote_ip"]

log = logging.getLogger("veilnet.net.admission")

_CLOSE_GRACE = 2.0


def remote_ip(conn: object) -> str | None:
    """The remote IP of a raw, secured or muxed connection, when it has one."""
    for candidate in (conn, getattr(conn, "secured_conn", None), getattr(conn, "conn", None)):
        getter = getattr(candidate, "get_remote_address", None)
        if getter is None:
            continue
        try:
            address = getter()
        except Exception:
            continue
        if address:
            return str(address[0])
    return None


class ConnectionAdmission:
    """See the module docstring. ``install()`` once, before the host runs."""

    def __init__(
        self, swarm: Swarm, resources: ResourceManager, scores: PeerScores, metrics: Metrics
    ) -> None:
        self._swarm = swarm
        self._resources = resources
        self._scores = scores
        self._original_add_conn: Callable[..., Awaitable[Any]] = swarm.add_conn
        self._reservations: dict[int, tuple[IMuxedConn, ConnectionReservation]] = {}
        self.refused = metrics.counter(
            "veilnet_connections_refused_total", "Connections refused at the gate, by reason", ("reason",)
        )
        self.disconnected = metrics.counter(
            "veilnet_peers_disconnected_total", "Peers disconnected by this node, by reason", ("reason",)
        )
        metrics.gauge(
            "veilnet_inbound_slots_free",
            "Free slots of the swarm's inbound connection limiter",
            lambda: float(swarm._inbound_limiter.available_tokens),
        )

    def install(self) -> None:
        swarm: Any = self._swarm
        swarm._handle_inbound_connection = self._handle_inbound
        swarm.add_conn = self._add_conn
        self._scores.add_graylist_listener(self._on_graylisted)

    def reservation_of(self, muxed_conn: object) -> ConnectionReservation | None:
        held = self._reservations.get(id(muxed_conn))
        return held[1] if held is not None and held[0] is muxed_conn else None

    def open_connections(self) -> int:
        return len(self._reservations)

    # --------------------------------------------------------------------------- inbound path

    async def _handle_inbound(self, read_write_closer: ReadWriteCloser, maddr: Multiaddr) -> None:
        swarm = self._swarm
        if isinstance(read_write_closer, IMuxedConn):
            # Not a transport Veilnet enables; keep py-libp2p's behaviour for it.
            await Swarm._handle_inbound_connection(swarm, read_write_closer, maddr)
            return
        try:
            swarm._inbound_limiter.acquire_nowait()
        except trio.WouldBlock:
            self.refused.inc(reason="inbound_slots")
            await _close_quietly(read_write_closer)
            return
        try:
            await self._upgrade_and_hold(read_write_closer, maddr)
        finally:
            swarm._inbound_limiter.release()

    async def _upgrade_and_hold(self, read_write_closer: ReadWriteCloser, maddr: Multiaddr) -> None:
        swarm = self._swarm
        remote = swarm._build_remote_multiaddr(read_write_closer)
        if remote is not None and not await swarm.connection_gate.is_allowed(remote):
            self.refused.inc(reason="ip_denied")
            await _close_quietly(read_write_closer)
            return
        raw_conn = RawConnection(read_write_closer, False)
        try:
            muxed_conn = await swarm.upgrade_inbound_raw_conn(raw_conn, maddr)
        except Exception as exc:  # handshake failure, limit, gate: the connection is closed
            log.debug("inbound connection on %s not established: %s", maddr, exc)
            await _close_quietly(raw_conn)
            return
        swarm_conn = _swarm_conn_of(swarm, muxed_conn)
        if swarm_conn is None:
            return  # closed (or a duplicate) before we looked
        await swarm_conn.event_closed.wait()  # the slot is held while *this* connection lives

    # ------------------------------------------------------------------------------- the gate

    async def _add_conn(self, muxed_conn: IMuxedConn, direction: str = "unknown") -> Any:
        peer = muxed_conn.peer_id
        peer_bytes = peer.to_bytes()
        if self._scores.refuse_if_banned(peer_bytes, "connection"):
            self.refused.inc(reason="banned")
            await _close_quietly(muxed_conn)
            raise SwarmException(f"peer {peer} is banned")
        try:
            reservation = self._resources.open_connection(peer_bytes, remote_ip(muxed_conn))
        except LimitExceeded as exc:
            self.refused.inc(reason="limit")
            await _close_quietly(muxed_conn)
            raise SwarmException(f"connection refused: {exc}") from None
        try:
            swarm_conn = await self._original_add_conn(muxed_conn, direction=direction)
        except BaseException:
            reservation.release()
            raise
        if (
            swarm_conn.muxed_conn is not muxed_conn
            or swarm_conn.is_closed
            or id(muxed_conn) in self._reservations
        ):
            reservation.release()  # a duplicate of a connection already held, or already gone
            return swarm_conn
        self._reservations[id(muxed_conn)] = (muxed_conn, reservation)
        return swarm_conn

    def on_disconnected(self, conn: INetConn) -> None:
        """Return the connection's reservation (wired as a network notifee by the guard)."""
        muxed_conn = getattr(conn, "muxed_conn", None)
        held = self._reservations.get(id(muxed_conn))
        if held is not None and held[0] is muxed_conn:
            del self._reservations[id(muxed_conn)]
            held[1].release()

    # ------------------------------------------------------------------------- disconnecting

    def _on_graylisted(self, peer: bytes) -> None:
        manager = getattr(self._swarm, "manager", None)
        if manager is None or not getattr(manager, "is_running", False):
            return
        manager.run_task(self._disconnect, ID(peer), "graylisted")

    async def _disconnect(self, peer: ID, reason: str) -> None:
        if not self._swarm.get_connections(peer):
            return
        self.disconnected.inc(reason=reason)
        with trio.move_on_after(_CLOSE_GRACE):
            try:
                await self._swarm.close_peer(peer)
            except Exception as exc:
                log.debug("disconnecting %s: %s", peer, exc)


def _swarm_conn_of(swarm: Swarm, muxed_conn: IMuxedConn) -> Any:
    for conn in swarm.connections.get(muxed_conn.peer_id, []):
        if conn.muxed_conn is muxed_conn and not conn.is_closed:
            return conn
    return None


async def _close_quietly(conn: Any) -> None:
    with trio.move_on_after(_CLOSE_GRACE):
        try:
            await conn.close()
        except Exception as exc:
            log.debug("closing a refused connection: %s", exc)
