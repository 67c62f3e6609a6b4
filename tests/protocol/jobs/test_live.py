"""Live chat chunks (protocol/jobs/live.py): what a primary streams, checked like any untrusted input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import encode
from protocol.jobs.live import MAX_LIVE_TOKENS, LiveChunk, LiveChunkError, decode_live_chunk
from protocol.jobs.messages import JobRequest, Mode, Task, decode_message


@given(st.lists(st.integers(0, (1 << 31) - 1), min_size=1, max_size=64), st.text(max_size=200))
def test_a_chunk_survives_the_round_trip(tokens: list[int], text: str) -> None:
    chunk = LiveChunk(tuple(tokens), text)
    assert decode_live_chunk(chunk.to_bytes()) == chunk


@pytest.mark.parametrize("raw", [
    {"tokens": [], "text": ""},
    {"tokens": [-1], "text": ""},
    {"tokens": [1 << 31], "text": ""},
    {"tokens": [True], "text": ""},
    {"tokens": ["1"], "text": ""},
    {"tokens": [1], "text": b"bytes"},
    {"tokens": [1]},
    {"tokens": [1], "text": "", "extra": 1},
    {"tokens": list(range(MAX_LIVE_TOKENS + 1)), "text": ""},
    [1, 2],
])
def test_malformed_chunks_are_refused_with_a_typed_error(raw: object) -> None:
    with pytest.raises(LiveChunkError):
        decode_live_chunk(encode(raw))


def test_garbage_is_refused() -> None:
    with pytest.raises(LiveChunkError):
        decode_live_chunk(b"\xc1\xff")


def test_job_request_live_is_omitted_when_unset_and_round_trips_when_set() -> None:
    fields = dict(
        job_id=b"j" * 16, model_id="vn-model:" + "a" * 64, task=Task.CHAT, deadline_ms=1_800_000_000_000,
        client_pubkey=b"c" * 32, executor_enc_pubkey=b"e" * 32, input_nonce=b"n" * 24,
        sealed_input=b"sealed-input-and-tag", mode=Mode.CONSENSUS, stream=True,
    )
    plain = JobRequest(**fields)  # type: ignore[arg-type]
    assert "live" not in plain.to_map()
    live = JobRequest(**fields, live=True)  # type: ignore[arg-type]
    decoded = decode_message(live.to_wire())
    assert isinstance(decoded, JobRequest) and decoded.live is True and decoded == live
