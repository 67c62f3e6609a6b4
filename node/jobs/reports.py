"""Verification reports: what the user gets beside every answer (and every refusal).

A report says which attested executors were asked, in which role and round, what each did and
how long it took, who agreed, who was penalised and why. It is built from the phase's
``Outcome`` (``protocol.jobs.jobflow``) and the I/O context the router kept (``Phase``), and it
is plain JSON (``jsonable``: no NaN, no bytes), because the HTTP API serves it as is.
``Reports`` keeps the last ``MAX_REPORTS`` for ``GET /veilnet/v1/jobs/{id}``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from node.jobs.errors import RouterError, RouterErrorCode
from node.jobs.phase import Phase
from protocol.identity import peer_id_to_text
from protocol.jobs.jobflow import Attempt, AttemptState, Failure, Outcome, OutcomeStatus
from protocol.jobs.messages import ErrorCode
from protocol.jobs.reputation import ReputationBook

__all__ = ["MAX_REPORTS", "Reports", "attempt_timings", "error_for", "executor_report", "jsonable"]

MAX_REPORTS = 1000  # reports kept for look-up; a few MB at most, oldest dropped first


class Reports:
    """The finished reports of recent jobs, newest last."""

    def __init__(self, clock: Callable[[], float], reputation: ReputationBook) -> None:
        self._clock = clock
        self._reputation = reputation
        self._reports: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, job_id_hex: str) -> dict[str, Any] | None:
        return self._reports.get(job_id_hex)

    def finish(self, report: dict[str, Any], outcome: Outcome | None, started: float) -> None:
        """Complete ``report`` from the last phase's ``outcome`` (None: the job gave up) and keep it."""
        now = self._clock()
        report["total_ms"] = round((now - started) * 1000, 3)
        if outcome is not None:
            report["status"] = outcome.status.value
            report["escalated"] = report.get("escalated", False) or outcome.escalated
            report["message"] = outcome.message
            detail = {k: jsonable(v) for k, v in outcome.vote_detail.items()}
            report["agreement"] = {
                **detail,
                "agreeing": len(outcome.winners),
                "of": sum(1 for a in outcome.attempts if a.state is AttemptState.REVEALED),
            }
            penalties = report.setdefault("penalties", [])
            for peer, offence, _ in outcome.penalties:
                penalties.append({
                    "peer_id": peer_id_to_text(peer), "offence": offence.value,
                    "banned_until": self._reputation.banned_until(peer, now),
                })
        else:
            report["status"] = OutcomeStatus.NO_CONSENSUS.value
        self._reports[report["job_id"]] = report
        while len(self._reports) > MAX_REPORTS:
            self._reports.popitem(last=False)


def executor_report(outcome: Outcome, phase: Phase, role: str) -> list[dict[str, Any]]:
    """One row per executor the phase asked: identity, TEE, state, verdict, timings."""
    winners = set(outcome.winners)
    penalties = {peer: offence.value for peer, offence, _ in outcome.penalties}
    rows = []
    for attempt in outcome.attempts:
        info = phase.infos.get(attempt.peer_id)
        timing = phase.timings.get(attempt.peer_id, {})
        rows.append({
            "peer_id": peer_id_to_text(attempt.peer_id),
            "role": role,
            "round": attempt.round,
            "tee_kind": info.kind if info else "",
            "tee_label": info.label if info else "",
            "simulated": info.simulated if info else False,
            "state": attempt.state.value,
            "failure": attempt.failure.value if attempt.failure else None,
            "detail": attempt.detail,
            "in_majority": attempt.peer_id in winners,
            "offence": penalties.get(attempt.peer_id),
            "challenge": phase.challenged.get(attempt.peer_id),
            "timings_ms": attempt_timings(attempt, timing),
        })
    return rows


# How the router records an executor's BAD_REQUEST or TOO_LARGE error (node/jobs/router.py: "code: message").
_BAD_REQUEST_PREFIXES = (f"{ErrorCode.BAD_REQUEST.value}:", f"{ErrorCode.TOO_LARGE.value}:")
_EXPIRED_PREFIX = f"{ErrorCode.EXPIRED.value}:"


def error_for(outcome: Outcome, report: dict[str, Any]) -> RouterError:
    """The typed error for a phase that did not finish with an answer.

    When every executor refused the job as a bad request (a prompt over the context window, a
    model of the other task, an input too large), the job itself is at fault, not the network:
    BAD_REQUEST with the executors' own reason, so the API answers 400 and clients do not retry. When every
    executor found the job expired or let it time out, time ran out: DEADLINE (504).
    """
    refusals = [a.detail for a in outcome.attempts if a.failure is Failure.REFUSED]
    late = [
        a for a in outcome.attempts if a.detail.startswith(_EXPIRED_PREFIX) or a.failure is Failure.TIMEOUT
    ]
    if outcome.status is OutcomeStatus.UNAVAILABLE and late and len(late) == len(outcome.attempts):
        return RouterError(
            RouterErrorCode.DEADLINE,
            "no executor answered in time (the job's deadline or commit timeout passed)",
            report,
        )
    if (
        outcome.status is OutcomeStatus.UNAVAILABLE
        and refusals
        and len(refusals) == len(outcome.attempts)
        and all(detail.startswith(_BAD_REQUEST_PREFIXES) for detail in refusals)
    ):
        reason = refusals[0].split(":", 1)[1].strip()
        reason = reason.removeprefix("invalid_input: ")
        return RouterError(RouterErrorCode.BAD_REQUEST, f"the executors refused the input: {reason}", report)
    code = {
        OutcomeStatus.NO_CONSENSUS: RouterErrorCode.NO_CONSENSUS,
        OutcomeStatus.DEADLINE: RouterErrorCode.DEADLINE,
        OutcomeStatus.UNAVAILABLE: RouterErrorCode.UNAVAILABLE,
    }.get(outcome.status, RouterErrorCode.UNAVAILABLE)
    return RouterError(code, outcome.message or outcome.status.value, report)


def attempt_timings(attempt: Attempt, timing: Mapping[str, float]) -> dict[str, float | None]:
    """Milliseconds from sending the job to the commitment and to the reveal; the executor's own split."""
    sent = timing.get("sent", attempt.sent_at)

    def since(key: str) -> float | None:
        value = timing.get(key)
        return None if value is None else round((value - sent) * 1000, 3)

    return {
        "commit": since("committed"),
        "reveal": since("revealed"),
        "queue": timing.get("queue_ms"),
        "compute": timing.get("compute_ms"),
    }


def jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: non-finite floats become null, unknown types their str."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)
