"""Job input/result plaintexts: round trips, canonical bytes, schema refusals."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import encode
from protocol.jobs.payloads import (
    MAX_TEXTS,
    ChatMessage,
    EmbeddingsInput,
    EmbeddingsResult,
    GenerateInput,
    GenerateResult,
    PayloadError,
    ScoreInput,
    ScoreResult,
    decode_input,
    decode_result,
)

MSGS = (ChatMessage("system", "be brief"), ChatMessage("user", "hello ünïcode"))


@pytest.mark.parametrize(
    "value",
    [
        EmbeddingsInput(("a", "", "ü" * 100)),
        GenerateInput(MSGS, 16),
        ScoreInput(MSGS, (1, 2, 3, 0)),
    ],
)
def test_inputs_round_trip(value):
    data = value.to_bytes()
    assert decode_input(data) == value
    assert decode_input(data).to_bytes() == data


@pytest.mark.parametrize(
    "value",
    [
        EmbeddingsResult(2, 3, struct.pack("<6f", 1, 2, 3, 4, 5, 6.5)),
        GenerateResult(7, (5, 6, 0), "hi", "stop"),
        ScoreResult((0, 3), (0.0, 1.25), (-0.5, -3.0)),
    ],
)
def test_results_round_trip(value):
    data = value.to_bytes()
    assert decode_result(data) == value
    assert decode_result(data).to_bytes() == data


def test_embedding_rows():
    result = EmbeddingsResult(2, 2, struct.pack("<4f", 1, 2, 3, 4))
    assert result.rows() == [(1.0, 2.0), (3.0, 4.0)]


@pytest.mark.parametrize(
    "raw",
    [
        {"v": 2, "op": "embed", "texts": ["a"]},
        {"v": 1, "op": "nope", "texts": ["a"]},
        {"v": 1, "op": "embed", "texts": []},
        {"v": 1, "op": "embed", "texts": [1]},
        {"v": 1, "op": "embed", "texts": ["a"], "extra": 1},
        {"v": 1, "op": "embed"},
        {"v": 1, "op": "embed", "texts": ["a"] * (MAX_TEXTS + 1)},
        {"v": 1, "op": "generate", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"v": 1, "op": "generate", "messages": [{"role": "wizard", "content": "x"}], "max_tokens": 1},
        {"v": 1, "op": "generate", "messages": [], "max_tokens": 1},
        {"v": 1, "op": "generate", "messages": [{"role": "user"}], "max_tokens": 1},
        {"v": 1, "op": "score", "messages": [{"role": "user", "content": "x"}], "tokens": []},
        {"v": 1, "op": "score", "messages": [{"role": "user", "content": "x"}], "tokens": [-1]},
        [1, 2],
    ],
)
def test_bad_inputs_are_typed_errors(raw):
    with pytest.raises(PayloadError):
        decode_input(encode(raw))


@pytest.mark.parametrize(
    "raw",
    [
        {"v": 1, "op": "embed", "count": 2, "dim": 2, "vectors": b"\x00" * 15},
        {"v": 1, "op": "embed", "count": 0, "dim": 2, "vectors": b""},
        {"v": 1, "op": "generate", "prompt_tokens": 1, "tokens": [1], "text": "", "finish_reason": "bored"},
        {"v": 1, "op": "score", "ranks": b"\x00" * 8, "gaps": b"\x00" * 4, "logprobs": b"\x00" * 8},
        {"v": 1, "op": "score", "ranks": b"\x00" * 7, "gaps": b"", "logprobs": b""},
    ],
)
def test_bad_results_are_typed_errors(raw):
    with pytest.raises(PayloadError):
        decode_result(encode(raw))


@given(st.binary(max_size=300))
def test_random_bytes_are_refused_cleanly(data):
    for fn in (decode_input, decode_result):
        try:
            fn(data)
        except PayloadError:
            continue
