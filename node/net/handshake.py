"""Connections that have not finished the PSK and Noise handshakes: a small budget and a short clock.

An inbound TCP connection takes one of the Swarm's inbound slots (288 by default) before anything
is known about it; py-libp2p then gives the PSK nonce, multistream-select, Noise and muxer
negotiation ``inbound_upgrade_timeout`` (10 s) together. Holding the key was not needed to hold a
slot: idle TCP connections, reopened as they were dropped, kept 12 of 16 new honest peers out.

Rules, applied by :class:`HandshakeGate` to every inbound connection before its upgrade starts
(the budget is checked first thing when the connection is accepted, so a refused peer that
reconnects in a loop costs an accept and a close, nothing more):

1. At most ``pending_per_ip`` connections from one source address, and ``pending_total`` from all,
   may be in the handshake at once. Over either, the connection is closed at once (counted in
   ``veilnet_handshakes_refused_total{scope}``) and takes nothing further.
2. The whole upgrade must finish within ``deadline`` seconds (set as the swarm's
   ``inbound_upgrade_timeout``, with a backstop of our own); a connection that has not is closed
   (``veilnet_handshake_timeouts_total``).
3. Established connections are not counted here: once the upgrade returns the budget is free again
   (their own limits are :mod:`node.net.admission`'s).

So what a keyless attacker can hold is ``pending_per_ip`` slots per address it controls, each for
``deadline`` seconds, and never more than ``pending_total`` in all, leaving the rest of the inbound
slots to established and honest peers.

Divergence: go-libp2p bounds pending upgrades with its ``transient`` resource scope and the
upgrader's accept timeout (15 s); py-libp2p has neither hook, so :meth:`HandshakeGate.install`
wraps ``Swarm.upgrade_inbound_raw_conn`` on one swarm instance. Upstream, a transient scope per
source address in ``Swarm._handle_inbound_connection`` would replace this module.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import IHost, IMuxedConn, IRawConnection
from libp2p.network.exceptions import SwarmException
from multiaddr import Multiaddr

from node.metrics import Metrics
from node.net.admission import remote_ip

__all__ = ["HandshakeGate", "HandshakeLimits", "install_handshake_gate"]

log = logging.getLogger("veilnet.net.handshake")

_CLOSE_GRACE = 1.0
_BACKSTOP_SLACK = 2.0  # our own deadline, past the swarm's, in case its timeout path stalls


@dataclass(frozen=True)
class HandshakeLimits:
    """Defaults: a loopback handshake takes ~0.1 s and a WAN one (4 round trips: PSK nonces,
    multistream, Noise XX, muxer) ~1.5 s at 300 ms RTT; under a reconnect storm on a loaded 2-core
    machine honest loopback handshakes took up to 4.5 s, so 6 s (py-libp2p: 10 s).
    16 per address lets a whole local testnet (one address) start at once; 64 in all leaves 224
    of the Swarm's 288 inbound slots to established connections."""

    pending_per_ip: int = 16
    pending_total: int = 64
    deadline: float = 6.0

    def __post_init__(self) -> None:
        if self.pending_per_ip < 1 or self.pending_total < self.pending_per_ip:
            raise ValueError("need 1 <= pending_per_ip <= pending_total")
        if self.deadline <= 0:
            raise ValueError("deadline must be positive")


Upgrade = Callable[[IRawConnection, Multiaddr], Awaitable[IMuxedConn]]
Accept = Callable[[Any, Multiaddr], Awaitable[None]]


