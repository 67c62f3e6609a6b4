"""The evidence exchange's rules: verify before believing, count once per job and once per
reporter per hour, never against ourselves, charge whoever forwards a bad record."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from node.jobs.evidence import REPORTER_WINDOW_S, EvidenceExchange
from node.jobs.receipts import KeptReceipt, ReceiptBook
from node.jobs.standing import Standing
from node.metrics import Metrics
from node.net.scoring import Offence as NetOffence
from protocol.identity import Identity
from protocol.jobs.offences import OffenceKind, OffenceRecord
from protocol.jobs.receipts import Receipt
from protocol.jobs.reputation import Offence
from tests.protocol.jobs.receipt_fixtures import EXECUTORS, INPUT_SALT, JOB_ID, USER, make_receipt

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
        receipt = ReceiptBook(reporter).slim(Receipt.create(reporter, **_fields(receipt)))
    statement = next(e.commitment for e in receipt.executors if e.peer_id == OFFENDER.peer_id)
    return OffenceRecord.create(
        reporter,
        OffenceKind.WRONG_OUTPUT,
        job_id=job_id,
        offender=OFFENDER.peer_id,
        statement=statement,
        proof=receipt.to_wire(),
    ).to_wire()


def _fields(receipt: Receipt) -> dict[str, object]:
    names = (
        "job_id",
        "model_id",
        "task",
        "mode",
        "input_digest",
        "status",
        "quorum",
        "needed",
        "escalated",
        "comparator",
        "bounds",
        "executors",
        "winners",
        "created_ms",
        "finished_ms",
        "answer_digest",
    )
    return {n: getattr(receipt, n) for n in names}


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
