"""OpenAI-compatible endpoints on the node's local API, answered by cross-checked TEE executors.

``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/embeddings``, ``POST /v1/chat/completions``
(``stream: true`` as server-sent events: live by default, see ``chat_sse.py``) follow OpenAI's
request contract (``openai_contract.py``: what is accepted, what is refused, and each refusal's
status). Every
answer carries a ``veilnet`` object — the verification report: job id, mode, executors (peer id,
TEE kind and label, role, agreement), agreement figures and timings. ``GET /veilnet/v1/jobs/{id}``
returns the report of a recent job, ``GET /veilnet/v1/jobs/{id}/receipt`` its signed receipt
(``node/api/receipt_route.py``).

Veilnet options ride in the request body (``extra_body`` in the openai client)::

    {"veilnet": {"replicas": 3, "mode": "consensus" | "spot-check", "challenge": false, "deadline_s": 30,
                 "stream": "live" | "verified" | "after", "retry": false}}

``stream: true`` is live by default: tokens are forwarded as the primary generates them and each
chunk's ``veilnet`` object says how far verification got; ``verified`` releases each piece once
the verifiers accepted it; ``after`` sends the whole verified completion at the end (refusals
then stay HTTP errors; in the live modes they arrive as an error event in the stream). ``retry``
(live modes): a stream the verifiers reject restarts once with a fresh primary (a ``restart``
chunk tells the client to discard the text so far) instead of ending with ``stream_rejected``.

Chat completions are greedy (temperature is ignored; the report says ``sampling: greedy``):
greedy decoding is what verifiers can check token by token. Before a job is dispatched the node
decides what it can: the model exists and has the route's task, and ``veilnet.replicas`` does not
outnumber the attested executors that serve it.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from node import timeline
from node.api.chat_sse import ChatEventStream
from node.api.json_text import FastJSONResponse, dumps
from node.api.openai_contract import (
    MAX_MAX_TOKENS,
    ApiError,
    bad,
    chat_fields,
    from_router_error,
    model_of,
    read_json_body,
    veilnet_options,
)
from node.api.receipt_route import receipt_route
from node.api.token_count import TokenCounter
from node.jobs.chat_stream import StreamEvent
from node.jobs.errors import RouterError
from node.jobs.router import JobResult

if TYPE_CHECKING:
    from node.jobs.router import Router
    from node.jobs.service import JobService
    from node.net.registry import Registry

__all__ = ["routes"]

log = logging.getLogger("veilnet.api")

_SSE_CHARS = 16  # characters per streamed content delta ("after" release)


def _input_problem(texts: object) -> str:
    """Why embeddings ``input`` is refused; token ids get their own reason (clients such as
    LangChain send the ids of their own tokenizer, which mean nothing to the model)."""
    message = "input must be a string or a non-empty array of strings"
    token_ids = isinstance(texts, list) and texts and all(
        isinstance(t, int) or (isinstance(t, list) and all(isinstance(i, int) for i in t)) for t in texts
    )
    if token_ids:
        message += (
            "; token ids are not accepted (a client's tokenizer is not the model's: send the text, e.g."
            " LangChain's OpenAIEmbeddings with check_embedding_ctx_length=False)"
        )
    return message


def routes(jobs: JobService, registry: Registry) -> list[BaseRoute]:
    """The OpenAI-compatible routes, answered by ``jobs`` (installed by the composition root)."""

    def router() -> Router:
        return jobs.router

    counter = TokenCounter(jobs)

    def model_entry(model_id: str, names: Mapping[str, str], tasks: Mapping[str, str]) -> dict[str, Any]:
        return {
            "id": names.get(model_id, model_id), "object": "model", "created": 0, "owned_by": "veilnet",
            "veilnet": {
                "model_id": model_id, "attested_providers": len(registry.attested(model_id)),
                "task": tasks.get(model_id),
            },
        }

    async def list_models(request: Request) -> Response:
        r = router()
        names = {model_id: name for name, model_id in r.network.known_models().items()}
        tasks = jobs.model_tasks()
        data = [model_entry(model_id, names, tasks) for model_id in sorted(r.network.attested_models())]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(request: Request) -> Response:
        r = router()
        try:
            model_id = r.resolve_model(request.path_params["model"])
        except RouterError as exc:
            return from_router_error(exc).response()
        names = {model_id: name for name, model_id in r.network.known_models().items()}
        return JSONResponse(model_entry(model_id, names, jobs.model_tasks()))

    async def admit(model: str, task: str, options: Mapping[str, Any]) -> str:
        """Decide before dispatch what the node can: the model exists and has this task, and the
        replicas asked for do not outnumber the attested executors that serve it."""
        r = router()
        model_id = r.resolve_model(model)
        known = jobs.model_tasks().get(model_id)
        if known is not None and known != task:
            route = "/v1/embeddings" if known == "embeddings" else "/v1/chat/completions"
            article = "an" if known[0] in "aeiou" else "a"
            raise ApiError(400, f"{model} is {article} {known} model, not a {task} model; use {route}",
                           code="wrong_model_task", param="model")
        replicas = options.get("replicas")
        if replicas is not None:
            providers = len(await r.network.providers(model_id))
            if replicas > providers:
                raise ApiError(400, f"veilnet.replicas is {replicas}, but only {providers} attested executors"
                               f" serve {model} now", code="not_enough_providers", param="veilnet.replicas")
        return model_id

    def chat_limit(model_id: str) -> int:
        runtime = jobs.executor.runtimes.get(model_id)
        context = getattr(runtime, "context_length", None)
        return min(MAX_MAX_TOKENS, context) if isinstance(context, int) else MAX_MAX_TOKENS

    async def embeddings(request: Request) -> Response:
        timeline.start_request()
        timeline.mark("api.handler")
        try:
            body = await read_json_body(request)
            timeline.mark("api.body_parsed")
            model = model_of(body)
            texts = body.get("input")
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise bad(_input_problem(texts), "input")
            encoding = body.get("encoding_format", "float")
            if encoding not in ("float", "base64"):
                raise bad("encoding_format must be float or base64", "encoding_format")
            dimensions = body.get("dimensions")
            if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)
                                           or dimensions < 1):
                raise bad("dimensions must be a positive integer", "dimensions")
            options = veilnet_options(body)
            for chat_only in ("stream", "retry"):
                if chat_only in options:
                    raise bad(f"veilnet.{chat_only} applies to chat completions only", f"veilnet.{chat_only}")
            model_id = await admit(model, "embeddings", options)
            timeline.mark("api.admitted")
            result, tokens = await counter.alongside(
                model_id, texts, lambda: router().embeddings(model, texts, **options)
            )
            timeline.mark("api.job_done")
            vectors = result.vectors
            assert vectors is not None
            if dimensions is not None and dimensions != vectors.shape[1]:
                raise bad(f"dimensions is {dimensions}; this model has {vectors.shape[1]}", "dimensions")
        except ApiError as exc:
            return exc.response()
        except RouterError as exc:
            return from_router_error(exc).response()
        data = []
        for index, row in enumerate(vectors):
            embedding: Any = (
                base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
                if encoding == "base64" else row.tolist()  # the same floats as float(x) each, in C
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        timeline.mark("api.data_built")
        response = FastJSONResponse({
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "veilnet": result.report,
        })
        timeline.mark("api.response_built")
        return response

    async def chat_completions(request: Request) -> Response:
        created = int(time.time())
        try:
            body = await read_json_body(request)
            model = model_of(body)
            options = veilnet_options(body)
            model_id = await admit(model, "chat", options)
            messages, max_tokens, stream = chat_fields(body, chat_limit(model_id))
            release = options.pop("stream", "live")
            include_usage = _include_usage(body)
            if stream and release != "after":
                return _live(router(), model, messages, max_tokens, release, include_usage, created, options)
            options.pop("retry", None)  # not live: a rejected primary is always retried once
            # Not live: the text is released only once verification passed, so the job runs first
            # and any refusal is an HTTP error before the stream starts.
            result = await router().chat(model, messages, max_tokens=max_tokens, **options)
        except ApiError as exc:
            return exc.response()
        except RouterError as exc:
            return from_router_error(exc).response()
        if not stream:
            return FastJSONResponse(_completion(result, model, created))
        return StreamingResponse(
            _sse(result, model, created), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    async def job_report(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        await router().settled(job_id)  # the final report, once the slower executors are judged
        report = router().report(job_id)
        if report is None:
            return ApiError(404, f"no recent job {job_id}", code="unknown_job").response()
        return JSONResponse(report)

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/veilnet/v1/jobs/{job_id}", job_report, methods=["GET"]),
        receipt_route(router),
    ]


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise bad("stream_options.include_usage must be a boolean", "stream_options")
    return bool(options.get("include_usage", False))


def _live(router: Router, model: str, messages: list[dict[str, str]], max_tokens: int | None, release: str,
          include_usage: bool, created: int, options: dict[str, Any]) -> Response:
    """A live stream (``node/api/chat_sse.py``): the job runs while the response is being sent."""

    async def run(out: trio.MemorySendChannel[StreamEvent]) -> None:
        await router.chat_stream(model, messages, out, max_tokens=max_tokens, release=release, **options)

    completion_id = "chatcmpl-" + os.urandom(12).hex()
    return ChatEventStream(run, completion_id=completion_id, model=model, created=created,
                           include_usage=include_usage)


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
    return f"data: {dumps(body)}\n\n"


async def _sse(result: JobResult, model: str, created: int) -> AsyncIterator[str]:
    """Server-sent events of a completion that has already passed verification."""
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
