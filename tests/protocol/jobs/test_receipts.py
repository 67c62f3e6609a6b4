"""Receipts: round trips, every check's own refusal reason, and any mutation refused."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import decode, encode
from protocol.identity import Domain, Identity
from protocol.jobs.messages import result_digest
from protocol.jobs.receipts import (
    MAX_RECEIPT_SIZE,
    RECEIPT_LIMITS,
    Receipt,
    ReceiptError,
    StepStatus,
    verify_receipt,
)
from tests.protocol.jobs.receipt_fixtures import (
    ANSWER,
    EXECUTORS,
    INPUT_SALT,
    ISSUED,
    JOB_INPUT,
    SIGNED_FIELDS,
    WRONG,
    bundle_of,
    entry,
    make_receipt,
    policy,
)

GOOD = make_receipt()
GOOD_WIRE = GOOD.to_wire()
OUTVOTED = make_receipt(wrong_third=True)


def reasons(receipt: Receipt | bytes, **kwargs: object) -> tuple[str, ...]:
    return verify_receipt(receipt, policy=policy(), **kwargs).reasons  # type: ignore[arg-type]


def test_a_good_receipt_verifies_every_step_and_says_simulated() -> None:
    verdict = verify_receipt(GOOD_WIRE, policy=policy(), answer=ANSWER, job_input=JOB_INPUT, salt=INPUT_SALT)
    assert verdict.ok and verdict.simulated and verdict.reasons == ()
    statuses = {s.name: s.status for s in verdict.steps}
    assert statuses["receipt_signature"] is StepStatus.PASS
    assert statuses["answer"] is StepStatus.PASS and statuses["input"] is StepStatus.PASS
    assert statuses["majority"] is StepStatus.PASS
    bundles = [s for s in verdict.steps if s.name.startswith("bundle:")]
    assert len(bundles) == 3 and all(s.status is StepStatus.SIMULATED for s in bundles)
    assert all("SIMULATED" in s.detail for s in bundles)


def test_an_outvoted_executor_is_listed_and_the_receipt_still_verifies() -> None:
    verdict = verify_receipt(OUTVOTED.to_wire(), policy=policy(), answer=ANSWER)
    assert verdict.ok, verdict.steps


def test_round_trips_wire_and_json() -> None:
    assert Receipt.from_wire(GOOD_WIRE) == GOOD
    rendered = json.loads(json.dumps(GOOD.to_json()))
    assert Receipt.from_json(rendered).to_wire() == GOOD_WIRE


def test_the_default_policy_refuses_simulated_evidence() -> None:
    verdict = verify_receipt(GOOD_WIRE)
    assert not verdict.ok and "bundle_kind_not_allowed" in verdict.reasons


def test_a_swapped_answer_is_refused() -> None:
    assert reasons(GOOD_WIRE, answer=b"something else") == ("answer_mismatch",)


def test_wrong_input_or_salt_is_refused() -> None:
    assert reasons(GOOD_WIRE, job_input=b"another prompt", salt=INPUT_SALT) == ("input_mismatch",)
    assert reasons(GOOD_WIRE, job_input=JOB_INPUT, salt=bytes(32)) == ("input_mismatch",)


def test_an_answer_from_the_minority_is_refused() -> None:
    # the user's node (re-)signs a receipt returning the outvoted executor's answer
    minority = make_receipt(wrong_third=True, answer_digest=result_digest(WRONG))
    assert reasons(minority) == ("answer_not_from_winner",)


def test_a_minority_cluster_is_refused() -> None:
    a, b, c = EXECUTORS
    lonely = make_receipt(
        executors=(
            entry(a, ANSWER),
            entry(b, WRONG, offence="wrong_output"),
            entry(c, b"third", offence="wrong_output"),
        ),
        winners=(a.peer_id,),
    )
    assert reasons(lonely) == ("minority_cluster",)


def test_a_bundle_not_valid_at_job_time_is_refused() -> None:
    a, b, c = EXECUTORS
    stale = make_receipt(
        executors=(
            entry(a, ANSWER, bundle=bundle_of(a, ISSUED - 5 * 600)),
            entry(b, ANSWER),
            entry(c, ANSWER),
        )
    )
    assert "bundle_epoch_too_old" in reasons(stale) or "bundle_expired" in reasons(stale)
    # and checked at a later time, every bundle has expired
    assert "bundle_expired" in reasons(GOOD_WIRE, at=ISSUED + 48 * 3600)


def test_a_bundle_of_another_peer_or_key_is_refused() -> None:
    a, b, c = EXECUTORS
    swapped = make_receipt(
        executors=(entry(a, ANSWER, bundle=bundle_of(b)), entry(b, ANSWER), entry(c, ANSWER))
    )
    assert reasons(swapped) == ("bundle_wrong_peer",)
    other = dataclasses.replace(entry(a, ANSWER), enc_pubkey=bytes(32))
    assert reasons(make_receipt(executors=(other, entry(b, ANSWER), entry(c, ANSWER)))) == (
        "bundle_wrong_key",
    )


def test_a_commitment_for_another_job_or_opening_is_refused() -> None:
    a, b, c = EXECUTORS
    foreign = entry(a, ANSWER, job_id=bytes(16))
    got = reasons(make_receipt(executors=(foreign, entry(b, ANSWER), entry(c, ANSWER))))
    assert "commitment_wrong_job" in got
    reopened = dataclasses.replace(entry(a, ANSWER), result_digest=result_digest(b"x"))
    got = reasons(make_receipt(executors=(reopened, entry(b, ANSWER), entry(c, ANSWER))))
    assert got[0] == "reveal_mismatch"


def test_bundles_by_digest_are_not_checked_unless_supplied() -> None:
    slim = make_receipt(embed=False)
    verdict = verify_receipt(slim.to_wire(), policy=policy())
    assert verdict.ok
    assert {s.reason for s in verdict.steps if s.name.startswith("bundle:")} == {"bundle_not_available"}
    supplied = {
        e.bundle_digest: bundle_of(identity) for e, identity in zip(slim.executors, EXECUTORS, strict=True)
    }
    verdict = verify_receipt(slim.to_wire(), policy=policy(), bundles=supplied)
    assert verdict.ok and all(
        s.status is StepStatus.SIMULATED for s in verdict.steps if s.name.startswith("bundle:")
    )
    assert len(slim.to_wire()) < len(GOOD_WIRE)


def test_a_receipt_signed_by_someone_else_is_refused() -> None:
    forged = dataclasses.replace(GOOD, sig=Identity(bytes([4]) * 32).sign(Domain.RECEIPT, GOOD.signed_body()))
    assert reasons(forged.to_wire()) == ("bad_receipt_signature",)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        b"\xc1",
        encode([1]),
        encode({"v": 2, "t": "receipt"}),
        encode({"v": 1, "t": "reveal"}),
        GOOD_WIRE + b"\x00",
        b"\xdb" + (MAX_RECEIPT_SIZE + 1).to_bytes(4, "big"),
    ],
)
def test_undecodable_input_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(ReceiptError):
        Receipt.from_wire(data)


def test_unknown_and_missing_fields_are_refused() -> None:
    raw = decode(GOOD_WIRE, RECEIPT_LIMITS)
    with pytest.raises(ReceiptError, match="unknown_field"):
        Receipt.from_wire(encode({**raw, "extra": 1}))
    del raw["winners"]
    with pytest.raises(ReceiptError, match="missing_field"):
        Receipt.from_wire(encode(raw))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_single_bit_flip_is_refused(position: int, bit: int) -> None:
    data = bytearray(GOOD_WIRE)
    data[position % len(data)] ^= 1 << bit
    try:
        receipt = Receipt.from_wire(bytes(data))
    except ReceiptError:
        return
    assert not verify_receipt(receipt, policy=policy(), answer=ANSWER).ok


_FIELDS = tuple(name for name in SIGNED_FIELDS if name != "executors")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(_FIELDS), data=st.data())
def test_any_field_mutation_is_refused(name: str, data: st.DataObject) -> None:
    """Change one field to another valid value, keep the old signature: verification fails."""
    replacements = {
        "job_id": st.binary(min_size=16, max_size=16),
        "model_id": st.sampled_from(["other-model", "m:1"]),
        "task": st.just("chat"),
        "mode": st.just("spot-check"),
        "input_digest": st.binary(min_size=32, max_size=32),
        "status": st.just("no_consensus"),
        "quorum": st.integers(1, 5),
        "needed": st.integers(1, 3),
        "escalated": st.just(True),
        "comparator": st.just("exact"),
        "bounds": st.just({"min_cosine": "0.5"}),
        "created_ms": st.integers(GOOD.created_ms - 10**6, GOOD.finished_ms),
        "finished_ms": st.integers(GOOD.created_ms, GOOD.finished_ms + 10**6),
        "answer_digest": st.binary(min_size=32, max_size=32),
        "winners": st.just(tuple(sorted(e.peer_id for e in EXECUTORS[:2]))),
    }
    value = data.draw(replacements[name])
    changes: dict[str, Any] = {name: value}
    if name == "status":
        changes["answer_digest"] = b""
    try:
        mutated = dataclasses.replace(GOOD, **changes)
    except ReceiptError:
        return
    if mutated.signed_body() == GOOD.signed_body():
        return  # drew the original value
    assert "bad_receipt_signature" in verify_receipt(mutated.to_wire(), policy=policy()).reasons
