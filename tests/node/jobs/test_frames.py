"""Libp2pFrames' group-commit writes, over a fake stream whose writes block until released.

What must hold: frames written by concurrent tasks while a write is in progress go out together
in the next single write, in the order they were queued; a writer cancelled before its bytes
were taken sends nothing; a writer whose bytes were in a failed write gets an error.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from node.jobs.frames import Libp2pFrames
from protocol.jobs.framing import FrameDecoder, encode_frame


class GatedStream:
    """Records each ``write``; each one waits until the test lets it finish (or fail)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.started = trio.Event()
        self.release = trio.Event()
        self.fail_with: Exception | None = None

    async def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.started.set()
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with

    def frames(self, index: int) -> list[bytes]:
        return FrameDecoder(1 << 20).feed(self.writes[index])


def _gated() -> tuple[GatedStream, Libp2pFrames]:
    stream = GatedStream()
    return stream, Libp2pFrames(stream, b"peer")  # type: ignore[arg-type]


async def _first_write_in_flight(nursery: trio.Nursery, stream: GatedStream, frames: Libp2pFrames) -> None:
    """Start writing b"first" and return once its stream write is blocked in the gate."""
    nursery.start_soon(frames.write, b"first")
    await stream.started.wait()


async def _write_within(scope: trio.CancelScope, frames: Libp2pFrames, payload: bytes) -> None:
    """One writer inside ``scope``, so a test can cancel that writer alone."""
    with scope:
        await frames.write(payload)


async def _settle() -> None:
    """Let every runnable task reach its next blocking point."""
    await trio.testing.wait_all_tasks_blocked()


async def test_an_uncontended_write_is_one_stream_write_of_its_frames() -> None:
    stream = GatedStream()
    stream.release.set()
    frames = Libp2pFrames(stream, b"peer")  # type: ignore[arg-type]
    await frames.write(b"request", b"reveal-request")
    assert stream.writes == [encode_frame(b"request") + encode_frame(b"reveal-request")]


async def test_writers_queued_behind_a_write_go_out_together_in_order() -> None:
    stream, frames = _gated()
    finished: list[bytes] = []

    async def write(payload: bytes) -> None:
        await frames.write(payload)
        finished.append(payload)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, b"first")
        await stream.started.wait()
        for name in (b"second", b"third", b"fourth"):
            nursery.start_soon(write, name)
            await _settle()
        assert len(stream.writes) == 1  # the others wait behind the first write
        stream.release.set()
    assert [stream.frames(i) for i in range(len(stream.writes))] == [
        [b"first"], [b"second", b"third", b"fourth"],
    ]
    assert sorted(finished) == sorted([b"first", b"second", b"third", b"fourth"])


async def test_a_writer_cancelled_before_its_turn_sends_nothing() -> None:
    stream, frames = _gated()
    waiting = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        await _first_write_in_flight(nursery, stream, frames)
        nursery.start_soon(frames.write, b"kept")
        nursery.start_soon(_write_within, waiting, frames, b"dropped")
        await _settle()
        waiting.cancel()
        await _settle()
        stream.release.set()
    assert [stream.frames(i) for i in range(len(stream.writes))] == [[b"first"], [b"kept"]]


async def test_every_writer_in_a_failed_write_gets_an_error() -> None:
    stream, frames = _gated()
    errors: dict[bytes, BaseException] = {}

    async def write(payload: bytes) -> None:
        try:
            await frames.write(payload)
        except Exception as exc:
            errors[payload] = exc

    first_stream_write = stream.started
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, b"first")
        await first_stream_write.wait()
        nursery.start_soon(write, b"second")
        nursery.start_soon(write, b"third")
        await _settle()
        stream.release.set()  # the first write succeeds ...
        stream.release = trio.Event()
        await _settle()
        assert len(stream.writes) == 2  # ... and the holder of the lock writes the other two at once
        stream.fail_with = ConnectionResetError("peer went away")
        stream.release.set()
    assert set(errors) == {b"second", b"third"}
    assert all(isinstance(exc, (trio.BrokenResourceError, ConnectionResetError)) for exc in errors.values())
    assert any("peer went away" in str(exc) for exc in errors.values())


@pytest.mark.parametrize("writers", [1, 7])
async def test_frames_round_trip_through_the_decoder_whatever_the_grouping(writers: int) -> None:
    stream = GatedStream()
    stream.release.set()
    frames = Libp2pFrames(stream, b"peer")  # type: ignore[arg-type]
    payloads = [bytes([i]) * (i + 1) for i in range(writers)]
    async with trio.open_nursery() as nursery:
        for payload in payloads:
            nursery.start_soon(frames.write, payload)
    decoded = [frame for i in range(len(stream.writes)) for frame in stream.frames(i)]
    assert sorted(decoded) == sorted(payloads)


async def test_a_holder_cancelled_mid_write_hands_the_others_frames_to_the_next_writer() -> None:
    stream, frames = _gated()
    holder = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        await _first_write_in_flight(nursery, stream, frames)
        nursery.start_soon(_write_within, holder, frames, b"abandoned")  # queued behind "first"
        await _settle()
        nursery.start_soon(frames.write, b"second")
        await _settle()
        first_release, stream.release = stream.release, trio.Event()
        first_release.set()  # "first" finishes; the next holder takes "abandoned" and "second"
        await _settle()
        assert stream.frames(1) == [b"abandoned", b"second"]
        holder.cancel()  # the holder's job ends while its write is in flight
        await _settle()
        stream.release.set()
    # "second" was not lost with the cancelled write: its writer wrote it again itself
    assert stream.frames(len(stream.writes) - 1) == [b"second"]
