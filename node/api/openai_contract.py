"""OpenAI's request contract: bodies read within a limit, fields typed as OpenAI types them, and
every refusal an HTTP error in OpenAI's ``{"error": {message, type, param, code}}`` shape.

What must live here: what a request may say and how a mistake is answered, decided before any
job is dispatched. The routes (``openai_routes.py``) call these and never build error bodies
themselves. The party at fault is in the status: 4xx is the client's mistake (the official
``openai`` client raises ``BadRequestError``/``NotFoundError``/... and does not retry), 5xx the
network's (it retries 502/503/504).

Rules:

1. A body over ``MAX_BODY`` bytes is 413, refused from its ``Content-Length`` before it is read,
   or as soon as the bytes read pass the limit (chunked bodies).
2. Types are OpenAI's: ``stream`` is a boolean (``"false"``, a string, is refused), ``n`` is 1 or
   null, ``temperature`` a number in [0, 2], ``top_p`` in [0, 1], ``max_tokens`` a positive
   integer within the model's limit, message ``content`` a string or an array of text parts.
3. What Veilnet cannot do is refused, not ignored: ``stop`` (verifiers check a greedy generation
   token by token; a cut they did not see is not checked), ``n`` > 1, ``logprobs``, tools and
   function calling, ``response_format`` other than text, ``logit_bias``, non-zero penalties.
   ``temperature`` and ``top_p`` are accepted and do not change the answer (greedy decoding;
   the report says ``sampling: greedy``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from node.jobs.errors import RouterError, RouterErrorCode
from protocol.jobs.messages import Mode

__all__ = [
    "MAX_BODY",
    "ApiError",
    "chat_fields",
    "error_response",
    "from_router_error",
    "read_json_body",
    "veilnet_options",
]

MAX_BODY = 8 << 20  # 8 MiB: 2,048 inputs of 4 KiB with JSON overhead; larger is not a mistake we serve
MAX_MAX_TOKENS = 4096  # protocol/jobs/payloads.py: the generation budget a job may ask for


class ApiError(Exception):
    """A refusal with its HTTP status, OpenAI error type, code and the offending parameter."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None,
        kind: str | None = None, report: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind or _kind_for(status)
        self.report = report

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, kind=self.kind, code=self.code, param=self.param,
                              veilnet=self.report)


def _kind_for(status: int) -> str:
    return {
        401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
        413: "invalid_request_error", 429: "rate_limit_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")


