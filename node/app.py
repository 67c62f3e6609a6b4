"""The running Veilnet node: one object, one trio nursery tree, every subsystem inside it.

Hook points for the subsystems built on top of the node (the job executor and router, the
OpenAI-compatible API). Everything below is available right after ``Node(config, testnet)``
returns, before ``run()``; all of it must be used from the trio thread.

``node.identity``
    :class:`protocol.identity.Identity` — the Ed25519 key that is also the libp2p peer id.
    ``node.identity.peer_id`` (bytes), ``.peer_id_text``, ``.sign(Domain, msg)``.
``node.config`` / ``node.testnet``
    :class:`node.config.NodeConfig` / :class:`node.config.TestnetConfig`. Settings for later
    subsystems go in the node config's ``[extra]`` table (``node.config.extra``).
``node.host``
    the py-libp2p ``IHost`` (TCP + Noise + yamux + PSK). Open streams with
    ``await node.host.new_stream(ID(peer_id_bytes), [protocol_id])``; dial with
    ``await node.dial(peer_id_bytes)`` (bounded, uses registry/peerstore addresses).
``node.registry``
    :class:`node.net.registry.Registry` of attested peers: ``attested(model_id: str | None) ->
    list[RegistryEntry]``, ``get(peer_id: bytes | str) -> RegistryEntry | None``,
    ``by_enc_pubkey(pub)``, ``add_listener(fn(change, entry))``, ``await wait_changed()``.
    Entry fields: peer_id (bytes), peer_id_text, addrs, kind, label, measurement, models, epoch,
    issued_at, expires_at, enc_pubkey, verified_at, tcb_status, advisories, gpu_kinds,
    bundle_digest, bundle (raw verified bytes), simulated.
``node.discovery``
    :class:`node.net.discovery.Discovery`: ``await find_model_providers(model_id) -> set[bytes]``
    (hints; intersect with the registry, or use ``await node.attested_providers(model_id)``),
    ``provide_model(model_id)``, ``connected()``, ``dht``.
``node.epoch_keys``
    :class:`node.attest.service.EpochKeys`: ``current`` and ``previous`` :class:`EpochKey`
    (epoch, private_key, public_key — X25519, 32 bytes each; ``key_pair()`` gives the
    :class:`protocol.sealing.EncryptionKeyPair`), ``for_public_key(pub)``, ``for_epoch(epoch)``.
    Keys rotate every ``testnet.epoch_seconds``; a restart makes new ones.
``node.add_stream_handler(protocol_id, handler, timeout=None)``
    registers ``async handler(stream)`` wrapped by :func:`node.net.host.wrap_handler` (anything it
    raises resets that stream only, and is counted in ``veilnet_stream_errors_total``).
``node.add_service(fn, name)``
    runs ``async fn()`` in the node's nursery once the host, gossip and discovery are up
    (queued if called before ``run``; started at once if the node is running). When it returns
    or raises, the node logs it; a raising service stops the node (fail loudly).
``node.serve_models(model_ids)``
    an executor declares the models it serves: the next bundle lists them (re-announced at
    once if running) and the DHT provides it (key: sha256 multihash of ``/veilnet/model/<id>``).
    Declaring models needs attestation (real TEE evidence, or simulated evidence the testnet
    allows). ``node.jobs.service`` (node/jobs/service.py) installs the executor and router on these hooks.
``node.add_routes(routes)``
    extra Starlette routes for the HTTP API (call before ``run``). The API also includes
    ``node.api.openai_routes.routes(node)`` automatically when that module exists.
``node.metrics``
    :class:`node.metrics.Metrics`: ``counter(name, help, label_names)``, ``gauge(name, help, fn)``.
``node.started`` (trio.Event), ``node.api_url``, ``node.stop()``, ``node.info()`` (the
    ``/veilnet/v1/node`` view).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from starlette.routing import BaseRoute

from node.attest import builders as attest_kit
from node.attest.service import ATTEST_PROTOCOL_ID, AttestService, BundleBuilder, EpochKeys, epoch_of
from node.config import NodeConfig, TestnetConfig
from node.metrics import Metrics
from node.net.discovery import Discovery
from node.net.gossip import Appraise, AttestationGossip
from node.net.host import StreamHandler, build_host, dial, load_or_create_identity, wrap_handler
from node.net.registry import Registry, RegistryEntry

if TYPE_CHECKING:
    # trio-stubs (pulled in by libp2p) shadow trio's own annotations and lack trio.TaskStatus.
    from trio_typing import TaskStatus

__all__ = ["Node", "is_shutdown_race"]

log = logging.getLogger("veilnet.node")

_SHUTDOWN_GRACE = 2.0  # seconds to close connections before leaving host.run()

Service = Callable[[], Awaitable[None]]


class Node:
    """One Veilnet peer. Construct, register hooks, then ``await node.run()`` (or ``nursery.start``)."""

    def __init__(
        self,
        config: NodeConfig,
        testnet: TestnetConfig,
        *,
        builder: BundleBuilder | Literal["from-config"] | None = "from-config",
        appraise: Appraise | None = None,
    ) -> None:
        """``builder``/``appraise`` default to the ones the configs describe (node.attest.builders);
        passing them is for embedding the node with another attestation backend."""
        self.config = config
        self.testnet = testnet
        self.identity = load_or_create_identity(config.identity_path)
        self.metrics = Metrics()
        self.registry = Registry()
        self.host = build_host(
            self.identity, testnet.psk, config.listen, config.announce, target_peers=config.target_peers
        )
        resolved: BundleBuilder | None = (
            attest_kit.make_builder(config, testnet) if isinstance(builder, str) else builder
        )
        self.builder = resolved  # None: this node does not attest (a client-only node)
        if appraise is None:
            appraise = attest_kit.make_appraise(testnet)
        self.gossip = AttestationGossip(
            self.host, appraise, self.registry, self.metrics, addrs_of=self._addrs_of
        )
        self.discovery = Discovery(
            self.host,
            self.metrics,
            bootstrap=tuple(dict.fromkeys([*config.bootstrap, *testnet.bootstrap])),
            target_peers=config.target_peers,
            mdns=config.mdns,
            network_fingerprint=testnet.psk,
        )
        self.attest = AttestService(
            host=self.host,
            identity=self.identity,
            builder=self.builder,
            gossip=self.gossip,
            metrics=self.metrics,
            epoch_seconds=testnet.epoch_seconds,
            reannounce_seconds=config.reannounce_seconds,
            bundle_lifetime_seconds=config.bundle_lifetime_seconds,
        )
        self.discovery.add_connect_listener(self.attest.on_connected)
        self.extra_routes: list[BaseRoute] = []
        self.started = trio.Event()
        self.api_url: str | None = None
        self._services: list[tuple[str, Service]] = []
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._stream_errors = self.metrics.counter(
            "veilnet_stream_errors_total", "Inbound streams reset because their handler failed", ("protocol",)
        )
        self.metrics.gauge(
            "veilnet_registry_size", "Attested peers in the registry", lambda: len(self.registry)
        )
        self.add_stream_handler(ATTEST_PROTOCOL_ID, self.attest.handle_pull, timeout=10.0)
        # Jobs: loads config.models (names or directories) once running and serves their content
        # ids; every node also gets a router for its own user's requests (node.jobs.service.router).
        from node.jobs import service as jobs

        self.jobs = jobs.install(self)

    # ------------------------------------------------------------------------------- hooks

    @property
    def epoch_keys(self) -> EpochKeys:
        return self.attest.epoch_keys

    @property
    def attesting(self) -> bool:
        return self.builder is not None

    def add_stream_handler(
        self, protocol_id: str, handler: StreamHandler, *, timeout: float | None = None
    ) -> None:
        wrapped = wrap_handler(protocol_id, handler, timeout=timeout, on_error=self._count_stream_error)
        self.host.set_stream_handler(protocol_id, wrapped)  # type: ignore[arg-type]

    def add_service(self, fn: Service, name: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._run_service, name, fn)
        else:
            self._services.append((name, fn))

    def add_routes(self, routes: Sequence[BaseRoute]) -> None:
        if self.started.is_set():
            raise RuntimeError("routes must be added before the node starts")
        self.extra_routes.extend(routes)

    def serve_models(self, model_ids: Sequence[str]) -> None:
        if self.builder is None:
            raise RuntimeError(
                "this node does not attest, so it cannot serve models (see evidence in the config)"
            )
        models = sorted(set(self.attest.models) | set(model_ids))
        self.attest.set_models(models)
        for model_id in models:
            self.discovery.provide_model(model_id)

    async def attested_providers(self, model_id: str) -> list[RegistryEntry]:
        """Attested peers serving ``model_id``: registry entries, widened by DHT provider hints."""
        listed = {entry.peer_id: entry for entry in self.registry.attested(model_id)}
        for peer_id in await self.discovery.find_model_providers(model_id):
            entry = self.registry.get(peer_id)
            if entry is not None and model_id in entry.models:
                listed[peer_id] = entry
        return [listed[key] for key in sorted(listed)]

    async def dial(self, peer_id: bytes, timeout: float = 5.0) -> bool:
        peer = ID(peer_id)
        if peer in self.host.get_connected_peers():
            return True
        addrs = (
            list(self.host.get_peerstore().addrs(peer))
            if peer in self.host.get_peerstore().peer_ids()
            else []
        )
        if not addrs:
            import multiaddr

            entry = self.registry.get(peer_id)
            addrs = [multiaddr.Multiaddr(addr) for addr in (entry.addrs if entry else ())]
        if not addrs:
            return False
        return await dial(self.host, PeerInfo(peer, addrs), timeout=timeout)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------------------- views

    def listen_addrs(self) -> list[str]:
        return [str(addr) for addr in self.host.get_addrs()]

    def info(self) -> dict[str, Any]:
        builder = self.builder
        now = time.time()
        current = self.attest.epoch_keys.current
        return {
            "peer_id": self.identity.peer_id_text,
            "addrs": self.listen_addrs(),
            "testnet_id": self.testnet.testnet_id,
            "attesting": builder is not None,
            "kind": builder.kind if builder else None,
            "label": builder.label if builder else None,
            "measurement": builder.measurement if builder else None,
            "epoch": epoch_of(now, self.testnet.epoch_seconds),
            "enc_pubkey": current.public_key.hex() if current else None,
            "models": list(self.attest.models),
            "bundle_issued_at": self.attest.bundle_issued_at,
            "announced_at": self.attest.announced_at,
            "bundle_digest": _digest(self.attest.bundle),
            "self_check_ok": self.attest.self_check_ok,
            "connected_peers": len(self.discovery.connected()),
            "registry_size": len(self.registry),
            "api_url": self.api_url,
            "pid": os.getpid(),
        }

    # ----------------------------------------------------------------------------- running

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop()`` or cancellation; connections are closed before the host stops."""
        import multiaddr

        listen = [multiaddr.Multiaddr(addr) for addr in self.config.listen]
        if self.builder is not None and self.builder.kind == "simulated":
            log.warning(
                "ATTESTING WITH SIMULATED EVIDENCE — NOT SECURE: no TEE protects this node's keys or jobs "
                "(allowed by testnet %s)",
                self.testnet.testnet_id,
            )
        stopping_at: float | None = None
        async with self.host.run(listen_addrs=listen):
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self.gossip.run)
                    await nursery.start(self.discovery.run)
                    nursery.start_soon(self.registry.run_expiry)
                    nursery.start_soon(self.attest.run_puller)
                    nursery.start_soon(self.attest.run_announcer)
                    if self.config.api is not None:
                        from node.api.server import serve_api

                        self.api_url = await nursery.start(serve_api, self, self.config.api)
                    for name, fn in self._services:
                        nursery.start_soon(self._run_service, name, fn)
                    self._services.clear()
                    self._write_info()
                    log.info("node %s up: %s", self.identity.peer_id_text, " ".join(self.listen_addrs()))
                    self.started.set()
                    task_status.started()
                    await self._stop.wait()
                    log.info("stopping")
                    stopping_at = trio.current_time()
                    nursery.cancel_scope.cancel()
            finally:
                self._nursery = None
                self._remove_info()
                services_done = trio.current_time()
                await self._close_connections()
                connections_done = trio.current_time()
        if stopping_at is not None:
            log.info(
                "shutdown took %.2f s (services %.2f s, connections %.2f s, host %.2f s)",
                trio.current_time() - stopping_at,
                services_done - stopping_at,
                connections_done - services_done,
                trio.current_time() - connections_done,
            )

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

    async def _run_service(self, name: str, fn: Service) -> None:
        try:
            await fn()
        except Exception:
            log.exception("service %s failed; stopping the node", name)
            self.stop()
            raise
        log.info("service %s finished", name)

    def _count_stream_error(self, protocol_id: str, peer: str, exc: BaseException) -> None:
        self._stream_errors.inc(protocol=protocol_id)

    def _addrs_of(self, peer_id: bytes) -> tuple[str, ...]:
        peer = ID(peer_id)
        if peer == self.host.get_id():
            return tuple(self.listen_addrs())
        try:
            return tuple(sorted({str(addr) for addr in self.host.get_peerstore().addrs(peer)}))
        except Exception:
            return ()

    def _write_info(self) -> None:
        path = self.config.info_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info(), indent=2), encoding="utf-8")
        os.replace(tmp, path)

    def _remove_info(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.config.info_path.unlink()


def is_shutdown_race(exc: BaseException) -> bool:
    """True for py-libp2p's harmless "Nursery is closed to new arrivals" raised while stopping."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_shutdown_race(inner) for inner in exc.exceptions)
    return isinstance(exc, RuntimeError) and "closed to new arrivals" in str(exc)


def _digest(bundle: bytes | None) -> str | None:
    import hashlib

    return hashlib.sha256(bundle).hexdigest() if bundle else None
