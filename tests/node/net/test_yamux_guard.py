"""The strict yamux reader, fed frames by hand over an in-memory connection (no sockets, fake clock).

Each test plays the remote peer: it writes raw yamux frames into a GuardedYamux and reads what the
node answers. What must hold: a violation closes that connection only (``start()`` returns, never
raises) and reports one fault; a limit resets one stream; honest traffic flows.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from node.metrics import Metrics
from node.net.host import build_host
from node.net.limits import LimitSettings, Resource, ResourceManager, Scope
from node.net.muxer import MuxerFault, MuxerLimits, StreamBudget, muxer_guard, penalise_faults
from node.net.scoring import PeerScores
from node.net.yamux import GuardedYamux
from protocol.identity import Identity

HEADER = struct.Struct("!BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
KIB = 1024


def frame(typ: int, flags: int, sid: int, length: int, body: bytes = b"") -> bytes:
    return HEADER.pack(0, typ, flags, sid, length) + body


class FakeSecureConn:
    """The node's side of an in-memory byte pipe, shaped like a secured libp2p connection."""

    def __init__(self, stream: trio.abc.Stream, is_initiator: bool) -> None:
        self._stream = stream
        self.is_initiator = is_initiator
        self.closed = False

    async def read(self, n: int | None = None) -> bytes:
        return await self._stream.receive_some(n or 65536)

    async def write(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def close(self) -> None:
        self.closed = True
        await self._stream.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 1)

    def get_transport_addresses(self) -> list[Multiaddr]:
        return []


@dataclass
class Remote:
    """The hostile (or honest) peer's end: raw frames in, frames out."""

    stream: trio.abc.Stream
    pending: bytearray = field(default_factory=bytearray)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_frame(self, skip_pings: bool = True) -> tuple[int, int, int, int]:
        """The next frame the node sent (header fields type, flags, stream, length); EOF raises."""
        while True:
            while len(self.pending) < HEADER.size:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError("node closed the connection")
                self.pending.extend(chunk)
            _v, typ, flags, sid, length = HEADER.unpack(bytes(self.pending[: HEADER.size]))
            del self.pending[: HEADER.size]
            if typ == DATA:
                while len(self.pending) < length:
                    self.pending.extend(await self.stream.receive_some(65536))
                del self.pending[:length]
            if skip_pings and typ == PING:
                continue
            return typ, flags, sid, length

    async def closed_by_node(self) -> list[tuple[int, int, int, int]]:
        """Every frame until the node closes the connection."""
        seen = []
        while True:
            try:
                seen.append(await self.next_frame())
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                return seen


PEER = ID.from_pubkey(create_new_key_pair().public_key)


@asynccontextmanager
async def muxed(
    limits: MuxerLimits | None = None, budget: StreamBudget | None = None, peer: ID = PEER
) -> AsyncIterator[tuple[GuardedYamux, Remote, list[tuple[ID, MuxerFault]], trio.Nursery]]:
    """A running GuardedYamux (we are the dialler: our streams odd, the remote's even)."""
    budget = budget or StreamBudget(limits or MuxerLimits())
    faults: list[tuple[ID, MuxerFault]] = []
    budget.add_listener(lambda p, f: faults.append((p, f)))
    ours, theirs = trio.testing.memory_stream_pair()
    conn = GuardedYamux(FakeSecureConn(ours, True), peer, budget=budget, is_initiator=True)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.start)
        await conn.event_started.wait()
        yield conn, Remote(theirs), faults, nursery
        nursery.cancel_scope.cancel()


async def open_remote_stream(remote: Remote, sid: int) -> None:
    await remote.send(frame(WINDOW_UPDATE, SYN, sid, 0))
    typ, flags, got, _ = await remote.next_frame()
    assert (typ, flags & ACK, got) == (WINDOW_UPDATE, ACK, sid)


# ----------------------------------------------------------------------------- violations


