"""The router's job state machine: every recovery path as a plain, deterministic unit test."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.jobs.jobflow import (
    Answered,
    AttemptState,
    Failure,
    Finished,
    JobFlow,
    OutcomeStatus,
    RequestReveal,
    Send,
    VoteResult,
    majority_of,
)
from protocol.jobs.reputation import Offence

JOB = b"J" * 16
PEERS = [bytes([65 + i]) * 38 for i in range(12)]
A, B, C, D, E, F, G, H = PEERS[:8]
T0 = 1000.0


def commitment_of(job_id: bytes, peer_id: bytes, salt: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(b"test-commit" + job_id + peer_id + salt + digest).digest()


def digest(value: Any) -> bytes:
    return hashlib.sha256(repr(value).encode()).digest()


def exact_vote(results: Mapping[bytes, Any], needed: int) -> VoteResult:
    counts = Counter(results.values())
    if not counts:
        return VoteResult()
    value, count = counts.most_common(1)[0]
    if count < needed or list(counts.values()).count(count) > 1:
        return VoteResult(detail={"clusters": len(counts)})
    winners = tuple(sorted(p for p, v in results.items() if v == value))
    return VoteResult(winners=winners, value=value, detail={"agreeing": count, "of": len(results)})


def make_flow(ranking=PEERS[:5], quorum=3, escalation=7, deadline=60.0, **kw) -> JobFlow:
    return JobFlow(
        JOB, ranking, quorum, now=T0, deadline=T0 + deadline, commit_timeout=10.0, reveal_timeout=5.0,
        vote=exact_vote, commitment_of=commitment_of, escalation_quorum=escalation, **kw,
    )


def sends(actions) -> list[bytes]:
    return [a.peer_id for a in actions if isinstance(a, Send)]


def reveal_requests(actions) -> list[bytes]:
    return [a.peer_id for a in actions if isinstance(a, RequestReveal)]


def finished(actions):
    done = [a for a in actions if isinstance(a, Finished)]
    assert len(done) <= 1
    return done[0].outcome if done else None


def commit(flow: JobFlow, peer: bytes, value: Any, now: float, salt: bytes = b"s" * 16):
    c = commitment_of(JOB, peer, salt, digest(value))
    return flow.on_commit(peer, c, b"signed:" + peer[:1], now)


def reveal(flow: JobFlow, peer: bytes, value: Any, now: float, salt: bytes = b"s" * 16):
    return flow.on_reveal(peer, salt, digest(value), value, now)


def run_honest(flow: JobFlow, values: Mapping[bytes, Any], now: float = T0 + 1):
    """Commit and reveal for each peer that was sent the job, in order; returns the last actions."""
    actions: list = []
    for peer, value in values.items():
        actions = commit(flow, peer, value, now)
    for peer, value in values.items():
        actions = reveal(flow, peer, value, now + 1)
    return actions


def test_happy_path_three_agree():
    flow = make_flow()
    assert sends(flow.start(T0)) == [A, B, C]
    assert commit(flow, A, "x", T0 + 1) == []  # reveals wait for the quorum's commitments
    assert commit(flow, B, "x", T0 + 1) == []
    assert reveal_requests(commit(flow, C, "x", T0 + 2)) == [A, B, C]
    assert reveal(flow, A, "x", T0 + 3) == []
    assert reveal(flow, B, "x", T0 + 3) == []
    outcome = finished(reveal(flow, C, "x", T0 + 3))
    assert outcome.status is OutcomeStatus.OK and outcome.ok
    assert outcome.value == "x"
    assert set(outcome.winners) == {A, B, C} == set(outcome.successes)
    assert outcome.penalties == ()
    assert not outcome.escalated
    assert flow.done


def test_wrong_output_is_outvoted_and_evidenced():
    flow = make_flow()
    flow.start(T0)
    outcome = finished(run_honest(flow, {A: "x", B: "WRONG", C: "x"}))
    assert outcome.ok and outcome.value == "x"
    assert set(outcome.winners) == {A, C}
    ((peer, offence, record),) = outcome.penalties
    assert peer == B and offence is Offence.WRONG_OUTPUT
    assert record.statement == b"signed:B" and set(record.counter) == {b"signed:A", b"signed:C"}
    assert record.job_id == JOB


def test_busy_executor_is_replaced_without_offence():
    flow = make_flow()
    flow.start(T0)
    assert sends(flow.on_failure(B, Failure.BUSY, "queue full", T0 + 0.1)) == [D]
    outcome = finished(run_honest(flow, {A: "x", C: "x", D: "x"}))
    assert outcome.ok and set(outcome.winners) == {A, C, D}
    assert outcome.penalties == ()
    assert flow.attempt(B).failure is Failure.BUSY


def test_timeout_is_replaced_and_penalised():
    flow = make_flow()
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    commit(flow, C, "x", T0 + 1)
    assert flow.next_deadline() == T0 + 10
    actions = flow.on_tick(T0 + 10)
    assert sends(actions) == [D]
    # the commit window of the round has passed: committed peers reveal now, the newcomer later
    assert reveal_requests(actions) == [A, C]
    reveal(flow, A, "x", T0 + 11)
    reveal(flow, C, "x", T0 + 11)
    assert reveal_requests(commit(flow, D, "x", T0 + 12)) == [D]
    outcome = finished(reveal(flow, D, "x", T0 + 12))
    assert outcome.ok
    assert [(p, o) for p, o, _ in outcome.penalties] == [(B, Offence.TIMEOUT)]


def test_progress_restarts_the_commit_timeout_of_a_working_executor():
    """A live primary streams tokens before it commits: while it shows progress it is not timed
    out (nor replaced); once it stops, the commit timeout runs from its last progress."""
    flow = make_flow(ranking=[A, B], quorum=1, escalation=0)
    assert sends(flow.start(T0)) == [A]
    assert flow.on_progress(A, T0 + 8) == []
    assert flow.on_tick(T0 + 12) == []  # past sent + timeout, but it showed progress at T0 + 8
    assert flow.attempt(A).state is AttemptState.SENT
    assert flow.next_deadline() == T0 + 18
    flow.on_progress(A, T0 + 15)
    assert flow.on_tick(T0 + 24) == []
    actions = flow.on_tick(T0 + 25)
    assert sends(actions) == [B] and flow.attempt(A).failure is Failure.TIMEOUT
    assert flow.on_progress(A, T0 + 26) == [] and flow.attempt(A).state is AttemptState.FAILED
    commit(flow, B, "x", T0 + 27)
    assert finished(reveal(flow, B, "x", T0 + 28)).ok


def test_crash_mid_job_is_replaced():
    flow = make_flow()
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    commit(flow, B, "x", T0 + 1)
    assert sends(flow.on_failure(C, Failure.CRASH, "stream reset", T0 + 1.5)) == [D]
    # the gate stays closed until D commits (or the window passes)
    assert reveal_requests(commit(flow, D, "x", T0 + 2)) == [A, B, D]
    for p in (A, B):
        reveal(flow, p, "x", T0 + 3)
    outcome = finished(reveal(flow, D, "x", T0 + 3))
    assert outcome.ok and [(p, o) for p, o, _ in outcome.penalties] == [(C, Offence.CRASH)]


def test_dropped_reveal_times_out_and_a_replacement_runs_the_job():
    flow = make_flow()
    flow.start(T0)
    for p in (A, B, C):
        commit(flow, p, "x", T0 + 1)
    reveal(flow, A, "x", T0 + 2)
    reveal(flow, B, "x", T0 + 2)
    assert flow.next_deadline() == T0 + 1 + 5
    actions = flow.on_tick(T0 + 6)
    assert sends(actions) == [D]
    commit(flow, D, "x", T0 + 7)
    outcome = finished(reveal(flow, D, "x", T0 + 7))
    assert outcome.ok and set(outcome.winners) == {A, B, D}
    assert [(p, o) for p, o, _ in outcome.penalties] == [(C, Offence.NO_REVEAL)]
    (_, _, record) = outcome.penalties[0]
    assert record.statement == b"signed:C"  # the commitment it never opened


def test_reveal_that_does_not_open_the_commitment_is_a_bad_reveal():
    flow = make_flow()
    flow.start(T0)
    for p in (A, B, C):
        commit(flow, p, "x", T0 + 1)
    reveal(flow, A, "x", T0 + 2)
    reveal(flow, B, "x", T0 + 2)
    actions = reveal(flow, C, "changed-my-mind", T0 + 2)
    assert sends(actions) == [D]
    assert flow.attempt(C).failure is Failure.BAD_REVEAL
    commit(flow, D, "x", T0 + 3)
    outcome = finished(reveal(flow, D, "x", T0 + 3))
    assert outcome.ok
    assert [(p, o) for p, o, _ in outcome.penalties] == [(C, Offence.BAD_REVEAL)]


def test_wrong_salt_is_a_bad_reveal():
    flow = make_flow()
    flow.start(T0)
    for p in (A, B, C):
        commit(flow, p, "x", T0 + 1)
    reveal(flow, A, "x", T0 + 2, salt=b"t" * 16)
    assert flow.attempt(A).failure is Failure.BAD_REVEAL


def test_copied_commitment_cannot_be_opened_by_the_copier():
    """Commitments bind the committer's peer id: a copy of A's commitment fails for B."""
    flow = make_flow()
    flow.start(T0)
    a_commitment = commitment_of(JOB, A, b"s" * 16, digest("x"))
    flow.on_commit(A, a_commitment, b"signed:A", T0 + 1)
    flow.on_commit(B, a_commitment, b"signed:B", T0 + 1)
    commit(flow, C, "x", T0 + 1)
    reveal(flow, B, "x", T0 + 2)
    assert flow.attempt(B).failure is Failure.BAD_REVEAL


def test_no_majority_escalates_to_fresh_executors_and_wins():
    flow = make_flow(ranking=PEERS[:10], quorum=3, escalation=7)
    flow.start(T0)
    for p, v in {A: "x", B: "y", C: "z"}.items():
        commit(flow, p, v, T0 + 1)
    reveal(flow, A, "x", T0 + 2)
    reveal(flow, B, "y", T0 + 2)
    actions = reveal(flow, C, "z", T0 + 2)
    assert finished(actions) is None
    assert sends(actions) == PEERS[3:10]
    assert flow.round == 1
    fresh = {p: "x" for p in PEERS[3:10]}
    fresh[PEERS[9]] = "q"
    outcome = finished(run_honest(flow, fresh, T0 + 3))
    assert outcome.ok and outcome.escalated and outcome.value == "x"
    losers = {p for p, o, _ in outcome.penalties if o is Offence.WRONG_OUTPUT}
    assert losers == {B, C, PEERS[9]}
    assert outcome.vote_detail == {"agreeing": 7, "of": 10}


def test_escalation_with_few_fresh_peers_uses_what_exists():
    flow = make_flow(ranking=[A, B, C, D], quorum=3, escalation=7)
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    commit(flow, B, "y", T0 + 1)
    flow.on_failure(C, Failure.CRASH, "", T0 + 1)  # D replaces C in round 0
    actions = commit(flow, D, "z", T0 + 1)
    assert reveal_requests(actions) == [A, B, D]
    reveal(flow, A, "x", T0 + 2)
    reveal(flow, B, "y", T0 + 2)
    outcome = finished(reveal(flow, D, "z", T0 + 2))
    assert outcome.status is OutcomeStatus.NO_CONSENSUS  # nobody fresh left to escalate to
    assert not outcome.escalated
    assert outcome.value is None and outcome.winners == ()


def test_escalation_that_still_disagrees_is_no_consensus():
    flow = make_flow(ranking=PEERS[:6], quorum=3, escalation=7)
    flow.start(T0)
    run_honest(flow, {A: "x", B: "y", C: "z"})
    assert flow.round == 1
    outcome = finished(run_honest(flow, {D: "x", E: "y", F: "z"}, T0 + 5))
    assert outcome.status is OutcomeStatus.NO_CONSENSUS and outcome.escalated
    assert "no cluster" in outcome.message
    assert outcome.penalties == ()  # nobody is proven wrong without a majority


def test_escalation_only_once():
    flow = make_flow(ranking=PEERS[:12], quorum=1, escalation=1, needed=1)
    flow.start(T0)
    # quorum 1 always agrees with itself, so force disagreement with quorum 2 instead
    flow2 = make_flow(ranking=PEERS[:12], quorum=2, escalation=1)
    flow2.start(T0)
    run_honest(flow2, {A: "x", B: "y"})
    assert flow2.round == 1
    outcome = finished(run_honest(flow2, {C: "z"}, T0 + 5))
    assert outcome.status is OutcomeStatus.NO_CONSENSUS
    assert flow2.remaining_candidates() == 9
    assert flow.round == 0


def test_two_of_three_with_no_replacement_left_still_decides():
    flow = make_flow(ranking=[A, B, C], quorum=3)
    flow.start(T0)
    actions = flow.on_failure(C, Failure.CRASH, "dead", T0 + 0.5)
    assert sends(actions) == []
    outcome = finished(run_honest(flow, {A: "x", B: "x"}))
    assert outcome.ok and set(outcome.winners) == {A, B}


def test_single_survivor_is_not_a_majority_of_three():
    flow = make_flow(ranking=[A, B, C], quorum=3)
    flow.start(T0)
    flow.on_failure(B, Failure.BUSY, "", T0)
    flow.on_failure(C, Failure.BUSY, "", T0)
    outcome = finished(run_honest(flow, {A: "x"}))
    assert outcome.status is OutcomeStatus.UNAVAILABLE
    assert "busy" in outcome.message


def test_everyone_busy_is_unavailable_before_the_deadline():
    flow = make_flow(ranking=[A, B, C, D], quorum=3)
    flow.start(T0)
    outcome = None
    for i, p in enumerate([A, B, C, D]):
        outcome = finished(flow.on_failure(p, Failure.BUSY, "queue full", T0 + i * 0.01)) or outcome
    assert outcome is not None and outcome.status is OutcomeStatus.UNAVAILABLE
    assert outcome.penalties == ()


def test_no_candidates_is_unavailable_at_once():
    flow = make_flow(ranking=[])
    outcome = finished(flow.start(T0))
    assert outcome.status is OutcomeStatus.UNAVAILABLE
    assert outcome.message == "no eligible executor"


def test_deadline_with_a_majority_in_hand_succeeds():
    flow = make_flow(ranking=[A, B, C], quorum=3, deadline=8.0)
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    commit(flow, B, "x", T0 + 1)
    # C is slow; the commit window is 10 s but the deadline comes first
    assert flow.next_deadline() == T0 + 8
    outcome = finished(flow.on_tick(T0 + 8))
    # reveals were never requested (gate closed), so there is nothing to vote on
    assert outcome.status is OutcomeStatus.DEADLINE
    assert flow.attempt(C).failure is Failure.ABANDONED


def test_deadline_after_reveals_uses_the_majority():
    flow = make_flow(ranking=[A, B, C], quorum=3, deadline=12.0)
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    commit(flow, B, "x", T0 + 1)
    flow.on_tick(T0 + 10)  # window passes: C times out, A and B asked to reveal
    reveal(flow, A, "x", T0 + 10.5)
    reveal(flow, B, "x", T0 + 10.5)
    outcome = flow.outcome
    assert outcome is not None and outcome.ok  # nobody left to wait for: decided at once
    assert [(p, o) for p, o, _ in outcome.penalties] == [(C, Offence.TIMEOUT)]


def test_deadline_with_disagreeing_results_is_no_consensus():
    flow = make_flow(ranking=[A, B, C, D], quorum=2, deadline=12.0, escalation=0)
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    commit(flow, B, "y", T0 + 1)
    reveal(flow, A, "x", T0 + 2)
    outcome = finished(flow.on_tick(T0 + 12))
    assert outcome.status is OutcomeStatus.DEADLINE
    flow2 = make_flow(ranking=[A, B, C, D], quorum=2, deadline=12.0, escalation=0)
    flow2.start(T0)
    outcome2 = finished(run_honest(flow2, {A: "x", B: "y"}))
    assert outcome2.status is OutcomeStatus.NO_CONSENSUS


def test_events_after_finish_or_from_strangers_are_ignored():
    flow = make_flow()
    flow.start(T0)
    assert commit(flow, H, "x", T0) == []  # never sent the job
    assert reveal(flow, A, "x", T0) == []  # reveal before commit
    run_honest(flow, {A: "x", B: "x", C: "x"})
    assert flow.done
    assert commit(flow, D, "x", T0 + 5) == []
    assert flow.on_failure(A, Failure.CRASH, "", T0 + 5) == []
    assert flow.on_tick(T0 + 100) == []


def test_duplicate_commit_is_ignored_and_empty_commit_is_malformed():
    flow = make_flow()
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    assert flow.on_commit(A, b"other", b"", T0 + 1) == []
    assert flow.attempt(A).commitment == commitment_of(JOB, A, b"s" * 16, digest("x"))
    assert sends(flow.on_commit(B, b"", b"", T0 + 1)) == [D]
    assert flow.attempt(B).failure is Failure.MALFORMED


def test_spot_check_unverified_single_executor():
    flow = make_flow(quorum=1, escalation=0)
    assert sends(flow.start(T0)) == [A]
    assert reveal_requests(commit(flow, A, "x", T0 + 1)) == [A]
    outcome = finished(reveal(flow, A, "x", T0 + 2))
    assert outcome.ok and outcome.winners == (A,)


def test_spot_check_verified_primary_outvoted():
    flow = make_flow(quorum=4, escalation=0)  # 1 primary + 3 verifiers
    flow.start(T0)
    outcome = finished(run_honest(flow, {A: "lie", B: "x", C: "x", D: "x"}))
    assert outcome.ok and outcome.value == "x"
    assert [(p, o) for p, o, _ in outcome.penalties] == [(A, Offence.WRONG_OUTPUT)]


def test_constructor_validates():
    with pytest.raises(ValueError):
        make_flow(quorum=0)
    with pytest.raises(ValueError):
        make_flow(deadline=0)
    with pytest.raises(ValueError):
        make_flow(quorum=3, needed=4)
    with pytest.raises(ValueError):
        make_flow(escalation=-1)
    flow = make_flow()
    flow.start(T0)
    with pytest.raises(RuntimeError):
        flow.start(T0)


def test_majority_of():
    assert [majority_of(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]



def test_a_pipelined_reveal_is_held_until_the_quorum_has_committed():
    # each executor reveals right after committing (the client asked with the job); the flow
    # counts a reveal only once the gate opens, exactly when it would have asked for it
    flow = make_flow()
    flow.start(T0)
    assert commit(flow, A, "x", T0 + 1) == [] and reveal(flow, A, "x", T0 + 1) == []
    assert flow.attempt(A).state is AttemptState.COMMITTED  # held, not yet revealed
    assert commit(flow, B, "WRONG", T0 + 2) == [] and reveal(flow, B, "WRONG", T0 + 2) == []
    actions = commit(flow, C, "x", T0 + 3)  # the gate opens: A and B count now, C is asked
    assert reveal_requests(actions) == [C] and finished(actions) is None
    assert flow.attempt(A).state is AttemptState.REVEALED and flow.attempt(A).revealed_at == T0 + 1
    outcome = finished(reveal(flow, C, "x", T0 + 4))
    assert outcome.ok and outcome.value == "x" and set(outcome.winners) == {A, C}
    assert [(peer, offence) for peer, offence, _ in outcome.penalties] == [(B, Offence.WRONG_OUTPUT)]


def test_a_pipelined_reveal_that_does_not_open_the_commitment_is_a_bad_reveal_at_once():
    flow = make_flow()
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    assert sends(reveal(flow, A, "other", T0 + 1)) == [D]  # replaced at once, not at the gate
    assert flow.attempt(A).failure is Failure.BAD_REVEAL


def test_a_second_early_reveal_does_not_replace_the_first():
    flow = make_flow(quorum=2, escalation=0)
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    reveal(flow, A, "x", T0 + 1)
    assert reveal(flow, A, "y", T0 + 1) == []  # ignored: one reveal per attempt
    commit(flow, B, "x", T0 + 2)
    outcome = finished(reveal(flow, B, "x", T0 + 3))
    assert outcome.ok and outcome.value == "x" and set(outcome.winners) == {A, B}


# ---------------------------------------------------------------- property test: random schedules

BEHAVIOURS = ["honest", "wrong", "busy", "crash", "slow", "drop_reveal", "bad_reveal", "pipelined",
              "pipelined_wrong", "pipelined_bad"]


@settings(max_examples=300, deadline=None)
@given(
    behaviours=st.lists(st.sampled_from(BEHAVIOURS), min_size=0, max_size=10),
    quorum=st.integers(min_value=1, max_value=4),
    escalation=st.sampled_from([0, 3, 7]),
    answer_early=st.booleans(),
)
def test_every_schedule_finishes_before_the_deadline_with_a_sound_outcome(
    behaviours, quorum, escalation, answer_early
):
    """Whatever executors do, the flow finishes by the deadline, never accepts a minority answer,
    never sends one peer the job twice, and only penalises peers that misbehaved; an answer given
    early (rule 6) is the final one."""
    peers = PEERS[: len(behaviours)]
    behaviour = dict(zip(peers, behaviours, strict=True))
    deadline = T0 + 60
    flow = make_flow(
        ranking=peers, quorum=quorum, escalation=escalation, deadline=60.0, answer_early=answer_early
    )
    early_answers = []
    sent: list[bytes] = []
    now = T0
    pending = list(flow.start(now))

    def value_of(p: bytes) -> str:
        return "wrong-" + p[:1].decode() if behaviour[p] in ("wrong", "pipelined_wrong") else "x"

    steps = 0
    while not flow.done:
        steps += 1
        assert steps < 1000
        while pending:
            action = pending.pop(0)
            if isinstance(action, Answered):
                assert answer_early and not early_answers
                early_answers.append(action.outcome)
            elif isinstance(action, Send):
                assert action.peer_id not in sent
                sent.append(action.peer_id)
                b = behaviour[action.peer_id]
                if b == "busy":
                    pending += flow.on_failure(action.peer_id, Failure.BUSY, "", now)
                elif b == "crash":
                    pending += flow.on_failure(action.peer_id, Failure.CRASH, "", now)
                elif b != "slow":
                    pending += commit(flow, action.peer_id, value_of(action.peer_id), now)
                if b.startswith("pipelined"):  # reveals right behind its commitment, unasked
                    revealed = "other" if b == "pipelined_bad" else value_of(action.peer_id)
                    pending += reveal(flow, action.peer_id, revealed, now)
            elif isinstance(action, RequestReveal):
                b = behaviour[action.peer_id]
                if b.startswith("pipelined"):
                    continue  # revealed already (before the gate, or right after this request)
                elif b == "bad_reveal":
                    pending += reveal(flow, action.peer_id, "other", now)
                elif b != "drop_reveal":
                    pending += reveal(flow, action.peer_id, value_of(action.peer_id), now)
        if flow.done:
            break
        now = flow.next_deadline()
        assert now <= deadline
        pending += flow.on_tick(now)
    outcome = flow.outcome
    assert outcome is not None
    assert now <= deadline
    if outcome.ok and quorum >= 2:
        assert outcome.value == "x"  # wrong outputs are all distinct, so they never form a majority
        assert len(outcome.winners) >= min(flow.needed, quorum)
        assert all(behaviour[p] in ("honest", "pipelined") for p in outcome.winners)
    offenders = {p for p, _, _ in outcome.penalties}
    assert all(behaviour[p] not in ("honest", "pipelined", "busy") for p in offenders)
    for a in outcome.attempts:
        assert a.state in (AttemptState.REVEALED, AttemptState.FAILED)
    if early_answers:
        assert outcome.ok and outcome.value == early_answers[0].value == "x"
        assert set(early_answers[0].winners) <= set(outcome.winners)


# ---------------------------------------------------------------- rule 6: answer at a majority


def answered(actions):
    done = [a for a in actions if isinstance(a, Answered)]
    assert len(done) <= 1
    return done[0].outcome if done else None


def test_an_early_majority_answers_before_the_slowest_executor_commits():
    flow = make_flow(answer_early=True)
    assert sends(flow.start(T0)) == [A, B, C]
    for peer in (A, B):  # pipelined: each commits and reveals at once; the gate holds the reveals
        assert commit(flow, peer, "x", T0 + 1) == []
    assert reveal(flow, A, "x", T0 + 1) == []
    provisional = answered(reveal(flow, B, "x", T0 + 1))
    assert provisional is not None and provisional.value == "x" and set(provisional.winners) == {A, B}
    assert provisional.penalties == () and not flow.done
    assert {a.peer_id: a.state for a in provisional.attempts}[C] is AttemptState.SENT
    commit(flow, C, "x", T0 + 2)
    outcome = finished(reveal(flow, C, "x", T0 + 2))
    assert outcome.status is OutcomeStatus.OK and outcome.value == "x"
    assert set(outcome.winners) == {A, B, C} and outcome.penalties == ()


def test_a_slow_executor_that_disagrees_is_still_judged_after_the_answer():
    flow = make_flow(answer_early=True)
    flow.start(T0)
    run_honest(flow, {A: "x", B: "x"})
    assert flow.outcome is None
    commit(flow, C, "wrong", T0 + 3)
    outcome = finished(reveal(flow, C, "wrong", T0 + 3))
    assert outcome.value == "x" and set(outcome.winners) == {A, B}
    assert [(p, o) for p, o, _ in outcome.penalties] == [(C, Offence.WRONG_OUTPUT)]
    evidence = outcome.penalties[0][2]
    assert evidence.counter == (b"signed:A", b"signed:B")  # the answer's signed commitments


def test_after_the_answer_a_failed_executor_is_penalised_and_not_replaced():
    flow = make_flow(answer_early=True)
    flow.start(T0)
    run_honest(flow, {A: "x", B: "x"})
    actions = flow.on_tick(T0 + 10.0)  # C's commit window has passed
    assert sends(actions) == []  # D is not asked: two of three agree already
    outcome = finished(actions)
    assert outcome.value == "x" and set(outcome.winners) == {A, B}
    assert [(p, o) for p, o, _ in outcome.penalties] == [(C, Offence.TIMEOUT)]


def test_a_disagreeing_pair_waits_for_the_third():
    flow = make_flow(answer_early=True)
    flow.start(T0)
    commit(flow, A, "x", T0 + 1)
    commit(flow, B, "y", T0 + 1)
    assert answered(reveal(flow, A, "x", T0 + 1)) is None
    assert answered(reveal(flow, B, "y", T0 + 1)) is None
    actions = commit(flow, C, "y", T0 + 2)
    outcome = finished(actions + reveal(flow, C, "y", T0 + 2))
    assert outcome.value == "y" and set(outcome.winners) == {B, C}
    assert [(p, o) for p, o, _ in outcome.penalties] == [(A, Offence.WRONG_OUTPUT)]


def test_the_answer_holds_at_the_deadline_and_a_member_breaking_after_it_is_no_fault():
    flow = make_flow(answer_early=True, deadline=5.0)
    flow.start(T0)
    run_honest(flow, {A: "x", B: "x"})
    assert flow.on_failure(A, Failure.CRASH, "stream closed", T0 + 3) == []
    outcome = finished(flow.on_tick(T0 + 5.0))
    assert outcome.status is OutcomeStatus.OK and outcome.value == "x" and set(outcome.winners) == {A, B}
    assert outcome.penalties == ()  # C was still running: abandoned, not an offence
    assert {a.peer_id: a.failure for a in outcome.attempts}[C] is Failure.ABANDONED


def test_without_answer_early_nothing_is_answered_before_the_end():
    flow = make_flow()
    flow.start(T0)
    assert all(answered([a]) is None for a in run_honest(flow, {A: "x", B: "x"}))
    assert flow.outcome is None
