"""Yamux with a strict frame reader: a hostile peer can cost us its own connection, nothing more.

py-libp2p 0.8.1's ``Yamux`` keeps the stream API we use (``YamuxStream`` reads, writes, window
updates) but its frame reader (``handle_incoming``) is replaced here, because a hostile peer
reached all of this through it:

* data beyond the receive window was buffered (a peer ignoring the window made a node hold
  512 MiB); frames declaring up to 16 MiB were read for up to 60 s each (+355 MiB held);
* every SYN became a stream with no count (10,000 held streams, and with the Swarm's global
  semaphore no stream could be opened by anyone);
* errors other than "connection closed" were logged and the loop went on reading from wherever
  it was in the byte stream.

Rules the reader enforces, in order, for every 12-byte header (spec: hashicorp/yamux
``spec.md``; go-yamux ``session.go`` is the model):

1. Version 0 and a known type, else the connection is closed (GO_AWAY protocol error).
2. DATA and WINDOW_UPDATE name a stream (id ≠ 0); a SYN uses the remote side's parity and no
   live stream's id.
3. A DATA frame's length is at most the stream's receive window (for an unknown or refused
   stream, the initial 256 KiB): no more, whatever the frame says. Its body must arrive within
   ``frame_body_timeout``.
4. A new inbound stream reserves a slot on the connection, its peer and the node
   (:class:`node.net.muxer.StreamBudget`); over a limit it is answered with RST and its data is
   dropped. Unread bytes over the connection's or the node's limit reset the stream they arrived
   on.
5. A window update may not push a send window past 2^32 − 1.

A violation of 1, 2, 3 or 5 closes this connection only and reports a fault against the peer
(a transport failure, read or write — the reader also answers — ends it with no fault);
nothing the reader meets can raise out of ``start()`` (the Swarm runs it as a service task,
where an exception ends the node). Receive windows auto-tune as upstream but stop at
``max_stream_window``.

Divergences from upstream py-libp2p: the stricter checks above (go-yamux closes the session on
each of them too); data frames for streams we no longer know are read and dropped instead of
being an error. Upstream: the window check, a stream limit and the "close on any parse error"
rule belong in ``Yamux.handle_incoming`` itself.
"""

from __future__ import annotations

import logging
import struct

import trio
from libp2p.abc import ISecureConn
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import (
    DEFAULT_WINDOW_SIZE,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

from node.net.limits import ConnectionReservation, LimitExceeded
from node.net.muxer import MuxerFault, StreamBudget
from node.net.prompt_lock import PromptLock, PromptSemaphore
from node.net.scoring import offence_for

__all__ = ["GuardedYamux", "GuardedYamuxStream", "YamuxViolation"]

log = logging.getLogger("veilnet.net.yamux")

_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)
_MAX_WINDOW = 2**32 - 1
_READ_CHUNK = 64 * 1024
_GO_AWAY_WRITE_TIMEOUT = 1.0
_SHUTDOWN_TIMEOUT = 5.0  # SwarmConn's own cleanup sleeps 0.1 s and notifies listeners


class YamuxViolation(Exception):
    """The peer broke the yamux spec; the connection is closed."""

    def __init__(self, fault: MuxerFault, detail: str) -> None:
        super().__init__(f"{fault.value}: {detail}")
        self.fault = fault


class _ConnectionGone(Exception):
    """The transport ended (EOF, reset, closed); not the peer's fault."""


class GuardedYamuxStream(YamuxStream):
    """A yamux stream whose receive window stops growing at the connection's limit, and whose
    reads give back the connection's (and node's) unread-byte budget."""

    conn: GuardedYamux

    def __init__(self, stream_id: int, conn: GuardedYamux, is_initiator: bool) -> None:
        super().__init__(stream_id, conn, is_initiator)
        # Every write takes the stream's write lock and window lock, every read credit the
        # window lock: free, they are no schedule point (node.net.prompt_lock).
        self.window_lock = PromptLock()  # type: ignore[assignment]
        self.rw_lock._writer_lock = PromptSemaphore(1)  # type: ignore[assignment]
        self.rw_lock._readers_lock = PromptLock()  # type: ignore[assignment]

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        """go-yamux's rule (``stream.sendWindowUpdate``), which keeps window + unread ≤ target.

        Upstream py-libp2p also credits every read outright, so a stream's window could pass its
        target; here the credit is the gap to the target, sent once it reaches half the target.
        The target doubles when updates come faster than 4 RTTs apart, up to the ceiling.
        """
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta = self.target_recv_window - (self.recv_window + buffered)
            if delta < self.target_recv_window // 2:
                return
            now = trio.current_time()
            ceiling = self.conn.budget.limits.max_stream_window
            if (
                self.epoch_start > 0
                and now - self.epoch_start < 4 * self._effective_rtt()
                and self.target_recv_window < ceiling
            ):
                self.target_recv_window = min(self.target_recv_window * 2, ceiling)
                delta = self.target_recv_window - (self.recv_window + buffered)
            self.epoch_start = now
            self.recv_window += delta
        await self.send_window_update(delta)

    async def read(self, n: int | None = -1) -> bytes:
        data = await super().read(n)
        self.conn.note_consumed(len(data))
        return data


