"""The node's local HTTP API: Starlette served by hypercorn on trio, inside the node's nursery.

It listens on 127.0.0.1 unless configured otherwise: it is the operator's (and the local user's)
window onto their own node, not a network service. Routes:

* ``GET /healthz`` — 200 once the node is up.
* ``GET /veilnet/v1/node`` — this node: id, addresses, TEE kind/label, measurement, epoch, models.
* ``GET /veilnet/v1/peers`` — the attested registry (``?model=<id>`` filters by model).
* ``GET /metrics`` — Prometheus text.

Every other path answers 404, and a wrong method 405, as JSON in OpenAI's error shape.

The composition root adds the OpenAI-compatible routes (``node/api/openai_routes.py``) through
:class:`Api`; the server knows nothing of jobs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from node.config import parse_api_address

if TYPE_CHECKING:
    from node.app import Node
    from node.net.registry import Registry

if TYPE_CHECKING:
    # trio-stubs (pulled in by libp2p) shadow trio's own annotations and lack trio.TaskStatus.
    from trio_typing import TaskStatus

__all__ = ["Api", "build_app", "serve_api"]

log = logging.getLogger("veilnet.api")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_app(node: Node, registry: Registry, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "peer_id": node.identity.peer_id_text})

    async def node_info(request: Request) -> Response:
        return JSONResponse(node.info())

    async def peers(request: Request) -> Response:
        model = request.query_params.get("model")
        entries = registry.attested(model)
        return JSONResponse({"count": len(entries), "peers": [entry.to_json() for entry in entries]})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(node.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    async def modules(request: Request) -> Response:
        """Which heavy modules this process has imported (lets tests check that torch stays out)."""
        heavy = ("torch", "transformers", "sentence_transformers", "safetensors")
        return JSONResponse({name: name in sys.modules for name in heavy})

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/veilnet/v1/node", node_info),
        Route("/veilnet/v1/peers", peers),
        Route("/veilnet/v1/debug/modules", modules),
        Route("/metrics", metrics),
    ]
    routes.extend(extra_routes)

    async def http_error(request: Request, exc: Exception) -> Response:
        """Unknown routes (404) and wrong methods (405) answer in OpenAI's JSON error shape too."""
        assert isinstance(exc, HTTPException)
        path = request.url.path
        why = {404: f"no route {path}", 405: f"{request.method} is not allowed on {path}"}
        body = {"error": {
            "message": why.get(exc.status_code, str(exc.detail)), "type": "invalid_request_error",
            "param": None, "code": {404: "unknown_route", 405: "method_not_allowed"}.get(exc.status_code),
        }}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class Api:
    """The api subsystem on a Node: serves the HTTP API (when ``config.api`` is set) as a startable
    service, so a port that cannot be bound fails the node's start instead of leaving it mute."""

    def __init__(self, node: Node, registry: Registry, extra_routes: Sequence[BaseRoute] = ()) -> None:
        self.url: str | None = None
        self._address = node.config.api
        self._app = build_app(node, registry, extra_routes)
        if self._address is not None:
            node.add_service(self._serve, "http api", startable=True)
        node.add_info(lambda: {"api_url": self.url})

    async def _serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._address is not None
        async with trio.open_nursery() as nursery:
            self.url = await nursery.start(serve_api, self._app, self._address)
            task_status.started()


async def serve_api(
    app: Starlette, address: str, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; reports the bound ``http://host:port`` URL (port 0 picks a free one)."""
    host, port = parse_api_address(address)
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    config.shutdown_timeout = 1.0
    config.keep_alive_timeout = 5.0

    async def run(task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, task_status=task_status, mode="asgi")  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds: Any = await nursery.start(run)
        url = str(binds[0]) if binds else f"http://{host}:{port}"
        log.info("HTTP API on %s", url)
        task_status.started(url)
