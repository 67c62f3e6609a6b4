"""The executor: serves ``/veilnet/job/1.0.0`` (job → commit → reveal) and ``/veilnet/challenge/1.0.0``.

A job session is one long-lived stream from a client node carrying many jobs (see
node.jobs.frames). For every ``JobRequest`` the executor checks, cheapest first and before any
model work:

1. the deadline is ahead (and not implausibly far) → ``expired``;
2. the model is served here and the task matches → ``unknown_model`` / ``bad_request``;
3. the recipient key is this epoch's or the previous epoch's job key → ``wrong_key``;
4. the envelope opens, which authenticates job id, model id, both keys and deadline (AAD)
   → ``decrypt_failed``; the plaintext is a valid job input → ``bad_request``;
5. a chat prompt is small enough to fit the model's context, judged from its byte size before
   any tokenizing → ``too_large``;
6. there is room: a bounded number of admitted jobs, and the requesting peer holds fewer than its
   share of them (``max_active_jobs_per_peer``) — beyond its share a peer may use idle slots only
   while a quarter of all slots stays free for others (an API node relaying many users is one
   peer) — else an immediate ``busy`` so the router tries another executor rather than queueing
   behind a saturated one;
7. the job id was not seen before its deadline (replay window) → ``replay``.

Fairness between requesters: besides its share of job slots, each requesting peer has a share of
the embedding batcher's queue, and batches are filled round-robin over requesters
(node.runtime.batcher). Every write to a client has a deadline (``write_timeout``): a client that
stops reading its results loses its session and the slots it held, instead of pinning them.

The job then runs (embeddings through the dynamic batcher, chat in a worker thread under the
node-wide compute limiter), and the executor answers with a signed ``Commitment`` to
``result_digest(result)`` under a random salt. The result stays here until the client asks for
the reveal (or the deadline passes); the ``Reveal`` carries the salt and the result sealed to the
client's ephemeral key — for streamed chat jobs a secretstream opening followed by ``StreamChunk``
frames (text deltas, then the full result as the final chunk). A *live* chat job
(``JobRequest.live``) streams its tokens before the commitment instead (``node.jobs.live_sender``)
and is revealed like a non-streamed job. Any error is a typed
``ErrorMessage`` on the same stream; one bad job or peer never ends the executor.

Why one module over 500 lines: it is one job's life on the serving side (admission → run →
commit → reveal) read top to bottom, and the pieces share the pending-result table and the
admission counters; the challenge responder is twenty lines beside it. Frame I/O
(``node.jobs.frames``) and fault injection (``node.jobs.faults``) already live apart.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import trio
from libp2p.abc import INetStream

from node import timeline
from node.jobs.faults import Fault, FaultConfig, copied_result, live_fault, perturb_result
from node.jobs.frames import EndOfStream, FrameIO, Libp2pFrames
from node.jobs.live_sender import generate_live
from node.net.host import remote_peer_id
from protocol.identity import Identity
from protocol.jobs.messages import (
    SALT_LEN,
    ChallengeRequest,
    ChallengeResponse,
    Commitment,
    ErrorCode,
    ErrorMessage,
    JobRequest,
    MessageError,
    Reveal,
    RevealRequest,
    StreamChunk,
    Task,
    decode_message,
    result_digest,
)
from protocol.jobs.payloads import (
    EmbeddingsInput,
    EmbeddingsResult,
    GenerateInput,
    GenerateResult,
    JobInput,
    JobResult,
    PayloadError,
    ScoreInput,
    ScoreResult,
    decode_input,
)
from protocol.jobs.replay import ReplayError, ReplayWindow
from protocol.sealing import (
    EncryptionKeyPair,
    Envelope,
    JobSession,
    SealingError,
    StreamSealer,
    open_job,
    seal_result,
)

if TYPE_CHECKING:
    # node.runtime imports torch; a node that serves no model must never load it, so runtime
    # modules are imported only where a model actually runs (see _run_job).
    from node.runtime.base import ModelRuntime

__all__ = [
    "CHALLENGE_PROTOCOL_ID",
    "JOB_PROTOCOL_ID",
    "ChallengeFn",
    "EmbedFn",
    "Executor",
    "ExecutorSettings",
    "KeyLookup",
]

log = logging.getLogger("veilnet.executor")

JOB_PROTOCOL_ID = "/veilnet/job/1.0.0"
CHALLENGE_PROTOCOL_ID = "/veilnet/challenge/1.0.0"

KeyLookup = Callable[[bytes], "EncryptionKeyPair | None"]
"""Executor's X25519 key pair for a public key named by a job (current or previous epoch), or None."""

