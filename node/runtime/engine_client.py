"""A blocking client for an OpenAI-compatible inference engine on loopback (vLLM first).

Why token ids and explicit sampling: the node renders the chat template and tokenizes with the
files its model id covers, and sends ids to ``/v1/completions``; the engine never applies a
template of its own, and every sampling field is set, so no engine default (nor the model's
``generation_config.json``) can change what "greedy" means. Why blocking: calls run in the
executor's worker threads like the in-process runtime's, and a streamed completion hands each
token to the same ``on_token`` callback.

Responses are untrusted input from another process: every field read is type-checked, sizes are
bounded, and any way the engine can fail (refused connection, timeout, HTTP error, malformed
body) is one ``EngineUnavailable`` carrying the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from node.runtime.errors import InvalidInput, ModelRuntimeError

__all__ = [
    "EngineClient",
    "EngineCompletion",
    "EngineUnavailable",
    "PromptLogprob",
    "greedy_sampling",
    "parse_prompt_logprobs",
    "sse_events",
]

MAX_RESPONSE_BYTES = 64 << 20  # a completion with prompt logprobs of a full context stays far below


class EngineUnavailable(ModelRuntimeError):
    """The engine did not answer as expected (down, restarting, overloaded or misbehaving)."""

    reason = "engine_unavailable"


@dataclass(frozen=True)
class EngineCompletion:
    """A completion as the engine returned it: generated ids (EOS included when it stopped on one)."""

    tokens: tuple[int, ...]
    finish_reason: str  # "stop" | "length"


@dataclass(frozen=True)
class PromptLogprob:
    """One prompt position: the log-probability and 1-based rank of the token actually there, and
    the best log-probability at that position (the engine's top-1)."""

    logprob: float
    rank: int
    top_logprob: float


def greedy_sampling(max_tokens: int, stop_token_ids: Sequence[int]) -> dict[str, Any]:
    """Every sampling field of a greedy completion, explicitly (no engine or model default applies)."""
    return {
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "seed": 0,
        "n": 1,
        "stop": [],
        "stop_token_ids": sorted(int(t) for t in stop_token_ids),
        "ignore_eos": False,
        "min_tokens": 0,
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
        "add_special_tokens": False,
        "return_token_ids": True,
    }


class EngineClient:
    """Calls one engine at ``base_url`` (``http://127.0.0.1:PORT``) with a bearer ``api_key``.

    ``served_name`` is the name the engine serves the model under (the node passes it at launch).
    ``timeout`` bounds each request (connect, each read); a whole completion is bounded by the
    job's deadline in the executor, which abandons the worker thread's result when it passes.
    """

    def __init__(self, base_url: str, api_key: str, served_name: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.served_name = served_name
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout, connect=5.0),
            trust_env=False,  # loopback only: never through a proxy named in the environment
        )

    def close(self) -> None:
        self._client.close()

    # -- health and identity ----------------------------------------------------------------------

    def healthy(self) -> bool:
        """True when ``/health`` answers 200 (the engine's process is up and its loop alive)."""
        try:
            return self._client.get("/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> bool:
        """True when the engine lists our model in ``/v1/models`` (it has loaded and can serve)."""
        try:
            body = self._get_json("/v1/models", timeout=5.0)
        except EngineUnavailable:
            return False
        data = body.get("data") if isinstance(body, dict) else None
        return isinstance(data, list) and any(
            isinstance(m, dict) and m.get("id") == self.served_name for m in data
        )

    def version(self) -> str:
        """The engine's own version string (``/version``, as vLLM and SGLang expose it)."""
        body = self._get_json("/version", timeout=5.0)
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, str) or not version:
            raise EngineUnavailable("the engine's /version has no version string")
        return version

    # -- compute ----------------------------------------------------------------------------------

    def complete(
        self, prompt_ids: Sequence[int], max_tokens: int, stop_token_ids: Sequence[int],
        on_token: Callable[[int], None] | None = None, *, cache_salt: str,
    ) -> EngineCompletion:
        """Greedy completion of ``prompt_ids``; with ``on_token`` streamed (SSE), each generated id
        handed over as its delta arrives. ``cache_salt`` confines the engine's prefix cache: only
        requests with the same salt share cached blocks (no timing side channel between users)."""
        body = {"model": self.served_name, "prompt": [int(t) for t in prompt_ids],
                "cache_salt": cache_salt, **greedy_sampling(max_tokens, stop_token_ids)}
        if on_token is None:
            answer = self._post_json("/v1/completions", body)
            choice = _first_choice(answer)
            tokens = _token_ids(choice.get("token_ids"))
            return EngineCompletion(tokens, _finish(choice.get("finish_reason"), len(tokens), max_tokens))
        body["stream"] = True
        tokens_seen: list[int] = []
        finish: Any = None
        for event in self._post_sse("/v1/completions", body):
            choice = _first_choice(event)
            for token in _token_ids(choice.get("token_ids") or []):
                tokens_seen.append(token)
                on_token(token)
            if choice.get("finish_reason") is not None:
                finish = choice.get("finish_reason")
        return EngineCompletion(tuple(tokens_seen), _finish(finish, len(tokens_seen), max_tokens))

    def prompt_logprobs(self, ids: Sequence[int], *, cache_salt: str) -> list[PromptLogprob]:
        """Teacher-forced scores of every position of ``ids`` after the first, in one prefill:
        ``/v1/completions`` with ``max_tokens: 1`` and ``prompt_logprobs: 1``."""
        body = {"model": self.served_name, "prompt": [int(t) for t in ids], "prompt_logprobs": 1,
                "cache_salt": cache_salt, **greedy_sampling(1, [])}
        answer = self._post_json("/v1/completions", body)
        return parse_prompt_logprobs(_first_choice(answer).get("prompt_logprobs"), ids)

    # -- HTTP -------------------------------------------------------------------------------------

    def _get_json(self, path: str, *, timeout: float) -> Any:
        try:
            response = self._client.get(path, timeout=timeout)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from None
        return _json_of(response, f"GET {path}")

    def _post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        try:
            response = self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"POST {path}: {type(exc).__name__}: {exc}") from None
        return _json_of(response, f"POST {path}")

    def _post_sse(self, path: str, body: Mapping[str, Any]) -> Iterator[Any]:
        """The decoded events of a server-sent event stream, up to ``[DONE]``."""
        try:
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    _json_of(response, f"POST {path}")
                yield from sse_events(response.iter_lines(), f"POST {path}")
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"POST {path}: {type(exc).__name__}: {exc}") from None


