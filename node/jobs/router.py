"""The router: turns a user's inference request into a cross-checked answer from attested TEE peers.

Per job: resolve the model → attested providers (DHT hints ∩ the registry this node appraised
itself; a peer that is not attested never receives anything) → drop banned peers → rank by
weighted rendezvous hashing on a fresh random job id (reputation × advertised load) → for each
chosen executor, optionally challenge it for fresh evidence, seal the input to its attested epoch
key with a fresh ephemeral key, send it over the long-lived job stream to that peer → collect signed
commitments → request reveals → open them, check them against the commitments → vote with the
task's comparator → update reputation (with the signed commitments as evidence) → answer with a
verification report. An executor that proves its own misbehaviour (a signed reveal that does not
open its signed commitment; two different signed commitments for one job) is also handed, with
both signed messages, to ``misbehaviour_listeners`` (``node.jobs.evidence`` publishes it).

The job's life is driven by ``protocol.jobs.jobflow.JobFlow``: replacement of busy, slow and dead
executors, escalation to 2k+1 fresh ones, and a typed outcome before the deadline all come from
there; this module only does the I/O (``_drive``: actions in, events out,
one nursery per phase).

Beside it, one concept each: ``chat_flow`` (chat's generate-then-score phases), ``links`` (one
long-lived job stream per executor), ``standing`` (reputation on disk, load), ``reports``
(verification reports), ``voters``, ``phase`` (the values a job carries), ``network_view`` (what
the router needs from the node) and ``errors``.

Why one module over 500 lines: submission (embeddings, chat, the live chat stream's entry) and
the phase driver share one job's state and its deadline; each piece that could stand alone already
lives beside it (``chat_stream`` holds the live stream's reader).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from node import timeline
from node.jobs.chat_flow import ChatFlow
from node.jobs.chat_stream import STALL_S, ChatStream, StreamEvent, StreamFailed
from node.jobs.errors import RouterError, RouterErrorCode
from node.jobs.frames import EndOfStream
from node.jobs.links import Broken, JobLink, LinkPool
from node.jobs.network_view import Network
from node.jobs.phase import (
    Committed,
    Decoder,
    Failed,
    Misbehaviour,
    Phase,
    PhaseSpec,
    Progressed,
    Revealed,
    Submission,
)
from node.jobs.receipts import ReceiptBook
from node.jobs.reports import Reports, error_for, executor_report
from node.jobs.reveals import open_reveal
from node.jobs.standing import Standing
from node.jobs.voters import embeddings_voter, single_voter
from protocol.identity import Identity, peer_id_to_text
from protocol.jobs import consensus
from protocol.jobs.jobflow import Answered, Failure, Finished, JobFlow, Outcome, RequestReveal, Send
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
)
from protocol.jobs.offences import OffenceKind
from protocol.jobs.payloads import (
    ChatMessage,
    EmbeddingsInput,
    EmbeddingsResult,
    GenerateInput,
    GenerateResult,
    JobInput,
    PayloadError,
    decode_result,
)
from protocol.jobs.reputation import ReputationBook
from protocol.jobs.selection import Candidate, rank_peers
from protocol.sealing import ClientKeys, JobSession, seal_job

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["JobResult", "Router", "RouterSettings"]

log = logging.getLogger(__name__)

_SAVE_INTERVAL_S = 5.0  # how often a running router writes a changed reputation book to disk
# Jobs answered at a majority whose slower executors are still being judged. Each holds its input
# and sessions until its deadline at most; past this many, a job answers only once it has settled,
# so a client sending back to back cannot pile up background work behind a slow executor.
MAX_SETTLING = 256


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
    answer_at_majority: bool = True  # embeddings: answer once a majority of the quorum agrees
    stream_stall_s: float = STALL_S  # live chat: a primary silent this long after a chunk has stalled

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> RouterSettings:
        """Read ``[extra]`` keys ``replicas``, ``mode``, ``spot_check_probability``, ``deadline_s``,
        ``commit_timeout_s``, ``reveal_timeout_s``, ``challenge``, ``max_tokens_default``, ``escalate``,
        ``answer_at_majority``, ``stream_stall_s`` (all optional)."""
        kwargs: dict[str, Any] = {}
        for key, kind in (
            ("replicas", int), ("spot_check_probability", (int, float)), ("deadline_s", (int, float)),
            ("commit_timeout_s", (int, float)), ("reveal_timeout_s", (int, float)), ("challenge", bool),
            ("max_tokens_default", int), ("escalate", bool), ("answer_at_majority", bool),
            ("stream_stall_s", (int, float)),
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
        timeouts = (self.deadline_s, self.commit_timeout_s, self.reveal_timeout_s, self.stream_stall_s)
        if not all(math.isfinite(t) and t > 0 for t in timeouts):
            raise ValueError("timeouts must be positive and finite")


@dataclass
class JobResult:
    """A trusted answer and its verification report."""

    job_id: bytes
    model_id: str
    vectors: np.ndarray | None = None
    generation: GenerateResult | None = None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Answer:
    """How a phase settling in the router's nursery hands its answer to the request waiting."""

    ready: trio.Event = field(default_factory=trio.Event)  # result or error is set
    settled: trio.Event = field(default_factory=trio.Event)  # the phase has finished
    result: JobResult | None = None
    error: BaseException | None = None


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
        identity: Identity | None = None,
    ) -> None:
        self.network = network
        self.settings = settings or RouterSettings()
        self.settings.validate()
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self.standing = Standing(data_dir, clock)
        self.links = LinkPool(network.open_job_stream, open_timeout_s=self.settings.open_stream_timeout_s)
        # One client key per executor key for a session of jobs: X25519 once, not per job.
        self._client_keys = ClientKeys()
        self.reports = Reports(clock, self.standing.book)
        self.receipts = ReceiptBook(identity) if identity is not None else None  # signed by the user's key
        # told of every executor that proved its own misbehaviour (``node.jobs.evidence`` publishes it)
        self.misbehaviour_listeners: list[Callable[[Misbehaviour], None]] = []
        self._nursery: trio.Nursery | None = None  # ``run``'s: phases that settle after their answer
        self._settling: dict[str, _Answer] = {}  # job id hex → a phase answered and still running
        self.max_settling = MAX_SETTLING
        self._chat = ChatFlow(
            self.run_phase, self.reports, self.standing, escalate=self.settings.escalate,
            receipts=self.receipts,
        )

    @property
    def reputation(self) -> ReputationBook:
        return self.standing.book

    @property
    def streams_opened(self) -> int:
        return self.links.streams_opened

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the links' reader tasks; persist reputation periodically and at exit."""
        try:
            async with trio.open_nursery() as nursery:
                self.links.nursery = self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(_SAVE_INTERVAL_S)
                    self.save_reputation()
        finally:
            self.links.nursery = self._nursery = None
            self.save_reputation()
            await self.links.close_all()

    def save_reputation(self) -> None:
        self.standing.save()

    # ------------------------------------------------------------------ public API

    def report(self, job_id_hex: str) -> dict[str, Any] | None:
        return self.reports.get(job_id_hex)

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
        model_id, job, decode = self._chat_job(model, messages, max_tokens)
        return await self._submit(
            model, model_id, Task.CHAT, job, decode, replicas=replicas, mode=mode, challenge=challenge,
            deadline_s=deadline_s,
        )

    async def chat_stream(
        self, model: str, messages: Sequence[Mapping[str, str]], out: trio.MemorySendChannel[StreamEvent], *,
        max_tokens: int | None = None, replicas: int | None = None, mode: Mode | None = None,
        challenge: bool | None = None, deadline_s: float | None = None, release: str = "live",
        retry: bool = False,
    ) -> None:
        """Live chat (``node.jobs.chat_stream``): events on ``out``, the last a StreamDone or StreamFailed."""
        async with out:
            try:
                model_id, job, decode = self._chat_job(model, messages, max_tokens)
                sub, report = await self._submission(
                    model, model_id, Task.CHAT, job, decode, replicas=replicas, mode=mode,
                    challenge=challenge, deadline_s=deadline_s,
                )
            except RouterError as exc:
                await out.send(StreamFailed(exc, None, {"generated_tokens": 0, "verified_tokens": 0}))
                return
            stream = ChatStream(
                self.run_phase, self.reports, self.standing, sub, report, release=release,
                commit_timeout_s=self.settings.commit_timeout_s, stall_s=self.settings.stream_stall_s,
                clock=self._clock, retry=retry,
            )
            await stream.run(out)

    def _chat_job(
        self, model: str, messages: Sequence[Mapping[str, str]], max_tokens: int | None
    ) -> tuple[str, GenerateInput, Decoder]:
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

        return model_id, job, decode

    # ------------------------------------------------------------------ submission

    async def _submit(
        self, model: str, model_id: str, task: Task, job: JobInput, decode: Decoder, *,
        replicas: int | None, mode: Mode | None, challenge: bool | None, deadline_s: float | None,
    ) -> JobResult:
        sub, report = await self._submission(
            model, model_id, task, job, decode, replicas=replicas, mode=mode, challenge=challenge,
            deadline_s=deadline_s,
        )
        if task is Task.EMBEDDINGS:
            return await self._submit_embeddings(sub, report)
        generation = await self._chat.submit(sub, report)
        return JobResult(job_id=sub.job_id, model_id=sub.model_id, generation=generation, report=report)

    async def _submission(
        self, model: str, model_id: str, task: Task, job: JobInput, decode: Decoder, *,
        replicas: int | None, mode: Mode | None, challenge: bool | None, deadline_s: float | None,
    ) -> tuple[Submission, dict[str, Any]]:
        """The user's request resolved once: k, mode, deadline, a fresh job id, the providers."""
        k = replicas if replicas is not None else self.settings.replicas
        if not 1 <= k <= 15:
            raise RouterError(RouterErrorCode.BAD_REQUEST, "replicas must be between 1 and 15")
        mode = mode or self.settings.mode
        challenge = self.settings.challenge if challenge is None else challenge
        started = self._clock()
        deadline = started + (deadline_s or self.settings.deadline_s)
        job_id = os.urandom(JOB_ID_LEN)
        timeline.enter(job_id)
        providers = await self.network.providers(model_id)
        timeline.mark("router.providers")
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
        sub = Submission(
            job_id=job_id, model=model, model_id=model_id, task=task, mode=mode, job=job, decode=decode,
            infos=infos, k=k, verify=verify, deadline=deadline, challenge=challenge, started=started,
        )
        return sub, report

    async def _submit_embeddings(self, sub: Submission, report: dict[str, Any]) -> JobResult:
        """One phase of k replicas (or 1 + k in an audited spot check; 1 when unchecked).

        With more than one executor (and ``answer_at_majority``) the phase runs in the router's
        nursery: the request gets its answer once a majority of the quorum agrees (jobflow rule 6),
        and the phase goes on to judge the slower executors; its receipt and final report exist
        once it has (``settled``)."""
        k, mode = sub.k, sub.mode
        quorum = k if mode is Mode.CONSENSUS else (1 + k if sub.verify else 1)
        early = (
            self.settings.answer_at_majority and quorum > 1 and self._nursery is not None
            and len(self._settling) < self.max_settling
        )
        spec = PhaseSpec(
            sub.job_id, sub.model_id, sub.task, mode, sub.job, sub.decode, sub.infos, quorum=quorum,
            deadline=sub.deadline, challenge=sub.challenge, escalate=self.settings.escalate and quorum > 1,
            answer_early=early,
        )
        if not early or self._nursery is None:
            outcome, phase = await self.run_phase(spec)
            return self._conclude(sub, report, outcome, phase, quorum, final=True)
        answer = _Answer()
        self._settling[sub.job_id.hex()] = answer
        self._nursery.start_soon(self._settle, sub, report, spec, quorum, answer)
        await answer.ready.wait()
        if answer.error is not None:
            raise answer.error
        assert answer.result is not None
        return answer.result

    async def _settle(
        self, sub: Submission, report: dict[str, Any], spec: PhaseSpec, quorum: int, answer: _Answer
    ) -> None:
        """Run an embeddings phase to its end; hand ``answer`` the first answer it has."""

        def on_answer(provisional: Outcome, phase: Phase) -> None:
            answer.result = self._conclude(sub, dict(report), provisional, phase, quorum, final=False)
            answer.ready.set()

        try:
            outcome, phase = await self.run_phase(spec, on_answer=on_answer)
            result = self._conclude(sub, report, outcome, phase, quorum, final=True)
            if not answer.ready.is_set():
                answer.result = result
        except RouterError as exc:
            if not answer.ready.is_set():
                answer.error = exc
        except Exception as exc:  # a defect: the request that waits gets it, the router goes on
            if answer.ready.is_set():
                log.exception("job %s failed after its answer", sub.job_id.hex())
            else:
                answer.error = exc
        finally:
            if answer.result is None and answer.error is None:  # cancelled: the router is stopping
                answer.error = RouterError(
                    RouterErrorCode.UNAVAILABLE, "the node stopped before the job finished", report
                )
            answer.ready.set()
            answer.settled.set()
            self._settling.pop(sub.job_id.hex(), None)

    def _conclude(
        self, sub: Submission, report: dict[str, Any], outcome: Outcome, phase: Phase, quorum: int, *,
        final: bool,
    ) -> JobResult:
        """The report (kept for ``GET /veilnet/v1/jobs/{id}``), the receipt when ``final``, the answer."""
        report["settled"] = final
        report["executors"] = executor_report(outcome, phase, role="replica")
        self.reports.finish(report, outcome, sub.started)
        if final and self.receipts is not None:
            self.receipts.record(sub, outcome, phase, quorum=quorum, finished=self._clock())
        if not outcome.ok:
            raise error_for(outcome, report)
        winner, vectors = outcome.value
        report["result_from"] = peer_id_to_text(winner)
        return JobResult(job_id=sub.job_id, model_id=sub.model_id, vectors=np.array(vectors), report=report)

    async def settled(self, job_id_hex: str) -> None:
        """Wait until the job has finished judging its executors (an answer at a majority comes
        first): its receipt and its final report exist then. The job's deadline bounds the wait."""
        answer = self._settling.get(job_id_hex)
        if answer is not None:
            await answer.settled.wait()

    # ------------------------------------------------------------------ one flow

    async def run_phase(
        self, spec: PhaseSpec, *, on_answer: Callable[[Outcome, Phase], None] | None = None
    ) -> tuple[Outcome, Phase]:
        """Rank the unbanned providers, run one JobFlow to its outcome, record reputation;
        ``on_answer`` hears of an answer decided before the end (``spec.answer_early``)."""
        now = self._clock()
        banned = self.reputation.banned(now)
        candidates = [
            Candidate(
                peer, reputation=self.reputation.score(peer, now), load=self.standing.load_of(peer, now)
            )
            for peer in spec.infos
            if peer not in banned
        ]
        ranking = rank_peers(spec.rank_key or spec.job_id, candidates, exclude=set(spec.exclude))
        if spec.prefer is not None:  # stable: preferred peers first, each group in rank order
            prefer = spec.prefer
            ranking.sort(key=lambda peer: not prefer(peer))
        phase = Phase.start(spec, now)
        timeline.mark("router.ranked")
        flow_deadline = max(now + 0.05, spec.deadline - self.settings.deadline_margin_s)
        flow = JobFlow(
            spec.job_id, ranking, spec.quorum, now=now, deadline=flow_deadline,
            commit_timeout=min(self.settings.commit_timeout_s, flow_deadline - now),
            reveal_timeout=self.settings.reveal_timeout_s,
            vote=spec.voter or (embeddings_voter if spec.task is Task.EMBEDDINGS else single_voter),
            commitment_of=commitment_hash,
            escalation_quorum=(2 * spec.quorum + 1) if spec.escalate else 0,
            needed=spec.needed,
            answer_early=spec.answer_early,
        )
        outcome = await self._drive(flow, phase, on_answer)
        self.standing.apply(outcome)
        return outcome, phase

    async def _drive(
        self, flow: JobFlow, phase: Phase, on_answer: Callable[[Outcome, Phase], None] | None
    ) -> Outcome:
        send, receive = trio.open_memory_channel[Any](math.inf)
        async with trio.open_nursery() as nursery:
            actions = flow.start(self._clock())
            while True:
                for action in actions:
                    if isinstance(action, Finished):
                        timeline.mark("router.finished")
                        nursery.cancel_scope.cancel()
                        return action.outcome
                    if isinstance(action, Answered):
                        timeline.mark("router.answered")
                        if on_answer is not None:
                            on_answer(action.outcome, phase)
                    elif isinstance(action, Send):
                        nursery.start_soon(self._attempt, phase, action.peer_id, send)
                    elif isinstance(action, RequestReveal):
                        # asked already, in the job's own write: the executor reveals right after
                        # committing, and the flow holds what came early until this point
                        timeline.mark("router.reveal_requested", peer=action.peer_id)
                actions = []
                wait = flow.next_deadline() - self._clock()
                event = None
                if wait > 0:
                    with trio.move_on_after(wait):
                        event = await receive.receive()
                now = self._clock()
                if event is not None:
                    timeline.mark("router.event", peer=getattr(event, "peer", None),
                                  kind=type(event).__name__)
                if isinstance(event, Committed):
                    actions = flow.on_commit(event.peer, event.commitment.commitment, event.statement, now)
                elif isinstance(event, Revealed):
                    phase.reveals[event.peer] = event
                    actions = flow.on_reveal(event.peer, event.salt, event.digest, event.value, now)
                elif isinstance(event, Progressed):
                    actions = flow.on_progress(event.peer, now)
                elif isinstance(event, Failed):
                    if event.misbehaviour is not None:
                        for listener in self.misbehaviour_listeners:
                            listener(event.misbehaviour)
                    self.standing.note_failure(event.peer, event.failure, now)
                    actions = flow.on_failure(event.peer, event.failure, event.detail, now)
                else:
                    actions = flow.on_tick(now)
        raise AssertionError("unreachable: the flow always finishes")

    # ------------------------------------------------------------------ one executor

    async def _attempt(self, phase: Phase, peer: bytes, events: trio.MemorySendChannel[Any]) -> None:
        info = phase.infos[peer]
        timing = phase.timings.setdefault(peer, {})
        timing["sent"] = self._clock()
        timeline.mark("router.attempt", peer=peer)
        self.standing.job_started(peer)
        link: JobLink | None = None
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
                    await events.send(Failed(peer, Failure.CHALLENGE_FAILED, detail))
                    return
            try:
                link = await self.links.get(peer)
            except Exception as exc:
                await events.send(Failed(peer, Failure.CRASH, f"cannot open a job stream: {exc}"))
                return
            timeline.mark("router.link", peer=peer)
            receive = link.open_job(phase.job_id)
            sealed = seal_job(
                phase.job.to_bytes(), recipient_pubkey=info.enc_pubkey, job_id=phase.job_id,
                model_id=phase.model_id, deadline_ms=phase.deadline_ms, client_keys=self._client_keys,
            )
            phase.sessions[peer] = sealed.session
            request = JobRequest(
                job_id=phase.job_id, model_id=phase.model_id, task=phase.task, deadline_ms=phase.deadline_ms,
                client_pubkey=sealed.client_keys.public, executor_enc_pubkey=info.enc_pubkey,
                input_nonce=sealed.envelope.nonce, sealed_input=sealed.envelope.ciphertext, mode=phase.mode,
                stream=phase.stream,
                live=True if phase.live is not None else None,
            )
            timeline.mark("router.sealed", peer=peer)
            try:  # the job and its reveal request in one write (jobflow rule 2)
                await link.send(request.to_wire(), RevealRequest(job_id=phase.job_id).to_wire())
                link.jobs_sent += 1
                timeline.mark("router.written", peer=peer)
            except Exception as exc:
                await events.send(Failed(peer, Failure.CRASH, f"send failed: {exc}"))
                return
            await self._follow(phase, peer, receive, sealed.session, events)
        finally:
            self.standing.job_ended(peer)
            if link is not None:
                link.close_job(phase.job_id)

    async def _follow(
        self, phase: Phase, peer: bytes, receive: trio.MemoryReceiveChannel[Any], session: JobSession,
        events: trio.MemorySendChannel[Any],
    ) -> None:
        """Read one executor's answers for one job until it has revealed or failed."""
        timing = phase.timings[peer]
        commitment: Commitment | None = None
        statement = b""
        live = phase.live
        async for message, frame in receive:
            timeline.mark("router.got", peer=peer, kind=getattr(message, "TAG", "broken"))
            if isinstance(message, Broken):
                if live is not None:
                    live.on_failure(peer, message.why)
                await events.send(Failed(peer, Failure.CRASH, message.why))
                return
            if isinstance(message, ErrorMessage):
                failure = _ERROR_FAILURE.get(message.code, Failure.REFUSED)
                if message.code is ErrorCode.BUSY:
                    self.standing.note_busy(peer, self._clock())
                if live is not None:
                    live.on_failure(peer, f"{message.code.value}: {message.message}")
                await events.send(Failed(peer, failure, f"{message.code.value}: {message.message}"))
                return
            if live is not None and commitment is None and isinstance(message, StreamChunk):
                why = live.on_chunk(peer, session, message)
                if why is not None:
                    await events.send(Failed(peer, Failure.MALFORMED, f"live stream: {why}"))
                    return
                await events.send(Progressed(peer))
                continue
            if live is not None and isinstance(message, Commitment) and not live.complete(peer):
                live.on_failure(peer, "committed before its live stream was complete")
                await events.send(Failed(peer, Failure.MALFORMED, "commitment before the live stream's end"))
                return
            if isinstance(message, Commitment) and commitment is None:
                try:
                    message.verify(expected_peer_id=peer)
                except MessageError as exc:
                    await events.send(Failed(peer, Failure.MALFORMED, f"commitment: {exc}"))
                    return
                commitment, statement = message, frame
                timing["committed"] = self._clock()
                timing["queue_ms"] = message.queue_ms
                timing["compute_ms"] = message.compute_ms
                self.standing.note_queue(peer, message.queue_ms)
                await events.send(Committed(peer, message, frame))
                continue
            if isinstance(message, Commitment) and commitment is not None:
                second = _second_commitment(phase.job_id, peer, commitment, statement, message, frame)
                await events.send(second)
                return
            if isinstance(message, Reveal) and commitment is not None:
                revealed = await open_reveal(
                    phase, peer, message, commitment, session, receive, statement=statement, reveal_wire=frame
                )
                timing["revealed"] = self._clock()
                timeline.mark("router.opened", peer=peer)
                await events.send(revealed)
                return
            await events.send(Failed(peer, Failure.MALFORMED, f"unexpected {message.TAG}"))
            return


def _second_commitment(
    job_id: bytes, peer: bytes, first: Commitment, statement: bytes, second: Commitment, wire: bytes
) -> Failed:
    """A second commitment for one job: equivocation when it is signed and differs from the first."""
    try:
        second.verify(expected_peer_id=peer)
    except MessageError as exc:
        return Failed(peer, Failure.MALFORMED, f"second commitment: {exc}")
    if second.job_id != job_id or second.commitment == first.commitment:
        return Failed(peer, Failure.MALFORMED, "unexpected commitment")
    proof = Misbehaviour(OffenceKind.EQUIVOCATION, job_id, peer, statement, wire)
    return Failed(peer, Failure.BAD_REVEAL, "equivocation: two different signed commitments", proof)
