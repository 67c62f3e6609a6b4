"""Live, verified chat streaming: tokens reach the user as the primary generates them.

The primary phase runs as in ``chat_flow`` but with ``JobRequest.live``: the primary seals its
tokens into a secretstream as it generates (``node.jobs.live_sender``), ``LiveTap`` opens each
chunk as it arrives and hands it to the ``ChatStream`` coordinator, which forwards the text to
the caller at once. Beside it a verification loop re-scores the growing prefix with the
verifiers (teacher-forced prefill, the same score phase as non-streamed chat) whenever
``VERIFY_CHUNK_TOKENS`` new tokens have arrived or ``VERIFY_INTERVAL_S`` has passed since the
first unverified one, so verification trails generation by about one chunk; while the primary
streams, rounds are spaced so that they take at most a quarter of the time (``VERIFY_DUTY``: when rounds
are slow they grow larger instead of more frequent). Every event the
caller receives carries the progress (``verified_tokens`` and the agreement so far).

Endings, each before the job's deadline:

* done: the primary committed and revealed exactly the streamed tokens, and the verifiers'
  majority accepted all of them → ``StreamDone`` with the full report;
* rejected: the majority rejected a prefix → the primary is penalised (``wrong_output``, its
  signed commitments stand as evidence through the score phase's vote) and the stream ends with
  ``StreamFailed`` naming the first rejected token index;
* the primary died (its link broke), refused, broke the stream's sealing, or sent nothing for
  ``stall_s`` → ``StreamFailed`` (``primary_failed``), the report says how many tokens arrived.

``release="verified"`` holds each piece of text back until the verifiers accepted its tokens.

``retry=True`` (the request's ``veilnet: {retry: true}``): a stream the verifiers rejected is run
once more from the start with a fresh primary (never a rejected one) instead of ending. The
caller gets a ``StreamRestart`` (the rejected attempt's ``rejected_at`` and why) and must discard
the text it received so far; the next attempt's deltas are the completion from its first token.
The report lists every attempt. A primary that failed (``primary_failed``) is not retried: its
tokens were not judged wrong, and its recovery before the first token is the phase's own.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node.jobs.chat_flow import PRIMARY_ATTEMPTS, RunPhase, score_decoder
from node.jobs.engines import bounds_for_verifiers, cannot_score, same_class_first
from node.jobs.errors import RouterError, RouterErrorCode
from node.jobs.live_tap import LiveTap, TapBroken, TapEnded, TapTokens
from node.jobs.phase import Phase, PhaseSpec, Submission
from node.jobs.reports import Reports, error_for, executor_report
from node.jobs.standing import Standing
from node.jobs.voters import ChatVoter
from protocol.identity import peer_id_to_text
from protocol.jobs.consensus import token_bounds_for
from protocol.jobs.jobflow import Outcome, OutcomeStatus
from protocol.jobs.messages import JOB_ID_LEN, Mode, Task
from protocol.jobs.payloads import GenerateInput, GenerateResult, ScoreInput

__all__ = [
    "RELEASES",
    "VERIFY_CHUNK_TOKENS",
    "VERIFY_INTERVAL_S",
    "ChatStream",
    "StreamDelta",
    "StreamDone",
    "StreamEvent",
    "StreamFailed",
    "StreamRestart",
]

VERIFY_CHUNK_TOKENS = 16  # re-score once this many tokens are unverified ...
VERIFY_INTERVAL_S = 0.25  # ... or this long after the first unverified token arrived,
VERIFY_DUTY = 0.25  # ... but rounds take at most this share of the time while the primary streams:
# a round that took t waits 3t after it before the next (slow rounds mean larger rounds, so the
# verifiers, on a machine they share with the primary, do not take its CPU more than they must).
# SmolLM2, k = 3, one core per node on two: 0.5 left the primary 1.18-1.29x slower than alone and
# 0.78-0.85x of in-process tokens/s; 0.25: 1.04-1.09x and 0.92-0.96x; lag p50 6 -> 10-11 tokens.
STALL_S = 5.0  # a primary that sent a chunk and then nothing for this long has stalled
RELEASES = ("live", "verified")


@dataclass(frozen=True)
class StreamDelta:
    """New text for the caller (may be empty when only the verification progressed)."""

    text: str
    progress: dict[str, Any]


@dataclass(frozen=True)
class StreamDone:
    """The completion, verified (or unverified by the caller's choice), and its full report."""

    generation: GenerateResult
    report: dict[str, Any]
    progress: dict[str, Any]


@dataclass(frozen=True)
class StreamFailed:
    """The stream ends without a verified completion; ``rejected_at`` is the first rejected token."""

    error: RouterError
    rejected_at: int | None
    progress: dict[str, Any]


@dataclass(frozen=True)
class StreamRestart:
    """The verifiers rejected attempt ``attempt - 1``; the caller discards its text, ``attempt`` starts."""

    attempt: int
    rejected_at: int | None
    message: str
    progress: dict[str, Any]


StreamEvent = StreamDelta | StreamDone | StreamFailed | StreamRestart


# -- what the tasks tell the coordinator (the tap's own events are in live_tap) --------------------


@dataclass(frozen=True)
class _PrimaryDone:
    outcome: Outcome
    phase: Phase


@dataclass(frozen=True)
class _Verified:
    upto: int
    job_id: bytes
    outcome: Outcome
    phase: Phase
    voter: ChatVoter


@dataclass
class _State:
    tokens: list[int] = field(default_factory=list)
    held: list[tuple[int, str]] = field(default_factory=list)  # verified mode: (end token, text)
    verified: int = 0
    rounds: int = 0
    agreement: dict[str, Any] = field(default_factory=dict)
    streamed: bool = False  # the primary's FINAL chunk arrived
    primary: bytes | None = None
    generation: GenerateResult | None = None
    first_token_at: float | None = None
    last_verdict: Outcome | None = None
    executors: list[dict[str, Any]] = field(default_factory=list)
    verifier_rows: list[dict[str, Any]] = field(default_factory=list)


class ChatStream:
    """One live chat job: run it, send ``StreamEvent``s to ``out`` and end with Done or Failed."""

    def __init__(
        self, run_phase: RunPhase, reports: Reports, standing: Standing, sub: Submission,
        report: dict[str, Any], *, release: str = "live", commit_timeout_s: float = 10.0,
        stall_s: float = STALL_S, clock: Callable[[], float] = time.time, retry: bool = False,
    ) -> None:
        if release not in RELEASES:
            raise ValueError(f"release must be one of {RELEASES}")
        self._run_phase = run_phase
        self._reports = reports
        self._standing = standing
        self._sub = sub
        self._report = report
        self._release = release
        self._commit_timeout_s = commit_timeout_s
        self._stall_s = stall_s
        self._clock = clock
        job = sub.job
        assert isinstance(job, GenerateInput)
        self._job = job
        self._verifiers = (sub.k - 1 if sub.mode is Mode.CONSENSUS else sub.k) if sub.verify else 0
        self._state = _State()
        self._changed = trio.Event()
        self._attempts = PRIMARY_ATTEMPTS if retry else 1
        self._attempt = 1
        self._gen_id = sub.job_id
        self._rejected: set[bytes] = set()  # primaries the verifiers' majority rejected
        self._past_rows: list[dict[str, Any]] = []  # executor rows of the earlier attempts
        self._history: list[dict[str, Any]] = []  # one summary per finished attempt

    async def run(self, out: trio.MemorySendChannel[StreamEvent]) -> None:
        """Drive the job to one final event on ``out`` (a failure is an event, never an exception)."""
        self._report["phases"] = []
        self._report["stream"] = {"release": self._release, "retry": self._attempts > 1}
        while True:
            final = await self._run_attempt(out)
            again = (
                isinstance(final, StreamFailed) and final.error.code is RouterErrorCode.STREAM_REJECTED
                and self._attempt < self._attempts and self._clock() < self._sub.deadline
            )
            if not again:
                break
            assert isinstance(final, StreamFailed) and self._state.primary is not None
            self._rejected.add(self._state.primary)
            self._past_rows = self._report["executors"]
            self._attempt += 1
            self._gen_id = os.urandom(JOB_ID_LEN)
            self._state = _State()
            self._report["stream"].pop("first_token_ms", None)
            self._report["stream"].pop("rejected_at", None)
            restart = StreamRestart(self._attempt, final.rejected_at, final.error.message, self._progress())
            await out.send(restart)
        await out.send(final)

    async def _run_attempt(self, out: trio.MemorySendChannel[StreamEvent]) -> StreamEvent:
        """One primary's stream, verified as it grows, to its final event (not yet sent)."""
        state = self._state
        inbox_send, inbox = trio.open_memory_channel[Any](math.inf)
        tap = LiveTap(inbox_send)
        final: StreamEvent | None = None
        remaining = max(0.0, self._sub.deadline - self._clock())
        with trio.move_on_after(remaining):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._primary, tap, inbox_send)
                if self._verifiers:
                    nursery.start_soon(self._verify_loop, inbox_send)
                while final is None:
                    wait = self._commit_timeout_s if state.first_token_at is None else self._stall_s
                    if state.streamed:
                        wait = math.inf  # the flows' own timeouts and the deadline bound the rest
                    event = None
                    with trio.move_on_after(wait):
                        event = await inbox.receive()
                    if event is None:
                        why = f"the primary sent nothing for {wait:g} s"
                        final = self._fail(RouterErrorCode.PRIMARY_FAILED, why)
                        break
                    final = await self._handle(event, tap, out)
                nursery.cancel_scope.cancel()
        if final is None:
            final = self._fail(RouterErrorCode.DEADLINE, "the job's deadline passed during the stream")
        return final

    # ------------------------------------------------------------------ tasks

    async def _primary(self, tap: LiveTap, inbox: trio.MemorySendChannel[Any]) -> None:
        sub = self._sub
        outcome, phase = await self._run_phase(PhaseSpec(
            self._gen_id, sub.model_id, Task.CHAT, sub.mode, self._job, sub.decode, sub.infos, quorum=1,
            deadline=sub.deadline, challenge=sub.challenge, escalate=False, live=tap,
            exclude=frozenset(self._rejected),
        ))
        inbox.send_nowait(_PrimaryDone(outcome, phase))

    async def _verify_loop(self, inbox: trio.MemorySendChannel[Any]) -> None:
        state, sub = self._state, self._sub
        checked = 0
        rank_key = os.urandom(JOB_ID_LEN)  # one verifier ranking for all rounds: KV caches are reused
        rest_until = -math.inf  # after a round, three times as long without one: see VERIFY_DUTY
        while True:
            due: float | None = None  # VERIFY_INTERVAL_S after unverified tokens were first seen
            while True:
                pending = len(state.tokens) - checked
                if state.streamed:
                    if pending == 0:
                        return
                    break  # the stream is complete: verify the rest at once
                now = trio.current_time()
                if pending > 0 and due is None:
                    due = now + VERIFY_INTERVAL_S  # not restarted by each new token
                ready = pending >= VERIFY_CHUNK_TOKENS or (due is not None and now >= due)
                if ready and now >= rest_until:
                    break
                changed = self._changed
                wake = math.inf if due is None else max(due, rest_until)
                with trio.move_on_at(wake):
                    await changed.wait()
            started = trio.current_time()
            assert state.primary is not None
            prefix = tuple(state.tokens)
            score_id = os.urandom(JOB_ID_LEN)
            voter = ChatVoter(state.primary, bounds_for_verifiers(
                sub.infos, sub.model_id, state.primary, token_bounds_for(sub.model_id)
            ))
            outcome, phase = await self._run_phase(PhaseSpec(
                score_id, sub.model_id, Task.CHAT, sub.mode, ScoreInput(self._job.messages, prefix),
                score_decoder(len(prefix)), sub.infos, quorum=self._verifiers, deadline=sub.deadline,
                challenge=sub.challenge, escalate=False,
                exclude=frozenset(self._rejected | {state.primary}) | cannot_score(sub.infos, sub.model_id),
                voter=voter, needed=1, rank_key=rank_key,
                prefer=same_class_first(sub.infos, sub.model_id, state.primary),
            ))
            inbox.send_nowait(_Verified(len(prefix), score_id, outcome, phase, voter))
            if not outcome.ok:
                return
            checked = len(prefix)
            ended = trio.current_time()
            rest_until = ended + (ended - started) * (1 - VERIFY_DUTY) / VERIFY_DUTY

    # ------------------------------------------------------------------ the coordinator

    async def _handle(
        self, event: Any, tap: LiveTap, out: trio.MemorySendChannel[StreamEvent]
    ) -> StreamEvent | None:
        state = self._state
        if isinstance(event, TapTokens):
            if state.first_token_at is None:
                state.first_token_at = self._clock()
                first_ms = round((state.first_token_at - self._sub.started) * 1000, 3)
                self._report["stream"]["first_token_ms"] = first_ms
            state.primary = event.peer
            state.tokens.extend(event.chunk.tokens)
            self._wake()
            if self._release == "live" or not self._verifiers:
                await out.send(StreamDelta(event.chunk.text, self._progress()))
            else:
                state.held.append((len(state.tokens), event.chunk.text))
            return None
        if isinstance(event, TapEnded):
            state.streamed = True
            self._wake()
            return self._finished()
        if isinstance(event, TapBroken):
            return self._fail(RouterErrorCode.PRIMARY_FAILED, f"the primary failed mid-stream: {event.why}")
        if isinstance(event, _PrimaryDone):
            return self._primary_done(event, tap)
        assert isinstance(event, _Verified)
        return await self._verified(event, out)

    def _primary_done(self, event: _PrimaryDone, tap: LiveTap) -> StreamEvent | None:
        state, outcome = self._state, event.outcome
        rows = executor_report(outcome, event.phase, role="primary")
        for row in rows:
            row["in_majority"] = not self._verifiers and row["in_majority"]
        state.executors = rows
        self._report["phases"].append(
            {"job_id": self._gen_id.hex(), "op": "generate", "status": outcome.status.value}
        )
        if not outcome.ok:
            self._reports.finish(self._report, outcome, self._sub.started)
            error = error_for(outcome, self._report)
            code = RouterErrorCode.PRIMARY_FAILED if state.tokens else error.code
            return self._fail(code, error.message, finished=True)
        primary, generation = outcome.value
        assert isinstance(generation, GenerateResult)
        if not tap.complete(primary) or generation.tokens != tuple(state.tokens):
            self._standing.penalise(primary, "wrong_output", self._gen_id,
                                    "revealed tokens differ from the streamed ones")
            self._penalty(primary)
            why = "the revealed completion differs from the stream"
            return self._fail(RouterErrorCode.PRIMARY_FAILED, why)
        state.generation = generation
        state.streamed = True
        self._wake()
        return self._finished()

    async def _verified(
        self, event: _Verified, out: trio.MemorySendChannel[StreamEvent]
    ) -> StreamEvent | None:
        state, outcome = self._state, event.outcome
        state.rounds += 1
        state.last_verdict = outcome
        state.verifier_rows = executor_report(outcome, event.phase, role="verifier")
        self._report["phases"].append(
            {"job_id": event.job_id.hex(), "op": "score", "status": outcome.status.value,
             "tokens": event.upto}
        )
        voter = event.voter
        if outcome.ok:
            state.verified = event.upto
            state.agreement = {"agreeing": len(outcome.winners) + 1, "of": len(voter.last_verdicts) + 1}
            released = "".join(text for end, text in state.held if end <= state.verified)
            state.held = [(end, text) for end, text in state.held if end > state.verified]
            if released or self._release == "live":
                await out.send(StreamDelta(released, self._progress()))
            return self._finished()
        rejecters = voter.rejecters
        if outcome.status is OutcomeStatus.NO_CONSENSUS and len(rejecters) * 2 > 1 + len(voter.last_verdicts):
            assert state.primary is not None
            detail = voter.detail_for_primary()
            self._standing.penalise(state.primary, "wrong_output", self._gen_id, detail)
            self._penalty(state.primary)
            first = min(
                (v.first_rejected for p, v in voter.last_verdicts.items() if p in rejecters
                 and v.first_rejected is not None),
                default=event.upto - 1,
            )
            self._report["stream"]["rejected_at"] = first
            self._reports.finish(self._report, outcome, self._sub.started)
            message = f"the verifiers rejected the stream from token {first} on"
            return self._fail(RouterErrorCode.STREAM_REJECTED, message, rejected_at=first, finished=True)
        self._reports.finish(self._report, outcome, self._sub.started)
        error = error_for(outcome, self._report)
        return self._fail(error.code, f"verification failed: {error.message}", finished=True)

    def _finished(self) -> StreamEvent | None:
        """Done once the reveal matched the stream and (when verified) every token is accepted."""
        state = self._state
        generation = state.generation
        if generation is None or (self._verifiers and state.verified < len(generation.tokens)):
            return None
        report = self._report
        self._fill_report("ok")
        if not self._verifiers:
            self._reports.finish(report, None, self._sub.started)
            report["status"] = OutcomeStatus.OK.value
            report["agreement"] = {"comparator": "none (unverified)", "agreeing": 1, "of": 1}
        else:
            assert state.primary is not None and state.last_verdict is not None
            self._standing.record_success(state.primary)
            for row in report["executors"]:
                if row["role"] == "primary" and row["peer_id"] == peer_id_to_text(state.primary):
                    row["in_majority"] = True
            self._reports.finish(report, state.last_verdict, self._sub.started)
            report["agreement"]["agreeing"] += 1  # the primary agrees with its own tokens
            report["agreement"]["of"] += 1
        report["result_from"] = peer_id_to_text(state.primary) if state.primary else None
        return StreamDone(generation, report, self._progress())

    # ------------------------------------------------------------------ helpers

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _progress(self) -> dict[str, Any]:
        state = self._state
        progress: dict[str, Any] = {
            "generated_tokens": len(state.tokens),
            "verified_tokens": state.verified,
            "verification_rounds": state.rounds,
            "verified": bool(self._verifiers),
            "attempt": self._attempt,
        }
        if state.agreement:
            progress["agreement"] = dict(state.agreement)
        if state.primary is not None:
            progress["primary"] = peer_id_to_text(state.primary)
        return progress

    def _fill_report(self, status: str) -> None:
        state = self._state
        self._report["executors"] = self._past_rows + state.executors + state.verifier_rows
        summary = {
            "attempt": self._attempt, "primary": peer_id_to_text(state.primary) if state.primary else None,
            "status": status, "generated_tokens": len(state.tokens), "verified_tokens": state.verified,
            "verification_rounds": state.rounds,
        }
        if "rejected_at" in self._report["stream"]:
            summary["rejected_at"] = self._report["stream"]["rejected_at"]
        self._report["stream"].update({
            "generated_tokens": len(state.tokens), "verified_tokens": state.verified,
            "verification_rounds": state.rounds, "attempts": [*self._history, summary],
        })
        if status != "ok":
            self._history.append(summary)

    def _penalty(self, peer: bytes) -> None:
        self._report.setdefault("penalties", []).append(
            {"peer_id": peer_id_to_text(peer), "offence": "wrong_output"}
        )

    def _fail(self, code: RouterErrorCode, message: str, *, rejected_at: int | None = None,
              finished: bool = False) -> StreamFailed:
        self._fill_report(code.value)
        if not finished:
            self._reports.finish(self._report, None, self._sub.started)
            self._report["status"] = code.value
            self._report["message"] = message
        return StreamFailed(RouterError(code, message, self._report), rejected_at, self._progress())
