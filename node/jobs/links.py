"""Per-peer job links: one long-lived job stream to each executor, shared by all jobs to it.

A link plays rust-libp2p's *handler* role: it owns the stream, reads every frame the executor
sends, and hands each message to the job it belongs to (by ``job_id``) through a bounded memory
channel. Rules it keeps:

1. one link per peer: ``LinkPool.get`` opens at most one stream per peer at a time (a lock per
   peer), and reuses it until it breaks;
2. a message for a job that is no longer listening is dropped (a late reveal, an abandoned
   attempt), never an error;
3. a job flooded with more than ``JOB_CHANNEL_SIZE`` queued messages fails alone;
4. when the stream dies (end, reset, malformed frame, a session-level error from the executor)
   every job on it receives ``Broken(why)`` and the stream is reset; the next job opens a new one.

The readers run in the router's nursery, so no link outlives the router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node import timeline
from node.jobs.frames import EndOfStream, FrameIO
from protocol.jobs.messages import MessageError, decode_message

__all__ = ["JOB_CHANNEL_SIZE", "Broken", "JobLink", "LinkPool", "deliver_broken"]

JOB_CHANNEL_SIZE = 1024  # messages one job may have queued on a link (stream chunks included)


class Broken:
    """Sentinel delivered to every job on a link that died."""

    def __init__(self, why: str) -> None:
        self.why = why


@dataclass(eq=False)
class JobLink:
    """The one long-lived job stream to an executor; demultiplexes its messages by job id."""

    peer_id: bytes
    io: FrameIO
    jobs: dict[bytes, trio.MemorySendChannel[Any]] = field(default_factory=dict)
    broken: bool = False
    jobs_sent: int = 0

    def open_job(self, job_id: bytes) -> trio.MemoryReceiveChannel[Any]:
        send, receive = trio.open_memory_channel[Any](JOB_CHANNEL_SIZE)
        self.jobs[job_id] = send
        return receive

    def close_job(self, job_id: bytes) -> None:
        self.jobs.pop(job_id, None)

    async def send(self, payload: bytes, *more: bytes) -> None:
        await self.io.write(payload, *more)

    async def run(self) -> None:
        why = "closed"
        try:
            while True:
                frame = await self.io.read()
                try:
                    message = decode_message(frame)
                except MessageError as exc:
                    why = f"malformed message: {exc}"
                    return
                job_id = getattr(message, "job_id", None)
                if job_id is None:
                    why = f"session error from executor: {getattr(message, 'message', message.TAG)}"
                    return
                timeline.mark("link.read", job_id, peer=self.peer_id, kind=message.TAG)
                channel = self.jobs.get(job_id)
                if channel is None:
                    continue  # a job we already finished (late reveal, abandoned attempt)
                try:
                    channel.send_nowait((message, frame))
                except trio.WouldBlock:  # a flood of messages for one job: fail that job only
                    self.jobs.pop(job_id, None)
                    await deliver_broken(channel, "executor flooded the job with messages")
        except EndOfStream:
            why = "stream closed by the executor"
        except (MessageError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            why = f"stream failed: {exc}"
        except Exception as exc:  # py-libp2p raises its own stream errors (reset, closed)
            why = f"stream failed: {type(exc).__name__}: {exc}"
        finally:
            self.broken = True
            for channel in list(self.jobs.values()):
                await deliver_broken(channel, why)
            self.jobs.clear()
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self.io.reset()


async def deliver_broken(channel: trio.MemorySendChannel[Any], why: str) -> None:
    """Tell one job its link died; if its channel is full or gone, close it (the reader sees the end)."""
    try:
        channel.send_nowait((Broken(why), b""))
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        await channel.aclose()


class LinkPool:
    """The router's links, one per peer. ``nursery`` is set while the router runs (it holds the readers)."""

    def __init__(self, open_stream: Callable[[bytes], Awaitable[FrameIO]], *, open_timeout_s: float) -> None:
        self._open_stream = open_stream
        self._open_timeout_s = open_timeout_s
        self._links: dict[bytes, JobLink] = {}
        self._locks: dict[bytes, trio.Lock] = {}
        self.nursery: trio.Nursery | None = None
        self.streams_opened = 0

    async def get(self, peer: bytes) -> JobLink:
        """The peer's live link, opening one (within ``open_timeout_s``) if there is none."""
        link = self._links.get(peer)
        if link is not None and not link.broken:
            return link
        lock = self._locks.setdefault(peer, trio.Lock())
        async with lock:
            link = self._links.get(peer)
            if link is not None and not link.broken:
                return link
            if self.nursery is None:
                raise RuntimeError("the router is not running")
            with trio.fail_after(self._open_timeout_s):
                io = await self._open_stream(peer)
            link = JobLink(peer, io)
            self._links[peer] = link
            self.streams_opened += 1
            self.nursery.start_soon(link.run)
            return link

    async def close_all(self) -> None:
        """Reset every link's stream (shielded, at most a second each) and forget them."""
        for link in list(self._links.values()):
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await link.io.reset()
        self._links.clear()
