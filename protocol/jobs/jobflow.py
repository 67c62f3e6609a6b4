"""The router's per-job state machine: who runs the job, when to ask for reveals, when to vote.

Sans-IO in the h11 style: the router feeds events in (``start``, ``on_commit``, ``on_reveal``,
``on_failure``, ``on_tick``) with the current time, and gets :class:`Action` values back
(``Send`` the job to a peer, ``RequestReveal`` from a peer, ``Finished`` with the outcome). The
flow never sleeps and never touches a socket, so every recovery path (timeouts, busy executors,
dead streams, missing reveals, disagreement, escalation) is a plain unit test.

Rules, in the order they apply:

1. ``ranking`` is the full rendezvous order of eligible executors (protocol.jobs.selection); the flow
   keeps ``target`` attempts alive, taking the next unused peer from the ranking whenever one
   fails, is busy or times out (replacement), as long as the deadline has not passed.
2. Reveals are requested once every live attempt has committed, or once the commit window of the
   round has passed (then from those that have committed; later commits are asked at once).
   Executors seal results to the client's ephemeral key, so no executor can see another's result
   before committing; the signed commitment makes any later change of answer provable. A reveal
   that arrives before it was asked for (the client pipelined its reveal request behind the job,
   so the executor revealed right after committing) is checked against the commitment at once
   and held: it counts only when the gate above would have asked for it, so the vote sees exactly
   what it would have seen without pipelining, one round trip sooner.
3. A reveal must open the executor's own commitment (``commitment_of(job_id, peer, salt,
   digest) == commitment``), otherwise the attempt fails with a provable ``bad_reveal``.
4. When every live attempt has revealed, the voter clusters the results. A cluster of at least
   ``needed`` members (a majority of the quorum) wins; revealed results outside it are
   ``wrong_output`` offences, evidenced by the offender's signed commitment against the
   winners'. With no winner the job escalates once: ``escalation_quorum`` (2k+1) fresh
   executors are added and the vote is repeated over all results, needing a strict majority of
   them. Still no winner is a ``no_consensus`` outcome.
5. At the deadline the flow votes with whatever it holds; if that is not enough it finishes with
   ``deadline`` (or ``no_consensus`` when results exist but disagree). The caller therefore always
   gets an outcome before the deadline, never silence.
6. With ``answer_early``, a first-round cluster of ``needed`` results, each opening its own
   signed commitment, is the answer as soon as it exists (``Answered``), pipelined reveals that the
   gate of rule 2 still holds included: the attempts still running cannot outvote a majority of
   the quorum, so the caller need not wait for the slowest executor. The flow goes on until rule 4 or
   5 finishes it; each later reveal is then judged against the answered cluster (it joins the
   winners when the voter finds it in agreement with all of them, else it is ``wrong_output``),
   so a slow executor is checked exactly as a fast one; one that fails is not replaced. The answer
   never changes.

Why one module over 500 lines: the six rules act on one attempt table and one deadline, and each
event handler must see all of them (an early reveal, for instance, touches rules 2, 4 and 6).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from protocol.jobs.reputation import EvidenceRecord, Offence

__all__ = [
    "Action",
    "Answered",
    "Attempt",
    "AttemptState",
    "CommitmentFn",
    "Failure",
    "Finished",
    "JobFlow",
    "Outcome",
    "OutcomeStatus",
    "RequestReveal",
    "Send",
    "VoteResult",
    "Voter",
    "majority_of",
]


class AttemptState(StrEnum):
    SENT = "sent"
    COMMITTED = "committed"
    REVEAL_REQUESTED = "reveal_requested"
    REVEALED = "revealed"
    FAILED = "failed"


class Failure(StrEnum):
    """Why an attempt ended without a usable result. Stable strings (reports, metrics)."""

    BUSY = "busy"  # executor's queue is full: backpressure, not misbehaviour
    REFUSED = "refused"  # executor returned a typed error that is not its fault (expired, unknown model)
    TIMEOUT = "timeout"  # no commitment within the commit timeout
    CRASH = "crash"  # the stream or connection died
    NO_REVEAL = "no_reveal"  # committed but did not reveal within the reveal timeout
    BAD_REVEAL = "bad_reveal"  # the reveal did not open the commitment, or did not decrypt
    MALFORMED = "malformed"  # bytes that violate the protocol (bad signature, bad schema)
    CHALLENGE_FAILED = "challenge_failed"  # failed a fresh attestation challenge
    ABANDONED = "abandoned"  # still running when the job finished (not an offence)


_OFFENCE_OF_FAILURE: Mapping[Failure, Offence] = {
    Failure.TIMEOUT: Offence.TIMEOUT,
    Failure.CRASH: Offence.CRASH,
    Failure.NO_REVEAL: Offence.NO_REVEAL,
    Failure.BAD_REVEAL: Offence.BAD_REVEAL,
    Failure.MALFORMED: Offence.MALFORMED,
    Failure.CHALLENGE_FAILED: Offence.ATTESTATION_FAILED,
}


class OutcomeStatus(StrEnum):
    OK = "ok"
    NO_CONSENSUS = "no_consensus"  # results disagree even after escalation
    UNAVAILABLE = "unavailable"  # no executor could take the job (none eligible, all busy or failed)
    DEADLINE = "deadline"  # the deadline passed before enough results arrived


@dataclass
class Attempt:
    """One executor's part in the job, with the timings the verification report shows."""

    peer_id: bytes
    round: int  # 0 = initial quorum, 1 = escalation
    sent_at: float
    state: AttemptState = AttemptState.SENT
    commitment: bytes = b""
    statement: bytes = b""  # the signed commitment as received (evidence)
    committed_at: float | None = None
    reveal_requested_at: float | None = None
    revealed_at: float | None = None
    result: Any = None
    failure: Failure | None = None
    detail: str = ""
    progress_at: float | None = None  # last sign of work before the commitment (live streams)
    early: tuple[Any, float] | None = None  # (result, when) of a reveal that came before it was asked

    @property
    def live(self) -> bool:
        return self.state is not AttemptState.FAILED

    @property
    def commit_window_from(self) -> float:
        """The commit timeout counts from the last sign of work, or from the send."""
        return self.sent_at if self.progress_at is None else self.progress_at


