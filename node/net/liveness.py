"""Liveness: an attested peer that stops answering leaves the registry, without waiting for its
bundle to expire.

A registry entry lives as long as its bundle (``bundle_lifetime_seconds``, 300 s by default), so a
crashed node stayed listed, and was routed jobs, for up to five minutes (issue 9). Now an entry
leaves at the first *failed liveness check*, whichever comes first of:

1. **a disconnect**: when the last connection to a registered peer closes, it is checked at once;
2. **the periodic round**: every ``liveness_interval_seconds`` each registered peer is checked.

A check is: if connected, a libp2p ping (``/ipfs/ping/1.0.0``, 32 bytes echoed) within
``liveness_timeout_seconds``, tried twice so one slow answer on a loaded machine is not a death;
if not connected, one bounded dial (registry and peerstore addresses), then the ping. A crashed
process closes its sockets, so its peers notice within a second; a frozen one within one interval
plus two timeouts. A removed peer returns as soon as it presents its bundle again (its next
announce, or the pull on reconnect).
"""

from __future__ import annotations

import contextlib
import logging
import os

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from node.metrics import Metrics
from node.net.events import PeerEvents
from node.net.host import dial
from node.net.limits import LimitSettings
from node.net.peerstore import known_addrs
from node.net.registry import Registry

__all__ = ["Liveness"]

log = logging.getLogger("veilnet.net.liveness")

_PING_SIZE = 32
_PARALLEL_CHECKS = 8


class Liveness:
    """Checks registered peers (see module docstring). ``await run()`` as a service."""

    def __init__(self, host: IHost, registry: Registry, settings: LimitSettings, metrics: Metrics) -> None:
        self._host = host
        self._registry = registry
        self._interval = settings.liveness_interval_seconds
        self._timeout = settings.liveness_timeout_seconds
        self._send, self._disconnects = trio.open_memory_channel[ID](256)
        self._checking: set[bytes] = set()
        host.get_network().register_notifee(PeerEvents(self._send, on="disconnected"))
        self.checks = metrics.counter(
            "veilnet_liveness_checks_total", "Liveness checks of registered peers, by outcome", ("outcome",)
        )
        self.removed = metrics.counter(
            "veilnet_registry_removals_total", "Registry entries dropped, by cause", ("cause",)
        )

    async def run(self) -> None:
        limiter = trio.CapacityLimiter(_PARALLEL_CHECKS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._on_disconnects, nursery, limiter)
            while True:
                await trio.sleep(self._interval)
                me = self._host.get_id().to_bytes()
                for entry in self._registry.attested():
                    if entry.peer_id != me:
                        self._start_check(nursery, limiter, entry.peer_id, "periodic")

    async def _on_disconnects(self, nursery: trio.Nursery, limiter: trio.CapacityLimiter) -> None:
        async for peer in self._disconnects:
            if self._registry.get(
                peer.to_bytes()
            ) is not None and not self._host.get_network().get_connections(peer):
                self._start_check(nursery, limiter, peer.to_bytes(), "disconnected")

    def _start_check(
        self, nursery: trio.Nursery, limiter: trio.CapacityLimiter, peer: bytes, why: str
    ) -> None:
        if peer not in self._checking:
            self._checking.add(peer)
            nursery.start_soon(self._check, limiter, peer, why)

    async def _check(self, limiter: trio.CapacityLimiter, peer: bytes, why: str) -> None:
        checked = self._registry.get(peer)
        try:
            async with limiter:
                alive = await self.is_alive(peer)
        finally:
            self._checking.discard(peer)
        self.checks.inc(outcome="alive" if alive else "dead")
        if alive or checked is None:
            return
        current = self._registry.get(peer)
        if current is not None and current.verified_at != checked.verified_at:
            # Verified afresh while this check waited out its timeouts (a healed partition: the
            # check began before the heal, the peer's bundle arrived after it): it answered.
            return
        if self._registry.remove(peer, f"no answer to a liveness check ({why})"):
            self.removed.inc(cause="liveness")

    async def is_alive(self, peer: bytes) -> bool:
        """Connected (or connectable) and answering a ping, within the timeouts."""
        peer_id = ID(peer)
        if not self._host.get_network().get_connections(peer_id):
            entry = self._registry.get(peer)
            addrs = known_addrs(self._host, peer_id)
            for text in entry.addrs if entry is not None else ():
                with contextlib.suppress(Exception):
                    addrs.append(multiaddr.Multiaddr(text))
            if not addrs or not await dial(self._host, PeerInfo(peer_id, addrs), timeout=self._timeout):
                return False
        for _attempt in range(2):
            if await self._ping(peer_id):
                return True
        return False

    async def _ping(self, peer: ID) -> bool:
        payload = os.urandom(_PING_SIZE)
        with trio.move_on_after(self._timeout):
            stream = None
            try:
                stream = await self._host.new_stream(peer, [TProtocol(PING_PROTOCOL_ID)])
                await stream.write(payload)
                echoed = b""
                while len(echoed) < _PING_SIZE:
                    echoed += await stream.read(_PING_SIZE - len(echoed))
                return echoed == payload
            except Exception as exc:
                log.debug("ping %s failed: %s", peer, exc)
                return False
            finally:
                if stream is not None:
                    with trio.move_on_after(1), contextlib.suppress(Exception):
                        await stream.close()
        return False