def sse_events(lines: Iterable[str], what: str = "stream") -> Iterator[Any]:
    """JSON payloads of the ``data:`` lines of an SSE stream; it must end with ``data: [DONE]``
    within ``MAX_RESPONSE_BYTES`` (a stream cut short is a failed completion, not a short one)."""
    received = 0
    for line in lines:
        received += len(line) + 1
        if received > MAX_RESPONSE_BYTES:
            raise EngineUnavailable(f"{what}: the stream exceeds {MAX_RESPONSE_BYTES} bytes")
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            raise EngineUnavailable(f"{what}: an event is not JSON") from None
    raise EngineUnavailable(f"{what}: the stream ended without [DONE]")


def _json_of(response: httpx.Response, what: str) -> Any:
    if len(response.content) > MAX_RESPONSE_BYTES:
        raise EngineUnavailable(f"{what}: the answer exceeds {MAX_RESPONSE_BYTES} bytes")
    if response.status_code == 400:
        # The engine refused the request itself (too long for its context, an id it rejects):
        # the job's input, not the engine, is at fault.
        raise InvalidInput(f"the engine refused the request: {response.text[:300]}")
    if response.status_code != 200:
        raise EngineUnavailable(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    try:
        return response.json()
    except ValueError:
        raise EngineUnavailable(f"{what}: the answer is not JSON") from None


def _first_choice(answer: Any) -> dict[str, Any]:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise EngineUnavailable("the engine's answer has no choices")
    return choices[0]


def _token_ids(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise EngineUnavailable("the engine's answer has no token_ids list (return_token_ids unsupported?)")
    return tuple(value)


def _finish(reason: Any, produced: int, max_tokens: int) -> str:
    if reason == "stop":
        return "stop"
    if reason == "length" or produced >= max_tokens:
        return "length"
    raise EngineUnavailable(f"the engine finished with {reason!r} after {produced} tokens")


def parse_prompt_logprobs(value: Any, ids: Sequence[int]) -> list[PromptLogprob]:
    """vLLM's ``prompt_logprobs``: one entry per prompt position, ``None`` for the first, else a
    map from token id (as a string) to ``{"logprob", "rank", ...}`` holding the actual token and
    the top-1. Returns positions 1.. of ``ids``; anything else is ``EngineUnavailable``."""
    if not isinstance(value, list) or len(value) != len(ids):
        raise EngineUnavailable("prompt_logprobs missing or not one entry per prompt token")
    scores: list[PromptLogprob] = []
    for position in range(1, len(ids)):
        entry = value[position]
        if not isinstance(entry, dict) or not entry:
            raise EngineUnavailable(f"prompt_logprobs[{position}] is not a map")
        actual = entry.get(str(int(ids[position])))
        if not isinstance(actual, dict):
            raise EngineUnavailable(f"prompt_logprobs[{position}] lacks the token that is there")
        raw_logprob, rank = actual.get("logprob"), actual.get("rank")
        if not isinstance(raw_logprob, int | float) or isinstance(raw_logprob, bool):
            raise EngineUnavailable(f"prompt_logprobs[{position}] has no numeric logprob")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise EngineUnavailable(f"prompt_logprobs[{position}] has no rank >= 1")
        logprob = float(raw_logprob)
        best = logprob
        for other in entry.values():
            candidate = other.get("logprob") if isinstance(other, dict) else None
            if isinstance(candidate, int | float) and not isinstance(candidate, bool):
                best = max(best, float(candidate))
        if math.isnan(best) or math.isnan(logprob):
            raise EngineUnavailable(f"prompt_logprobs[{position}] is NaN")
        scores.append(PromptLogprob(logprob, rank, best))
    return scores
