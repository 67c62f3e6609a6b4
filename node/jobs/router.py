"""The router: turns a user's inference request into a cross-checked answer from attested TEE peers.

Per job: resolve the model → attested providers (DHT hints ∩ the registry this node appraised
itself; a peer that is not attested never receives anything) → drop banned peers → rank by
weighted rendezvous hashing on a fresh random job id (reputation × advertised load) → for each
chosen executor, optionally challenge it for fresh evidence, seal the input to its attested epoch
key with a fresh ephemeral key, send it over the long-lived job stream to that peer → collect signed
commitments → request reveals → open them, check them against the commitments → vote with the
task's comparator → update reputation (with the signed commitments as evidence) → answer with a
verification report. The job's life is driven by ``protocol.jobs.jobflow.JobFlow``: replacement of
busy, slow and dead executors, escalation to 2k+1 fresh ones, and a typed outcome before the
deadline all come from there; this module only does the I/O.

Chat is verified the "one generator, many scorers" way: phase 1 asks one primary for a greedy
completion; phase 2 asks verifiers to re-score the primary's tokens with one teacher-forced prefill
(``protocol.jobs.consensus.vote_chat``). A primary that the verifiers' majority rejects is penalised and
the job is retried once with a fresh primary.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import trio

from node.jobs.frames import EndOfStream, FrameIO
from protocol.identity import peer_id_to_text
from protocol.jobs import consensus
from protocol.jobs.jobflow import (
    Attempt,
    AttemptState,
    Failure,
    Finished,
    JobFlow,
    Outcome,
    OutcomeStatus,
    RequestReveal,
    Send,
    VoteResult,
)
from protocol.jobs.messages import (
    JOB_ID_LEN,
    Commitment,
    ErrorCode,
    ErrorMessage,
    JobRequest,
    MessageError,
    Mode,
    Reveal,
    RevealRequest,
    StreamChunk,
    Task,
    commitment_hash,
    decode_message,
    result_digest,
)
from protocol.jobs.payloads import (
    ChatMessage,
    EmbeddingsInput,
    EmbeddingsResult,
    GenerateInput,
    GenerateResult,
    JobInput,
    PayloadError,
    ScoreInput,
    ScoreResult,
    decode_result,
)
from protocol.jobs.reputation import ReputationBook, ReputationFormatError
from protocol.jobs.selection import Candidate, rank_peers
from protocol.sealing import JobSession, SealingError, StreamOpener, open_result, seal_job

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = [
    "ExecutorInfo",
    "JobResult",
    "Network",
    "Router",
    "RouterError",
    "RouterSettings",
]

log = logging.getLogger("veilnet.router")

_REPUTATION_FILE = "reputation.msgpack"
_MAX_REPORTS = 1000
_JOB_CHANNEL_SIZE = 1024  # messages one job may have queued on a link (stream chunks included)


class RouterErrorCode(StrEnum):
    UNKNOWN_MODEL = "unknown_model"
    NO_PROVIDERS = "no_attested_providers"
    NO_CONSENSUS = "no_consensus"
    DEADLINE = "deadline_exceeded"
    UNAVAILABLE = "executors_unavailable"
    BAD_REQUEST = "invalid_request"


_HTTP_STATUS = {
    RouterErrorCode.UNKNOWN_MODEL: 404,
    RouterErrorCode.NO_PROVIDERS: 503,
    RouterErrorCode.NO_CONSENSUS: 502,
    RouterErrorCode.DEADLINE: 504,
    RouterErrorCode.UNAVAILABLE: 503,
    RouterErrorCode.BAD_REQUEST: 400,
}


class RouterError(Exception):
    """A job could not produce a trusted answer; ``code`` is stable, ``report`` explains what happened."""

    def __init__(self, code: RouterErrorCode, message: str, report: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.report = dict(report) if report else None

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.code]


@dataclass(frozen=True)
class ExecutorInfo:
    """An attested executor as the router needs it (from the registry entry this node verified)."""

    peer_id: bytes
    enc_pubkey: bytes
    kind: str
    label: str
    models: tuple[str, ...]
    bundle: bytes = b""

    @property
    def simulated(self) -> bool:
        return self.kind == "simulated"


class Network(Protocol):
    """What the router needs from the node (libp2p in production, memory pipes in unit tests)."""

    @property
    def local_peer_id(self) -> bytes: ...

    async def providers(self, model_id: str) -> list[ExecutorInfo]:
        """Attested executors serving ``model_id`` (never a peer this node did not appraise)."""
        ...

    def known_models(self) -> Mapping[str, str]:
        """Model name → model id for names this node can resolve (its own runtimes, aliases)."""
        ...

    def attested_models(self) -> set[str]:
        """Every model id some attested peer announces."""
        ...

    async def open_job_stream(self, peer_id: bytes) -> FrameIO: ...

    async def challenge(self, info: ExecutorInfo, nonce: bytes) -> tuple[bool, str]:
        """Ask ``info`` for fresh evidence over ``nonce``; (passed, detail)."""
        ...


@dataclass(frozen=True)
class RouterSettings:
    replicas: int = 3
    mode: Mode = Mode.CONSENSUS
    spot_check_probability: float = 0.1
    deadline_s: float = 30.0
    commit_timeout_s: float = 10.0
    reveal_timeout_s: float = 5.0
    challenge: bool = False
    max_tokens_default: int = 64
    escalate: bool = True
    open_stream_timeout_s: float = 5.0
    deadline_margin_s: float = 0.25  # the flow finishes this much before the caller's deadline

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> RouterSettings:
        """Read ``[extra]`` keys ``replicas``, ``mode``, ``spot_check_probability``, ``deadline_s``,
        ``commit_timeout_s``, ``reveal_timeout_s``, ``challenge`` (all optional)."""
        kwargs: dict[str, Any] = {}
        for key, kind in (
            ("replicas", int), ("spot_check_probability", (int, float)), ("deadline_s", (int, float)),
            ("commit_timeout_s", (int, float)), ("reveal_timeout_s", (int, float)), ("challenge", bool),
            ("max_tokens_default", int), ("escalate", bool),
        ):
            if key in extra:
                value = extra[key]
                if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                    raise ValueError(f"[extra] {key} has the wrong type")
                kwargs[key] = value
        if "mode" in extra:
            kwargs["mode"] = Mode(str(extra["mode"]))
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 1 <= self.replicas <= 15:
            raise ValueError("replicas must be 1..15")
        if not 0.0 <= self.spot_check_probability <= 1.0:
            raise ValueError("spot_check_probability must be within [0, 1]")
        if self.deadline_s <= 0 or self.commit_timeout_s <= 0 or self.reveal_timeout_s <= 0:
            raise ValueError("timeouts must be positive")


@dataclass
class JobResult:
    """A trusted answer and its verification report."""

    job_id: bytes
    model_id: str
    vectors: np.ndarray | None = None
    generation: GenerateResult | None = None
    report: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- links


class _Broken:
    """Sentinel delivered to every job on a link that died."""

    def __init__(self, why: str) -> None:
        self.why = why


@dataclass(eq=False)
class _Link:
    """The one long-lived job stream to an executor; demultiplexes its messages by job id."""

    peer_id: bytes
    io: FrameIO
    jobs: dict[bytes, trio.MemorySendChannel[Any]] = field(default_factory=dict)
    broken: bool = False
    jobs_sent: int = 0

    def open_job(self, job_id: bytes) -> trio.MemoryReceiveChannel[Any]:
        send, receive = trio.open_memory_channel[Any](_JOB_CHANNEL_SIZE)
        self.jobs[job_id] = send
        return receive

    def close_job(self, job_id: bytes) -> None:
        self.jobs.pop(job_id, None)

    async def send(self, payload: bytes) -> None:
        await self.io.write(payload)

    async def run(self) -> None:
        why = "closed"
        try:
            while True:
                frame = await self.io.read()
                try:
                    message = decode_message(frame)
                except MessageError as exc:
                    why = f"malformed message: {exc}"
                    return
                job_id = getattr(message, "job_id", None)
                if job_id is None:
                    why = f"session error from executor: {getattr(message, 'message', message.TAG)}"
                    return
                channel = self.jobs.get(job_id)
                if channel is None:
                    continue  # a job we already finished (late reveal, abandoned attempt)
                try:
                    channel.send_nowait((message, frame))
                except trio.WouldBlock:  # a flood of messages for one job: fail that job only
                    self.jobs.pop(job_id, None)
                    await _deliver_broken(channel, "executor flooded the job with messages")
        except EndOfStream:
            why = "stream closed by the executor"
        except (MessageError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            why = f"stream failed: {exc}"
        except Exception as exc:  # py-libp2p raises its own stream errors (reset, closed)
            why = f"stream failed: {type(exc).__name__}: {exc}"
        finally:
            self.broken = True
            for channel in list(self.jobs.values()):
                await _deliver_broken(channel, why)
            self.jobs.clear()
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self.io.reset()


async def _deliver_broken(channel: trio.MemorySendChannel[Any], why: str) -> None:
    try:
        channel.send_nowait((_Broken(why), b""))
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        await channel.aclose()


# ----------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class _Commit:
    peer: bytes
    commitment: Commitment
    statement: bytes


@dataclass(frozen=True)
class _Revealed:
    peer: bytes
    salt: bytes
    digest: bytes
    value: Any


@dataclass(frozen=True)
class _Failed:
    peer: bytes
    failure: Failure
    detail: str


_ERROR_FAILURE = {
    ErrorCode.BUSY: Failure.BUSY,
    ErrorCode.RATE_LIMITED: Failure.BUSY,
    ErrorCode.EXPIRED: Failure.REFUSED,
    ErrorCode.UNKNOWN_MODEL: Failure.REFUSED,
    ErrorCode.WRONG_KEY: Failure.REFUSED,
    ErrorCode.NOT_EXECUTOR: Failure.REFUSED,
    ErrorCode.REPLAY: Failure.REFUSED,
    ErrorCode.DECRYPT_FAILED: Failure.REFUSED,
    ErrorCode.BAD_REQUEST: Failure.REFUSED,
    ErrorCode.TOO_LARGE: Failure.REFUSED,
    ErrorCode.INTERNAL: Failure.CRASH,
}


@dataclass
class _Phase:
    """One JobFlow's I/O context: what to send and how to read results."""

    job_id: bytes
    model_id: str
    task: Task
    mode: Mode
    job: JobInput
    stream: bool
    deadline_ms: int
    infos: Mapping[bytes, ExecutorInfo]
    decode: Callable[[bytes], Any]  # result plaintext → comparator value (raises on malformed)
    challenge: bool
    pipeline_reveal: bool = False  # k = 1 without cross-check: ask for the reveal with the job
    sessions: dict[bytes, JobSession] = field(default_factory=dict)
    timings: dict[bytes, dict[str, float]] = field(default_factory=dict)
    challenged: dict[bytes, str] = field(default_factory=dict)
    started: float = 0.0


