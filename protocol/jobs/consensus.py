"""Comparators per task and the majority vote over revealed results (sans-IO, no torch).

Honest executors do not produce bit-identical floats: thread counts, batch sizes and batch
composition change reduction orders, so embeddings differ by ~1e-7 and exact hashes would
flag honest peers. Results are therefore compared with tolerances calibrated on honest runs
(docs/CALIBRATION.md, reproduced by ``python -m simulations.calibrate``):

* embeddings: every row's cosine similarity and relative L2 distance within bounds;
* chat (greedy generation): one primary generates, verifiers re-score its tokens with one
  teacher-forced prefill; every position must be the verifier's top-1 token or within a small
  logit gap of it (near-ties may flip under float noise; a substituted token may not);
* small deterministic outputs: exact byte equality.

The vote clusters results by the comparator; a cluster holding a strict majority of respondents
wins, everyone outside it is the minority, and no majority means escalate. Wire layouts: vectors
are float32 little-endian, row-major, with an explicit shape; token ranks are uint32 LE and logit
gaps float32 LE, one per claimed token (docs/protocol/consensus.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

import numpy as np

from protocol.errors import ProtocolError
from protocol.models import EMBEDDED_MODEL_IDS

__all__ = [
    "CALIBRATED_EMBEDDING_BOUNDS",
    "CALIBRATED_TOKEN_BOUNDS",
    "SMOLLM2_135M_INSTRUCT_ID",
    "TOKEN_BOUNDS_BY_MODEL",
    "ConsensusError",
    "Decision",
    "EmbeddingBounds",
    "EmbeddingComparison",
    "TokenBounds",
    "TokenVerdict",
    "VectorLimits",
    "VoteOutcome",
    "check_token_scores",
    "compare_embeddings",
    "decode_token_scores",
    "decode_vectors",
    "embeddings_agree",
    "encode_token_scores",
    "encode_vectors",
    "exact_match",
    "strict_majority",
    "token_bounds_for",
    "vote",
    "vote_chat",
    "vote_embeddings",
    "vote_exact",
]

T = TypeVar("T")

VECTOR_DTYPE = np.dtype("<f4")
RANK_DTYPE = np.dtype("<u4")
GAP_DTYPE = np.dtype("<f4")


class ConsensusError(ProtocolError):
    """A revealed result is malformed (wrong length, shape over the limits, NaN/inf values).

    A malformed result is a protocol violation by its sender, not a disagreement: the router
    treats it as a failed attempt. ``reason`` is a short machine-readable code.
    """


# -- wire encoding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorLimits:
    """Bounds on a decoded vector block (the codec's 4 MiB ``bin`` limit caps bytes anyway)."""

    max_rows: int = 4096
    max_dim: int = 16384
    max_bytes: int = 4 << 20
    max_tokens: int = 1 << 16


DEFAULT_VECTOR_LIMITS = VectorLimits()


def encode_vectors(vectors: np.ndarray) -> tuple[bytes, tuple[int, int]]:
    """A 2-D array → (float32 little-endian row-major bytes, (rows, dim))."""
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise ConsensusError("bad_shape", f"expected a 2-D array, got {array.ndim} dimensions")
    data = np.ascontiguousarray(array, dtype=VECTOR_DTYPE).tobytes()
    return data, (int(array.shape[0]), int(array.shape[1]))


def decode_vectors(
    data: bytes, shape: Sequence[int], limits: VectorLimits = DEFAULT_VECTOR_LIMITS
) -> np.ndarray:
    """Bytes + (rows, dim) → read-only float32 array; refuses bad lengths, shapes and non-finite values."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConsensusError("bad_type", "vector data must be bytes")
    if len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise ConsensusError("bad_shape", "shape must be two integers (rows, dim)")
    rows, dim = int(shape[0]), int(shape[1])
    if not (0 <= rows <= limits.max_rows and 1 <= dim <= limits.max_dim):
        raise ConsensusError("bad_shape", f"shape {rows}x{dim} outside limits")
    expected = rows * dim * VECTOR_DTYPE.itemsize
    if expected > limits.max_bytes:
        raise ConsensusError("too_large", f"{expected} bytes exceed {limits.max_bytes}")
    if len(data) != expected:
        raise ConsensusError("bad_length", f"{len(data)} bytes for shape {rows}x{dim} (want {expected})")
    array = np.frombuffer(bytes(data), dtype=VECTOR_DTYPE).reshape(rows, dim)
    if not np.isfinite(array).all():
        raise ConsensusError("non_finite", "vectors contain NaN or infinity")
    return array


def encode_token_scores(
    ranks: Sequence[int] | np.ndarray, gaps: Sequence[float] | np.ndarray
) -> tuple[bytes, bytes]:
    """Per-position (ranks, gaps) → (uint32 LE bytes, float32 LE bytes)."""
    rank_array = np.asarray(ranks)
    gap_array = np.asarray(gaps)
    if rank_array.shape != gap_array.shape or rank_array.ndim != 1:
        raise ConsensusError("bad_shape", "ranks and gaps must be 1-D and equally long")
    if rank_array.size and (rank_array.min() < 0 or rank_array.max() > np.iinfo(RANK_DTYPE).max):
        raise ConsensusError("bad_value", "ranks must fit uint32")
    return rank_array.astype(RANK_DTYPE).tobytes(), gap_array.astype(GAP_DTYPE).tobytes()


def decode_token_scores(
    rank_bytes: bytes, gap_bytes: bytes, positions: int, limits: VectorLimits = DEFAULT_VECTOR_LIMITS
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes → (ranks uint32, gaps float32) for exactly ``positions`` claimed tokens.

    Refuses lengths that do not match, negative or non-finite gaps, and the inconsistent pairs
    "rank 0 with a gap" / "rank > 0 without one" (a rank counts strictly higher logits).
    """
    if not 1 <= positions <= limits.max_tokens:
        raise ConsensusError("bad_shape", f"{positions} positions outside [1, {limits.max_tokens}]")
    if len(rank_bytes) != positions * RANK_DTYPE.itemsize or len(gap_bytes) != positions * GAP_DTYPE.itemsize:
        raise ConsensusError("bad_length", f"scores do not hold {positions} positions")
    ranks = np.frombuffer(bytes(rank_bytes), dtype=RANK_DTYPE)
    gaps = np.frombuffer(bytes(gap_bytes), dtype=GAP_DTYPE)
    if not np.isfinite(gaps).all() or (gaps < 0).any():
        raise ConsensusError("bad_value", "gaps must be finite and >= 0")
    if ((ranks == 0) & (gaps != 0)).any() or ((ranks > 0) & (gaps == 0)).any():
        raise ConsensusError("bad_value", "rank and gap disagree (rank 0 iff gap 0)")
    return ranks, gaps


# -- embeddings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingBounds:
    """Two results agree when EVERY row pair has cosine >= min_cosine and rel. L2 <= max_rel_l2.

    Relative L2 is ``|a - b| / max(|a|, |b|)``: symmetric, and for unit vectors it equals
    ``sqrt(2 - 2 cos)``; it also catches scaled outputs of models that do not normalise.
    """

    min_cosine: float
    max_rel_l2: float


# Calibrated on honest CPU fp32 runs of all-MiniLM-L6-v2 over 480 texts (1 vs 2 threads, batch
# sizes 1/8/32, length-sorted vs shuffled batch compositions; every pair of runs): worst honest
# 1-cos = 9.6e-13 and rel. L2 = 1.39e-6, bounds at 1.5x (rounded up). The cheapest substitute
# measured (bf16 weights) deviates by rel. L2 >= 8.1e-3, three orders of magnitude outside.
# docs/CALIBRATION.md has the figures; other hardware classes (GPU, bf16) need their own run.
CALIBRATED_EMBEDDING_BOUNDS = EmbeddingBounds(min_cosine=1.0 - 1.5e-12, max_rel_l2=2.1e-6)


@dataclass(frozen=True)
class EmbeddingComparison:
    """Worst row of a comparison, for reports; ``agree`` applies the bounds."""

    min_cosine: float
    max_rel_l2: float
    agree: bool


def compare_embeddings(
    a: np.ndarray, b: np.ndarray, bounds: EmbeddingBounds = CALIBRATED_EMBEDDING_BOUNDS
) -> EmbeddingComparison:
    """Row-wise comparison in float64. Different shapes never agree."""
    if a.shape != b.shape or a.ndim != 2:
        return EmbeddingComparison(min_cosine=-1.0, max_rel_l2=math.inf, agree=False)
    if a.shape[0] == 0:
        return EmbeddingComparison(min_cosine=1.0, max_rel_l2=0.0, agree=True)
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    norm_x = np.linalg.norm(x, axis=1)
    norm_y = np.linalg.norm(y, axis=1)
    scale = np.maximum(norm_x, norm_y)
    both_zero = scale == 0  # two zero vectors are equal; one zero vector agrees with nothing
    product = norm_x * norm_y
    cosine = np.where(both_zero, 1.0, (x * y).sum(axis=1) / np.where(product > 0, product, 1.0))
    rel_l2 = np.where(both_zero, 0.0, np.linalg.norm(x - y, axis=1) / np.where(both_zero, 1.0, scale))
    min_cosine = float(np.clip(cosine, -1.0, 1.0).min())
    max_rel_l2 = float(rel_l2.max())
    agree = min_cosine >= bounds.min_cosine and max_rel_l2 <= bounds.max_rel_l2
    return EmbeddingComparison(min_cosine=min_cosine, max_rel_l2=max_rel_l2, agree=agree)


def embeddings_agree(
    bounds: EmbeddingBounds = CALIBRATED_EMBEDDING_BOUNDS,
) -> Callable[[np.ndarray, np.ndarray], bool]:
    """The embedding comparator as a plain predicate for :func:`vote`."""

    def agree(a: np.ndarray, b: np.ndarray) -> bool:
        return compare_embeddings(a, b, bounds).agree

    return agree


def exact_match(a: bytes, b: bytes) -> bool:
    """Comparator for small deterministic outputs (token ids, labels, canonical bytes)."""
    return bytes(a) == bytes(b)


# -- chat: teacher-forced verification ------------------------------------------------------------


@dataclass(frozen=True)
class TokenBounds:
    """A claimed token passes when the verifier ranks it top-1 or its logit is within
    ``max_logit_gap`` of the verifier's top-1 logit (raw logits, no temperature)."""

    max_logit_gap: float


# Calibrated on honest CPU fp32 runs of veilnet-tiny-random-lm (80 greedy generations, KV-cache
# decode on the primary vs one prefill on verifiers, 1 vs 2 threads each): no honest token was
# ever outside the verifier's top-1 (worst gap 0), and the worst decode/prefill logit drift was
# 5.2e-5; two logits that close may swap, so the bound is 1.5 x 2 x drift = 1.6e-4 (rounded up).
# It is the default for models without a calibration of their own (docs/CALIBRATION.md).
CALIBRATED_TOKEN_BOUNDS = TokenBounds(max_logit_gap=1.6e-4)

SMOLLM2_135M_INSTRUCT_ID = EMBEDDED_MODEL_IDS["SmolLM2-135M-Instruct"]
"""The content id of SmolLM2-135M-Instruct as Veilnet's converter writes it (bf16 weights)."""

# Per model id, from honest CPU fp32 runs of that model (docs/CALIBRATION.md). SmolLM2: 12 greedy
# generations (456 positions; decode at 1 and 2 threads, each re-scored at 1 and 2 threads), no
# honest token outside the verifier's top-1, worst decode/prefill logit drift 6.3e-5, so
# 1.5 x 2 x drift = 1.89e-4, recorded as 1.9e-4.
TOKEN_BOUNDS_BY_MODEL: Mapping[str, TokenBounds] = {
    SMOLLM2_135M_INSTRUCT_ID: TokenBounds(max_logit_gap=1.9e-4),
}


def token_bounds_for(model_id: str) -> TokenBounds:
    """The chat bounds calibrated for ``model_id``; the default (random model's) otherwise."""
    return TOKEN_BOUNDS_BY_MODEL.get(model_id, CALIBRATED_TOKEN_BOUNDS)


@dataclass(frozen=True)
class TokenVerdict:
    """A verifier's scores judged against the bounds."""

    accepted: bool
    positions: int
    top1: int  # positions where the claimed token is the verifier's top-1
    worst_gap: float
    first_rejected: int | None  # index of the first position outside the bounds


def check_token_scores(
    ranks: np.ndarray | Sequence[int],
    gaps: np.ndarray | Sequence[float],
    bounds: TokenBounds = CALIBRATED_TOKEN_BOUNDS,
) -> TokenVerdict:
    """Judge one verifier's per-position scores (decode them with :func:`decode_token_scores`)."""
    rank_array = np.asarray(ranks)
    gap_array = np.asarray(gaps, dtype=np.float64)
    if rank_array.shape != gap_array.shape or rank_array.ndim != 1 or rank_array.size == 0:
        raise ConsensusError("bad_shape", "ranks and gaps must be non-empty, 1-D and equally long")
    passed = (rank_array == 0) | (gap_array <= bounds.max_logit_gap)
    failures = np.flatnonzero(~passed)
    return TokenVerdict(
        accepted=failures.size == 0,
        positions=int(rank_array.size),
        top1=int((rank_array == 0).sum()),
        worst_gap=float(gap_array.max()),
        first_rejected=int(failures[0]) if failures.size else None,
    )


# -- the vote -------------------------------------------------------------------------------------


class Decision(StrEnum):
    ACCEPT = "accept"  # a strict majority agrees: return ``value``
    ESCALATE = "escalate"  # no majority: ask 2k+1 fresh executors (or fail with no_consensus)


@dataclass(frozen=True)
class VoteOutcome(Generic[T]):
    """The vote's result. Peer id tuples are sorted by their bytes (canonical, order-free).

    ``winner`` is the peer whose result is returned, ``majority`` every respondent that agrees
    with that result (winner included), ``minority`` the respondents that do not (empty unless
    the decision is ACCEPT). ``clusters`` partitions all respondents for the report.
    """

    decision: Decision
    respondents: int
    needed: int
    winner: bytes | None = None
    value: T | None = None
    majority: tuple[bytes, ...] = ()
    minority: tuple[bytes, ...] = ()
    clusters: tuple[tuple[bytes, ...], ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        """Fraction of respondents in the winning cluster (0.0 when there is none)."""
        return len(self.majority) / self.respondents if self.respondents else 0.0


def strict_majority(respondents: int) -> int:
    """Smallest count that is more than half: 1→1, 2→2, 3→2, 4→3, 5→3."""
    return respondents // 2 + 1


def vote(
    results: Mapping[bytes, T], agree: Callable[[T, T], bool], *, needed: int | None = None
) -> VoteOutcome[T]:
    """Cluster revealed results by ``agree`` (symmetric) and pick the majority.

    Each result's support is itself plus every result it agrees with. The result with the largest
    support (ties: lowest peer id) is the candidate; it wins when its support reaches ``needed``
    (default: a strict majority of respondents). Comparators are tolerances, so agreement need
    not be transitive: the majority is defined as those who agree with the RETURNED result.
    The outcome depends only on the mapping, never on its iteration order.
    """
    peers = sorted(results)
    n = len(peers)
    required = strict_majority(n) if needed is None else needed
    if required < 1:
        raise ValueError("needed must be >= 1")
    if n == 0:
        return VoteOutcome(decision=Decision.ESCALATE, respondents=0, needed=required)
    matrix = [[i == j for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i][j] = matrix[j][i] = bool(agree(results[peers[i]], results[peers[j]]))
    clusters = _partition(peers, matrix)
    best = max(range(n), key=lambda i: (sum(matrix[i]), -i))
    support = tuple(peers[j] for j in range(n) if matrix[best][j])
    if len(support) < required:
        return VoteOutcome(decision=Decision.ESCALATE, respondents=n, needed=required, clusters=clusters)
    minority = tuple(p for p in peers if p not in support)
    return VoteOutcome(
        decision=Decision.ACCEPT,
        respondents=n,
        needed=required,
        winner=peers[best],
        value=results[peers[best]],
        majority=support,
        minority=minority,
        clusters=clusters,
    )


def _partition(peers: list[bytes], matrix: list[list[bool]]) -> tuple[tuple[bytes, ...], ...]:
    """Greedy, order-free partition: repeatedly take the best-supported result and its supporters."""
    remaining = set(range(len(peers)))
    clusters: list[tuple[bytes, ...]] = []
    while remaining:
        center = max(sorted(remaining), key=lambda i: (sum(matrix[i][j] for j in remaining), -i))
        members = sorted(j for j in remaining if matrix[center][j])
        clusters.append(tuple(peers[j] for j in members))
        remaining.difference_update(members)
    return tuple(clusters)


def vote_embeddings(
    results: Mapping[bytes, np.ndarray],
    bounds: EmbeddingBounds = CALIBRATED_EMBEDDING_BOUNDS,
    *,
    needed: int | None = None,
) -> VoteOutcome[np.ndarray]:
    """:func:`vote` with the embedding comparator; ``detail`` gives the majority's worst metrics."""
    outcome = vote(results, embeddings_agree(bounds), needed=needed)
    detail: dict[str, Any] = {
        "comparator": "embeddings",
        "bounds": {"min_cosine": bounds.min_cosine, "max_rel_l2": bounds.max_rel_l2},
    }
    if outcome.value is not None:
        # The winner against itself is (1, 0) (decoded vectors are finite): compare the others only,
        # which at k = 1 is none (a float64 pass over the vectors per job, for nothing).
        others = [p for p in outcome.majority if p != outcome.winner]
        worst = [compare_embeddings(outcome.value, results[p], bounds) for p in others]
        detail["min_cosine"] = min((c.min_cosine for c in worst), default=1.0)
        detail["max_rel_l2"] = max((c.max_rel_l2 for c in worst), default=0.0)
    return _with_detail(outcome, detail)


def vote_exact(results: Mapping[bytes, bytes], *, needed: int | None = None) -> VoteOutcome[bytes]:
    """:func:`vote` with exact byte equality."""
    return _with_detail(vote(results, exact_match, needed=needed), {"comparator": "exact"})


def vote_chat(
    primary: bytes, verdicts: Mapping[bytes, TokenVerdict], *, needed: int | None = None
) -> VoteOutcome[bytes]:
    """The chat vote: the primary's tokens against each verifier's verdict on them.

    Respondents are the primary plus every verifier that returned scores. Verifiers that
    accept side with the primary; the primary's answer wins when that side reaches ``needed``
    (default: strict majority of respondents), and rejecting verifiers are the minority.
    Otherwise escalate: verifiers cannot offer an alternative answer, and the rejecting side may
    itself be lying, so only a larger fresh quorum settles it. ``value`` is the primary's id.
    """
    if primary in verdicts:
        raise ValueError("the primary cannot verify its own tokens")
    respondents = 1 + len(verdicts)
    required = strict_majority(respondents) if needed is None else needed
    supporters = tuple(sorted([primary, *(p for p, v in verdicts.items() if v.accepted)]))
    rejecters = tuple(sorted(p for p, v in verdicts.items() if not v.accepted))
    clusters = tuple(c for c in (supporters, rejecters) if c)
    detail: dict[str, Any] = {
        "comparator": "chat-teacher-forced",
        "positions": max((v.positions for v in verdicts.values()), default=0),
        "worst_gap": max((v.worst_gap for v in verdicts.values()), default=0.0),
        "rejections": {p.hex(): verdicts[p].first_rejected for p in rejecters},
    }
    if len(supporters) < required:
        return VoteOutcome(
            decision=Decision.ESCALATE,
            respondents=respondents,
            needed=required,
            clusters=clusters,
            detail=detail,
        )
    return VoteOutcome(
        decision=Decision.ACCEPT,
        respondents=respondents,
        needed=required,
        winner=primary,
        value=primary,
        majority=supporters,
        minority=rejecters,
        clusters=clusters,
        detail=detail,
    )


def _with_detail(outcome: VoteOutcome[T], detail: Mapping[str, Any]) -> VoteOutcome[T]:
    return VoteOutcome(
        decision=outcome.decision,
        respondents=outcome.respondents,
        needed=outcome.needed,
        winner=outcome.winner,
        value=outcome.value,
        majority=outcome.majority,
        minority=outcome.minority,
        clusters=outcome.clusters,
        detail=dict(detail),
    )