@pytest.mark.parametrize(
    ("raw", "fault"),
    [
        (HEADER.pack(1, DATA, SYN, 2, 0), MuxerFault.BAD_VERSION),
        (HEADER.pack(0, 7, 0, 2, 0), MuxerFault.BAD_TYPE),
        (frame(DATA, 0, 0, 0), MuxerFault.BAD_STREAM_ID),
        (frame(WINDOW_UPDATE, SYN, 3, 0), MuxerFault.BAD_STREAM_ID),  # our parity
        (frame(DATA, SYN, 2, 16 * 1024 * KIB), MuxerFault.WINDOW_EXCEEDED),  # 16 MiB declared
        (frame(DATA, SYN, 2, 0xFFFFFFFF), MuxerFault.WINDOW_EXCEEDED),  # 4 GiB declared
    ],
)
async def test_a_malformed_frame_closes_only_that_connection_and_reports_its_peer(
    raw: bytes, fault: MuxerFault
) -> None:
    async with muxed() as (conn, remote, faults, _):
        await remote.send(raw)
        frames = await remote.closed_by_node()
        assert (GO_AWAY, 0, 0, 1) in frames  # protocol error
        assert faults == [(PEER, fault)]
        assert conn.fault is fault
        with trio.fail_after(5):
            await conn.event_closed.wait()


async def test_data_beyond_the_receive_window_closes_the_connection_without_buffering_it() -> None:
    async with muxed() as (conn, remote, faults, _):
        await open_remote_stream(remote, 2)
        await remote.send(frame(DATA, 0, 2, 200 * KIB, b"x" * 200 * KIB))
        await remote.send(frame(DATA, 0, 2, 100 * KIB))  # 300 KiB > the 256 KiB window
        await remote.closed_by_node()
        assert faults == [(PEER, MuxerFault.WINDOW_EXCEEDED)]
        with trio.fail_after(5):
            await conn.event_closed.wait()
        assert conn.budget.unread_total == 0  # released on close


async def test_a_second_syn_for_a_live_stream_is_a_violation() -> None:
    async with muxed() as (_conn, remote, faults, _):
        await open_remote_stream(remote, 2)
        await remote.send(frame(WINDOW_UPDATE, SYN, 2, 0))
        await remote.closed_by_node()
        assert faults == [(PEER, MuxerFault.DUPLICATE_STREAM)]


async def test_a_window_update_past_two_to_the_32_is_a_violation() -> None:
    async with muxed() as (_conn, remote, faults, _):
        await open_remote_stream(remote, 2)
        await remote.send(frame(WINDOW_UPDATE, 0, 2, 0xFFFFFFFF))
        await remote.closed_by_node()
        assert faults == [(PEER, MuxerFault.WINDOW_OVERFLOW)]


async def test_a_frame_body_that_never_arrives_times_out(autojump_clock: trio.testing.MockClock) -> None:
    limits = MuxerLimits(frame_body_timeout=3.0)
    async with muxed(limits) as (_conn, remote, faults, _):
        await open_remote_stream(remote, 2)
        started = trio.current_time()
        await remote.send(frame(DATA, 0, 2, 200 * KIB, b"y" * 1000))  # 1,000 of 204,800 bytes
        await remote.closed_by_node()
        assert faults == [(PEER, MuxerFault.FRAME_TIMEOUT)]
        assert 3.0 <= trio.current_time() - started < 4.0


async def test_garbage_never_escapes_start() -> None:
    for seed in range(20):
        garbage = bytes((seed * 37 + i * 101) % 256 for i in range(64))
        async with muxed() as (conn, remote, faults, _):
            await remote.send(garbage)
            with trio.fail_after(5):
                await remote.closed_by_node()
                await conn.event_closed.wait()
            assert all(f.is_violation for _, f in faults)


class HungUpSecureConn(FakeSecureConn):
    """A connection whose peer has gone: every write fails as py-libp2p's TCP stream fails it."""

    async def write(self, data: bytes) -> None:
        raise ConnectionClosedError("TCP connection reset by remote peer: [Errno 32] Broken pipe")


