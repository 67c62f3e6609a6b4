"""Chat's two-phase flow: one primary generates, verifiers re-score its tokens, the vote decides.

Sampling makes two honest generations differ, so chat is not cross-checked by generating k times.
Instead (``docs/protocol/consensus.md``, "chat"):

1. *generate*: one primary, ranked like any executor, produces a greedy completion (quorum 1);
2. *score*: ``verifiers`` fresh executors (never the primary, never a rejected one) re-score the
   primary's tokens with one teacher-forced prefill and return per-position verdicts;
   ``ChatVoter`` applies ``protocol.jobs.consensus.vote_chat``;
3. accepted → the primary gets a success and the answer is its generation; rejected by a strict
   majority of (primary + verifiers) → the primary is penalised for ``wrong_output`` and the job
   runs once more with a fresh primary; anything else → the phase's typed error.

With no verifiers (k = 1 in consensus, or a spot-check job that drew "unchecked") phase 2 is
skipped and the report says the answer is unverified. The flow only decides; each phase's I/O is
the router's ``run_phase``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from node.jobs.engines import bounds_for_verifiers, cannot_score, same_class_first
from node.jobs.errors import RouterError, RouterErrorCode
from node.jobs.phase import Phase, PhaseSpec, Submission
from node.jobs.receipts import ReceiptBook
from node.jobs.reports import Reports, error_for, executor_report
from node.jobs.standing import Standing
from node.jobs.voters import ChatVoter, ClaimScores
from protocol.identity import peer_id_to_text
from protocol.jobs import consensus
from protocol.jobs.jobflow import Outcome, OutcomeStatus
from protocol.jobs.messages import JOB_ID_LEN, Mode, Task
from protocol.jobs.payloads import GenerateInput, GenerateResult, ScoreInput, ScoreResult, decode_result

__all__ = ["PRIMARY_ATTEMPTS", "ChatFlow", "RunPhase", "score_decoder"]

RunPhase = Callable[[PhaseSpec], Awaitable[tuple[Outcome, Phase]]]
PRIMARY_ATTEMPTS = 2  # a primary rejected by the verifiers' majority gets one retry


class ChatFlow:
    """Runs one chat job's phases through ``run_phase`` and writes their rows into the report."""

    def __init__(
        self, run_phase: RunPhase, reports: Reports, standing: Standing, *, escalate: bool,
        receipts: ReceiptBook | None = None,
    ) -> None:
        self._receipts = receipts
        self._run_phase = run_phase
        self._reports = reports
        self._standing = standing
        self._escalate = escalate

    async def submit(self, sub: Submission, report: dict[str, Any]) -> GenerateResult:
        """The accepted generation; raises ``RouterError`` (with the finished report) otherwise."""
        job = sub.job
        assert isinstance(job, GenerateInput)
        verifiers = (sub.k - 1 if sub.mode is Mode.CONSENSUS else sub.k) if sub.verify else 0
        executors: list[dict[str, Any]] = []
        rejected: set[bytes] = set()  # primaries the verifiers' majority rejected
        report["phases"] = []
        for attempt in range(PRIMARY_ATTEMPTS):
            gen_id = sub.job_id if attempt == 0 else os.urandom(JOB_ID_LEN)
            outcome, phase = await self._run_phase(PhaseSpec(
                gen_id, sub.model_id, Task.CHAT, sub.mode, job, sub.decode, sub.infos, quorum=1,
                deadline=sub.deadline, challenge=sub.challenge, escalate=False, exclude=frozenset(rejected),
            ))
            primary_rows = executor_report(outcome, phase, role="primary")
            for row in primary_rows:  # producing a completion is not agreement: phase 2 decides
                row["in_majority"] = verifiers == 0 and row["in_majority"]
            executors += primary_rows
            report["phases"].append(
                {"job_id": gen_id.hex(), "op": "generate", "status": outcome.status.value}
            )
            if not outcome.ok:
                report["executors"] = executors
                self._reports.finish(report, outcome, sub.started)
                raise error_for(outcome, report)
            primary, generation = outcome.value
            assert isinstance(generation, GenerateResult)
            if verifiers == 0:
                report["executors"] = executors
                self._reports.finish(report, outcome, sub.started)
                report["agreement"] = {"comparator": "none (unverified)", "agreeing": 1, "of": 1}
                return generation
            score_job = ScoreInput(job.messages, generation.tokens)
            score_id = os.urandom(JOB_ID_LEN)
            chat_voter = ChatVoter(primary, bounds_for_verifiers(
                sub.infos, sub.model_id, primary, consensus.token_bounds_for(sub.model_id)
            ))
            verdict_outcome, score_phase = await self._run_phase(PhaseSpec(
                score_id, sub.model_id, Task.CHAT, sub.mode, score_job,
                score_decoder(len(generation.tokens)), sub.infos, quorum=verifiers, deadline=sub.deadline,
                challenge=sub.challenge, escalate=self._escalate,
                exclude=frozenset(rejected | {primary}) | cannot_score(sub.infos, sub.model_id),
                voter=chat_voter, needed=1, prefer=same_class_first(sub.infos, sub.model_id, primary),
            ))
            executors += executor_report(verdict_outcome, score_phase, role="verifier")
            report["phases"].append(
                {"job_id": score_id.hex(), "op": "score", "status": verdict_outcome.status.value}
            )
            report["executors"] = executors
            if verdict_outcome.ok:
                self._standing.record_success(primary)
                for entry in executors:
                    if entry["peer_id"] == peer_id_to_text(primary) and entry["role"] == "primary":
                        entry["in_majority"] = True
                self._reports.finish(report, verdict_outcome, sub.started)
                if self._receipts is not None:
                    self._receipts.record_chat(
                        sub, (outcome, phase), (verdict_outcome, score_phase), verifiers=verifiers,
                        finished=sub.started + report["total_ms"] / 1000,
                    )
                report["agreement"]["agreeing"] += 1  # the primary agrees with its own tokens
                report["agreement"]["of"] += 1
                report["result_from"] = peer_id_to_text(primary)
                return generation
            rejecters = chat_voter.rejecters
            if verdict_outcome.status is OutcomeStatus.NO_CONSENSUS and len(rejecters) * 2 > (
                1 + len(chat_voter.last_verdicts)
            ):
                self._standing.penalise(primary, "wrong_output", gen_id, chat_voter.detail_for_primary())
                rejected.add(primary)
                report.setdefault("penalties", []).append(
                    {"peer_id": peer_id_to_text(primary), "offence": "wrong_output"}
                )
                continue  # retry with a fresh primary
            self._reports.finish(report, verdict_outcome, sub.started)
            raise error_for(verdict_outcome, report)
        self._reports.finish(report, None, sub.started)
        message = "two primaries were rejected by their verifiers"
        raise RouterError(RouterErrorCode.NO_CONSENSUS, message, report)


def score_decoder(positions: int) -> Callable[[bytes], ClaimScores]:
    """Phase 2's result decoder: a verifier's ranks and gaps for ``positions`` tokens, checked for
    shape and consistency (the voter judges them against the pair's bound)."""

    def decode_scores(plaintext: bytes) -> ClaimScores:
        result = decode_result(plaintext)
        if not isinstance(result, ScoreResult):
            raise ValueError("not a score result")
        rank_bytes, gap_bytes = consensus.encode_token_scores(list(result.ranks), list(result.gaps))
        ranks, gaps = consensus.decode_token_scores(rank_bytes, gap_bytes, positions)
        return ClaimScores(ranks, gaps)

    return decode_scores
