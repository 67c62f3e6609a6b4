"""The evidence exchange's rules: verify before believing, count once per job and once per
reporter per hour, never against ourselves, charge whoever forwards a bad record."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import trio
from libp2p.peer.id import ID

from node.jobs.evidence import REPORTER_WINDOW_S, EvidenceExchange
from node.jobs.phase import Misbehaviour
from node.jobs.receipts import KeptReceipt, ReceiptBook
from node.jobs.standing import Standing
from node.metrics import Metrics
from node.net.scoring import Offence as NetOffence
from protocol.identity import Identity
from protocol.jobs.messages import Commitment, result_digest
from protocol.jobs.offences import OffenceKind, OffenceRecord, verify_offence
from protocol.jobs.reputation import Offence
from tests.protocol.jobs.receipt_fixtures import (
    EXECUTORS,
    INPUT_SALT,
    JOB_ID,
    USER,
    make_receipt,
    resign,
    wrong_output_record,
)

OFFENDER = EXECUTORS[2]
FORWARDER = Identity(bytes([21]) * 32)


@dataclass
class _Message:
    data: bytes


@dataclass
class _Scores:
    """The node-wide peer score, as far as the exchange uses it."""

    charged: list[tuple[bytes, NetOffence]] = field(default_factory=list)

    def penalise(self, peer: bytes, offence: NetOffence, count: int = 1) -> float:
        self.charged.append((peer, offence))
        return -10.0


@dataclass
class _Pubsub:
    my_id: ID
    validators: dict[str, object] = field(default_factory=dict)

    def set_topic_validator(self, topic: str, validator: object, is_async_validator: bool) -> None:
        self.validators[topic] = validator


@dataclass
class _Gossip:
    """The parts of ``AttestationGossip`` the exchange shares: its pubsub and its peer scores."""

    pubsub: _Pubsub
    scores: _Scores = field(default_factory=_Scores)
    ready: trio.Event = field(default_factory=trio.Event)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


ME = Identity(bytes([30]) * 32)


def _exchange(
    me: Identity = ME,
) -> tuple[EvidenceExchange, _Gossip, Standing, _Clock]:
    clock = _Clock()
    gossip = _Gossip(_Pubsub(ID(me.peer_id)))
    standing = Standing(None, clock)
    exchange = EvidenceExchange(me, gossip, standing, ReceiptBook(me), Metrics(), clock)  # type: ignore[arg-type]
    return exchange, gossip, standing, clock


def _record(reporter: Identity = USER, job_id: bytes = JOB_ID) -> bytes:
    receipt = make_receipt(wrong_third=True, embed=False, job_id=job_id)
    if reporter is not USER:
        receipt = ReceiptBook(reporter).slim(resign(receipt, reporter))
    return wrong_output_record(reporter, job_id=job_id, receipt=receipt).to_wire()


async def _validate(exchange: EvidenceExchange, data: bytes) -> bool:
    return await exchange._validate(ID(FORWARDER.peer_id), _Message(data))  # type: ignore[arg-type]


def _offences(standing: Standing) -> int:
    found = standing.book.standing(OFFENDER.peer_id)
    return 0 if found is None else found.offences.get(Offence.WRONG_OUTPUT, 0)


async def test_a_valid_record_is_applied_once_per_job_and_once_per_reporter_per_hour() -> None:
    exchange, gossip, standing, clock = _exchange()
    assert await _validate(exchange, _record())
    assert _offences(standing) == 1
    assert await _validate(exchange, _record())  # forwarded again: valid, but counted once
    assert _offences(standing) == 1
    other_job = bytes([1]) * 16
    assert await _validate(exchange, _record(job_id=other_job))  # same reporter, within the hour
    assert _offences(standing) == 1
    replayed = _record(reporter=Identity(bytes([22]) * 32), job_id=other_job)
    assert await _validate(exchange, replayed)  # another user re-signing that job's public statements
    assert _offences(standing) == 1  # ... gains nothing: each job counts once
    assert await _validate(exchange, _record(reporter=Identity(bytes([22]) * 32), job_id=bytes([3]) * 16))
    assert _offences(standing) == 2  # another reporter's own job counts
    clock.now += REPORTER_WINDOW_S + 1
    assert await _validate(exchange, _record(job_id=bytes([2]) * 16))
    assert _offences(standing) == 3  # and the first reporter again, an hour later
    assert gossip.scores.charged == []
    evidence = standing.book.evidence(OFFENDER.peer_id)
    assert evidence[-1].statement and "reported by" in evidence[-1].detail


async def test_an_invalid_record_is_refused_and_charges_the_forwarder() -> None:
    exchange, gossip, standing, _ = _exchange()
    good = _record()
    data = bytearray(good)
    data[good.index(OffenceRecord.from_wire(good).sig)] ^= 1  # the reporter's signature
    assert not await _validate(exchange, bytes(data))
    assert not await _validate(exchange, b"\x00" * (200 << 10))
    assert _offences(standing) == 0
    assert gossip.scores.charged == [(FORWARDER.peer_id, NetOffence.INVALID_MESSAGE)] * 2
    assert exchange.refused.get(reason="bad_reporter_signature") == 1
    assert exchange.refused.get(reason="too_large") == 1


async def test_records_about_ourselves_are_forwarded_but_not_applied() -> None:
    exchange, _, standing, _ = _exchange(me=OFFENDER)
    assert await _validate(exchange, _record())
    assert standing.book.standing(OFFENDER.peer_id) is None


async def test_the_router_outvoting_an_executor_queues_one_record_for_gossip() -> None:
    exchange, _, _, _ = _exchange(me=USER)
    receipt = make_receipt(wrong_third=True)
    kept = KeptReceipt(receipt, receipt.to_wire(), INPUT_SALT, b"input", b"answer")
    exchange._on_receipt(kept)
    exchange._on_receipt(
        KeptReceipt(make_receipt(), make_receipt().to_wire(), INPUT_SALT, b"", b"")
    )  # no offence
    data = exchange._outbox.receive_nowait()
    record = OffenceRecord.from_wire(data)
    assert record.offender == OFFENDER.peer_id and record.reporter == USER.peer_id
    assert len(data) < len(receipt.to_wire())  # bundles by digest
    try:
        exchange._outbox.receive_nowait()
        raise AssertionError("a second record was queued")
    except trio.WouldBlock:
        pass


def _signed_commitment(result: bytes, salt: bytes, job_id: bytes = JOB_ID) -> bytes:
    digest = result_digest(result)
    return Commitment.create(
        OFFENDER, job_id=job_id, salt=salt, result_digest=digest, queue_ms=0, compute_ms=1
    ).to_wire()


async def test_misbehaviour_the_router_caught_is_published_once_and_only_when_provable() -> None:
    exchange, _, _, _ = _exchange()
    first, second = _signed_commitment(b"a", bytes(32)), _signed_commitment(b"a", bytes([1]) * 32)
    caught = Misbehaviour(OffenceKind.EQUIVOCATION, JOB_ID, OFFENDER.peer_id, first, second)
    exchange.on_misbehaviour(caught)
    exchange.on_misbehaviour(caught)  # the same job and offender again: not published twice
    record = verify_offence(exchange._outbox.receive_nowait())
    assert (record.kind, record.reporter, record.offender) == (
        OffenceKind.EQUIVOCATION, ME.peer_id, OFFENDER.peer_id,
    )
    assert exchange.published.get(kind="equivocation") == 1
    # the same commitment twice proves nothing: never published (it would be charged to us)
    other_job = bytes([4]) * 16
    same = _signed_commitment(b"a", bytes(32), other_job)
    unprovable = Misbehaviour(OffenceKind.EQUIVOCATION, other_job, OFFENDER.peer_id, same, same)
    exchange.on_misbehaviour(unprovable)
    assert exchange.refused.get(reason="own_not_an_offence") == 1
    with pytest.raises(trio.WouldBlock):
        exchange._outbox.receive_nowait()