@pytest.mark.parametrize(
    "unanswered",
    [frame(WINDOW_UPDATE, SYN, 2, 0), frame(PING, SYN, 0, 7)],  # the node owes an ACK to each
    ids=["stream-syn", "ping"],
)
async def test_a_peer_that_hangs_up_before_the_answer_is_written_is_not_charged(unanswered: bytes) -> None:
    """Issue 12: the reader's ACK hit the closed socket and was counted as a parser error (25
    points); four fast reconnects of one identity banned it for 300 s."""
    budget = StreamBudget(MuxerLimits())
    faults: list[tuple[ID, MuxerFault]] = []
    budget.add_listener(lambda p, f: faults.append((p, f)))
    scores = PeerScores(LimitSettings(), Metrics())
    budget.add_listener(penalise_faults(scores))
    ours, theirs = trio.testing.memory_stream_pair()
    conn = GuardedYamux(HungUpSecureConn(ours, True), PEER, budget=budget, is_initiator=True)  # type: ignore[arg-type]
    await theirs.send_all(unanswered)
    with trio.fail_after(5):
        await conn.start()  # returns (never raises) once the reader has ended the connection
    assert conn.event_closed.is_set()
    assert faults == [] and conn.fault is None
    assert scores.score(PEER.to_bytes()) == 0


# -------------------------------------------------------------------------------- limits


async def test_streams_over_the_connection_limit_are_reset_and_a_closed_one_frees_a_slot() -> None:
    limits = MuxerLimits(max_inbound_streams_per_conn=3)
    async with muxed(limits) as (conn, remote, faults, _):
        for sid in (2, 4, 6):
            await open_remote_stream(remote, sid)
        await remote.send(frame(WINDOW_UPDATE, SYN, 8, 0))
        assert await remote.next_frame() == (WINDOW_UPDATE, RST, 8, 0)
        assert faults == [(PEER, MuxerFault.STREAM_LIMIT)]
        stream = await conn.accept_stream()
        await stream.reset()  # our side is done with stream 2
        await remote.next_frame()  # its RST
        await open_remote_stream(remote, 10)
        assert conn.budget.inbound_total == 3
        assert not conn.is_closed


async def test_the_peer_limit_spans_its_connections_and_the_node_limit_spans_peers() -> None:
    budget = StreamBudget(MuxerLimits(max_inbound_streams_per_peer=2, max_inbound_streams_total=3))
    other = ID.from_pubkey(create_new_key_pair().public_key)
    async with muxed(budget=budget) as (_c1, r1, faults, _), muxed(budget=budget) as (_c2, r2, _f, _n):
        await open_remote_stream(r1, 2)
        await open_remote_stream(r2, 2)
        await r2.send(frame(WINDOW_UPDATE, SYN, 4, 0))
        assert await r2.next_frame() == (WINDOW_UPDATE, RST, 4, 0)  # PEER holds 2 already
        async with muxed(budget=budget, peer=other) as (_c3, r3, _f3, _n3):
            await open_remote_stream(r3, 2)
            await r3.send(frame(WINDOW_UPDATE, SYN, 4, 0))
            assert await r3.next_frame() == (WINDOW_UPDATE, RST, 4, 0)  # the node holds 3
        assert (PEER, MuxerFault.STREAM_LIMIT) in faults
    assert budget.inbound_total == 0


async def test_data_for_a_refused_stream_is_read_and_dropped() -> None:
    limits = MuxerLimits(max_inbound_streams_per_conn=1)
    async with muxed(limits) as (conn, remote, _faults, _):
        await open_remote_stream(remote, 2)
        await remote.send(frame(DATA, SYN, 4, 10, b"0123456789"))
        assert await remote.next_frame() == (WINDOW_UPDATE, RST, 4, 0)
        await remote.send(frame(DATA, 0, 2, 5, b"hello"))
        stream = await conn.accept_stream()
        assert await stream.read(5) == b"hello"
        assert conn.budget.unread_total == 0


async def test_unread_bytes_over_the_connection_limit_reset_the_stream_they_arrived_on() -> None:
    limits = MuxerLimits(max_unread_per_conn=300 * KIB)
    async with muxed(limits) as (conn, remote, faults, _):
        await open_remote_stream(remote, 2)
        await open_remote_stream(remote, 4)
        await remote.send(frame(DATA, 0, 2, 200 * KIB, b"a" * 200 * KIB))
        await remote.send(frame(DATA, 0, 4, 200 * KIB, b"b" * 200 * KIB))
        assert await remote.next_frame() == (WINDOW_UPDATE, RST, 4, 0)
        assert faults == [(PEER, MuxerFault.BUFFER_LIMIT)]
        assert conn.budget.unread_total == 200 * KIB
        first = await conn.accept_stream()
        assert len(await first.read(300 * KIB)) == 200 * KIB
        assert conn.budget.unread_total == 0
        assert not conn.is_closed


