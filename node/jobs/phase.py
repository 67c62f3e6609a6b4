"""The values a job carries through the router: the submission, each phase's spec and I/O context.

A job is one or more *phases*; each phase is one ``protocol.jobs.jobflow.JobFlow`` run (embeddings
have one; chat has generate, then score). ``Submission`` is what the user asked for, resolved
and fixed once; ``PhaseSpec`` is what one phase is asked to do (frozen, so a phase cannot change
what it was asked mid-run); ``Phase`` is the phase's mutable I/O context while it runs (the
sealing sessions, per-executor timings and challenge results the report reads afterwards).
``Committed``, ``Revealed`` and ``Failed`` are what one executor's attempt reports to the phase's
driver, which turns them into ``JobFlow`` events (a ``Failed`` may carry ``Misbehaviour``: the
executor's own signed statements that prove it). They live apart from the router so the chat
flow and the reports can use them without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.jobs.network_view import ExecutorInfo
from protocol.jobs.jobflow import Failure, Voter
from protocol.jobs.messages import Commitment, Mode, StreamChunk, Task
from protocol.jobs.offences import OffenceKind
from protocol.jobs.payloads import GenerateInput, JobInput
from protocol.sealing import JobSession

__all__ = [
    "Committed", "Decoder", "Failed", "LiveSink", "Misbehaviour", "Phase", "PhaseSpec", "Progressed",
    "Revealed", "Submission",
]

Decoder = Callable[[bytes], Any]  # result plaintext → comparator value (raises on malformed)


class LiveSink(Protocol):
    """Receives a live primary's stream chunks as they arrive (``node.jobs.chat_stream``)."""

    def on_chunk(self, peer: bytes, session: JobSession, chunk: StreamChunk) -> str | None:
        """Take one sealed chunk; a string says why the stream is broken (the attempt fails)."""

    def on_failure(self, peer: bytes, why: str) -> None:
        """The attempt of ``peer`` ended without a result."""

    def complete(self, peer: bytes) -> bool:
        """Whether ``peer``'s stream reached its FINAL chunk."""


@dataclass(frozen=True)
class Submission:
    """One user request after validation: the job, its executors' pool and its fixed choices."""

    job_id: bytes
    model: str  # as the user named it
    model_id: str
    task: Task
    mode: Mode
    job: JobInput
    decode: Decoder
    infos: Mapping[bytes, ExecutorInfo]
    k: int  # replicas asked for
    verify: bool  # False only for a spot-check job that drew "unchecked"
    deadline: float  # absolute, on the router's clock
    challenge: bool
    started: float


@dataclass(frozen=True)
class PhaseSpec:
    """What one JobFlow run is asked to do."""

    job_id: bytes
    model_id: str
    task: Task
    mode: Mode
    job: JobInput
    decode: Decoder
    infos: Mapping[bytes, ExecutorInfo]
    quorum: int
    deadline: float
    challenge: bool
    escalate: bool
    exclude: frozenset[bytes] = frozenset()
    voter: Voter | None = None  # None: the task's default voter
    needed: int | None = None
    live: LiveSink | None = None  # a live chat primary: where its streamed tokens go
    rank_key: bytes | None = None  # rank executors on this random key instead of the job id (a
    # live stream's verification rounds share one, so the same verifiers extend their KV caches)
    prefer: Callable[[bytes], bool] | None = None  # tried first, in rank order (same numerics class)
    answer_early: bool = False  # answer at a majority of the quorum, judge the rest after (jobflow rule 6)


@dataclass
class Phase:
    """One JobFlow's I/O context: what to send and how to read results."""

    job_id: bytes
    model_id: str
    task: Task
    mode: Mode
    job: JobInput
    stream: bool
    deadline_ms: int
    infos: Mapping[bytes, ExecutorInfo]
    decode: Decoder
    challenge: bool
    live: LiveSink | None = None
    sessions: dict[bytes, JobSession] = field(default_factory=dict)
    timings: dict[bytes, dict[str, float]] = field(default_factory=dict)
    challenged: dict[bytes, str] = field(default_factory=dict)
    reveals: dict[bytes, Revealed] = field(default_factory=dict)  # openings, for the receipt
    started: float = 0.0

    @classmethod
    def start(cls, spec: PhaseSpec, now: float) -> Phase:
        return cls(
            job_id=spec.job_id, model_id=spec.model_id, task=spec.task, mode=spec.mode, job=spec.job,
            stream=isinstance(spec.job, GenerateInput) and spec.live is None,
            deadline_ms=int(spec.deadline * 1000),
            infos=spec.infos, decode=spec.decode, challenge=spec.challenge, started=now,
            live=spec.live,
        )


@dataclass(frozen=True)
class Committed:
    """An executor's verified commitment (``statement``: the signed frame, kept as evidence)."""

    peer: bytes
    commitment: Commitment
    statement: bytes


@dataclass(frozen=True)
class Progressed:
    """A live primary streamed tokens: it is working, so its commit timeout restarts."""

    peer: bytes


@dataclass(frozen=True)
class Revealed:
    """An executor's opened reveal: the digest computed here, the value decoded for the vote."""

    peer: bytes
    salt: bytes
    digest: bytes
    value: Any
    plaintext: bytes = b""  # kept for the receipt's answer (the user's private copy)


@dataclass(frozen=True)
class Misbehaviour:
    """Misbehaviour an executor proved with its own signatures, as an offence record needs it.

    ``statement`` is its signed commitment (wire bytes); ``proof`` its signed reveal that does not
    open it (``bad_reveal``) or a second, different signed commitment (``equivocation``).
    """

    kind: OffenceKind
    job_id: bytes
    offender: bytes
    statement: bytes
    proof: bytes


@dataclass(frozen=True)
class Failed:
    """An executor's attempt ended without a result; ``failure`` is what JobFlow acts on.

    ``misbehaviour`` is set when the failure is provable to third parties (``node.jobs.evidence``
    publishes it).
    """

    peer: bytes
    failure: Failure
    detail: str
    misbehaviour: Misbehaviour | None = None
