"""Stream framing: any split of the byte stream, layout, oversize/empty/truncated frames, hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.jobs.framing import MAX_FRAME, FrameDecoder, encode_frame
from protocol.jobs.messages import MessageError
from tests.conftest import decoder_settings


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    st.lists(st.integers(1, 64), min_size=1, max_size=20),
)
def test_frames_survive_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    out: list[bytes] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out += decoder.feed(stream[pos : pos + step])
        pos, i = pos + step, i + 1
    assert out == payloads
    assert decoder.at_boundary
    decoder.close()


def test_frame_layout() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_oversize_frame_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(b"\x00\x00\x00\x0a" + b"x" * 10) == [b"x" * 10]
    with pytest.raises(MessageError) as info:
        decoder.feed(b"\x00\x00\x00\x0b")
    assert info.value.reason == "frame_too_large"
    assert decoder.buffered == 0
    with pytest.raises(MessageError):  # stays failed: the stream is out of sync
        decoder.feed(b"\x00\x00\x00\x01x")
    with pytest.raises(MessageError):
        FrameDecoder().feed((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(MessageError):
        encode_frame(b"x" * 11, max_frame=10)


def test_empty_frame_is_refused() -> None:
    with pytest.raises(MessageError) as info:
        FrameDecoder().feed(b"\x00\x00\x00\x00")
    assert info.value.reason == "empty_frame"
    with pytest.raises(MessageError):
        encode_frame(b"")


@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x05", b"\x00\x00\x00\x05abcd"])
def test_truncated_frame_is_detected_at_close(tail: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"ok") + tail) == [b"ok"]
    assert not decoder.at_boundary
    with pytest.raises(MessageError) as info:
        decoder.close()
    assert info.value.reason == "truncated_frame"


@decoder_settings()
@given(st.binary(max_size=96), st.binary(max_size=6))
def test_frame_decoder_on_arbitrary_bytes(data: bytes, cuts: bytes) -> None:
    decoder = FrameDecoder(max_frame=64)
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(data[pos : pos + cut % 32])
        pos += cut % 32
    chunks.append(data[pos:])
    try:
        frames = [f for c in chunks for f in decoder.feed(c)]
        decoder.close()
    except MessageError:
        return
    assert b"".join(encode_frame(f, 64) for f in frames) == data
