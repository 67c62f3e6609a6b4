"""The Node kernel: one trio nursery tree, a supervised service list, and hooks. No subsystem.

What must live here, and what must not: the kernel owns what every subsystem shares — the
configs, the Ed25519 identity (also the libp2p peer id), the metrics registry, the lifecycle
(start, readiness, stop) and the node-info file — and knows nothing of libp2p, attestation, jobs
or HTTP. Subsystems (``node.net``, ``node.attest``, ``node.jobs``, ``node.api``) install
themselves on a Node through the hooks below; the composition root (``node.peer``) decides which
and in what order. This is rust-libp2p's swarm/behaviour split: the loop knows behaviours only
through a narrow contract.

Hooks (call before ``run()``, from the trio thread):

``add_context(name, factory)``
    an async context manager entered before any service starts, in registration order, and left
    in reverse order after every service has stopped (the libp2p host's listeners live in one).
``add_service(fn, name, *, startable=False, restart=True)``
    a background task in the node's nursery, started in registration order. ``startable`` tasks
    are started with ``nursery.start`` (the next one waits for their ``task_status.started()``),
    so a failure to come up fails the node's start. After start, a service that raises is logged,
    counted in ``veilnet_service_restarts_total`` and restarted with exponential back-off (1 s up
    to 30 s): one bad input must not stop a node; only its operator's signal does.
``add_info(fn)``
    contributes fields to :meth:`info` (the ``/veilnet/v1/node`` view and ``node-info.json``).

Theory of operation: ``run()`` enters the contexts, opens the nursery, starts each service,
writes ``node-info.json``, sets ``started`` and waits for ``stop()``; then it cancels the
nursery, leaves the contexts (closing connections) and removes the info file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from node import timeline
from node.config import NodeConfig, TestnetConfig
from node.keyfile import load_or_create_identity
from node.metrics import Metrics

if TYPE_CHECKING:
    # trio-stubs (pulled in by libp2p) shadow trio's own annotations and lack trio.TaskStatus.
    from trio_typing import TaskStatus

__all__ = ["Node", "Service", "is_shutdown_race"]

log = logging.getLogger("veilnet.node")

Service = Callable[..., Awaitable[None]]
ContextFactory = Callable[[], contextlib.AbstractAsyncContextManager[None]]
InfoSource = Callable[[], Mapping[str, Any]]

# Back-off between restarts of a failed service: long enough that a service failing on every
# input cannot spin a core, short enough that a transient fault heals within a minute.
RESTART_FIRST_DELAY = 1.0
RESTART_MAX_DELAY = 30.0


@dataclass(frozen=True)
class _ServiceSpec:
    name: str
    fn: Service
    startable: bool
    restart: bool


class Node:
    """One Veilnet peer's kernel. Construct, install subsystems, then ``await node.run()``."""

    def __init__(self, config: NodeConfig, testnet: TestnetConfig) -> None:
        self.config = config
        self.testnet = testnet
        self.identity = load_or_create_identity(config.identity_path)
        self.metrics = Metrics()
        self.started = trio.Event()
        self._contexts: list[tuple[str, ContextFactory]] = []
        self._services: list[_ServiceSpec] = []
        self._info_sources: list[InfoSource] = []
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._restarts = self.metrics.counter(
            "veilnet_service_restarts_total", "Background services restarted after they raised", ("service",)
        )

    # ------------------------------------------------------------------------------- hooks

    def add_context(self, name: str, factory: ContextFactory) -> None:
        if self.started.is_set():
            raise RuntimeError("contexts must be added before the node starts")
        self._contexts.append((name, factory))

    def add_service(self, fn: Service, name: str, *, startable: bool = False, restart: bool = True) -> None:
        spec = _ServiceSpec(name, fn, startable, restart)
        if self._nursery is not None:
            self._nursery.start_soon(self._supervise, spec)
        else:
            self._services.append(spec)

    def add_info(self, fn: InfoSource) -> None:
        self._info_sources.append(fn)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------------------- views

    def info(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "peer_id": self.identity.peer_id_text,
            "testnet_id": self.testnet.testnet_id,
        }
        for source in self._info_sources:
            fields.update(source())
        fields["pid"] = os.getpid()
        return fields

    # ----------------------------------------------------------------------------- running

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop()`` or cancellation; contexts are left after every service stopped."""
        stopping_at: float | None = None
        services_done = 0.0
        timeline.count_loop_turns()  # only with VEILNET_JOB_TIMELINE set (issue 12's job timeline)
        async with contextlib.AsyncExitStack() as stack:
            for _name, factory in self._contexts:
                await stack.enter_async_context(factory())
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for spec in self._services:
                        await nursery.start(self._supervise, spec)
                    self._services.clear()
                    self._write_info()
                    log.info("node %s up", self.identity.peer_id_text)
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
        if stopping_at is not None:
            log.info(
                "shutdown took %.2f s (services %.2f s, contexts %.2f s)",
                trio.current_time() - stopping_at,
                services_done - stopping_at,
                trio.current_time() - services_done,
            )

    async def _supervise(
        self, spec: _ServiceSpec, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run one service; after it has come up, restart it with back-off whenever it raises."""
        delay = RESTART_FIRST_DELAY
        announced = False
        while True:
            try:
                if spec.startable:
                    async with trio.open_nursery() as inner:
                        await inner.start(spec.fn)
                        if not announced:
                            announced = True
                            task_status.started()
                else:
                    if not announced:
                        announced = True
                        task_status.started()
                    await spec.fn()
            except Exception:
                if not announced or not spec.restart:
                    log.exception("service %s failed", spec.name)
                    raise
                self._restarts.inc(service=spec.name)
                log.exception("service %s failed; restarting in %.0f s", spec.name, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX_DELAY)
                continue
            log.info("service %s finished", spec.name)
            return

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