EmbedFn = Callable[[str, list[str], bytes], Awaitable[np.ndarray]]
"""Batched embedding call: (model id, texts, requesting peer) → float32 [len(texts), dim]; may
raise runtime Busy (the queue, or that peer's share of it, is full)."""

ChallengeFn = Callable[[bytes], tuple[str, bytes]]
"""nonce → (evidence kind, fresh evidence bound to the nonce); blocking, runs in a worker thread."""


@dataclass(frozen=True)
class ExecutorSettings:
    max_active_jobs: int = 64  # admitted and not yet committed; beyond: immediate busy
    max_active_jobs_per_peer: int = 32  # one requesting peer's share of those slots
    write_timeout: float = 10.0  # a frame to a client that does not read for this long ends its session
    max_pending_reveals: int = 512  # committed results waiting for their reveal request
    max_deadline_ahead_ms: int = 15 * 60 * 1000
    session_idle_timeout: float = 600.0
    stream_chunk_chars: int = 64  # text per streamed chunk (chat)


@dataclass
class _Pending:
    """A committed result waiting for the client's reveal request."""

    job_id: bytes
    client: bytes
    deadline_ms: int
    salt: bytes
    result_bytes: bytes
    session: JobSession
    stream: bool
    deltas: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Refusal:
    code: ErrorCode
    text: str


@dataclass(frozen=True)
class _Admitted:
    job: JobInput
    session: JobSession


class _Session:
    """One client's job stream on this executor."""

    def __init__(self, io: FrameIO, write_timeout: float) -> None:
        self.io = io
        self.client = io.peer_id
        self._write_timeout = write_timeout

    async def send(self, payload: bytes, *more: bytes) -> None:
        """Write one frame per payload, or reset the stream and raise ``BrokenResourceError`` when
        the client has not taken them within the write deadline (it stopped reading; its
        flow-control window is full), so the jobs waiting to write give their slots back."""
        with trio.move_on_after(self._write_timeout) as deadline:
            await self.io.write(payload, *more)
        if deadline.cancelled_caught:
            log.info("job session from %s: client stopped reading; resetting", _short(self.client))
            with trio.move_on_after(2) as resetting:
                resetting.shield = True
                await _quietly(self.io.reset())
            raise trio.BrokenResourceError("the client did not read within the write deadline")

    async def error(self, code: ErrorCode, message: str, job_id: bytes | None = None) -> None:
        await self.send(ErrorMessage(code=code, message=message[:1000], job_id=job_id).to_wire())


