"""OpenAI-compatible endpoints on the node's local API, answered by cross-checked TEE executors.

``GET /v1/models``, ``POST /v1/embeddings``, ``POST /v1/chat/completions`` (``stream: true`` as
server-sent events) follow OpenAI's request and response shapes closely enough for the official
``openai`` client; errors use OpenAI's ``{"error": {message, type, param, code}}`` format. Every
answer carries a ``veilnet`` object — the verification report: job id, mode, executors (peer id,
TEE kind and label, role, agreement), agreement figures and timings. ``GET /veilnet/v1/jobs/{id}``
returns the report of a recent job, ``GET /veilnet/v1/jobs/{id}/receipt`` its signed receipt
(``node/api/receipt_route.py``).

Veilnet options ride in the request body (``extra_body`` in the openai client)::

    {"veilnet": {"replicas": 3, "mode": "consensus" | "spot-check", "challenge": false, "deadline_s": 30}}

Chat completions are greedy (temperature is ignored; the report says ``sampling: greedy``):
greedy decoding is what verifiers can check token by token.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from node.api.receipt_route import receipt_route
from node.jobs.errors import RouterError, RouterErrorCode
from node.jobs.router import JobResult
from protocol.jobs.messages import Mode

if TYPE_CHECKING:
    from node.jobs.router import Router
    from node.jobs.service import JobService
    from node.net.registry import Registry

__all__ = ["routes"]

log = logging.getLogger("veilnet.api")

_MAX_BODY = 8 << 20
_SSE_CHARS = 16  # characters per streamed content delta


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _error(status: int, message: str, *, kind: str, code: str | None, param: str | None = None,
           veilnet: Mapping[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    if veilnet is not None:
        body["veilnet"] = veilnet
    return JSONResponse(body, status_code=status)


def _bad_request(exc: _BadRequest) -> JSONResponse:
    return _error(400, exc.message, kind="invalid_request_error", code="invalid_request", param=exc.param)


def _router_error(exc: RouterError) -> JSONResponse:
    status = exc.http_status
    kind = "invalid_request_error" if status < 500 else "server_error"
    if exc.code is RouterErrorCode.UNKNOWN_MODEL:
        kind = "invalid_request_error"
    return _error(status, exc.message, kind=kind, code=exc.code.value, veilnet=exc.report)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise _BadRequest(f"request body exceeds {_MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Veilnet options from ``body["veilnet"]`` (validated)."""
    raw = body.get("veilnet") or {}
    if not isinstance(raw, dict):
        raise _BadRequest("veilnet must be an object", "veilnet")
    unknown = set(raw) - {"replicas", "mode", "challenge", "deadline_s"}
    if unknown:
        raise _BadRequest(f"unknown veilnet options {sorted(unknown)}", "veilnet")
    options: dict[str, Any] = {}
    if "replicas" in raw:
        replicas = raw["replicas"]
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 15:
            raise _BadRequest("veilnet.replicas must be an integer in 1..15", "veilnet.replicas")
        options["replicas"] = replicas
    if "mode" in raw:
        try:
            options["mode"] = Mode(str(raw["mode"]))
        except ValueError:
            raise _BadRequest("veilnet.mode must be consensus or spot-check", "veilnet.mode") from None
    if "challenge" in raw:
        if not isinstance(raw["challenge"], bool):
            raise _BadRequest("veilnet.challenge must be a boolean", "veilnet.challenge")
        options["challenge"] = raw["challenge"]
    if "deadline_s" in raw:
        deadline = raw["deadline_s"]
        if not isinstance(deadline, (int, float)) or isinstance(deadline, bool) or not 0 < deadline <= 600:
            raise _BadRequest("veilnet.deadline_s must be a number in (0, 600]", "veilnet.deadline_s")
        options["deadline_s"] = float(deadline)
    return options


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("model is required", "model")
    return model


