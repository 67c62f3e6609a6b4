"""Reputation: scores, decaying offence points, exponential-backoff bans, evidence, persistence."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import decode, encode
from protocol.jobs.reputation import (
    EvidenceRecord,
    Offence,
    ReputationBook,
    ReputationFormatError,
    ReputationPolicy,
)

A = b"\x00\x24\x08\x01\x12\x20" + b"A" * 32
B = b"\x00\x24\x08\x01\x12\x20" + b"B" * 32
T0 = 1_700_000_000.0


def test_strangers_have_the_initial_score():
    book = ReputationBook()
    assert book.score(A, T0) == book.policy.initial_score
    assert not book.is_banned(A, T0)


def test_success_raises_score_towards_one_and_offence_lowers_it():
    book = ReputationBook()
    before = book.score(A, T0)
    for i in range(200):
        book.record_success(A, T0 + i)
    high = book.score(A, T0 + 200)
    assert before < high <= 1.0
    book.record_offence(A, Offence.TIMEOUT, T0 + 201)
    assert book.score(A, T0 + 201) < high


def test_one_wrong_output_costs_many_successes():
    book = ReputationBook()
    for i in range(100):
        book.record_success(A, T0 + i)
    peak = book.score(A, T0 + 100)
    book.record_offence(A, Offence.WRONG_OUTPUT, T0 + 101)
    n = 0
    while book.score(A, T0 + 102 + n) < peak and n < 1000:
        book.record_success(A, T0 + 102 + n)
        n += 1
    assert n >= 10


def test_two_wrong_outputs_ban_and_the_ban_expires():
    book = ReputationBook()
    first = book.record_offence(A, Offence.WRONG_OUTPUT, T0)
    assert first.banned_until is None and not book.is_banned(A, T0)
    second = book.record_offence(A, Offence.WRONG_OUTPUT, T0 + 10)
    assert second.banned_until == T0 + 10 + book.policy.ban_base_s
    assert book.is_banned(A, T0 + 11)
    assert book.score(A, T0 + 11) == 0.0
    assert A in book.banned(T0 + 11)
    assert not book.is_banned(A, second.banned_until + 0.001)
    assert book.score(A, second.banned_until + 1) > 0.0


def test_ban_durations_back_off_exponentially_and_cap():
    policy = ReputationPolicy(ban_base_s=10, ban_max_s=100, forgive_after_s=1e9)
    book = ReputationBook(policy)
    now = T0
    durations = []
    for _ in range(6):
        penalty = book.record_offence(A, Offence.BAD_REVEAL, now)  # 2 points: bans at once
        assert penalty.banned_until is not None
        durations.append(penalty.banned_until - now)
        now = penalty.banned_until + 1
    assert durations == [10, 20, 40, 80, 100, 100]


def test_no_new_ban_while_banned():
    book = ReputationBook()
    first = book.record_offence(A, Offence.BAD_REVEAL, T0)
    assert first.banned_until is not None
    again = book.record_offence(A, Offence.BAD_REVEAL, T0 + 1)
    assert again.banned_until is None
    assert book.banned_until(A, T0 + 2) == first.banned_until


def test_occasional_timeouts_never_ban():
    book = ReputationBook()
    for day in range(30):
        penalty = book.record_offence(A, Offence.TIMEOUT, T0 + day * 86400)
        assert penalty.banned_until is None


def test_points_decay_with_half_life():
    policy = ReputationPolicy(points_half_life_s=100)
    book = ReputationBook(policy)
    book.record_offence(A, Offence.WRONG_OUTPUT, T0)
    penalty = book.record_offence(A, Offence.WRONG_OUTPUT, T0 + 200)  # 0.25 + 1.0 < 1.5
    assert penalty.banned_until is None
    assert penalty.points == pytest.approx(1.25)


def test_clean_period_lowers_the_ban_level():
    policy = ReputationPolicy(ban_base_s=10, forgive_after_s=1000)
    book = ReputationBook(policy)
    p1 = book.record_offence(A, Offence.BAD_REVEAL, T0)
    assert p1.banned_until is not None
    p2 = book.record_offence(A, Offence.BAD_REVEAL, p1.banned_until + 1)
    assert p2.banned_until is not None
    assert book.standing(A).ban_level == 2  # type: ignore[union-attr]
    later = p2.banned_until + 2500  # two clean periods
    p3 = book.record_offence(A, Offence.BAD_REVEAL, later)
    assert p3.banned_until == later + 10  # back to level 0


def test_evidence_is_kept_bounded_and_in_order():
    book = ReputationBook(ReputationPolicy(max_evidence_per_peer=3))
    for i in range(5):
        record = EvidenceRecord(
            job_id=bytes([i]) * 16, offence=Offence.TIMEOUT, at=T0 + i, statement=b"c%d" % i,
            counter=(b"x", b"y"),
        )
        book.record_offence(A, Offence.TIMEOUT, T0 + i * 86400, evidence=record)
    kept = book.evidence(A)
    assert [e.job_id[0] for e in kept] == [2, 3, 4]
    assert book.evidence(B) == []


def test_book_size_is_bounded_and_keeps_banned_peers():
    book = ReputationBook(ReputationPolicy(max_peers=3))
    book.record_offence(A, Offence.BAD_REVEAL, T0)  # banned
    for i in range(10):
        book.record_success(bytes([i]) * 38, T0 + i)
    assert len(book.peers()) == 3
    assert A in book
    assert book.is_banned(A, T0 + 20)


def _populated_book() -> ReputationBook:
    book = ReputationBook()
    for i in range(7):
        book.record_success(A, T0 + i)
    book.record_offence(
        B, Offence.WRONG_OUTPUT, T0 + 1,
        EvidenceRecord(job_id=b"j" * 16, offence=Offence.WRONG_OUTPUT, at=T0 + 1, detail="cos=0.2",
                       statement=b"signed-commitment", counter=(b"m1", b"m2")),
    )
    book.record_offence(B, Offence.WRONG_OUTPUT, T0 + 2)
    return book


def test_round_trip_persistence():
    book = _populated_book()
    data = book.to_bytes()
    again = ReputationBook.from_bytes(data)
    assert again.to_bytes() == data
    assert again.score(A, T0 + 10) == pytest.approx(book.score(A, T0 + 10), abs=1e-6)
    assert again.is_banned(B, T0 + 3)
    assert again.evidence(B)[0].counter == (b"m1", b"m2")
    assert again.standing(B).offences == {Offence.WRONG_OUTPUT: 2}  # type: ignore[union-attr]


def test_persisted_form_is_canonical_msgpack():
    data = _populated_book().to_bytes()
    assert encode(decode(data)) == data


@pytest.mark.parametrize(
    "mutate",
    [
        lambda root: root.update(v=2),
        lambda root: root.update(peers="x"),
        lambda root: root["peers"][0].update(score_u="high"),
        lambda root: root["peers"][0].update(peer_id="text"),
        lambda root: root["peers"][0].update(offences={"made_up": 1}),
        lambda root: root["peers"][0].update(offences={"timeout": -1}),
        lambda root: root["peers"][0].update(evidence=[{"job_id": b"x"}]),
    ],
)
def test_malformed_persisted_books_are_refused(mutate):
    root = decode(_populated_book().to_bytes())
    mutate(root)
    with pytest.raises(ReputationFormatError):
        ReputationBook.from_bytes(encode(root))


@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_loader(data):
    with contextlib.suppress(ReputationFormatError):
        ReputationBook.from_bytes(data)


@given(st.lists(st.tuples(st.sampled_from([*Offence, None]), st.floats(0, 1e6)), max_size=40))
def test_score_always_in_unit_interval(events):
    book = ReputationBook()
    now = T0
    for offence, dt in events:
        now += dt
        if offence is None:
            book.record_success(A, now)
        else:
            book.record_offence(A, offence, now)
        assert 0.0 <= book.score(A, now) <= 1.0


def test_summary_is_json_friendly():
    book = _populated_book()
    summary = book.summary(B, T0 + 3)
    assert summary["offences"] == {"wrong_output": 2}
    assert summary["banned_until"] is not None
    assert book.summary(b"unknown", T0)["score"] == book.policy.initial_score