class Executor:
    """Runs jobs for clients on the models this node serves."""

    def __init__(
        self,
        identity: Identity,
        keys: KeyLookup,
        runtimes: Mapping[str, ModelRuntime],
        *,
        embed: EmbedFn | None = None,
        limiter: trio.CapacityLimiter | None = None,
        settings: ExecutorSettings | None = None,
        faults: FaultConfig | None = None,
        challenge: ChallengeFn | None = None,
        clock: Callable[[], float] = time.time,
        on_job: Callable[[str, str], None] | None = None,
    ) -> None:
        """``embed(model_id, texts)`` is the async batched embedding call (node.runtime's
        EmbeddingBatcher.embed per model); without it embeddings run directly in a thread.
        ``challenge(nonce)`` returns (evidence kind, fresh evidence bytes) bound to ``nonce``.
        ``on_job(model_id, outcome)`` is a metrics hook."""
        self.identity = identity
        self._keys = keys
        self.runtimes = dict(runtimes)
        self._embed = embed
        self._limiter = limiter or trio.CapacityLimiter(1)
        self.settings = settings or ExecutorSettings()
        self._engine_limiter = trio.CapacityLimiter(self.settings.max_active_jobs)
        self.faults = faults
        self._challenge = challenge
        self._clock = clock
        self._on_job = on_job
        self._replay = ReplayWindow(max_ahead_ms=self.settings.max_deadline_ahead_ms)
        self._pending: dict[tuple[bytes, bytes], _Pending] = {}
        # Jobs admitted and still computing → whether their client already asked for the reveal.
        # Clients pipeline the reveal request behind the job to save a round trip; the result is
        # then revealed right after the commitment (the client holds it until its reveal gate).
        self._running: dict[tuple[bytes, bytes], bool] = {}
        self._active = 0
        self._active_by_peer: dict[bytes, int] = {}
        self._reserved_slots = max(1, self.settings.max_active_jobs // 4)  # kept free beyond a share
        self._last_result: JobResult | None = None
        self.requests_received = 0  # JobRequests that reached this executor, accepted or not
        self.jobs_committed = 0
        self.jobs_refused: dict[str, int] = {}

    # ------------------------------------------------------------------ introspection

    @property
    def active_jobs(self) -> int:
        return self._active

    @property
    def load(self) -> float:
        """Admitted jobs as a fraction of capacity (0 idle .. 1 full)."""
        return min(1.0, self._active / self.settings.max_active_jobs)

    # ------------------------------------------------------------------ libp2p entry points

    async def handle_job_stream(self, stream: INetStream) -> None:
        """Stream handler for JOB_PROTOCOL_ID (register through Node.add_stream_handler)."""
        io = Libp2pFrames(stream, remote_peer_id(stream).to_bytes())
        await self.serve(io)

    async def handle_challenge_stream(self, stream: INetStream) -> None:
        io = Libp2pFrames(stream, remote_peer_id(stream).to_bytes())
        with trio.fail_after(30):
            await self.serve_challenge(io)

    # ------------------------------------------------------------------ sessions

    async def serve(self, io: FrameIO) -> None:
        """Serve one job session until the client closes it, goes idle, or breaks framing."""
        session = _Session(io, self.settings.write_timeout)
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    with trio.move_on_after(self.settings.session_idle_timeout) as idle:
                        frame = await io.read()
                    if idle.cancelled_caught:
                        log.debug("job session from %s idle; closing", _short(io.peer_id))
                        break
                    await self._dispatch(session, frame, nursery)
            except EndOfStream:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("job session from %s broke: %s", _short(io.peer_id), exc)
            except MessageError as exc:  # framing broken (oversize, truncated): out of sync, close
                self._refused(exc.reason)
                code = ErrorCode.TOO_LARGE if exc.reason == "frame_too_large" else ErrorCode.BAD_REQUEST
                with trio.move_on_after(2):
                    try:
                        await session.error(code, f"{exc.reason}: {exc.detail}")
                    except Exception as send_exc:
                        log.debug("could not report framing error: %s", send_exc)
            finally:
                nursery.cancel_scope.cancel()  # nobody can receive commitments any more
        with trio.move_on_after(2) as closing:
            closing.shield = True
            await io.close()

    async def _dispatch(self, session: _Session, frame: bytes, nursery: trio.Nursery) -> None:
        try:
            message = decode_message(frame)
        except MessageError as exc:
            self._refused(exc.reason)
            await session.error(ErrorCode.BAD_REQUEST, f"{exc.reason}: {exc.detail}")
            return
        if isinstance(message, JobRequest):
            timeline.mark("exec.request_decoded", message.job_id)
            await self._admit(session, message, nursery)
        elif isinstance(message, RevealRequest):
            timeline.mark("exec.reveal_request_decoded", message.job_id)
            await self._reveal(session, message.job_id)
        else:
            self._refused("unexpected_message")
            await session.error(ErrorCode.BAD_REQUEST, f"unexpected {message.TAG} on a job stream")

    # ------------------------------------------------------------------ admission

    async def _admit(self, session: _Session, req: JobRequest, nursery: trio.Nursery) -> None:
        self.requests_received += 1
        now_ms = int(self._clock() * 1000)
        checked = self._check(req, now_ms)
        if isinstance(checked, _Refusal):
            self._refused(checked.code.value)
            await session.error(checked.code, checked.text, req.job_id)
            return
        job, job_session = checked.job, checked.session
        timeline.mark("exec.opened", req.job_id)
        if self._active >= self.settings.max_active_jobs:
            self._refused("busy")
            await session.error(ErrorCode.BUSY, f"{self._active} jobs in progress", req.job_id)
            return
        held = self._active_by_peer.get(session.client, 0)
        free = self.settings.max_active_jobs - self._active
        if held >= self.settings.max_active_jobs_per_peer and free <= self._reserved_slots:
            self._refused("busy_peer_share")
            await session.error(ErrorCode.BUSY, f"this requester already has {held} jobs in progress here",
                                req.job_id)
            return
        try:
            self._replay.check_and_add(req.job_id, req.deadline_ms, now_ms)
        except ReplayError as exc:
            code = {"replay": ErrorCode.REPLAY, "expired": ErrorCode.EXPIRED, "full": ErrorCode.BUSY}.get(
                exc.reason, ErrorCode.BAD_REQUEST
            )
            self._refused(code.value)
            await session.error(code, str(exc), req.job_id)
            return
        self._active += 1
        self._active_by_peer[session.client] = held + 1
        self._running[(session.client, req.job_id)] = False
        nursery.start_soon(self._run_job, session, req, job, job_session, time.monotonic())

    def _check(self, req: JobRequest, now_ms: int) -> _Refusal | _Admitted:
        try:
            req.check_deadline(now_ms, self.settings.max_deadline_ahead_ms)
        except MessageError as exc:
            code = ErrorCode.EXPIRED if exc.reason == "expired" else ErrorCode.BAD_REQUEST
            return _Refusal(code, str(exc))
        runtime = self.runtimes.get(req.model_id)
        if runtime is None:
            return _Refusal(ErrorCode.UNKNOWN_MODEL, f"model {req.model_id} is not served here")
        if _task_of(runtime) is not req.task:
            text = f"model {req.model_id} serves {runtime.task.value}, not {req.task.value}"
            return _Refusal(ErrorCode.BAD_REQUEST, text)
        keys = self._keys(req.executor_enc_pubkey)
        if keys is None:
            return _Refusal(ErrorCode.WRONG_KEY, "sealed to neither this epoch's nor the previous job key")
        try:
            opened = open_job(
                Envelope(req.input_nonce, req.sealed_input), recipient=keys, client_pubkey=req.client_pubkey,
                job_id=req.job_id,
                model_id=req.model_id, deadline_ms=req.deadline_ms,
            )
        except SealingError as exc:
            return _Refusal(ErrorCode.DECRYPT_FAILED, exc.reason)
        try:
            job = decode_input(opened.payload)
        except PayloadError as exc:
            return _Refusal(ErrorCode.BAD_REQUEST, f"job input: {exc}")
        expected = Task.EMBEDDINGS if isinstance(job, EmbeddingsInput) else Task.CHAT
        if expected is not req.task:
            text = f"a {job.op.value} input does not belong to a {req.task.value} job"
            return _Refusal(ErrorCode.BAD_REQUEST, text)
        limit = getattr(runtime, "max_prompt_bytes", None)
        if isinstance(job, (GenerateInput, ScoreInput)) and isinstance(limit, int):
            size = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in job.messages)
            if size > limit:
                text = f"prompt of {size} bytes cannot fit the context of {req.model_id} (at most {limit})"
                return _Refusal(ErrorCode.TOO_LARGE, text)
        return _Admitted(job, opened.session)

    # ------------------------------------------------------------------ running a job

    async def _run_job(
        self, session: _Session, req: JobRequest, job: JobInput, job_session: JobSession, admitted: float
    ) -> None:
        from node.runtime.errors import Busy, InvalidInput, ModelRuntimeError

        outcome = "committed"
        timeline.enter(req.job_id)
        timeline.mark("exec.task_started")
        try:
            remaining = req.deadline_ms / 1000 - self._clock()
            with trio.move_on_after(max(0.0, remaining)) as budget:
                computed = await self._compute_with_faults(session, req, job, job_session)
            if budget.cancelled_caught:
                outcome = "expired"
                await session.error(ErrorCode.EXPIRED, "the deadline passed during inference", req.job_id)
                return
            if computed is None:  # crash-mid-job: the connection is gone
                outcome = "crashed"
                return
            timeline.mark("exec.computed")
            result, deltas, queue_ms, compute_ms = computed
            result_bytes = result.to_bytes()
            salt = os.urandom(SALT_LEN)
            commitment = Commitment.create(
                self.identity, job_id=req.job_id, salt=salt, result_digest=result_digest(result_bytes),
                queue_ms=queue_ms, compute_ms=compute_ms,
            )
            self._store_pending(
                _Pending(req.job_id, session.client, req.deadline_ms, salt, result_bytes, job_session,
                         req.stream and not req.live and isinstance(result, GenerateResult), deltas)
            )
            self.jobs_committed += 1
            timeline.mark("exec.committed")
            key = (session.client, req.job_id)
            if self._running.get(key) and self.faults is None and not self._pending[key].stream:
                # the reveal was asked for with the job: commitment and reveal in one write
                frames = (commitment.to_wire(), self._reveal_frame(key))
                timeline.mark("exec.revealed")
                await session.send(*frames)
                timeline.mark("exec.written")
                return
            await session.send(commitment.to_wire())
            timeline.mark("exec.commitment_written")
            if self.faults is not None and self.faults.fault is Fault.EQUIVOCATE:
                log.warning("FAULT equivocate: a second, different commitment for job %s", req.job_id.hex())
                other = Commitment.create(
                    self.identity, job_id=req.job_id, salt=os.urandom(SALT_LEN),
                    result_digest=result_digest(result_bytes), queue_ms=queue_ms, compute_ms=compute_ms,
                )
                await session.send(other.to_wire())
            if self._running.get((session.client, req.job_id)):
                await self._reveal(session, req.job_id)
        except Busy as exc:
            outcome = "busy"
            self._refused("busy")
            await _quietly(session.error(ErrorCode.BUSY, str(exc), req.job_id))
        except InvalidInput as exc:
            outcome = "bad_request"
            await _quietly(session.error(ErrorCode.BAD_REQUEST, str(exc), req.job_id))
        except ModelRuntimeError as exc:
            outcome = "internal"
            log.warning("job %s failed: %s", req.job_id.hex(), exc)
            await _quietly(session.error(ErrorCode.INTERNAL, exc.reason, req.job_id))
        except EndOfStream:
            outcome = "client_gone"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            outcome = "client_gone"
            log.debug("job %s: client stream gone: %s", req.job_id.hex(), exc)
        finally:
            self._active -= 1
            left = self._active_by_peer.get(session.client, 1) - 1
            if left > 0:
                self._active_by_peer[session.client] = left
            else:
                self._active_by_peer.pop(session.client, None)
            self._running.pop((session.client, req.job_id), None)
            if self._on_job is not None:
                self._on_job(req.model_id, outcome)

    async def _compute_with_faults(
        self, session: _Session, req: JobRequest, job: JobInput, job_session: JobSession
    ) -> tuple[JobResult, list[str], int, int] | None:
        fault = self.faults.fault if self.faults else None
        if fault is Fault.SLOW:
            assert self.faults is not None
            await trio.sleep(self.faults.slow_seconds)
        if fault is Fault.CRASH_MID_JOB:
            log.warning("FAULT crash-mid-job: dropping the session of job %s", req.job_id.hex())
            await session.io.reset()
            raise EndOfStream()
        runtime = self.runtimes[req.model_id]
        if req.live and isinstance(job, GenerateInput) and fault is not Fault.COPY:
            live = await generate_live(
                session.send, req.job_id, job_session, runtime, job, self._limiter_for(runtime),
                fault=live_fault(self.faults, req.job_id, self.identity.peer_id),
            )
            self._last_result = live[0]
            return live[0], [], live[1], live[2]
        if fault is Fault.COPY:
            dim = int(getattr(runtime, "dim", 0) or 1)
            result: JobResult = copied_result(self._last_result, job, dim)
            deltas = [result.text] if isinstance(result, GenerateResult) else []
            return result, deltas, 0, 0
        result, deltas, queue_ms, compute_ms = await self._compute(runtime, req.model_id, job, session.client)
        self._last_result = result
        if fault is Fault.WRONG_OUTPUT:
            result = perturb_result(result, req.job_id, self.identity.peer_id)
            if isinstance(result, GenerateResult):
                deltas = [result.text]
        return result, deltas, queue_ms, compute_ms

    async def _compute(
        self, runtime: ModelRuntime, model_id: str, job: JobInput, client: bytes
    ) -> tuple[JobResult, list[str], int, int]:
        """Run the model. Returns (result, streamed text deltas, queue ms, compute ms)."""
        queued = time.monotonic()
        if isinstance(job, EmbeddingsInput):
            texts = list(job.texts)
            if self._embed is not None:
                vectors = await self._embed(model_id, texts, client)
                spent = int((time.monotonic() - queued) * 1000)
                return _embeddings_result(np.asarray(vectors)), [], 0, spent
            embed_fn = getattr(runtime, "embed")  # noqa: B009 - runtime type is the embedding runtime
            vectors = await trio.to_thread.run_sync(embed_fn, texts, limiter=self._limiter)
            spent = int((time.monotonic() - queued) * 1000)
            return _embeddings_result(np.asarray(vectors)), [], 0, spent

        timing: dict[str, float] = {}
        messages = [m.to_map() for m in job.messages]
        if isinstance(job, GenerateInput):
            deltas: list[str] = []

            def generate() -> JobResult:
                timing["start"] = time.monotonic()
                gen = runtime.generate(  # type: ignore[attr-defined]
                    messages, job.max_tokens, on_token=lambda _t, text: deltas.append(text)
                )
                return GenerateResult(len(gen.prompt_tokens), tuple(gen.tokens), gen.text, gen.finish_reason)

            result = await trio.to_thread.run_sync(generate, limiter=self._limiter_for(runtime))
            return result, [d for d in deltas if d], *_split_ms(queued, timing)

        assert isinstance(job, ScoreInput)

        def score() -> JobResult:
            timing["start"] = time.monotonic()
            # a live stream's verifiers re-score a growing prefix: extend the KV cache of this
            # client's last round (scoped to the client: no one can time another's cached prompt)
            s = runtime.score(messages, list(job.tokens), prefix_scope=client)  # type: ignore[attr-defined]
            return ScoreResult(
                tuple(int(r) for r in s.ranks), tuple(float(g) for g in s.gaps),
                tuple(float(p) for p in s.logprobs),
            )

        result = await trio.to_thread.run_sync(score, limiter=self._limiter_for(runtime))
        return result, [], *_split_ms(queued, timing)

    def _limiter_for(self, runtime: ModelRuntime) -> trio.CapacityLimiter:
        """In-process models share the node's cores (one call at a time); an external engine
        batches concurrent requests itself, so its calls only need a thread each."""
        return self._limiter if runtime.in_process else self._engine_limiter

    def _store_pending(self, pending: _Pending) -> None:
        now_ms = int(self._clock() * 1000)
        if len(self._pending) >= self.settings.max_pending_reveals:
            for key in [k for k, p in self._pending.items() if p.deadline_ms <= now_ms]:
                del self._pending[key]
        while len(self._pending) >= self.settings.max_pending_reveals:
            oldest = min(self._pending, key=lambda k: self._pending[k].deadline_ms)
            del self._pending[oldest]
        self._pending[(pending.client, pending.job_id)] = pending

    # ------------------------------------------------------------------ reveal

    def _reveal_frame(self, key: tuple[bytes, bytes], pending: _Pending | None = None) -> bytes:
        """The sealed, signed reveal of a committed non-streamed result (taken out of pending)."""
        if pending is None:
            pending = self._pending.pop(key)
        sealed = seal_result(pending.session, pending.result_bytes)
        return Reveal.create(
            self.identity, job_id=pending.job_id, salt=pending.salt,
            result_digest=result_digest(pending.result_bytes), result_nonce=sealed.nonce,
            sealed_result=sealed.ciphertext,
        ).to_wire()

    async def _reveal(self, session: _Session, job_id: bytes) -> None:
        key = (session.client, job_id)
        if self._running.get(key) is False and key not in self._pending:
            self._running[key] = True  # still computing: reveal right after the commitment
            return
        pending = self._pending.get((session.client, job_id))
        if pending is None or pending.deadline_ms <= int(self._clock() * 1000):
            self._pending.pop((session.client, job_id), None)
            await session.error(ErrorCode.BAD_REQUEST, "no committed result for this job here", job_id)
            return
        if self.faults is not None and self.faults.fault is Fault.DROP_REVEAL:
            log.warning("FAULT drop-reveal: withholding the reveal of job %s", job_id.hex())
            return
        del self._pending[(session.client, job_id)]
        digest = result_digest(pending.result_bytes)
        if self.faults is not None and self.faults.fault is Fault.BAD_REVEAL:
            log.warning("FAULT bad-reveal: revealing job %s with a salt it did not commit to", job_id.hex())
            pending = dataclasses.replace(pending, salt=os.urandom(SALT_LEN))
        if not pending.stream:
            frame = self._reveal_frame(key, pending)
            timeline.mark("exec.revealed", job_id)
            await session.send(frame)
            timeline.mark("exec.written", job_id)
            return
        sealer, opening = StreamSealer.start(pending.session)
        reveal = Reveal.create(self.identity, job_id=job_id, salt=pending.salt, result_digest=digest,
                               result_nonce=opening.nonce, sealed_result=opening.ciphertext)
        await session.send(reveal.to_wire())
        for piece in _chunk_text(pending.deltas, self.settings.stream_chunk_chars):
            await session.send(StreamChunk(job_id=job_id, data=sealer.push(piece.encode())).to_wire())
        await session.send(StreamChunk(job_id=job_id, data=sealer.final(pending.result_bytes)).to_wire())

    # ------------------------------------------------------------------ challenge

    async def serve_challenge(self, io: FrameIO) -> None:
        """One ChallengeRequest → one signed ChallengeResponse with fresh evidence over the nonce."""
        try:
            frame = await io.read()
        except (EndOfStream, MessageError) as exc:
            log.debug("challenge stream ended early: %s", exc)
            return
        try:
            message = decode_message(frame)
        except MessageError as exc:
            await io.write(ErrorMessage(code=ErrorCode.BAD_REQUEST, message=str(exc)[:1000]).to_wire())
            return
        if not isinstance(message, ChallengeRequest):
            await io.write(ErrorMessage(code=ErrorCode.BAD_REQUEST, message="expected a challenge").to_wire())
            return
        if self._challenge is None:
            refusal = ErrorMessage(code=ErrorCode.NOT_EXECUTOR, message="this node cannot attest")
            await io.write(refusal.to_wire())
            return
        kind, evidence = await trio.to_thread.run_sync(self._challenge, message.nonce)
        response = ChallengeResponse.create(self.identity, nonce=message.nonce, kind=kind, evidence=evidence)
        await io.write(response.to_wire())

    # ------------------------------------------------------------------ misc

    def _refused(self, reason: str) -> None:
        self.jobs_refused[reason] = self.jobs_refused.get(reason, 0) + 1


def _task_of(runtime: ModelRuntime) -> Task:
    return Task.EMBEDDINGS if runtime.task.value == Task.EMBEDDINGS.value else Task.CHAT


def _embeddings_result(vectors: np.ndarray) -> EmbeddingsResult:
    array = np.ascontiguousarray(vectors, dtype="<f4")
    return EmbeddingsResult(int(array.shape[0]), int(array.shape[1]), array.tobytes())


def _split_ms(queued: float, timing: Mapping[str, float]) -> tuple[int, int]:
    start = timing.get("start", queued)
    end = time.monotonic()
    return int((start - queued) * 1000), int((end - start) * 1000)


def _chunk_text(deltas: list[str], size: int) -> list[str]:
    """Group token deltas into chunks of about ``size`` characters (fewer frames, same text)."""
    chunks: list[str] = []
    current = ""
    for delta in deltas:
        current += delta
        if len(current) >= size:
            chunks.append(current)
            current = ""
    if current:
        chunks.append(current)
    return chunks


async def _quietly(awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except (EndOfStream, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    except Exception as exc:
        log.debug("could not send an error: %s", exc)


def _short(peer_id: bytes) -> str:
    from protocol.identity import peer_id_to_text

    return peer_id_to_text(peer_id)[-8:]
