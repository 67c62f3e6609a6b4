"""Framed message I/O over one long-lived stream, shared by the executor and the router.

A job session is one libp2p stream per (client, executor) pair that carries many jobs, each
message tagged with its job id: opening a yamux stream costs several milliseconds on py-libp2p,
more than the whole per-job overhead budget, so streams (and the connection under them) are
reused across jobs. Frames are ``protocol.jobs.messages`` length-prefixed frames; the decoder bounds
buffering to one maximum frame. Writes from concurrent job tasks are serialised by a lock so
frames never interleave.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

from node.net.prompt_lock import PromptLock
from protocol.jobs.framing import MAX_FRAME, FrameDecoder, encode_frame
from protocol.jobs.messages import MessageError

__all__ = ["EndOfStream", "FrameIO", "FrameTrace", "Libp2pFrames", "MemoryFrames", "memory_frame_pair"]

_READ_SIZE = 1 << 16


class FrameTrace:
    """Test-only: append every job-stream frame (inside Noise, as the peers exchange it) to a file.

    Enabled by ``[extra] trace_job_frames = "<path>"``; the confidentiality test greps these
    traces for a canary to show that job contents never travel in clear, not even inside the
    encrypted libp2p connection.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def record(self, direction: str, peer_id: bytes, frame: bytes) -> None:
        with open(self.path, "ab") as handle:
            line = f"{direction} {peer_id.hex()} {frame.hex()}\n"
            handle.write(line.encode())


TRACE: FrameTrace | None = None


class EndOfStream(Exception):
    """The other side closed the stream cleanly (at a frame boundary)."""


class FrameIO(Protocol):
    """One bidirectional framed stream. ``read`` raises EndOfStream, MessageError (bad framing:
    the stream is out of sync and must be dropped) or an I/O exception. ``write`` sends one frame
    per payload, in order, in one write where the transport allows (a job request and its
    pipelined reveal request, a commitment and its reveal: one pass through yamux, Noise and the
    PSK layer instead of two)."""

    peer_id: bytes

    async def read(self) -> bytes: ...

    async def write(self, payload: bytes, *more: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


class _PendingWrite:
    """One writer's frames waiting in ``Libp2pFrames``'s queue; ``failure`` is set if the write
    that carried them failed."""

    __slots__ = ("data", "done", "failure", "taken")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.taken = False  # a lock holder is writing it
        self.done = False
        self.failure: str | None = None


class Libp2pFrames:
    """FrameIO over a py-libp2p stream (which raises StreamEOF at the end instead of returning b"")."""

    def __init__(self, stream: INetStream, peer_id: bytes, max_frame: int = MAX_FRAME) -> None:
        self.stream = stream
        self.peer_id = peer_id
        self._decoder = FrameDecoder(max_frame)
        self._frames: deque[bytes] = deque()
        self._write_lock = PromptLock()  # a free lock is no schedule point (node.net.prompt_lock)
        self._queued: list[_PendingWrite] = []
        if isinstance(getattr(stream, "_state_lock", None), trio.Lock):
            # py-libp2p's NetStream takes its state lock around every read and write
            stream._state_lock = PromptLock()  # type: ignore[attr-defined]
        self._eof = False

    async def read(self) -> bytes:
        while not self._frames:
            if self._eof:
                raise EndOfStream()
            try:
                data = await self.stream.read(_READ_SIZE)
            except StreamEOF:
                data = b""
            if not data:
                self._eof = True
                self._decoder.close()  # raises MessageError("truncated_frame") mid-frame
                raise EndOfStream()
            self._frames.extend(self._decoder.feed(data))
        frame = self._frames.popleft()
        if TRACE is not None:
            TRACE.record("in", self.peer_id, frame)
        return frame

    async def write(self, payload: bytes, *more: bytes) -> None:
        """Write the frames; frames queued by other tasks meanwhile go out in the same write.

        Group commit: every writer queues its bytes, then takes the write lock; the holder writes
        everything queued so far in one ``stream.write`` (one pass through yamux, Noise, the PSK
        layer and the socket for the lot), and a writer whose bytes a holder already sent finds
        them done when its turn comes. At saturation many jobs share one link, and each write
        through py-libp2p's stack costs more CPU than the job protocol itself. A writer cancelled
        before its bytes were taken leaves nothing behind; a holder cancelled while writing hands
        the others' bytes back to the queue; when the stream fails, every writer whose bytes were
        in that write fails too.
        """
        payloads = (payload, *more)
        pending = _PendingWrite(b"".join(encode_frame(p) for p in payloads))
        if TRACE is not None:
            for p in payloads:
                TRACE.record("out", self.peer_id, p)
        self._queued.append(pending)
        try:
            async with self._write_lock:
                if not pending.done:
                    await self._write_queued(pending)
        finally:
            if not pending.taken:  # cancelled while waiting its turn: never sent
                self._queued.remove(pending)
        if pending.failure is not None:
            raise trio.BrokenResourceError(pending.failure)

    async def _write_queued(self, own: _PendingWrite) -> None:
        batch, self._queued = self._queued, []
        for p in batch:
            p.taken = True
        data = batch[0].data if len(batch) == 1 else b"".join(p.data for p in batch)
        try:
            await self.stream.write(data)
        except Exception as exc:  # the stream failed: so did every write in the batch
            for p in batch:
                p.done, p.failure = True, f"stream write failed: {type(exc).__name__}: {exc}"
            raise
        except BaseException:
            # Cancelled (the holder's job ended): the others' frames go back to the head of the
            # queue for the next holder, as if this writer had never taken them.
            others = [p for p in batch if p is not own]
            for p in others:
                p.taken = False
            self._queued[:0] = others
            own.done = True
            raise
        for p in batch:
            p.done = True

    async def close(self) -> None:
        try:
            await self.stream.close()
        except Exception:
            await self.reset()

    async def reset(self) -> None:
        try:
            await self.stream.reset()
        except Exception:
            return


class MemoryFrames:
    """In-process FrameIO (tests and benchmarks of the executor without a network)."""

    def __init__(
        self,
        peer_id: bytes,
        send: trio.MemorySendChannel[bytes],
        receive: trio.MemoryReceiveChannel[bytes],
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.peer_id = peer_id
        self._send = send
        self._receive = receive
        self.max_frame = max_frame

    async def read(self) -> bytes:
        try:
            payload = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise EndOfStream() from None
        if len(payload) > self.max_frame:
            raise MessageError("frame_too_large", f"{len(payload)} bytes exceeds {self.max_frame}")
        return payload

    async def write(self, payload: bytes, *more: bytes) -> None:
        payloads = (payload, *more)
        if not all(payloads):
            raise MessageError("empty_frame", "frames carry at least one byte")
        try:
            for p in payloads:
                await self._send.send(p)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise EndOfStream() from None

    async def close(self) -> None:
        await self._send.aclose()

    async def reset(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_frame_pair(client_peer: bytes, executor_peer: bytes) -> tuple[MemoryFrames, MemoryFrames]:
    """(client end, executor end); each end's ``peer_id`` is the peer on the OTHER side."""
    to_executor_send, to_executor_receive = trio.open_memory_channel[bytes](math.inf)
    to_client_send, to_client_receive = trio.open_memory_channel[bytes](math.inf)
    client_end = MemoryFrames(executor_peer, to_executor_send, to_client_receive)
    executor_end = MemoryFrames(client_peer, to_client_send, to_executor_receive)
    return client_end, executor_end