@dataclass(frozen=True)
class VoteResult:
    """The voter's decision: ``winners`` empty means no cluster reached ``needed``.

    ``value`` is the result to return (e.g. the medoid of the winning cluster); ``detail`` holds
    JSON-friendly agreement figures for the report (e.g. minimum cosine within the cluster).
    """

    winners: tuple[bytes, ...] = ()
    value: Any = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class Voter(Protocol):
    def __call__(self, results: Mapping[bytes, Any], needed: int) -> VoteResult: ...


CommitmentFn = Callable[[bytes, bytes, bytes, bytes], bytes]
"""(job_id, peer_id, salt, result_digest) -> commitment bytes (protocol.jobs.messages defines it)."""


@dataclass(frozen=True)
class Send:
    peer_id: bytes
    round: int


@dataclass(frozen=True)
class RequestReveal:
    peer_id: bytes


@dataclass(frozen=True)
class Outcome:
    status: OutcomeStatus
    value: Any
    winners: tuple[bytes, ...]
    escalated: bool
    attempts: tuple[Attempt, ...]
    penalties: tuple[tuple[bytes, Offence, EvidenceRecord], ...]
    successes: tuple[bytes, ...]
    vote_detail: Mapping[str, Any]
    message: str

    @property
    def ok(self) -> bool:
        return self.status is OutcomeStatus.OK


@dataclass(frozen=True)
class Finished:
    outcome: Outcome


@dataclass(frozen=True)
class Answered:
    """The answer is decided before the flow finishes (rule 6); ``outcome`` is provisional: its
    value and winners are final, its attempts are a snapshot and its penalties come at ``Finished``."""

    outcome: Outcome


Action = Send | RequestReveal | Answered | Finished


def majority_of(n: int) -> int:
    """Smallest strict majority of n participants."""
    return n // 2 + 1


