"""The net subsystem on a Node: the libp2p host, discovery, attestation gossip and the registry.

``Network(node, appraise)`` builds them from the node's configs and installs them on the kernel:
the host's listeners as a context (connections are closed before the host stops), gossip and
discovery as startable services, registry expiry as a service, and the node-info fields. The
appraiser is injected: net delivers bundles, ``node.attest`` decides whether they are genuine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import multiaddr
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from node.app import Node
from node.net.discovery import Discovery
from node.net.gossip import Appraise, AttestationGossip
from node.net.host import StreamHandler, build_host, dial, wrap_handler
from node.net.liveness import Liveness
from node.net.registry import Registry, RegistryEntry

__all__ = ["Network"]

log = logging.getLogger("veilnet.net")

_SHUTDOWN_GRACE = 2.0  # seconds to close connections before leaving host.run()


class Network:
    """What the other subsystems use of the network: streams, dials, the attested registry."""

    def __init__(self, node: Node, appraise: Appraise) -> None:
        config, testnet = node.config, node.testnet
        self.host = build_host(
            node.identity,
            testnet.psk,
            config.listen,
            config.announce,
            target_peers=config.target_peers,
            limits=config.limits,
            metrics=node.metrics,
        )
        self.registry = Registry()
        self.gossip = AttestationGossip(
            self.host, appraise, self.registry, node.metrics, addrs_of=self.addrs_of
        )
        self.discovery = Discovery(
            self.host,
            node.metrics,
            bootstrap=tuple(dict.fromkeys([*config.bootstrap, *testnet.bootstrap])),
            target_peers=config.target_peers,
            mdns=config.mdns,
            network_fingerprint=testnet.psk,
        )
        # Registry peers that stop answering leave it at once (network.md §9.4).
        self.liveness = Liveness(self.host, self.registry, config.limits, node.metrics)
        self._listen = [multiaddr.Multiaddr(addr) for addr in config.listen]
        self._stream_errors = node.metrics.counter(
            "veilnet_stream_errors_total", "Inbound streams reset because their handler failed", ("protocol",)
        )
        node.metrics.gauge(
            "veilnet_registry_size", "Attested peers in the registry", lambda: len(self.registry)
        )
        node.add_context("libp2p host", self._running)
        node.add_service(self.gossip.run, "gossip", startable=True)
        node.add_service(self.discovery.run, "discovery", startable=True)
        node.add_service(self.registry.run_expiry, "registry expiry")
        node.add_service(self.liveness.run, "liveness")
        node.add_info(self._info)

    # ------------------------------------------------------------------------------- streams

    def add_stream_handler(
        self, protocol_id: str, handler: StreamHandler, *, timeout: float | None = None
    ) -> None:
        """Serve ``protocol_id``; anything ``handler`` raises resets that stream only (and is counted)."""
        wrapped = wrap_handler(protocol_id, handler, timeout=timeout, on_error=self._count_stream_error)
        self.host.set_stream_handler(TProtocol(protocol_id), wrapped)

    async def dial(self, peer_id: bytes, timeout: float = 5.0) -> bool:
        """Connect to ``peer_id`` (bounded) with peerstore or registry addresses; False if none work."""
        peer = ID(peer_id)
        if peer in self.host.get_connected_peers():
            return True
        addrs = (
            list(self.host.get_peerstore().addrs(peer))
            if peer in self.host.get_peerstore().peer_ids()
            else []
        )
        if not addrs:
            entry = self.registry.get(peer_id)
            addrs = [multiaddr.Multiaddr(addr) for addr in (entry.addrs if entry else ())]
        if not addrs:
            return False
        return await dial(self.host, PeerInfo(peer, addrs), timeout=timeout)

    async def attested_providers(self, model_id: str) -> list[RegistryEntry]:
        """Attested peers serving ``model_id``: registry entries, widened by DHT provider hints."""
        listed = {entry.peer_id: entry for entry in self.registry.attested(model_id)}
        for peer_id in await self.discovery.find_model_providers(model_id):
            entry = self.registry.get(peer_id)
            if entry is not None and model_id in entry.models:
                listed[peer_id] = entry
        return [listed[key] for key in sorted(listed)]

    # --------------------------------------------------------------------------------- views

    def listen_addrs(self) -> list[str]:
        return [str(addr) for addr in self.host.get_addrs()]

    def addrs_of(self, peer_id: bytes) -> tuple[str, ...]:
        peer = ID(peer_id)
        if peer == self.host.get_id():
            return tuple(self.listen_addrs())
        try:
            return tuple(sorted({str(addr) for addr in self.host.get_peerstore().addrs(peer)}))
        except Exception:
            return ()

    def _info(self) -> dict[str, Any]:
        return {
            "addrs": self.listen_addrs(),
            "connected_peers": len(self.discovery.connected()),
            "registry_size": len(self.registry),
        }

    # ------------------------------------------------------------------------------- running

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        async with self.host.run(listen_addrs=self._listen):
            log.info("listening on %s", " ".join(self.listen_addrs()))
            try:
                yield
            finally:
                await self._close_connections()

    async def _close_connections(self) -> None:
        """Close every connection while the swarm still runs (avoids the B8 shutdown race)."""
        network = self.host.get_network()

        async def close(peer: ID) -> None:
            try:
                await network.close_peer(peer)
            except Exception as exc:
                log.debug("closing %s: %s", peer, exc)

        with trio.CancelScope(deadline=trio.current_time() + _SHUTDOWN_GRACE, shield=True):
            async with trio.open_nursery() as nursery:  # concurrently: each close waits on its peer
                for peer in list(self.host.get_connected_peers()):
                    nursery.start_soon(close, peer)

    def _count_stream_error(self, protocol_id: str, peer: str, exc: BaseException) -> None:
        self._stream_errors.inc(protocol=protocol_id)