class Router:
    """Submits jobs for the local user. Start ``run`` in the node's nursery before submitting."""

    def __init__(
        self,
        network: Network,
        *,
        settings: RouterSettings | None = None,
        data_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.network = network
        self.settings = settings or RouterSettings()
        self.settings.validate()
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._data_dir = data_dir
        self.reputation = self._load_reputation()
        self._reputation_dirty = False
        self._links: dict[bytes, _Link] = {}
        self._link_locks: dict[bytes, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._reports: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._inflight: dict[bytes, int] = {}
        self._busy_until: dict[bytes, float] = {}
        self._queue_ewma: dict[bytes, float] = {}
        self.streams_opened = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the links' reader tasks; persist reputation periodically and at exit."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(5.0)
                    self.save_reputation()
        finally:
            self._nursery = None
            self.save_reputation()
            for link in list(self._links.values()):
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    await link.io.reset()
            self._links.clear()

    def _load_reputation(self) -> ReputationBook:
        if self._data_dir is None:
            return ReputationBook()
        path = self._data_dir / _REPUTATION_FILE
        try:
            return ReputationBook.from_bytes(path.read_bytes())
        except FileNotFoundError:
            return ReputationBook()
        except ReputationFormatError as exc:
            log.warning("reputation file %s is unreadable (%s); starting afresh", path, exc)
            path.rename(path.with_suffix(".bad"))
            return ReputationBook()

    def save_reputation(self) -> None:
        if self._data_dir is None or not self._reputation_dirty:
            return
        path = self._data_dir / _REPUTATION_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(self.reputation.to_bytes())
        os.replace(tmp, path)
        self._reputation_dirty = False

    # ------------------------------------------------------------------ public API

    def report(self, job_id_hex: str) -> dict[str, Any] | None:
        return self._reports.get(job_id_hex)

    def resolve_model(self, model: str) -> str:
        """A model name or id → the model id attested peers announce."""
        attested = self.network.attested_models()
        if model in attested:
            return model
        known = self.network.known_models()
        if model in known:
            return known[model]
        matches = [m for m in attested if m.split("@", 1)[0] == model or m.startswith(model + ":")]
        if len(matches) == 1:
            return matches[0]
        raise RouterError(RouterErrorCode.UNKNOWN_MODEL, f"no attested peer serves a model called {model!r}")

    async def embeddings(
        self, model: str, texts: Sequence[str], *, replicas: int | None = None, mode: Mode | None = None,
        challenge: bool | None = None, deadline_s: float | None = None,
    ) -> JobResult:
        """Embed ``texts`` on k attested executors and return the majority's vectors."""
        try:
            job = EmbeddingsInput(tuple(texts))
        except PayloadError as exc:
            raise RouterError(RouterErrorCode.BAD_REQUEST, str(exc)) from None
        model_id = self.resolve_model(model)

        def decode(plaintext: bytes) -> np.ndarray:
            result = decode_result(plaintext)
            if not isinstance(result, EmbeddingsResult) or result.count != len(job.texts):
                raise ValueError("not an embeddings result for these texts")
            return consensus.decode_vectors(result.vectors, (result.count, result.dim))

        return await self._submit(
            model, model_id, Task.EMBEDDINGS, job, decode, replicas=replicas, mode=mode, challenge=challenge,
            deadline_s=deadline_s,
        )

    async def chat(
        self, model: str, messages: Sequence[Mapping[str, str]], *, max_tokens: int | None = None,
        replicas: int | None = None, mode: Mode | None = None, challenge: bool | None = None,
        deadline_s: float | None = None,
    ) -> JobResult:
        """Greedy chat completion by one primary, verified by teacher-forced re-scoring."""
        try:
            chat = tuple(ChatMessage(str(m["role"]), str(m["content"])) for m in messages)
            job = GenerateInput(chat, max_tokens or self.settings.max_tokens_default)
        except (PayloadError, KeyError, TypeError) as exc:
            raise RouterError(RouterErrorCode.BAD_REQUEST, f"messages: {exc}") from None
        model_id = self.resolve_model(model)

        def decode(plaintext: bytes) -> GenerateResult:
            result = decode_result(plaintext)
            if not isinstance(result, GenerateResult) or len(result.tokens) > job.max_tokens:
                raise ValueError("not a generation for this job")
            return result

        return await self._submit(
            model, model_id, Task.CHAT, job, decode, replicas=replicas, mode=mode, challenge=challenge,
            deadline_s=deadline_s,
        )

    # ------------------------------------------------------------------ submission

    async def _submit(
        self, model: str, model_id: str, task: Task, job: JobInput, decode: Callable[[bytes], Any], *,
        replicas: int | None, mode: Mode | None, challenge: bool | None, deadline_s: float | None,
    ) -> JobResult:
        k = replicas if replicas is not None else self.settings.replicas
        if not 1 <= k <= 15:
            raise RouterError(RouterErrorCode.BAD_REQUEST, "replicas must be between 1 and 15")
        mode = mode or self.settings.mode
        challenge = self.settings.challenge if challenge is None else challenge
        started = self._clock()
        deadline = started + (deadline_s or self.settings.deadline_s)
        job_id = os.urandom(JOB_ID_LEN)
        providers = await self.network.providers(model_id)
        infos = {p.peer_id: p for p in providers if model_id in p.models}
        report: dict[str, Any] = {
            "job_id": job_id.hex(), "model": model, "model_id": model_id, "task": task.value,
            "mode": mode.value, "replicas": k, "challenge": challenge, "created_at": started,
            "candidates": len(infos),
        }
        if not infos:
            raise RouterError(
                RouterErrorCode.NO_PROVIDERS, f"no attested executor serves {model!r} right now", report
            )
        verify = True
        if mode is Mode.SPOT_CHECK:
            verify = self._rng.random() < self.settings.spot_check_probability
            report["spot_check_verified"] = verify
        if task is Task.EMBEDDINGS:
            quorum = k if mode is Mode.CONSENSUS else (1 + k if verify else 1)
            outcome, phase = await self._run_phase(
                job_id, model_id, task, mode, job, decode, infos, quorum=quorum, deadline=deadline,
                challenge=challenge, escalate=self.settings.escalate and quorum > 1, exclude=(),
                # k = 1 by the user's choice: nothing to cross-check, so no reason to hold the reveal
                # back (never in spot-check: the primary must not learn that it goes unchecked)
                pipeline=mode is Mode.CONSENSUS and quorum == 1,
            )
            report["executors"] = self._executor_report(outcome, phase, role="replica")
            self._finish_report(report, outcome, started)
            if not outcome.ok:
                raise self._error(outcome, report)
            winner, vectors = outcome.value
            report["result_from"] = peer_id_to_text(winner)
            return JobResult(job_id=job_id, model_id=model_id, vectors=np.array(vectors), report=report)
        return await self._submit_chat(
            report, job_id, model_id, mode, job, decode, infos, k=k, verify=verify, deadline=deadline,
            challenge=challenge, started=started,
        )

    async def _submit_chat(
        self, report: dict[str, Any], job_id: bytes, model_id: str, mode: Mode, job: JobInput,
        decode: Callable[[bytes], Any], infos: Mapping[bytes, ExecutorInfo], *, k: int, verify: bool,
        deadline: float, challenge: bool, started: float,
    ) -> JobResult:
        assert isinstance(job, GenerateInput)
        verifiers = (k - 1 if mode is Mode.CONSENSUS else k) if verify else 0
        executors: list[dict[str, Any]] = []
        rejected: set[bytes] = set()  # primaries the verifiers' majority rejected
        report["phases"] = []
        for attempt in range(2):  # a primary rejected by the verifiers' majority gets one retry
            gen_id = job_id if attempt == 0 else os.urandom(JOB_ID_LEN)
            outcome, phase = await self._run_phase(
                gen_id, model_id, Task.CHAT, mode, job, decode, infos, quorum=1, deadline=deadline,
                challenge=challenge, escalate=False, exclude=rejected,
                pipeline=mode is Mode.CONSENSUS and verifiers == 0,
            )
            primary_rows = self._executor_report(outcome, phase, role="primary")
            for row in primary_rows:  # producing a completion is not agreement: phase 2 decides
                row["in_majority"] = verifiers == 0 and row["in_majority"]
            executors += primary_rows
            report["phases"].append(
                {"job_id": gen_id.hex(), "op": "generate", "status": outcome.status.value}
            )
            if not outcome.ok:
                report["executors"] = executors
                self._finish_report(report, outcome, started)
                raise self._error(outcome, report)
            primary, generation = outcome.value
            assert isinstance(generation, GenerateResult)
            if verifiers == 0:
                report["executors"] = executors
                self._finish_report(report, outcome, started)
                report["agreement"] = {"comparator": "none (unverified)", "agreeing": 1, "of": 1}
                return JobResult(job_id=job_id, model_id=model_id, generation=generation, report=report)
            score_job = ScoreInput(job.messages, generation.tokens)
            score_id = os.urandom(JOB_ID_LEN)
            positions = len(generation.tokens)

            def decode_scores(plaintext: bytes, positions: int = positions) -> consensus.TokenVerdict:
                result = decode_result(plaintext)
                if not isinstance(result, ScoreResult):
                    raise ValueError("not a score result")
                rank_bytes, gap_bytes = consensus.encode_token_scores(list(result.ranks), list(result.gaps))
                ranks, gaps = consensus.decode_token_scores(rank_bytes, gap_bytes, positions)
                return consensus.check_token_scores(ranks, gaps)

            chat_voter = _ChatVoter(primary)
            verdict_outcome, score_phase = await self._run_phase(
                score_id, model_id, Task.CHAT, mode, score_job, decode_scores, infos, quorum=verifiers,
                deadline=deadline, challenge=challenge, escalate=self.settings.escalate,
                exclude=rejected | {primary}, voter=chat_voter, needed=1,
            )
            executors += self._executor_report(verdict_outcome, score_phase, role="verifier")
            report["phases"].append(
                {"job_id": score_id.hex(), "op": "score", "status": verdict_outcome.status.value}
            )
            report["executors"] = executors
            if verdict_outcome.ok:
                self.reputation.record_success(primary, self._clock())
                self._reputation_dirty = True
                for entry in executors:
                    if entry["peer_id"] == peer_id_to_text(primary) and entry["role"] == "primary":
                        entry["in_majority"] = True
                self._finish_report(report, verdict_outcome, started)
                report["agreement"]["agreeing"] += 1  # the primary agrees with its own tokens
                report["agreement"]["of"] += 1
                report["result_from"] = peer_id_to_text(primary)
                return JobResult(job_id=job_id, model_id=model_id, generation=generation, report=report)
            rejecters = chat_voter.rejecters
            if verdict_outcome.status is OutcomeStatus.NO_CONSENSUS and len(rejecters) * 2 > (
                1 + len(chat_voter.last_verdicts)
            ):
                self._penalise(primary, "wrong_output", gen_id, chat_voter.detail_for_primary())
                rejected.add(primary)
                report.setdefault("penalties", []).append(
                    {"peer_id": peer_id_to_text(primary), "offence": "wrong_output"}
                )
                continue  # retry with a fresh primary
            self._finish_report(report, verdict_outcome, started)
            raise self._error(verdict_outcome, report)
        self._finish_report(report, None, started)
        message = "two primaries were rejected by their verifiers"
        raise RouterError(RouterErrorCode.NO_CONSENSUS, message, report)

    def _penalise(self, peer: bytes, offence: str, job_id: bytes, detail: str) -> None:
        from protocol.jobs.reputation import EvidenceRecord, Offence

        now = self._clock()
        kind = Offence(offence)
        self.reputation.record_offence(peer, kind, now, EvidenceRecord(job_id, kind, now, detail))
        self._reputation_dirty = True

    # ------------------------------------------------------------------ one flow

    async def _run_phase(
        self, job_id: bytes, model_id: str, task: Task, mode: Mode, job: JobInput,
        decode: Callable[[bytes], Any], infos: Mapping[bytes, ExecutorInfo], *, quorum: int, deadline: float,
        challenge: bool, escalate: bool, exclude: set[bytes] | tuple[()], voter: Any = None,
        needed: int | None = None, pipeline: bool = False,
    ) -> tuple[Outcome, _Phase]:
        now = self._clock()
        banned = self.reputation.banned(now)
        candidates = [
            Candidate(peer, reputation=self.reputation.score(peer, now), load=self._load_of(peer, now))
            for peer in infos
            if peer not in banned
        ]
        ranking = rank_peers(job_id, candidates, exclude=set(exclude))
        phase = _Phase(
            job_id=job_id, model_id=model_id, task=task, mode=mode, job=job,
            stream=isinstance(job, GenerateInput), deadline_ms=int(deadline * 1000), infos=infos,
            decode=decode, challenge=challenge, started=now, pipeline_reveal=pipeline,
        )
        flow_deadline = max(now + 0.05, deadline - self.settings.deadline_margin_s)
        flow = JobFlow(
            job_id, ranking, quorum, now=now, deadline=flow_deadline,
            commit_timeout=min(self.settings.commit_timeout_s, flow_deadline - now),
            reveal_timeout=self.settings.reveal_timeout_s,
            vote=voter or (_embeddings_voter if task is Task.EMBEDDINGS else _single_voter),
            commitment_of=commitment_hash,
            escalation_quorum=(2 * quorum + 1) if escalate else 0,
            needed=needed,
        )
        outcome = await self._drive(flow, phase)
        self._apply_reputation(outcome)
        return outcome, phase

    async def _drive(self, flow: JobFlow, phase: _Phase) -> Outcome:
        send, receive = trio.open_memory_channel[Any](math.inf)
        async with trio.open_nursery() as nursery:
            actions = flow.start(self._clock())
            while True:
                for action in actions:
                    if isinstance(action, Finished):
                        nursery.cancel_scope.cancel()
                        return action.outcome
                    if isinstance(action, Send):
                        nursery.start_soon(self._attempt, phase, action.peer_id, send)
                    elif isinstance(action, RequestReveal):
                        nursery.start_soon(self._request_reveal, phase, action.peer_id, send)
                actions = []
                wait = flow.next_deadline() - self._clock()
                event = None
                if wait > 0:
                    with trio.move_on_after(wait):
                        event = await receive.receive()
                now = self._clock()
                if isinstance(event, _Commit):
                    actions = flow.on_commit(event.peer, event.commitment.commitment, event.statement, now)
                elif isinstance(event, _Revealed):
                    actions = flow.on_reveal(event.peer, event.salt, event.digest, event.value, now)
                elif isinstance(event, _Failed):
                    self._note_failure(event.peer, event.failure, now)
                    actions = flow.on_failure(event.peer, event.failure, event.detail, now)
                else:
                    actions = flow.on_tick(now)
        raise AssertionError("unreachable: the flow always finishes")

    # ------------------------------------------------------------------ one executor

    async def _attempt(self, phase: _Phase, peer: bytes, events: trio.MemorySendChannel[Any]) -> None:
        info = phase.infos[peer]
        timing = phase.timings.setdefault(peer, {})
        timing["sent"] = self._clock()
        self._inflight[peer] = self._inflight.get(peer, 0) + 1
        link: _Link | None = None
        try:
            if phase.challenge:
                nonce = os.urandom(32)
                try:
                    with trio.fail_after(self.settings.open_stream_timeout_s * 2):
                        passed, detail = await self.network.challenge(info, nonce)
                except (trio.TooSlowError, OSError, EndOfStream, MessageError) as exc:
                    passed, detail = False, f"no challenge answer: {exc}"
                phase.challenged[peer] = detail
                if not passed:
                    await events.send(_Failed(peer, Failure.CHALLENGE_FAILED, detail))
                    return
            try:
                link = await self._link(peer)
            except Exception as exc:
                await events.send(_Failed(peer, Failure.CRASH, f"cannot open a job stream: {exc}"))
                return
            receive = link.open_job(phase.job_id)
            sealed = seal_job(
                phase.job.to_bytes(), recipient_pubkey=info.enc_pubkey, job_id=phase.job_id,
                model_id=phase.model_id, deadline_ms=phase.deadline_ms,
            )
            phase.sessions[peer] = sealed.session
            request = JobRequest(
                job_id=phase.job_id, model_id=phase.model_id, task=phase.task, deadline_ms=phase.deadline_ms,
                client_pubkey=sealed.client_keys.public, executor_enc_pubkey=info.enc_pubkey,
                sealed_input=sealed.envelope, mode=phase.mode, stream=phase.stream,
            )
            try:
                await link.send(request.to_wire())
                if phase.pipeline_reveal:
                    await link.send(RevealRequest(job_id=phase.job_id).to_wire())
                link.jobs_sent += 1
            except Exception as exc:
                await events.send(_Failed(peer, Failure.CRASH, f"send failed: {exc}"))
                return
            await self._follow(phase, peer, receive, sealed.session, events)
        finally:
            self._inflight[peer] = max(0, self._inflight.get(peer, 1) - 1)
            if link is not None:
                link.close_job(phase.job_id)

    async def _follow(
        self, phase: _Phase, peer: bytes, receive: trio.MemoryReceiveChannel[Any], session: JobSession,
        events: trio.MemorySendChannel[Any],
    ) -> None:
        """Read one executor's answers for one job until it has revealed or failed."""
        timing = phase.timings[peer]
        commitment: Commitment | None = None
        async for message, frame in receive:
            if isinstance(message, _Broken):
                await events.send(_Failed(peer, Failure.CRASH, message.why))
                return
            if isinstance(message, ErrorMessage):
                failure = _ERROR_FAILURE.get(message.code, Failure.REFUSED)
                if message.code is ErrorCode.BUSY:
                    self._busy_until[peer] = self._clock() + 2.0
                await events.send(_Failed(peer, failure, f"{message.code.value}: {message.message}"))
                return
            if isinstance(message, Commitment) and commitment is None:
                try:
                    message.verify(expected_peer_id=peer)
                except MessageError as exc:
                    await events.send(_Failed(peer, Failure.MALFORMED, f"commitment: {exc}"))
                    return
                commitment = message
                timing["committed"] = self._clock()
                timing["queue_ms"] = message.queue_ms
                timing["compute_ms"] = message.compute_ms
                self._note_queue(peer, message.queue_ms)
                await events.send(_Commit(peer, message, frame))
                continue
            if isinstance(message, Reveal) and commitment is not None:
                revealed = await self._open_reveal(phase, peer, message, commitment, session, receive)
                timing["revealed"] = self._clock()
                await events.send(revealed)
                return
            await events.send(_Failed(peer, Failure.MALFORMED, f"unexpected {message.TAG}"))
            return

    async def _open_reveal(
        self, phase: _Phase, peer: bytes, reveal: Reveal, commitment: Commitment, session: JobSession,
        receive: trio.MemoryReceiveChannel[Any],
    ) -> _Revealed | _Failed:
        try:
            reveal.verify(expected_peer_id=peer)
            reveal.check_against(commitment)
        except MessageError as exc:
            return _Failed(peer, Failure.BAD_REVEAL, f"reveal: {exc}")
        try:
            if phase.stream:
                plaintext = await self._read_stream(session, reveal.sealed_result, receive)
            else:
                plaintext = open_result(session, reveal.sealed_result)
        except (SealingError, _StreamFailure) as exc:
            return _Failed(peer, Failure.BAD_REVEAL, f"sealed result: {exc}")
        digest = result_digest(plaintext)  # computed here, never taken from the executor
        try:
            value = phase.decode(plaintext)
        except (PayloadError, consensus.ConsensusError, ValueError) as exc:
            return _Failed(peer, Failure.MALFORMED, f"result: {exc}")
        return _Revealed(peer, reveal.salt, digest, value)

    async def _read_stream(
        self, session: JobSession, opening: bytes, receive: trio.MemoryReceiveChannel[Any]
    ) -> bytes:
        """Text deltas, then the full result as the FINAL chunk; the deltas must spell its text."""
        opener = StreamOpener.start(session, opening)
        deltas: list[str] = []
        async for message, _frame in receive:
            if not isinstance(message, StreamChunk):
                raise _StreamFailure(f"unexpected {getattr(message, 'TAG', 'end')} inside a result stream")
            plaintext = opener.pull(message.data)
            if not opener.finished:
                try:
                    deltas.append(plaintext.decode("utf-8"))
                except UnicodeDecodeError:
                    raise _StreamFailure("a text chunk is not UTF-8") from None
                continue
            try:
                result = decode_result(plaintext)
            except PayloadError as exc:
                raise _StreamFailure(f"final chunk: {exc}") from None
            if not isinstance(result, GenerateResult) or "".join(deltas) != result.text:
                raise _StreamFailure("streamed text differs from the final result")
            return plaintext
        raise _StreamFailure("the result stream ended without its final chunk")

    async def _request_reveal(self, phase: _Phase, peer: bytes, events: trio.MemorySendChannel[Any]) -> None:
        if phase.pipeline_reveal:
            return  # already asked together with the job
        link = self._links.get(peer)
        if link is None or link.broken:
            await events.send(_Failed(peer, Failure.CRASH, "job stream gone before the reveal"))
            return
        try:
            await link.send(RevealRequest(job_id=phase.job_id).to_wire())
        except Exception as exc:
            await events.send(_Failed(peer, Failure.CRASH, f"reveal request failed: {exc}"))

    async def _link(self, peer: bytes) -> _Link:
        link = self._links.get(peer)
        if link is not None and not link.broken:
            return link
        lock = self._link_locks.setdefault(peer, trio.Lock())
        async with lock:
            link = self._links.get(peer)
            if link is not None and not link.broken:
                return link
            if self._nursery is None:
                raise RuntimeError("the router is not running")
            with trio.fail_after(self.settings.open_stream_timeout_s):
                io = await self.network.open_job_stream(peer)
            link = _Link(peer, io)
            self._links[peer] = link
            self.streams_opened += 1
            self._nursery.start_soon(link.run)
            return link

    # ------------------------------------------------------------------ load and reputation

    def _load_of(self, peer: bytes, now: float) -> float:
        """Advertised load: recent busy answers, queue time in commitments, our own in-flight jobs."""
        if self._busy_until.get(peer, 0.0) > now:
            return 1.0
        queue = min(1.0, self._queue_ewma.get(peer, 0.0) / 1000.0)
        inflight = min(1.0, self._inflight.get(peer, 0) / 16.0)
        return max(queue, inflight)

    def _note_queue(self, peer: bytes, queue_ms: int) -> None:
        previous = self._queue_ewma.get(peer, float(queue_ms))
        self._queue_ewma[peer] = 0.7 * previous + 0.3 * queue_ms

    def _note_failure(self, peer: bytes, failure: Failure, now: float) -> None:
        if failure is Failure.BUSY:
            self._busy_until[peer] = now + 2.0

    def _apply_reputation(self, outcome: Outcome) -> None:
        now = self._clock()
        for peer in outcome.successes:
            self.reputation.record_success(peer, now)
        for peer, offence, record in outcome.penalties:
            penalty = self.reputation.record_offence(peer, offence, now, record)
            if penalty.banned_until is not None:
                log.warning(
                    "banned executor %s until %s after %s (job %s)", peer_id_to_text(peer),
                    time.strftime("%H:%M:%S", time.localtime(penalty.banned_until)), offence.value,
                    record.job_id.hex(),
                )
            else:
                log.info("executor %s penalised for %s (job %s)", peer_id_to_text(peer), offence.value,
                         record.job_id.hex())
        if outcome.successes or outcome.penalties:
            self._reputation_dirty = True

    # ------------------------------------------------------------------ reports

    def _executor_report(self, outcome: Outcome, phase: _Phase, role: str) -> list[dict[str, Any]]:
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
                "timings_ms": _attempt_timings(attempt, timing),
            })
        return rows

    def _finish_report(self, report: dict[str, Any], outcome: Outcome | None, started: float) -> None:
        now = self._clock()
        report["total_ms"] = round((now - started) * 1000, 3)
        if outcome is not None:
            report["status"] = outcome.status.value
            report["escalated"] = report.get("escalated", False) or outcome.escalated
            report["message"] = outcome.message
            detail = {k: _jsonable(v) for k, v in outcome.vote_detail.items()}
            report["agreement"] = {
                **detail,
                "agreeing": len(outcome.winners),
                "of": sum(1 for a in outcome.attempts if a.state is AttemptState.REVEALED),
            }
            penalties = report.setdefault("penalties", [])
            for peer, offence, _ in outcome.penalties:
                penalties.append({
                    "peer_id": peer_id_to_text(peer), "offence": offence.value,
                    "banned_until": self.reputation.banned_until(peer, now),
                })
        else:
            report["status"] = OutcomeStatus.NO_CONSENSUS.value
        self._reports[report["job_id"]] = report
        while len(self._reports) > _MAX_REPORTS:
            self._reports.popitem(last=False)

    def _error(self, outcome: Outcome, report: dict[str, Any]) -> RouterError:
        code = {
            OutcomeStatus.NO_CONSENSUS: RouterErrorCode.NO_CONSENSUS,
            OutcomeStatus.DEADLINE: RouterErrorCode.DEADLINE,
            OutcomeStatus.UNAVAILABLE: RouterErrorCode.UNAVAILABLE,
        }.get(outcome.status, RouterErrorCode.UNAVAILABLE)
        return RouterError(code, outcome.message or outcome.status.value, report)