def bad(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def error_response(
    status: int, message: str, *, kind: str, code: str | None, param: str | None = None,
    veilnet: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    if veilnet is not None:
        body["veilnet"] = dict(veilnet)
    return JSONResponse(body, status_code=status)


def from_router_error(exc: RouterError) -> ApiError:
    """The router's typed error as an HTTP refusal (``RouterError.http_status`` is the hint)."""
    param = None
    if exc.code is RouterErrorCode.UNKNOWN_MODEL:
        param = "model"
    elif exc.code is RouterErrorCode.BAD_REQUEST:
        text = exc.message.lower()
        param = "messages" if ("context" in text or "prompt" in text or "message" in text) else None
    return ApiError(exc.http_status, exc.message, code=exc.code.value, param=param, report=exc.report)


# ------------------------------------------------------------------------------------ bodies


async def read_json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read at most ``MAX_BODY`` bytes far (rule 1)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"the request body has {int(declared)} bytes; the limit is {MAX_BODY}",
                       code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(
                413, f"the request body exceeds the limit of {MAX_BODY} bytes", code="request_too_large"
            )
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    return body


def model_of(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model is required (a string)", "model")
    return model


def _number(body: Mapping[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"{key} must be a number", key)
    if not low <= value <= high:
        raise bad(f"{key} is {value}; it must lie in [{low:g}, {high:g}]", key)


def _content(message: Mapping[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            is_text = isinstance(part, dict) and part.get("type") == "text"
            if not is_text or not isinstance(part.get("text"), str):
                raise bad(f"messages[{index}].content: only text parts ({{\"type\": \"text\","
                          " \"text\": ...}) are supported", f"messages[{index}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"messages[{index}].content must be a string or an array of text parts",
              f"messages[{index}].content")


_UNSUPPORTED = {
    "tools": "tool calls are not supported",
    "functions": "function calls are not supported",
    "tool_choice": "tool calls are not supported",
    "function_call": "function calls are not supported",
    "logit_bias": "logit_bias is not supported (verifiers re-score the plain model)",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
}


def chat_fields(
    body: Mapping[str, Any], max_tokens_limit: int
) -> tuple[list[dict[str, str]], int | None, bool]:
    """(messages, max_tokens, stream) of a chat body, or a 400 naming the parameter (rules 2, 3)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty array", "messages")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"messages[{index}] must be an object with a role", f"messages[{index}]")
        clean.append({"role": message["role"], "content": _content(message, index)})
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad(f"stream must be a boolean, not {type(stream).__name__}", "stream")
    if body.get("n") not in (None, 1) or isinstance(body.get("n"), bool):
        raise bad("only n = 1 is supported", "n")
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    for key in ("presence_penalty", "frequency_penalty"):
        _number(body, key, -2.0, 2.0)
        if body.get(key):
            raise bad(f"{key} is not supported (greedy decoding); leave it 0", key)
    if body.get("stop") not in (None, [], ""):
        raise bad("stop is not supported: verifiers check a whole greedy generation, not a cut", "stop")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("logprobs are not supported", "logprobs")
    for key, why in _UNSUPPORTED.items():
        if body.get(key) not in (None, [], {}):
            raise bad(why, key)
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict)
                                        or response_format.get("type") != "text"):
        raise bad("only response_format {\"type\": \"text\"} is supported", "response_format")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise bad(f"{key} must be a positive integer", key)
        if max_tokens > max_tokens_limit:
            raise bad(f"{key} is {max_tokens}; this model allows at most {max_tokens_limit}", key)
    return clean, max_tokens, bool(stream)


def veilnet_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Veilnet options from ``body["veilnet"]`` (validated)."""
    raw = body.get("veilnet") or {}
    if not isinstance(raw, dict):
        raise bad("veilnet must be an object", "veilnet")
    unknown = set(raw) - {"replicas", "mode", "challenge", "deadline_s", "stream", "retry"}
    if unknown:
        raise bad(f"unknown veilnet options {sorted(unknown)}", "veilnet")
    options: dict[str, Any] = {}
    if "replicas" in raw:
        replicas = raw["replicas"]
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 15:
            raise bad("veilnet.replicas must be an integer in 1..15", "veilnet.replicas")
        options["replicas"] = replicas
    if "mode" in raw:
        try:
            options["mode"] = Mode(str(raw["mode"]))
        except ValueError:
            raise bad("veilnet.mode must be consensus or spot-check", "veilnet.mode") from None
    if "challenge" in raw:
        if not isinstance(raw["challenge"], bool):
            raise bad("veilnet.challenge must be a boolean", "veilnet.challenge")
        options["challenge"] = raw["challenge"]
    if "deadline_s" in raw:
        deadline = raw["deadline_s"]
        number = isinstance(deadline, (int, float)) and not isinstance(deadline, bool)
        if not number or not math.isfinite(deadline) or not 0 < deadline <= 600:
            raise bad("veilnet.deadline_s must be a number in (0, 600]", "veilnet.deadline_s")
        options["deadline_s"] = float(deadline)
    if "stream" in raw:  # chat streaming: live | verified | after (openai_routes.py)
        if raw["stream"] not in ("live", "verified", "after"):
            raise bad("veilnet.stream must be live, verified or after", "veilnet.stream")
        options["stream"] = raw["stream"]
    if "retry" in raw:  # live chat: restart a rejected stream once with a fresh primary
        if not isinstance(raw["retry"], bool):
            raise bad("veilnet.retry must be a boolean", "veilnet.retry")
        options["retry"] = raw["retry"]
    return options