def routes(jobs: JobService, registry: Registry) -> list[BaseRoute]:
    """The OpenAI-compatible routes, answered by ``jobs`` (installed by the composition root)."""

    def router() -> Router:
        return jobs.router

    async def list_models(request: Request) -> Response:
        r = router()
        names = {model_id: name for name, model_id in r.network.known_models().items()}
        data = []
        tasks = jobs.model_tasks()
        for model_id in sorted(r.network.attested_models()):
            providers = len(registry.attested(model_id))
            data.append({
                "id": names.get(model_id, model_id), "object": "model", "created": 0, "owned_by": "veilnet",
                "veilnet": {
                    "model_id": model_id, "attested_providers": providers, "task": tasks.get(model_id)
                },
            })
        return JSONResponse({"object": "list", "data": data})

    async def embeddings(request: Request) -> Response:
        try:
            body = await _json_body(request)
            model = _model(body)
            texts = body.get("input")
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise _BadRequest("input must be a string or a non-empty array of strings", "input")
            encoding = body.get("encoding_format", "float")
            if encoding not in ("float", "base64"):
                raise _BadRequest("encoding_format must be float or base64", "encoding_format")
            options = _options(body)
            result = await router().embeddings(model, texts, **options)
        except _BadRequest as exc:
            return _bad_request(exc)
        except RouterError as exc:
            return _router_error(exc)
        vectors = result.vectors
        assert vectors is not None
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != vectors.shape[1]:
            return _error(400, f"this model has {vectors.shape[1]} dimensions", kind="invalid_request_error",
                          code="invalid_request", param="dimensions")
        data = []
        for index, row in enumerate(vectors):
            embedding: Any = (
                base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
                if encoding == "base64" else [float(x) for x in row]
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return JSONResponse({
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
            "veilnet": result.report,
        })

    async def chat_completions(request: Request) -> Response:
        try:
            body = await _json_body(request)
            model = _model(body)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest("messages must be a non-empty array", "messages")
            clean = []
            for message in messages:
                if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                    raise _BadRequest("each message needs a role and string content", "messages")
                clean.append({"role": str(message.get("role")), "content": message["content"]})
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
            if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                           or not 1 <= max_tokens <= 4096):
                raise _BadRequest("max_tokens must be an integer in 1..4096", "max_tokens")
            if body.get("n", 1) != 1:
                raise _BadRequest("only n = 1 is supported", "n")
            stream = bool(body.get("stream", False))
            options = _options(body)
        except _BadRequest as exc:
            return _bad_request(exc)
        created = int(time.time())
        if not stream:
            try:
                result = await router().chat(model, clean, max_tokens=max_tokens, **options)
            except RouterError as exc:
                return _router_error(exc)
            return JSONResponse(_completion(result, model, created))
        return StreamingResponse(
            _sse(router(), model, clean, max_tokens, options, created), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    async def job_report(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        report = router().report(job_id)
        if report is None:
            return _error(404, f"no recent job {job_id}", kind="invalid_request_error", code="unknown_job")
        return JSONResponse(report)

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/veilnet/v1/jobs/{job_id}", job_report, methods=["GET"]),
        receipt_route(router),
    ]


def _completion(result: JobResult, model: str, created: int) -> dict[str, Any]:
    generation = result.generation
    assert generation is not None
    report = dict(result.report)
    report["sampling"] = "greedy"
    return {
        "id": "chatcmpl-" + result.job_id.hex(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": generation.text},
            "finish_reason": generation.finish_reason,
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": len(generation.tokens),
            "total_tokens": generation.prompt_tokens + len(generation.tokens),
        },
        "veilnet": report,
    }


def _chunk(completion_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None,
           **extra: Any) -> str:
    body = {
        "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra,
    }
    return f"data: {json.dumps(body)}\n\n"


async def _sse(router: Router, model: str, messages: list[dict[str, str]], max_tokens: int | None,
               options: dict[str, Any], created: int) -> AsyncIterator[str]:
    """Server-sent events of a verified completion: the text is released once verification passed."""
    try:
        result = await router.chat(model, messages, max_tokens=max_tokens, **options)
    except RouterError as exc:
        error = {"message": exc.message, "type": "server_error" if exc.http_status >= 500 else
                 "invalid_request_error", "param": None, "code": exc.code.value}
        yield f"data: {json.dumps({'error': error, 'veilnet': exc.report})}\n\n"
        yield "data: [DONE]\n\n"
        return
    generation = result.generation
    assert generation is not None
    completion_id = "chatcmpl-" + result.job_id.hex()
    yield _chunk(completion_id, model, created, {"role": "assistant", "content": ""}, None)
    text = generation.text
    for start in range(0, len(text), _SSE_CHARS):
        yield _chunk(completion_id, model, created, {"content": text[start:start + _SSE_CHARS]}, None)
    report = dict(result.report)
    report["sampling"] = "greedy"
    usage = {
        "prompt_tokens": generation.prompt_tokens, "completion_tokens": len(generation.tokens),
        "total_tokens": generation.prompt_tokens + len(generation.tokens),
    }
    yield _chunk(completion_id, model, created, {}, generation.finish_reason, usage=usage, veilnet=report)
    yield "data: [DONE]\n\n"
