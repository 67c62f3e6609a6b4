"""DHT record and query limits, fed directly: the validator's rules and the per-message meter."""

from __future__ import annotations

import pytest
import varint

from node.metrics import Metrics
from node.net import boundary
from node.net.dht_limits import RecordRefused, VeilnetRecordValidator, _MessageMeter, inbound_message_limit
from node.net.limits import LimitExceeded, LimitSettings, ResourceManager
from node.net.scoring import PeerScores

PEER = b"\x00\x24" + b"p" * 36
OTHER = b"\x00\x24" + b"o" * 36


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def as_inbound(peer: bytes) -> object:
    """Pretend the current task handles an inbound stream of ``peer`` (what the boundary sets)."""
    return boundary._current.set(boundary._Inbound(peer, "/ipfs/kad/1.0.0", None))  # type: ignore[arg-type]


def validator(**overrides: object) -> tuple[VeilnetRecordValidator, ResourceManager, FakeClock]:
    clock = FakeClock()
    resources = ResourceManager(LimitSettings(**overrides), Metrics(), clock)  # type: ignore[arg-type]
    return (
        VeilnetRecordValidator(resources, PeerScores(clock=clock), clock, record_lifetime=60.0),
        resources,
        clock,
    )


def test_only_veilnet_keys_of_bounded_size_are_accepted() -> None:
    check, _, _ = validator(dht_record_bytes=1024)
    token = as_inbound(PEER)
    try:
        check.validate("/veilnet/x/1", b"v" * 1024)
        for key in ("/pk/abc", "/ipns/abc", "/other/1", "plain-key", "/"):
            with pytest.raises(RecordRefused):
                check.validate(key, b"v")
        with pytest.raises(RecordRefused):
            check.validate("/veilnet/x/2", b"v" * (1 << 20))  # the 1 MiB record of issue 9
    finally:
        boundary._current.reset(token)  # type: ignore[arg-type]
    assert check.refused.get(reason="namespace") == 5 and check.refused.get(reason="size") == 1


def test_records_are_counted_per_peer_and_come_back_when_they_expire() -> None:
    check, resources, clock = validator(dht_records_per_peer=2)
    token = as_inbound(PEER)
    try:
        check.validate("/veilnet/a/1", b"v")
        check.validate("/veilnet/a/1", b"w")  # replacing one's own key costs nothing more
        check.validate("/veilnet/a/2", b"v")
        with pytest.raises(RecordRefused, match="dht_records limit 2"):
            check.validate("/veilnet/a/3", b"v")
    finally:
        boundary._current.reset(token)  # type: ignore[arg-type]
    token = as_inbound(OTHER)
    try:
        check.validate("/veilnet/b/1", b"v")  # another peer has its own quota
    finally:
        boundary._current.reset(token)  # type: ignore[arg-type]
    assert check.held() == 3
    clock.now += 61.0
    token = as_inbound(PEER)
    try:
        check.validate("/veilnet/a/3", b"v")  # the earlier records expired: the quota is back
    finally:
        boundary._current.reset(token)  # type: ignore[arg-type]
    assert check.held() == 1 and resources.scopes_in_use() == 2  # system + this peer


class ChunkStream:
    """Hands out given bytes in reads of whatever size is asked (like a yamux stream)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.muxed_conn = None

    async def read(self, n: int | None = None) -> bytes:
        size = len(self._data) if n is None else n
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk


async def read_message(stream: _MessageMeter) -> bytes:
    length = b""
    while not length or length[-1] & 0x80:
        length += await stream.read(1)
    size = varint.decode_bytes(length)
    body = b""
    while len(body) < size:
        chunk = await stream.read(size - len(body))
        assert chunk, "stream ended inside a message"
        body += chunk
    return body


async def test_every_dht_message_is_charged_once_and_a_flood_is_cut_off() -> None:
    clock = FakeClock()
    resources = ResourceManager(
        LimitSettings(dht_queries_per_second=1.0, dht_query_burst=3), Metrics(), clock
    )
    scores = PeerScores(clock=clock)
    messages = [b"q" * 300, b"", b"r" * 5, b"s" * 2]  # a 2-byte length prefix, an empty body too
    wire = b"".join(varint.encode(len(m)) + m for m in messages)
    meter = _MessageMeter(ChunkStream(wire), PEER, resources, scores)  # type: ignore[arg-type]
    assert [await read_message(meter) for _ in range(3)] == messages[:3]
    with pytest.raises(LimitExceeded):
        await read_message(meter)
    assert scores.penalty(PEER) > 0
    # The DHT resets a stream whose read failed; a new stream of the same peer shares its bucket.
    again = _MessageMeter(ChunkStream(varint.encode(2) + b"tt"), PEER, resources, scores)  # type: ignore[arg-type]
    with pytest.raises(LimitExceeded):
        await read_message(again)
    clock.now += 1.0
    again = _MessageMeter(ChunkStream(varint.encode(2) + b"tt"), PEER, resources, scores)  # type: ignore[arg-type]
    assert await read_message(again) == b"tt"  # refilled: served


@pytest.mark.parametrize("declared", [LimitSettings().dht_record_bytes + (16 << 10) + 1, 1 << 22, 1 << 40])
async def test_a_dht_message_larger_than_any_request_is_refused_before_its_body_is_read(
    declared: int,
) -> None:
    resources = ResourceManager(LimitSettings(), Metrics())
    scores = PeerScores()
    stream = ChunkStream(varint.encode(declared) + b"x" * 64)
    meter = _MessageMeter(stream, PEER, resources, scores)  # type: ignore[arg-type]
    assert inbound_message_limit(resources) < declared
    with pytest.raises(LimitExceeded):
        await read_message(meter)
    assert stream._data == b"x" * 64  # the body was never read
    assert scores.penalty(PEER) > 0
    assert resources.hits.get(scope="peer", resource="dht_message_bytes") == 1


async def test_a_dht_request_carrying_a_full_size_record_still_passes() -> None:
    resources = ResourceManager(LimitSettings(), Metrics())
    body = b"v" * inbound_message_limit(resources)
    meter = _MessageMeter(ChunkStream(varint.encode(len(body)) + body), PEER, resources, PeerScores())  # type: ignore[arg-type]
    assert await read_message(meter) == body