async def test_a_sender_that_keeps_to_the_window_gets_everything_through() -> None:
    total = 2 * 1024 * KIB  # eight initial windows: needs the window updates the node sends
    received = bytearray()
    done = trio.Event()
    async with muxed() as (conn, remote, faults, nursery):
        await open_remote_stream(remote, 2)
        stream = conn.streams[2]

        async def reader() -> None:
            while len(received) < total:
                received.extend(await stream.read(64 * KIB))
            done.set()

        nursery.start_soon(reader)
        window, sent = 256 * KIB, 0
        with trio.fail_after(30):
            while sent < total:
                while window == 0:
                    typ, _flags, sid, increment = await remote.next_frame()
                    if (typ, sid) == (WINDOW_UPDATE, 2):
                        window += increment
                size = min(window, 60 * KIB, total - sent)
                await remote.send(frame(DATA, 0, 2, size, bytes([sent % 251]) * size))
                window -= size
                sent += size
            await done.wait()
        assert faults == []
        assert not conn.is_closed
        assert conn.budget.unread_total == 0


async def test_the_receive_window_stops_growing_at_the_configured_ceiling() -> None:
    limits = MuxerLimits(max_stream_window=512 * KIB)
    async with muxed(limits) as (conn, remote, _faults, _):
        await open_remote_stream(remote, 2)
        for _ in range(20):
            await remote.send(frame(DATA, 0, 2, 128 * KIB, b"w" * 128 * KIB))
            await conn.streams[2].read(128 * KIB)
        assert conn.streams[2].target_recv_window == 512 * KIB
        assert conn.streams[2].recv_window <= 512 * KIB


# ------------------------------------------------------------------- the node's resource manager


async def test_unread_bytes_are_charged_to_the_connections_reservation_and_given_back() -> None:
    resources = ResourceManager(LimitSettings(memory_per_connection=300 * KIB))
    reservation = resources.open_connection(PEER.to_bytes(), "127.0.0.1")
    budget = StreamBudget(MuxerLimits())
    budget.reservation_of = lambda muxed: reservation
    async with muxed(budget=budget) as (conn, remote, faults, _):
        await open_remote_stream(remote, 2)
        await open_remote_stream(remote, 4)
        await remote.send(frame(DATA, 0, 2, 200 * KIB, b"a" * 200 * KIB))
        await remote.send(frame(DATA, 0, 4, 200 * KIB, b"b" * 200 * KIB))  # over 300 KiB
        assert await remote.next_frame() == (WINDOW_UPDATE, RST, 4, 0)
        assert faults == [(PEER, MuxerFault.BUFFER_LIMIT)]
        assert resources.usage(Scope.PEER, PEER.to_bytes(), Resource.MEMORY) == 200 * KIB
        await conn.streams[2].read(200 * KIB)
        assert resources.usage(Scope.SYSTEM, None, Resource.MEMORY) == 0


def test_violations_cost_a_peer_more_score_than_refusals() -> None:
    scores = PeerScores(LimitSettings(), Metrics())
    listener = penalise_faults(scores)
    other = ID.from_pubkey(create_new_key_pair().public_key)
    listener(PEER, MuxerFault.WINDOW_EXCEEDED)
    listener(other, MuxerFault.STREAM_LIMIT)
    assert scores.score(PEER.to_bytes()) < scores.score(other.to_bytes()) < 0


def test_only_yamux_is_offered_and_the_global_stream_semaphore_is_gone() -> None:
    host = build_host(Identity.generate(), bytes(32), ["/ip4/127.0.0.1/tcp/0"])
    upgrader = host.get_network().upgrader  # type: ignore[attr-defined]
    assert list(upgrader.muxer_multistream.transports) == ["/yamux/1.0.0"]
    assert host.get_network()._stream_semaphore is None  # type: ignore[attr-defined]
    assert muxer_guard(host).limits == MuxerLimits.from_settings(LimitSettings())
