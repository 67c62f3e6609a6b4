"""The plaintexts inside sealed job envelopes: job inputs and results, per operation.

A ``JobRequest`` carries only routing facts in clear (job id, model id, task, deadline, keys);
everything about the user's request — texts, chat messages, limits, and whether this is a
generation or a verifier's re-scoring — lives inside the sealed input, so a relay or an
unchosen peer learns nothing but sizes and timing. Results travel sealed to the client's
ephemeral key and are committed to by ``result_digest(encode(result map))``.

Every payload is a canonical msgpack map with ``"v": 1`` and ``"op"``; floats travel as raw
little-endian IEEE-754 bytes (the canonical codec has no floats and the commitment must not depend
on a float formatter), integers as msgpack integers.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from protocol.codec import CodecError, Limits, decode, encode
from protocol.errors import ProtocolError

__all__ = [
    "MAX_CHAT_MESSAGES",
    "MAX_MAX_TOKENS",
    "MAX_TEXTS",
    "MAX_TEXT_CHARS",
    "MAX_TOKENS",
    "PAYLOAD_VERSION",
    "ChatMessage",
    "EmbeddingsInput",
    "EmbeddingsResult",
    "GenerateInput",
    "GenerateResult",
    "JobInput",
    "JobResult",
    "Op",
    "PayloadError",
    "ScoreInput",
    "ScoreResult",
    "decode_input",
    "decode_result",
]

PAYLOAD_VERSION = 1
MAX_TEXTS = 256
MAX_TEXT_CHARS = 32_768
MAX_CHAT_MESSAGES = 256
MAX_TOKENS = 8192  # tokens in a claimed completion (score input) or a generated one
MAX_MAX_TOKENS = 4096  # generation budget a client may ask for
MAX_DIM = 16_384
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})

_LIMITS = Limits(
    max_size=4 << 20, max_depth=4, max_str=MAX_TEXT_CHARS * 4, max_bin=4 << 20,
    max_array=max(MAX_TEXTS, MAX_TOKENS, MAX_CHAT_MESSAGES), max_map=16,
)


class PayloadError(ProtocolError):
    """A payload did not decode or violates its schema; ``reason`` is machine-readable."""


class Op(StrEnum):
    EMBED = "embed"  # embeddings task: vectors for texts
    GENERATE = "generate"  # chat task: greedy completion (the primary)
    SCORE = "score"  # chat task: teacher-forced re-scoring of claimed tokens (a verifier)


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str

    def to_map(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def _messages(raw: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CHAT_MESSAGES:
        raise PayloadError("bad_field", f"messages: 1..{MAX_CHAT_MESSAGES} required")
    out = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"role", "content"}:
            raise PayloadError("bad_field", "messages: each is {role, content}")
        role, content = item["role"], item["content"]
        if role not in _ROLES or not isinstance(content, str) or len(content) > MAX_TEXT_CHARS:
            raise PayloadError(
                "bad_field", f"messages: role in {sorted(_ROLES)}, content ≤ {MAX_TEXT_CHARS} chars"
            )
        out.append(ChatMessage(role, content))
    return tuple(out)


def _int_list(raw: Any, name: str, max_len: int, min_len: int = 0) -> tuple[int, ...]:
    if not isinstance(raw, list) or not min_len <= len(raw) <= max_len:
        raise PayloadError("bad_field", f"{name}: {min_len}..{max_len} integers required")
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in raw):
        raise PayloadError("bad_field", f"{name}: non-negative 31-bit integers")
    return tuple(raw)


def _expect(raw: dict[str, Any], op: Op, keys: set[str]) -> None:
    extra = set(raw) - keys - {"v", "op"}
    missing = keys - set(raw)
    if extra or missing:
        raise PayloadError("bad_schema", f"{op.value}: unexpected {sorted(extra)}, missing {sorted(missing)}")


@dataclass(frozen=True)
class EmbeddingsInput:
    texts: tuple[str, ...]
    op: Op = Op.EMBED

    def __post_init__(self) -> None:
        if not 1 <= len(self.texts) <= MAX_TEXTS:
            raise PayloadError("bad_field", f"texts: 1..{MAX_TEXTS} required")
        if not all(isinstance(t, str) and len(t) <= MAX_TEXT_CHARS for t in self.texts):
            raise PayloadError("bad_field", f"texts: strings of at most {MAX_TEXT_CHARS} characters")

    def to_bytes(self) -> bytes:
        return encode({"v": PAYLOAD_VERSION, "op": self.op.value, "texts": list(self.texts)})


@dataclass(frozen=True)
class GenerateInput:
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    op: Op = Op.GENERATE

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens <= MAX_MAX_TOKENS:
            raise PayloadError("bad_field", f"max_tokens: 1..{MAX_MAX_TOKENS}")
        _messages([m.to_map() for m in self.messages])

    def to_bytes(self) -> bytes:
        return encode({
            "v": PAYLOAD_VERSION, "op": self.op.value, "max_tokens": self.max_tokens,
            "messages": [m.to_map() for m in self.messages],
        })


@dataclass(frozen=True)
class ScoreInput:
    messages: tuple[ChatMessage, ...]
    tokens: tuple[int, ...]
    op: Op = Op.SCORE

    def __post_init__(self) -> None:
        _messages([m.to_map() for m in self.messages])
        _int_list(list(self.tokens), "tokens", MAX_TOKENS, 1)

    def to_bytes(self) -> bytes:
        return encode({
            "v": PAYLOAD_VERSION, "op": self.op.value, "tokens": list(self.tokens),
            "messages": [m.to_map() for m in self.messages],
        })


JobInput = EmbeddingsInput | GenerateInput | ScoreInput


def _root(data: bytes) -> tuple[dict[str, Any], Op]:
    try:
        raw = decode(data, _LIMITS)
    except CodecError as exc:
        raise PayloadError("malformed", str(exc)) from None
    if not isinstance(raw, dict):
        raise PayloadError("malformed", "payload is not a map")
    if raw.get("v") != PAYLOAD_VERSION:
        raise PayloadError("unsupported_version", repr(raw.get("v")))
    try:
        op = Op(str(raw.get("op")))
    except ValueError:
        raise PayloadError("bad_field", f"unknown op {raw.get('op')!r}") from None
    return raw, op


def decode_input(data: bytes) -> JobInput:
    """Decode and validate a job input plaintext."""
    raw, op = _root(data)
    if op is Op.EMBED:
        _expect(raw, op, {"texts"})
        texts = raw["texts"]
        if not isinstance(texts, list):
            raise PayloadError("bad_field", "texts must be a list")
        return EmbeddingsInput(tuple(texts))
    if op is Op.GENERATE:
        _expect(raw, op, {"messages", "max_tokens"})
        max_tokens = raw["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise PayloadError("bad_field", "max_tokens must be an int")
        return GenerateInput(_messages(raw["messages"]), max_tokens)
    _expect(raw, op, {"messages", "tokens"})
    return ScoreInput(_messages(raw["messages"]), _int_list(raw["tokens"], "tokens", MAX_TOKENS, 1))


# ----------------------------------------------------------------------------------- results


def _f32(values: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def _unpack_f32(data: bytes, n: int, name: str) -> tuple[float, ...]:
    if len(data) != 4 * n:
        raise PayloadError("bad_field", f"{name}: expected {4 * n} bytes, got {len(data)}")
    return struct.unpack(f"<{n}f", data)


@dataclass(frozen=True)
class EmbeddingsResult:
    """``vectors``: count × dim float32, little-endian, row-major."""

    count: int
    dim: int
    vectors: bytes
    op: Op = Op.EMBED

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_TEXTS or not 1 <= self.dim <= MAX_DIM:
            raise PayloadError("bad_field", "count or dim out of range")
        if len(self.vectors) != 4 * self.count * self.dim:
            raise PayloadError("bad_field", "vectors length does not match count × dim × 4")

    def to_bytes(self) -> bytes:
        return encode({
            "v": PAYLOAD_VERSION, "op": self.op.value, "count": self.count, "dim": self.dim,
            "vectors": self.vectors,
        })

    def rows(self) -> list[tuple[float, ...]]:
        flat = _unpack_f32(self.vectors, self.count * self.dim, "vectors")
        return [flat[i * self.dim:(i + 1) * self.dim] for i in range(self.count)]


@dataclass(frozen=True)
class GenerateResult:
    """``tokens`` include the final EOS when ``finish_reason == "stop"`` (verifiers score it too)."""

    prompt_tokens: int
    tokens: tuple[int, ...]
    text: str
    finish_reason: str
    op: Op = Op.GENERATE

    def __post_init__(self) -> None:
        _int_list(list(self.tokens), "tokens", MAX_TOKENS, 1)
        if self.finish_reason not in ("stop", "length"):
            raise PayloadError("bad_field", "finish_reason must be stop or length")
        if not 0 <= self.prompt_tokens <= 1 << 20:
            raise PayloadError("bad_field", "prompt_tokens out of range")

    def to_bytes(self) -> bytes:
        return encode({
            "v": PAYLOAD_VERSION, "op": self.op.value, "prompt_tokens": self.prompt_tokens,
            "tokens": list(self.tokens), "text": self.text, "finish_reason": self.finish_reason,
        })


@dataclass(frozen=True)
class ScoreResult:
    """Per claimed token: rank of the claimed token (u32), top-1 logit gap and log-prob (f32)."""

    ranks: tuple[int, ...]
    gaps: tuple[float, ...]
    logprobs: tuple[float, ...]
    op: Op = Op.SCORE

    def __post_init__(self) -> None:
        n = len(self.ranks)
        if not 1 <= n <= MAX_TOKENS or len(self.gaps) != n or len(self.logprobs) != n:
            raise PayloadError("bad_field", "ranks, gaps and logprobs must have one entry per token")

    def to_bytes(self) -> bytes:
        return encode({
            "v": PAYLOAD_VERSION, "op": self.op.value,
            "ranks": struct.pack(f"<{len(self.ranks)}I", *self.ranks),
            "gaps": _f32(self.gaps), "logprobs": _f32(self.logprobs),
        })


JobResult = EmbeddingsResult | GenerateResult | ScoreResult


def decode_result(data: bytes) -> JobResult:
    """Decode and validate a result plaintext (after opening the sealed reveal)."""
    raw, op = _root(data)
    if op is Op.EMBED:
        _expect(raw, op, {"count", "dim", "vectors"})
        count, dim, vectors = raw["count"], raw["dim"], raw["vectors"]
        if not isinstance(count, int) or not isinstance(dim, int) or not isinstance(vectors, bytes):
            raise PayloadError("bad_field", "count, dim: int; vectors: bytes")
        return EmbeddingsResult(count, dim, vectors)
    if op is Op.GENERATE:
        _expect(raw, op, {"prompt_tokens", "tokens", "text", "finish_reason"})
        prompt_tokens, text, finish = raw["prompt_tokens"], raw["text"], raw["finish_reason"]
        if not isinstance(prompt_tokens, int) or not isinstance(text, str) or not isinstance(finish, str):
            raise PayloadError("bad_field", "prompt_tokens: int; text, finish_reason: str")
        return GenerateResult(prompt_tokens, _int_list(raw["tokens"], "tokens", MAX_TOKENS, 1), text, finish)
    _expect(raw, op, {"ranks", "gaps", "logprobs"})
    ranks_b, gaps_b, logprobs_b = raw["ranks"], raw["gaps"], raw["logprobs"]
    if not all(isinstance(b, bytes) for b in (ranks_b, gaps_b, logprobs_b)) or len(ranks_b) % 4:
        raise PayloadError("bad_field", "ranks, gaps, logprobs: bytes")
    n = len(ranks_b) // 4
    return ScoreResult(
        struct.unpack(f"<{n}I", ranks_b),
        _unpack_f32(gaps_b, n, "gaps"),
        _unpack_f32(logprobs_b, n, "logprobs"),
    )