class GuardedYamux(Yamux):
    """``Yamux`` with the strict frame reader described in the module docstring."""

    def __init__(
        self,
        secured_conn: ISecureConn,
        peer_id: ID,
        *,
        budget: StreamBudget,
        is_initiator: bool | None = None,
    ) -> None:
        super().__init__(secured_conn, peer_id, is_initiator=is_initiator)
        self.budget = budget
        self.limits = budget.limits
        self._inbound: set[int] = set()  # stream ids holding an inbound slot in the budget
        self._unread = 0  # upper bound of unread bytes buffered on this connection
        self._reservation: ConnectionReservation | None = None
        self.fault: MuxerFault | None = None
        # Taken by every frame written and every stream read (node.net.prompt_lock).
        self._write_lock = PromptLock()  # type: ignore[assignment]
        self.streams_lock = PromptLock()  # type: ignore[assignment]

    async def _write_frame(self, data: bytes) -> None:
        """Upstream's frame writer without its per-frame debug formatting and its extra schedule
        point after the write (the socket send already is one)."""
        async with self._write_lock:
            await self.secured_conn.write(data)

    # -------------------------------------------------------------------------- accounting

    def note_consumed(self, count: int) -> None:
        if count > 0:
            self._set_unread(self._unread - min(count, self._unread))

    def _set_unread(self, value: int) -> None:
        """Move this connection's unread count (and its charge in the budget and the resource
        manager) to ``value``; growing past a resource-manager limit raises LimitExceeded."""
        delta = value - self._unread
        reservation = self._connection_reservation()
        if reservation is not None and delta > 0:
            reservation.reserve_memory(delta)
        elif reservation is not None and delta < 0:
            reservation.release_memory(-delta)
        self.budget.unread_total += delta
        self._unread = value

    def _connection_reservation(self) -> ConnectionReservation | None:
        if self._reservation is None:
            self._reservation = self.budget.reservation_of(self)
        return self._reservation

    def _recount_unread(self) -> None:
        """Exact recount (buffers dropped on close or reset are not reported one by one)."""
        self._set_unread(sum(len(buffer) for buffer in self.stream_buffers.values()))

    def _take_room(self, size: int) -> bool:
        """Charge ``size`` more unread bytes if every limit allows it."""
        limits = self.limits
        if self._unread + size > limits.max_unread_per_conn or (
            self.budget.unread_total + size > limits.max_unread_total
        ):
            self._recount_unread()
        if (
            self._unread + size > limits.max_unread_per_conn
            or self.budget.unread_total + size > limits.max_unread_total
        ):
            return False
        try:
            self._set_unread(self._unread + size)
        except LimitExceeded:
            return False
        return True

    def _release_closed_inbound(self) -> None:
        done = [
            sid for sid in self._inbound if sid not in self.streams or self.streams[sid].closed
        ]
        if done:
            self._inbound.difference_update(done)
            self.budget.close_inbound(self.peer_id, len(done))

    def _release_everything(self) -> None:
        if self._inbound:
            self.budget.close_inbound(self.peer_id, len(self._inbound))
            self._inbound.clear()
        self._set_unread(0)

    def _finalize_stream_locked(self, stream: YamuxStream, *, fully_closed: bool) -> None:
        super()._finalize_stream_locked(stream, fully_closed=fully_closed)
        if stream.closed and stream.stream_id in self._inbound:
            self._inbound.discard(stream.stream_id)
            self.budget.close_inbound(self.peer_id)

    def _sweep_stale_streams(self, now: float | None = None) -> int:
        reclaimed = super()._sweep_stale_streams(now)
        self._release_closed_inbound()
        self._recount_unread()
        return reclaimed

    # ------------------------------------------------------------------------ outbound side

    async def open_stream(self) -> YamuxStream:
        """Upstream's ``open_stream`` with our stream class (the backlog of 256 is kept)."""
        await self.stream_backlog_semaphore.acquire()
        async with self.streams_lock:
            if self.event_shutting_down.is_set():
                self.stream_backlog_semaphore.release()
                raise MuxedStreamError("Connection is shutting down")
            stream_id = self.next_stream_id
            self.next_stream_id += 2
            stream = GuardedYamuxStream(stream_id, self, True)
            stream._owns_backlog_slot = True
            self.streams[stream_id] = stream
            self.stream_buffers[stream_id] = bytearray()
            self.stream_events[stream_id] = trio.Event()
        try:
            await self._write_frame(_HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, 0))
        except Exception as exc:
            async with self.streams_lock:
                if not stream._backlog_slot_released:
                    stream._backlog_slot_released = True
                    self.stream_backlog_semaphore.release()
                self.streams.pop(stream_id, None)
                self.stream_buffers.pop(stream_id, None)
                self.stream_events.pop(stream_id, None)
            raise MuxedStreamError(f"Failed to send SYN: {exc}") from exc
        return stream

    # ------------------------------------------------------------------------- frame reader

    async def handle_incoming(self) -> None:
        """Read frames until the connection ends; never raises (see the module docstring)."""
        try:
            while not self.event_shutting_down.is_set():
                header = await self._read_exact(HEADER_SIZE, deadline=None)
                await self._handle_frame(*_HEADER.unpack(header))
        except _ConnectionGone as exc:
            log.debug("yamux connection to %s ended: %s", self.peer_id, exc)
        except YamuxViolation as exc:
            await self._refuse_connection(exc.fault, str(exc))
        except trio.Cancelled:
            raise
        except Exception as exc:
            if offence_for(exc) is None:
                # The reader also writes (SYN's ACK, RST, ping ACK, window updates); a peer that
                # hung up before the answer went out broke no rule (issue 12: charged as a parser
                # error, four fast reconnects banned an honest peer for 300 s).
                log.debug("yamux connection to %s ended while answering: %s", self.peer_id, exc)
            else:  # a bug or an unforeseen input: still this connection only
                log.warning("yamux reader for %s failed: %s: %s", self.peer_id, type(exc).__name__, exc)
                await self._refuse_connection(MuxerFault.PARSER_ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            with trio.move_on_after(_SHUTDOWN_TIMEOUT) as scope:
                scope.shield = True
                await self._shut_down()

    async def _handle_frame(self, version: int, typ: int, flags: int, sid: int, length: int) -> None:
        if version != 0:
            raise YamuxViolation(MuxerFault.BAD_VERSION, f"version {version}")
        if typ == TYPE_PING:
            if flags & FLAG_SYN:
                await self._write_frame(_HEADER.pack(0, TYPE_PING, FLAG_ACK, 0, length))
            elif flags & FLAG_ACK:
                self._note_pong()
            return
        if typ == TYPE_GO_AWAY:
            log.debug("yamux peer %s sent GO_AWAY (code %d)", self.peer_id, length)
            self.event_shutting_down.set()
            return
        if typ not in (TYPE_DATA, TYPE_WINDOW_UPDATE):
            raise YamuxViolation(MuxerFault.BAD_TYPE, f"type {typ}")
        if sid == 0:
            raise YamuxViolation(MuxerFault.BAD_STREAM_ID, "stream id 0 on a stream frame")

        stream = self.streams.get(sid)
        refused = False
        if flags & FLAG_SYN:
            stream, refused = await self._accept_syn(sid)
        elif stream is None:
            refused = True  # a stream we closed or never had: read what it carries and drop it

        if typ == TYPE_DATA:
            window = stream.recv_window if stream is not None and not refused else DEFAULT_WINDOW_SIZE
            if length > window:
                raise YamuxViolation(
                    MuxerFault.WINDOW_EXCEEDED, f"{length} bytes on stream {sid}, window {window}"
                )
            body = await self._read_exact(length, deadline=self.limits.frame_body_timeout) if length else b""
            if stream is not None and not refused:
                await self._deliver(stream, body)
        elif stream is not None and not refused and length:
            if stream.send_window + length > _MAX_WINDOW:
                raise YamuxViolation(MuxerFault.WINDOW_OVERFLOW, f"stream {sid} window past 2^32-1")
            stream.send_window += length

        if stream is not None and not refused:
            self._apply_flags(stream, flags)

    async def _accept_syn(self, sid: int) -> tuple[YamuxStream | None, bool]:
        remote_parity = 0 if self.is_initiator_value else 1
        if sid % 2 != remote_parity:
            raise YamuxViolation(MuxerFault.BAD_STREAM_ID, f"SYN for stream {sid} with our parity")
        if sid in self.streams:
            raise YamuxViolation(MuxerFault.DUPLICATE_STREAM, f"SYN for live stream {sid}")
        scope = None
        if len(self._inbound) >= self.limits.max_inbound_streams_per_conn:
            self._release_closed_inbound()
            if len(self._inbound) >= self.limits.max_inbound_streams_per_conn:
                scope = "connection"
        if scope is None:
            scope = self.budget.try_open_inbound(self.peer_id)
        if scope is not None:
            log.debug("refusing stream %d from %s: %s stream limit", sid, self.peer_id, scope)
            self.budget.report(self.peer_id, MuxerFault.STREAM_LIMIT)
            await self._write_frame(_HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
            return None, True
        stream = GuardedYamuxStream(sid, self, False)
        self._inbound.add(sid)
        self.streams[sid] = stream
        self.stream_buffers[sid] = bytearray()
        self.stream_events[sid] = trio.Event()
        await self._write_frame(_HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_ACK, sid, 0))
        try:
            await self.new_stream_send_channel.send(stream)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise _ConnectionGone("no longer accepting streams") from None
        return stream, False

    async def _deliver(self, stream: YamuxStream, body: bytes) -> None:
        sid = stream.stream_id
        stream.recv_window -= len(body)
        if stream.recv_closed or stream.reset_received:
            return  # data after FIN or RST: the window is charged, the bytes dropped
        if not self._take_room(len(body)):
            log.debug("resetting stream %d from %s: unread-bytes limit", sid, self.peer_id)
            self.budget.report(self.peer_id, MuxerFault.BUFFER_LIMIT)
            await self._reset_locally(stream)
            return
        buffer = self.stream_buffers.get(sid)
        if buffer is None:
            self.note_consumed(len(body))
            return
        buffer.extend(body)
        self._wake(sid)

    def _apply_flags(self, stream: YamuxStream, flags: int) -> None:
        sid = stream.stream_id
        if flags & FLAG_RST:
            stream.closed = True
            stream.reset_received = True
        elif flags & FLAG_FIN:
            stream.recv_closed = True
            if stream.send_closed:
                stream.closed = True
        else:
            return
        self._wake(sid)
        if stream.closed:
            self._finalize_stream_locked(stream, fully_closed=True)

    def _wake(self, sid: int) -> None:
        event = self.stream_events.get(sid)
        if event is not None:
            event.set()

    def _note_pong(self) -> None:
        new_rtt = trio.current_time() - self._ping_sent_time
        self._rtt = new_rtt if self._rtt == 0.0 else (self._rtt + new_rtt) / 2
        self._ping_event.set()

    async def _reset_locally(self, stream: YamuxStream) -> None:
        stream.closed = stream.send_closed = stream.recv_closed = True
        stream.reset_received = True
        buffer = self.stream_buffers.get(stream.stream_id)
        if buffer:
            self.note_consumed(len(buffer))
            buffer.clear()
        self._wake(stream.stream_id)
        self._finalize_stream_locked(stream, fully_closed=True)
        await self._write_frame(_HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_RST, stream.stream_id, 0))

    async def _read_exact(self, size: int, *, deadline: float | None) -> bytes:
        """``size`` bytes from the secured connection, in chunks; EOF or errors end the connection."""
        chunks: list[bytes] = []
        remaining = size
        with trio.CancelScope() as scope:
            if deadline is not None:
                scope.deadline = trio.current_time() + deadline
            while remaining:
                try:
                    chunk = await self.secured_conn.read(min(remaining, _READ_CHUNK))
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    raise _ConnectionGone(f"{type(exc).__name__}: {exc}") from None
                if not chunk:
                    raise _ConnectionGone("end of stream")
                if len(chunk) > remaining:  # a transport that over-reads: treat as garbage
                    raise YamuxViolation(MuxerFault.PARSER_ERROR, "transport returned extra bytes")
                chunks.append(chunk)
                remaining -= len(chunk)
        if scope.cancelled_caught:
            raise YamuxViolation(
                MuxerFault.FRAME_TIMEOUT,
                f"{size - remaining} of {size} body bytes in {self.limits.frame_body_timeout:.0f} s",
            )
        return b"".join(chunks)

    # ------------------------------------------------------------------------------ ending

    async def _refuse_connection(self, fault: MuxerFault, detail: str) -> None:
        self.fault = fault
        log.info("closing yamux connection to %s: %s", self.peer_id, detail)
        self.budget.report(self.peer_id, fault)
        with trio.move_on_after(_GO_AWAY_WRITE_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self._write_frame(_HEADER.pack(0, TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR))
            except Exception as exc:
                log.debug("GO_AWAY to %s not sent: %s", self.peer_id, exc)

    async def _shut_down(self) -> None:
        self.event_shutting_down.set()
        self._release_everything()
        try:
            await self._cleanup_on_error()
        except Exception as exc:
            log.debug("yamux cleanup for %s: %s", self.peer_id, exc)
        self._release_everything()