class _StreamFailure(Exception):
    pass


def _attempt_timings(attempt: Attempt, timing: Mapping[str, float]) -> dict[str, float | None]:
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


# ----------------------------------------------------------------------------------- voters


def _embeddings_voter(results: Mapping[bytes, np.ndarray], needed: int) -> VoteResult:
    outcome = consensus.vote_embeddings(results, needed=needed)
    detail = dict(outcome.detail)
    detail["needed"] = needed
    if outcome.decision is not consensus.Decision.ACCEPT or outcome.winner is None:
        return VoteResult(detail=detail)
    return VoteResult(winners=outcome.majority, value=(outcome.winner, outcome.value), detail=detail)


def _single_voter(results: Mapping[bytes, Any], needed: int) -> VoteResult:
    """Phase 1 of chat: one primary; its generation is checked by phase 2, not here."""
    if len(results) != 1:
        return VoteResult(detail={"comparator": "primary"})
    ((peer, value),) = results.items()
    return VoteResult(winners=(peer,), value=(peer, value), detail={"comparator": "primary"})


class _ChatVoter:
    """Phase 2 of chat: the primary's tokens against each verifier's verdict (vote_chat)."""

    def __init__(self, primary: bytes) -> None:
        self.primary = primary
        self.rejecters: tuple[bytes, ...] = ()
        self.last_verdicts: dict[bytes, consensus.TokenVerdict] = {}

    def __call__(self, results: Mapping[bytes, consensus.TokenVerdict], needed: int) -> VoteResult:
        self.last_verdicts = dict(results)
        outcome = consensus.vote_chat(self.primary, results)
        self.rejecters = tuple(p for p, v in results.items() if not v.accepted)
        detail = dict(outcome.detail)
        rejections = detail.get("rejections", {})
        detail["rejections"] = {peer_id_to_text(bytes.fromhex(k)): v for k, v in rejections.items()}
        detail["needed"] = outcome.needed
        detail["respondents"] = outcome.respondents
        if outcome.decision is not consensus.Decision.ACCEPT:
            return VoteResult(detail=detail)
        supporters = tuple(p for p in outcome.majority if p != self.primary)
        if not supporters:
            return VoteResult(detail=detail)
        return VoteResult(winners=supporters, value=(self.primary, None), detail=detail)

    def detail_for_primary(self) -> str:
        return f"rejected by {len(self.rejecters)} of {len(self.last_verdicts)} verifiers"