class JobFlow:
    """One job's commit–reveal–vote lifecycle on the router side."""

    def __init__(
        self,
        job_id: bytes,
        ranking: Sequence[bytes],
        quorum: int,
        *,
        now: float,
        deadline: float,
        commit_timeout: float,
        reveal_timeout: float,
        vote: Voter,
        commitment_of: CommitmentFn,
        escalation_quorum: int = 0,
        needed: int | None = None,
        answer_early: bool = False,
    ) -> None:
        if quorum < 1:
            raise ValueError("quorum must be >= 1")
        if escalation_quorum < 0:
            raise ValueError("escalation_quorum must be >= 0")
        if deadline <= now:
            raise ValueError("deadline must be in the future")
        self.job_id = job_id
        self.quorum = quorum
        self.needed = needed if needed is not None else majority_of(quorum)
        if not 1 <= self.needed <= quorum:
            raise ValueError("needed must be within 1..quorum")
        self.deadline = deadline
        self.commit_timeout = commit_timeout
        self.reveal_timeout = reveal_timeout
        self.escalation_quorum = escalation_quorum
        self._vote = vote
        self._commitment_of = commitment_of
        self._ranking = list(dict.fromkeys(ranking))
        self._cursor = 0
        self._round = 0
        self._target = quorum
        self._gate_at = now + commit_timeout
        self._gate_open = False
        self._started_at = now
        self._attempts: dict[bytes, Attempt] = {}
        self._outcome: Outcome | None = None
        self._started = False
        self._answer_early = answer_early
        self._answered: VoteResult | None = None

    # ------------------------------------------------------------------ state inspection

    @property
    def done(self) -> bool:
        return self._outcome is not None

    @property
    def outcome(self) -> Outcome | None:
        return self._outcome

    @property
    def round(self) -> int:
        return self._round

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return tuple(self._attempts.values())

    def attempt(self, peer_id: bytes) -> Attempt | None:
        return self._attempts.get(peer_id)

    def remaining_candidates(self) -> int:
        return len(self._ranking) - self._cursor

    def next_deadline(self) -> float:
        """The earliest time at which ``on_tick`` may change something."""
        times = [self.deadline]
        if not self._gate_open:
            times.append(self._gate_at)
        for a in self._attempts.values():
            if a.state is AttemptState.SENT:
                times.append(a.commit_window_from + self.commit_timeout)
            elif a.state is AttemptState.REVEAL_REQUESTED and a.reveal_requested_at is not None:
                times.append(a.reveal_requested_at + self.reveal_timeout)
        return min(times)

    # ------------------------------------------------------------------ events

    def start(self, now: float) -> list[Action]:
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        return self._advance(now)

    def on_commit(self, peer_id: bytes, commitment: bytes, statement: bytes, now: float) -> list[Action]:
        """A commitment whose signature the router has already verified."""
        a = self._attempts.get(peer_id)
        if self.done or a is None or a.state is not AttemptState.SENT:
            return []
        if not commitment:
            return self._fail(a, Failure.MALFORMED, "empty commitment", now)
        a.state = AttemptState.COMMITTED
        a.commitment = commitment
        a.statement = statement
        a.committed_at = now
        return self._advance(now)

    def on_reveal(
        self, peer_id: bytes, salt: bytes, result_digest: bytes, result: Any, now: float
    ) -> list[Action]:
        """A reveal the router opened; ``result_digest`` must be computed by the router itself."""
        a = self._attempts.get(peer_id)
        early = a is not None and a.state is AttemptState.COMMITTED and a.early is None
        if self.done or a is None or not (early or a.state is AttemptState.REVEAL_REQUESTED):
            return []
        expected = self._commitment_of(self.job_id, peer_id, salt, result_digest)
        if not hmac.compare_digest(expected, a.commitment):
            return self._fail(a, Failure.BAD_REVEAL, "reveal does not open the commitment", now)
        if early:  # pipelined: held until the reveal gate opens for this attempt (rule 2)
            a.early = (result, now)
            return self._advance(now) if self._answer_early else []
        a.state = AttemptState.REVEALED
        a.result = result
        a.revealed_at = now
        return self._advance(now)

    def on_progress(self, peer_id: bytes, now: float) -> list[Action]:
        """The executor showed it is working on the job before committing (a live chat primary
        streamed tokens): its commit timeout restarts now, so a primary slower than the timeout
        but streaming is not replaced by a second one. The job's deadline still bounds it."""
        a = self._attempts.get(peer_id)
        if not self.done and a is not None and a.state is AttemptState.SENT:
            a.progress_at = now
        return []

    def on_failure(self, peer_id: bytes, failure: Failure, detail: str, now: float) -> list[Action]:
        a = self._attempts.get(peer_id)
        if self.done or a is None or not a.live or a.state is AttemptState.REVEALED:
            return []
        if self._answered is not None and peer_id in self._answered.winners:
            return []  # its result is part of the answer already; what breaks after is not a fault
        return self._fail(a, failure, detail, now)

    def on_tick(self, now: float) -> list[Action]:
        if self.done or not self._started:
            return []
        actions: list[Action] = []
        for a in list(self._attempts.values()):
            if a.state is AttemptState.SENT and now >= a.commit_window_from + self.commit_timeout:
                a.state, a.failure, a.detail = AttemptState.FAILED, Failure.TIMEOUT, "no commitment in time"
            elif (
                a.state is AttemptState.REVEAL_REQUESTED
                and a.reveal_requested_at is not None
                and now >= a.reveal_requested_at + self.reveal_timeout
            ):
                a.state, a.failure, a.detail = AttemptState.FAILED, Failure.NO_REVEAL, "no reveal in time"
        actions.extend(self._advance(now))
        return actions

    # ------------------------------------------------------------------ internals

    def _fail(self, a: Attempt, failure: Failure, detail: str, now: float) -> list[Action]:
        a.state = AttemptState.FAILED
        a.failure = failure
        a.detail = detail
        return self._advance(now)

    def _live(self) -> list[Attempt]:
        return [a for a in self._attempts.values() if a.live]

    def _advance(self, now: float) -> list[Action]:
        """Bring the job forward as far as the current facts allow."""
        if self.done:
            return []
        if now >= self.deadline:
            return [self._finish_at_deadline()]
        actions: list[Action] = []
        # 1. keep `target` attempts alive (once answered, a replacement could change nothing)
        while (
            self._answered is None and len(self._live()) < self._target and self._cursor < len(self._ranking)
        ):
            peer = self._ranking[self._cursor]
            self._cursor += 1
            self._attempts[peer] = Attempt(peer_id=peer, round=self._round, sent_at=now)
            actions.append(Send(peer, self._round))
        live = self._live()
        if not live:
            return [*actions, self._finish_unavailable()]
        # 2. reveal gate
        all_committed = all(a.state is not AttemptState.SENT for a in live)
        if not self._gate_open and (now >= self._gate_at or all_committed):
            self._gate_open = True
        if self._gate_open:
            for a in live:
                if a.state is AttemptState.COMMITTED:
                    a.reveal_requested_at = now
                    if a.early is not None:  # revealed already: it counts from now
                        a.state = AttemptState.REVEALED
                        a.result, a.revealed_at = a.early
                        continue
                    a.state = AttemptState.REVEAL_REQUESTED
                    actions.append(RequestReveal(a.peer_id))
        # 3. vote once nothing is pending (6: answer as soon as a majority of the quorum agrees)
        if all(a.state is AttemptState.REVEALED for a in live):
            actions.extend(self._decide(now))
        elif self._answer_early and self._answered is None and self._round == 0:
            actions.extend(self._answer_if_decided())
        return actions

    def _answer_if_decided(self) -> list[Action]:
        results = self._opened()
        if len(results) < self.needed:
            return []
        vote = self._vote(results, self.needed)
        if not vote.winners:
            return []
        self._answered = vote
        snapshot = tuple(replace(a) for a in self._attempts.values())
        return [Answered(self._outcome_of(OutcomeStatus.OK, vote, snapshot, (), ""))]

    def _judged_against_answer(self, answered: VoteResult) -> VoteResult:
        """The answered cluster plus every later result the voter finds in agreement with all of it."""
        for a in self._attempts.values():  # the answer may rest on reveals the gate still held
            if a.state is AttemptState.COMMITTED and a.early is not None:
                a.state = AttemptState.REVEALED
                a.result, a.revealed_at = a.early
        results = self._results()
        cluster = {peer: results[peer] for peer in answered.winners}
        winners = list(answered.winners)
        for peer, result in results.items():
            if peer in cluster:
                continue
            if peer in self._vote({**cluster, peer: result}, len(cluster) + 1).winners:
                winners.append(peer)
        return VoteResult(winners=tuple(winners), value=answered.value, detail=answered.detail)

    def _results(self) -> dict[bytes, Any]:
        return {p: a.result for p, a in self._attempts.items() if a.state is AttemptState.REVEALED}

    def _opened(self) -> dict[bytes, Any]:
        """Every result checked against its commitment, the ones the gate still holds included."""
        held = {
            p: a.early[0] for p, a in self._attempts.items()
            if a.state is AttemptState.COMMITTED and a.early is not None
        }
        return {**self._results(), **held}

    def _needed_now(self, n_results: int) -> int:
        if self._round == 0:
            return self.needed
        return max(self.needed, majority_of(n_results))

    def _decide(self, now: float) -> list[Action]:
        if self._answered is not None:
            return [self._finish_answered()]
        results = self._results()
        vote = self._vote(results, self._needed_now(len(results)))
        if vote.winners:
            return [self._finish(OutcomeStatus.OK, vote, "")]
        if len(results) < self._needed_now(len(results)):
            # Not a disagreement: too few executors produced anything (the ranking is used up).
            return [self._finish(OutcomeStatus.UNAVAILABLE, vote, self._shortfall_message(results))]
        if self._round == 0 and self.escalation_quorum > 0 and self._cursor < len(self._ranking):
            self._round = 1
            self._target = len(self._live()) + self.escalation_quorum
            self._gate_open = False
            self._gate_at = now + self.commit_timeout
            return self._advance(now)
        return [self._finish(OutcomeStatus.NO_CONSENSUS, vote, self._disagreement_message(results))]

    def _finish_answered(self) -> Finished:
        """The answer given stands; the results that came after it are judged against it."""
        assert self._answered is not None
        return self._finish(OutcomeStatus.OK, self._judged_against_answer(self._answered), "")

    def _finish_on_held(self) -> Finished | None:
        """The job ends before everyone revealed: finish on what is held if that decides it (an
        answer given, a majority cluster, or enough results that disagree), else None."""
        if self._answered is not None:
            return self._finish_answered()
        results = self._results()
        if not results:
            return None
        vote = self._vote(results, self._needed_now(len(results)))
        if vote.winners:
            return self._finish(OutcomeStatus.OK, vote, "")
        if len(results) >= self.needed:
            return self._finish(OutcomeStatus.NO_CONSENSUS, vote, self._disagreement_message(results))
        return None

    def _finish_at_deadline(self) -> Finished:
        held = self._finish_on_held()
        if held is not None:
            return held
        return self._finish(
            OutcomeStatus.DEADLINE,
            VoteResult(),
            f"deadline passed with {len(self._results())} of {self.needed} needed results",
        )

    def _finish_unavailable(self) -> Finished:
        """Everyone left to ask failed; what we hold may still carry a majority."""
        held = self._finish_on_held()
        if held is not None:
            return held
        return self._finish(OutcomeStatus.UNAVAILABLE, VoteResult(), self._shortfall_message(self._results()))

    def _shortfall_message(self, results: Mapping[bytes, Any]) -> str:
        if not self._attempts:
            return "no eligible executor"
        reasons = ", ".join(sorted({a.failure.value for a in self._attempts.values() if a.failure}))
        return f"{len(results)} of {self.needed} needed results; the others failed ({reasons})"

    def _disagreement_message(self, results: Mapping[bytes, Any]) -> str:
        return f"{len(results)} results, no cluster of the {self._needed_now(len(results))} needed"

    def _finish(self, status: OutcomeStatus, vote: VoteResult, message: str) -> Finished:
        winners = set(vote.winners)
        penalties: list[tuple[bytes, Offence, EvidenceRecord]] = []
        counter = tuple(self._attempts[p].statement for p in vote.winners if p in self._attempts)
        for a in self._attempts.values():
            if a.live and a.state is not AttemptState.REVEALED:
                # Still running when the job ended: late, not proven wrong. Its own timeout (checked
                # on tick) is what turns lateness into an offence, so abandoning is none.
                a.state, a.failure, a.detail = AttemptState.FAILED, Failure.ABANDONED, "job finished first"
            offence: Offence | None = None
            if a.state is AttemptState.REVEALED and winners and a.peer_id not in winners:
                offence = Offence.WRONG_OUTPUT
                a.detail = "outside the majority cluster"
            elif a.failure is not None:
                offence = _OFFENCE_OF_FAILURE.get(a.failure)
            if offence is not None:
                record = EvidenceRecord(
                    job_id=self.job_id,
                    offence=offence,
                    at=a.revealed_at or a.committed_at or a.sent_at,
                    detail=a.detail,
                    statement=a.statement,
                    counter=counter if offence is Offence.WRONG_OUTPUT else (),
                )
                penalties.append((a.peer_id, offence, record))
        outcome = self._outcome_of(status, vote, tuple(self._attempts.values()), tuple(penalties), message)
        self._outcome = outcome
        return Finished(outcome)

    def _outcome_of(
        self, status: OutcomeStatus, vote: VoteResult, attempts: tuple[Attempt, ...],
        penalties: tuple[tuple[bytes, Offence, EvidenceRecord], ...], message: str,
    ) -> Outcome:
        return Outcome(
            status=status,
            value=vote.value if vote.winners else None,
            winners=tuple(vote.winners),
            escalated=self._round > 0,
            attempts=attempts,
            penalties=penalties,
            successes=tuple(vote.winners),
            vote_detail=dict(vote.detail),
            message=message,
        )
