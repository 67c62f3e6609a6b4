"""Connection events from py-libp2p's swarm, forwarded to a trio channel without blocking the swarm.

The swarm awaits every notifee inline, so a notifee must never wait: when the channel is full or
closed the event is dropped, and its consumer reconciles from the live connection list instead.
"""

from __future__ import annotations

import contextlib

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID

__all__ = ["PeerEvents", "QuietNotifee"]


class QuietNotifee(INotifee):
    """Ignores every swarm event; a notifee subclasses it and overrides only the events it wants."""

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class PeerEvents(QuietNotifee):
    """Sends the peer id of each connection that opens (``on="connected"``) or closes
    (``on="disconnected"``) to ``send``."""

    def __init__(self, send: trio.MemorySendChannel[ID], *, on: str) -> None:
        if on not in ("connected", "disconnected"):
            raise ValueError(f"on must be 'connected' or 'disconnected', not {on!r}")
        self._send = send
        self._on = on

    def _forward(self, conn: INetConn) -> None:
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(conn.muxed_conn.peer_id)

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        if self._on == "connected":
            self._forward(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        if self._on == "disconnected":
            self._forward(conn)