class HandshakeGate:
    """Counts connections in the handshake per source address (see the module docstring)."""

    def __init__(self, limits: HandshakeLimits | None = None, metrics: Metrics | None = None) -> None:
        self.limits = limits or HandshakeLimits()
        metrics = metrics or Metrics()
        self._pending: Counter[str] = Counter()
        self.pending_total = 0
        self.refused = metrics.counter(
            "veilnet_handshakes_refused_total",
            "Inbound connections closed before their handshake: too many pending, by scope",
            ("scope",),
        )
        self.timeouts = metrics.counter(
            "veilnet_handshake_timeouts_total", "Inbound handshakes that did not finish in time"
        )
        metrics.gauge(
            "veilnet_handshakes_pending", "Inbound handshakes in progress", lambda: self.pending_total
        )

    def pending(self, ip: str) -> int:
        return self._pending.get(ip, 0)

    def try_begin(self, ip: str) -> str | None:
        """Take a handshake slot for ``ip``: None, or the name of the full scope (nothing taken)."""
        if self.pending_total >= self.limits.pending_total:
            return "system"
        if self._pending[ip] >= self.limits.pending_per_ip:
            return "ip"
        self._pending[ip] += 1
        self.pending_total += 1
        return None

    def end(self, ip: str) -> None:
        left = self._pending.get(ip, 0) - 1
        if left > 0:
            self._pending[ip] = left
        elif ip in self._pending:
            del self._pending[ip]
        self.pending_total = max(0, self.pending_total - 1)

    def wrap(self, upgrade: Upgrade) -> Upgrade:
        """``upgrade`` (the swarm's inbound upgrade) under this gate's budget and deadline."""

        async def gated(raw_conn: IRawConnection, maddr: Multiaddr) -> IMuxedConn:
            ip = remote_ip(raw_conn) or "unknown"
            scope = self.try_begin(ip)
            if scope is not None:
                self.refused.inc(scope=scope)
                log.debug("inbound connection from %s refused: %s handshake budget full", ip, scope)
                await _close_quietly(raw_conn)
                raise SwarmException(f"too many handshakes pending ({scope})")
            try:
                with trio.fail_after(self.limits.deadline + _BACKSTOP_SLACK):
                    return await upgrade(raw_conn, maddr)
            except trio.TooSlowError:
                await _close_quietly(raw_conn)
                self.timeouts.inc()
                raise SwarmException(f"handshake from {ip} did not finish in time") from None
            except SwarmException as exc:
                if "timeout" in str(exc).lower():
                    self.timeouts.inc()
                raise
            finally:
                self.end(ip)

        return gated

    def turn_away(self, accept: Accept) -> Accept:
        """``accept`` (the swarm's inbound connection handler), closing at once a connection whose
        address (or the node) has no handshake slot free: before an inbound slot, a task or a
        multiaddr is spent on it, since a refused peer reconnecting in a loop is the attack."""

        async def early(read_write_closer: Any, maddr: Multiaddr) -> None:
            ip = remote_ip(read_write_closer) or "unknown"
            if self.pending_total >= self.limits.pending_total or (
                self._pending.get(ip, 0) >= self.limits.pending_per_ip
            ):
                full = "system" if self.pending_total >= self.limits.pending_total else "ip"
                self.refused.inc(scope=full)
                await _close_quietly(read_write_closer)
                return
            await accept(read_write_closer, maddr)

        return early

    def install(self, swarm: Any) -> None:
        """Gate ``swarm``'s inbound upgrades and give them ``deadline`` (once per swarm)."""
        if getattr(swarm, "_veilnet_handshake_gate", None) is not None:
            return
        swarm.connection_config.inbound_upgrade_timeout = self.limits.deadline
        swarm.upgrade_inbound_raw_conn = self.wrap(swarm.upgrade_inbound_raw_conn)
        swarm._handle_inbound_connection = self.turn_away(swarm._handle_inbound_connection)
        swarm._veilnet_handshake_gate = self


def install_handshake_gate(
    host: IHost, limits: HandshakeLimits | None = None, metrics: Metrics | None = None
) -> HandshakeGate:
    """Install a :class:`HandshakeGate` on ``host``'s swarm (metrics: the guard's, when there is one)."""
    from node.net.guard import guard_of

    network: Any = host.get_network()
    existing = getattr(network, "_veilnet_handshake_gate", None)
    if isinstance(existing, HandshakeGate):
        return existing
    guard = guard_of(host)
    gate = HandshakeGate(limits, metrics or (guard.metrics if guard is not None else None))
    gate.install(network)
    return gate


async def _close_quietly(conn: Any) -> None:
    with trio.move_on_after(_CLOSE_GRACE) as scope:
        scope.shield = True
        try:
            await conn.close()
        except Exception as exc:
            log.debug("closing a refused connection: %s", exc)
