"""The host's guard: resource limits, peer scores, the inbound-stream boundary and connection
admission, built together and installed on one host (see each module for its rules).

:func:`install` is called by :func:`node.net.host.build_host`; :func:`guard_of` finds the guard
of a host for the parts built later (discovery's DHT limits, gossip's scoring, liveness).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from libp2p.abc import IHost, INetConn, INetwork

from node.metrics import Metrics
from node.net.admission import ConnectionAdmission
from node.net.boundary import StreamBoundary
from node.net.events import QuietNotifee
from node.net.limits import LimitSettings, ResourceManager
from node.net.scoring import PeerScores

__all__ = ["NetGuard", "guard_of", "install"]

_guards: weakref.WeakKeyDictionary[IHost, NetGuard] = weakref.WeakKeyDictionary()


class NetGuard:
    """What protects one host from its peers. ``metrics`` holds every counter and gauge it keeps."""

    def __init__(
        self,
        host: IHost,
        settings: LimitSettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.settings = settings
        self.metrics = metrics
        self.resources = ResourceManager(settings, metrics, clock)
        self.scores = PeerScores(settings, metrics, clock)
        network = host.get_network()
        self.admission = ConnectionAdmission(network, self.resources, self.scores, metrics)  # type: ignore[arg-type]
        self.boundary = StreamBoundary(
            host, self.resources, self.scores, metrics, connection_of=self.admission.reservation_of
        )

    def install(self) -> None:
        self.admission.install()
        self.boundary.install()
        self.host.get_network().register_notifee(_Disconnects(self.admission.on_disconnected))


def install(host: IHost, settings: LimitSettings | None = None, metrics: Metrics | None = None) -> NetGuard:
    guard = NetGuard(host, settings or LimitSettings(), metrics or Metrics())
    guard.install()
    _guards[host] = guard
    return guard


def guard_of(host: IHost) -> NetGuard | None:
    return _guards.get(host)


class _Disconnects(QuietNotifee):
    def __init__(self, on_disconnected: Callable[[INetConn], None]) -> None:
        self._on_disconnected = on_disconnected

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._on_disconnected(conn)
