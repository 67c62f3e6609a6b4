"""Test-only executor misbehaviour, for the multi-node tests and the simulations.

A fault mode makes an otherwise normal executor behave like a compromised or failing TEE whose
evidence still verifies — exactly the case cross-checking exists for. Modes:

``wrong-output``
    computes, then perturbs the result plausibly: embeddings get noise of ~5 % of their norm and
    are re-normalised (cosine ≈ 0.999, far outside the calibrated bound); generations get their
    last token replaced; verifier scores claim a large logit gap at one position.
    In a live chat stream every token from the third on is replaced as it is sent.
``wrong-stream``
    lies only in live chat streams, like ``wrong-output`` there, and is honest otherwise (so it is
    not banned as a verifier before the tests draw it as a primary).
``stall-mid-stream``
    in a live chat stream, sends the first tokens and then goes silent for ``slow_seconds`` (a
    primary that hangs mid-generation); other jobs run normally.
``slow``
    waits ``slow_seconds`` (default 30) before computing, so the router's commit timeout fires.
``crash-mid-job``
    accepts the job, then drops the connection before committing — what the router sees when an
    executor process dies mid-job (the process itself stays up so a test cluster can be reused).
``drop-reveal``
    computes and commits, then never answers the reveal request (the "last revealer" who
    withholds).
``bad-reveal``
    computes and commits honestly, then reveals with another salt than the one it committed to:
    a signed reveal that does not open its own signed commitment (self-proving misbehaviour).
``equivocate``
    computes, then sends two different signed commitments for the one job (the second with
    another salt) and reveals the first: the router holds both signatures.
``copy``
    never runs the model: it commits to an answer it has already seen — the result it returned for
    an earlier job — instead of computing this one (a lazy executor replaying a stale answer; a
    zero vector when it has seen none). Executors never see each other's results (they are
    sealed to the client), so a stale copy is the only answer a copier has.

Faults are refused unless the node attests with simulated evidence: a node with real TEE
evidence must never be able to misbehave on purpose.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from protocol.jobs.payloads import (
    EmbeddingsInput,
    EmbeddingsResult,
    GenerateInput,
    GenerateResult,
    JobInput,
    JobResult,
    ScoreResult,
)

__all__ = [
    "LIVE_FAULT_FROM", "Fault", "FaultConfig", "FaultRefused", "LiveFault", "copied_result", "live_fault",
    "perturb_result",
]

LIVE_FAULT_FROM = 2  # the first token position a faulty live primary lies about or stalls after


class Fault(StrEnum):
    WRONG_OUTPUT = "wrong-output"
    SLOW = "slow"
    CRASH_MID_JOB = "crash-mid-job"
    DROP_REVEAL = "drop-reveal"
    COPY = "copy"
    STALL_MID_STREAM = "stall-mid-stream"
    WRONG_STREAM = "wrong-stream"
    BAD_REVEAL = "bad-reveal"
    EQUIVOCATE = "equivocate"


class FaultRefused(RuntimeError):
    """A fault mode was requested on a node whose evidence is not simulated."""


@dataclass(frozen=True)
class FaultConfig:
    fault: Fault
    slow_seconds: float = 30.0

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | Any, evidence_kind: str | None) -> FaultConfig | None:
        """Read ``[extra] fault = "<mode>"`` (and ``fault_slow_seconds``); refuse on real evidence."""
        if not isinstance(extra, dict) or not extra.get("fault"):
            return None
        try:
            fault = Fault(str(extra["fault"]))
        except ValueError:
            known = [f.value for f in Fault]
            raise FaultRefused(f"unknown fault mode {extra['fault']!r}; known: {known}") from None
        if evidence_kind != "simulated":
            raise FaultRefused(
                f"fault mode {fault.value!r} needs simulated evidence; this node presents {evidence_kind!r}"
            )
        slow = extra.get("fault_slow_seconds", 30.0)
        if not isinstance(slow, (int, float)) or isinstance(slow, bool) or not 0 < slow <= 3600:
            raise FaultRefused("fault_slow_seconds must be a number in (0, 3600]")
        return cls(fault=fault, slow_seconds=float(slow))


def _rng(job_id: bytes, peer_id: bytes) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(b"veilnet/fault" + job_id + peer_id).digest()[:8], "big")
    return np.random.default_rng(seed)


def perturb_result(result: JobResult, job_id: bytes, peer_id: bytes) -> JobResult:
    """A plausible but wrong version of ``result``, deterministic per (job, executor): two faulty
    executors do not agree by accident (colluders would have to coordinate)."""
    rng = _rng(job_id, peer_id)
    if isinstance(result, EmbeddingsResult):
        shape = (result.count, result.dim)
        vectors = np.frombuffer(result.vectors, dtype="<f4").reshape(shape).astype(np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        noise = rng.standard_normal(vectors.shape)
        noise *= 0.05 * np.where(norms > 0, norms, 1.0) / np.linalg.norm(noise, axis=1, keepdims=True)
        perturbed = vectors + noise
        perturbed *= np.where(norms > 0, norms, 1.0) / np.linalg.norm(perturbed, axis=1, keepdims=True)
        return EmbeddingsResult(result.count, result.dim, perturbed.astype("<f4").tobytes())
    if isinstance(result, GenerateResult):
        tokens = list(result.tokens)
        tokens[-1] = (tokens[-1] + 1 + int(rng.integers(0, 50))) % 50_000
        return GenerateResult(result.prompt_tokens, tuple(tokens), result.text + "?", "length")
    ranks, gaps = list(result.ranks), list(result.gaps)
    position = int(rng.integers(0, len(ranks)))
    ranks[position], gaps[position] = max(ranks[position], 40), max(gaps[position], 7.5)
    return ScoreResult(tuple(ranks), tuple(gaps), result.logprobs)


@dataclass(frozen=True)
class LiveFault:
    """How a faulty primary misbehaves in a live chat stream (``node.jobs.live_sender``)."""

    replace_from: int | None = None  # tokens at this position and later are replaced
    stall_after: int | None = None  # go silent once this many tokens were sent
    stall_seconds: float = 0.0
    seed: int = 0

    def token(self, position: int, token: int) -> int:
        if self.replace_from is None or position < self.replace_from:
            return token
        return (token + 1 + (self.seed + position) % 50) % 50_000


def live_fault(config: FaultConfig | None, job_id: bytes, peer_id: bytes) -> LiveFault | None:
    """The live-stream misbehaviour of ``config`` (None for an honest stream)."""
    if config is None:
        return None
    if config.fault in (Fault.WRONG_OUTPUT, Fault.WRONG_STREAM):
        return LiveFault(replace_from=LIVE_FAULT_FROM, seed=int(_rng(job_id, peer_id).integers(0, 1 << 16)))
    if config.fault is Fault.STALL_MID_STREAM:
        return LiveFault(stall_after=LIVE_FAULT_FROM, stall_seconds=config.slow_seconds)
    return None


def copied_result(previous: JobResult | None, job: JobInput, dim: int) -> JobResult:
    """What a copier answers instead of computing: its last answer, reshaped to fit this job.

    Embeddings reuse the previous vectors cyclically (zeros if it has none); generations reuse the
    previous completion; a copying verifier rubber-stamps every claimed token as top-1.
    """
    if isinstance(job, EmbeddingsInput):
        n = len(job.texts)
        if isinstance(previous, EmbeddingsResult) and previous.dim == dim:
            rows = np.frombuffer(previous.vectors, dtype="<f4").reshape(previous.count, dim)
            vectors = rows[np.arange(n) % previous.count]
        else:
            vectors = np.zeros((n, dim), dtype="<f4")
        return EmbeddingsResult(n, dim, np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    if isinstance(job, GenerateInput):
        if isinstance(previous, GenerateResult):
            return previous
        return GenerateResult(0, (0,), "", "length")
    n = len(job.tokens)
    return ScoreResult((0,) * n, (0.0,) * n, (0.0,) * n)
