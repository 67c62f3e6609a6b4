"""Offence records: each kind proves itself, and every forgery or mutation is refused."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.identity import Identity
from protocol.jobs.messages import Commitment, Reveal, result_digest
from protocol.jobs.offences import OffenceError, OffenceKind, OffenceRecord, verify_offence
from tests.protocol.jobs.receipt_fixtures import EXECUTORS, JOB_ID, USER, make_receipt, wrong_output_record

OFFENDER = EXECUTORS[2]
SALT = bytes([3]) * 32


def commitment(result: bytes, identity: Identity = OFFENDER, job_id: bytes = JOB_ID) -> bytes:
    return Commitment.create(
        identity, job_id=job_id, salt=SALT, result_digest=result_digest(result), queue_ms=0, compute_ms=1
    ).to_wire()


def wrong_output(reporter: Identity = USER) -> OffenceRecord:
    return wrong_output_record(reporter)


def equivocation() -> OffenceRecord:
    return OffenceRecord.create(
        USER,
        OffenceKind.EQUIVOCATION,
        job_id=JOB_ID,
        offender=OFFENDER.peer_id,
        statement=commitment(b"a"),
        proof=commitment(b"b"),
    )


def bad_reveal(opens: bool = False) -> OffenceRecord:
    reveal = Reveal.create(
        OFFENDER,
        job_id=JOB_ID,
        salt=SALT,
        result_digest=result_digest(b"a" if opens else b"b"),
        result_nonce=b"\x24" * 24,
        sealed_result=b"sealed-result-and-tag",
    )
    return OffenceRecord.create(
        USER,
        OffenceKind.BAD_REVEAL,
        job_id=JOB_ID,
        offender=OFFENDER.peer_id,
        statement=commitment(b"a"),
        proof=reveal.to_wire(),
    )


@pytest.mark.parametrize("make", [wrong_output, equivocation, bad_reveal])
def test_each_kind_verifies_and_round_trips(make) -> None:  # type: ignore[no-untyped-def]
    record = make()
    wire = record.to_wire()
    assert OffenceRecord.from_wire(wire) == record
    assert verify_offence(wire) == record


def test_an_outvoted_executor_cannot_be_framed_by_a_receipt_that_does_not_show_it() -> None:
    record = wrong_output_record(receipt=make_receipt(embed=False))  # all three agreed
    with pytest.raises(OffenceError, match="not_an_offence"):
        verify_offence(record.to_wire())


def test_a_reporter_that_is_not_the_receipts_user_is_refused() -> None:
    with pytest.raises(OffenceError, match="bad_proof"):
        verify_offence(wrong_output(reporter=Identity(bytes([8]) * 32)).to_wire())


def test_equal_commitments_and_an_opening_reveal_are_no_offence() -> None:
    same = dataclasses.replace(equivocation(), proof=commitment(b"a"))
    resigned = OffenceRecord.create(
        USER,
        same.kind,
        job_id=same.job_id,
        offender=same.offender,
        statement=same.statement,
        proof=same.proof,
    )
    with pytest.raises(OffenceError, match="not_an_offence"):
        verify_offence(resigned)
    with pytest.raises(OffenceError, match="not_an_offence"):
        verify_offence(bad_reveal(opens=True))


def test_a_statement_signed_by_someone_else_is_refused() -> None:
    forged = OffenceRecord.create(
        USER,
        OffenceKind.EQUIVOCATION,
        job_id=JOB_ID,
        offender=OFFENDER.peer_id,
        statement=commitment(b"a", identity=EXECUTORS[0]),
        proof=commitment(b"b"),
    )
    with pytest.raises(OffenceError, match="bad_statement"):
        verify_offence(forged)
    other_job = OffenceRecord.create(
        USER,
        OffenceKind.EQUIVOCATION,
        job_id=JOB_ID,
        offender=OFFENDER.peer_id,
        statement=commitment(b"a"),
        proof=commitment(b"b", job_id=bytes(16)),
    )
    with pytest.raises(OffenceError, match="bad_statement"):
        verify_offence(other_job)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from(["wrong_output", "equivocation", "bad_reveal"]),
    position=st.integers(0),
    bit=st.integers(0, 7),
)
def test_any_bit_flip_is_refused(which: str, position: int, bit: int) -> None:
    record = {"wrong_output": WRONG, "equivocation": EQUIVOCATION, "bad_reveal": BAD_REVEAL}[which]
    data = bytearray(record)
    data[position % len(data)] ^= 1 << bit
    with pytest.raises(OffenceError):
        verify_offence(bytes(data))


WRONG = wrong_output().to_wire()
EQUIVOCATION = equivocation().to_wire()
BAD_REVEAL = bad_reveal().to_wire()
