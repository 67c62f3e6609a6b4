"""Peer scores and bans, fed offences directly on a fake clock."""

from __future__ import annotations

import pytest
import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from node.metrics import Metrics
from node.net.limits import LimitExceeded, LimitSettings, Resource, Scope
from node.net.scoring import WEIGHTS, Offence, PeerScores, offence_for

PEER = b"\x00\x24" + b"p" * 36
OTHER = b"\x00\x24" + b"o" * 36


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def scores(**overrides: object) -> tuple[PeerScores, Metrics, FakeClock]:
    metrics = Metrics()
    clock = FakeClock()
    return PeerScores(LimitSettings(**overrides), metrics, clock), metrics, clock  # type: ignore[arg-type]


def test_penalties_decay_with_the_half_life() -> None:
    table, _, clock = scores(score_half_life_seconds=10.0)
    table.penalise(PEER, Offence.INVALID_MESSAGE, count=4)
    assert table.score(PEER) == pytest.approx(-40.0)
    clock.now += 10.0
    assert table.score(PEER) == pytest.approx(-20.0)
    clock.now += 100.0
    assert table.score(PEER) == 0.0 and table.penalty(PEER) == 0.0
    assert table.score(OTHER) == 0.0


def test_a_batch_of_invalid_messages_bans_the_peer_once_and_tells_listeners() -> None:
    table, metrics, clock = scores(graylist_score=-100.0, ban_seconds=60.0)
    banned: list[bytes] = []
    table.add_graylist_listener(banned.append)
    for _ in range(1000):  # one RPC of 1,000 bad messages
        table.penalise(PEER, Offence.INVALID_MESSAGE)
    assert banned == [PEER]
    assert table.is_banned(PEER) and not table.is_banned(OTHER)
    assert table.refuse_if_banned(PEER, "connection")
    text = metrics.render()
    assert 'veilnet_peer_penalties_total{offence="invalid_message"} 1000' in text
    assert "veilnet_peers_graylisted_total 1" in text
    assert 'veilnet_banned_peer_refusals_total{where="connection"} 1' in text
    assert "veilnet_peers_banned 1" in text
    clock.now += 61.0
    assert not table.is_banned(PEER)
    assert table.score(PEER) == 0.0, "the ban, not a lingering debt, decides when it may return"


def test_repeat_offenders_are_banned_for_twice_as_long_up_to_the_maximum() -> None:
    table, _, clock = scores(ban_seconds=60.0, ban_max_seconds=200.0)
    durations = []
    for _ in range(4):
        table.penalise(PEER, Offence.BROKEN_STREAM, count=5)
        start = clock.now
        while table.is_banned(PEER):
            clock.now += 1.0
        durations.append(clock.now - start)
    assert durations == [60.0, 120.0, 200.0, 200.0]
    clock.now += 1000.0  # a long good behaviour resets the back-off
    table.penalise(PEER, Offence.BROKEN_STREAM, count=5)
    start = clock.now
    while table.is_banned(PEER):
        clock.now += 1.0
    assert clock.now - start == 60.0


def test_peer_exchange_needs_a_positive_score() -> None:
    table, _, _ = scores()
    attested = {OTHER}
    table.set_bonus(lambda peer: 10.0 if peer in attested else 0.0)
    assert not table.accepts_px(PEER), "a stranger's score is zero: no PX"
    assert table.accepts_px(OTHER)
    table.penalise(OTHER, Offence.REFUSED_BUNDLE)
    assert not table.accepts_px(OTHER)


def test_a_failing_bonus_function_counts_as_no_bonus() -> None:
    table, _, _ = scores()

    def broken(peer: bytes) -> float:
        raise RuntimeError("registry gone")

    table.set_bonus(broken)
    assert table.score(PEER) == 0.0


def test_transport_failures_are_not_offences_but_bad_bytes_are() -> None:
    assert offence_for(StreamEOF()) is None
    assert offence_for(StreamReset()) is None
    assert offence_for(trio.BrokenResourceError()) is None
    assert offence_for(ConnectionClosedError("TCP connection reset by remote peer", transport="tcp")) is None
    assert offence_for(ValueError("garbage")) is Offence.BROKEN_STREAM
    assert offence_for(trio.TooSlowError()) is Offence.TIMEOUT
    limit = LimitExceeded(Scope.PEER, Resource.INBOUND_STREAMS, current=1, attempted=1, limit=1)
    assert offence_for(limit) is Offence.FLOOD
    group = ExceptionGroup("handler", [StreamEOF(), ValueError("x"), trio.TooSlowError()])
    assert offence_for(group) is Offence.BROKEN_STREAM
    assert WEIGHTS[Offence.BROKEN_STREAM] > WEIGHTS[Offence.TIMEOUT]


def test_tables_stay_bounded_under_identity_churn() -> None:
    table = PeerScores(LimitSettings(), Metrics(), FakeClock(), max_peers=100)
    for index in range(5000):
        peer = index.to_bytes(4, "big")
        table.penalise(peer, Offence.BROKEN_STREAM, count=5)  # each one banned
    assert table.banned_count() == 100
