"""Which executors get a job: weighted rendezvous (highest-random-weight) hashing on the job id.

Every eligible peer gets a pseudo-random score from ``H(job_id ‖ peer_id)``, scaled by a weight
that combines local reputation and advertised load; the k highest scores win. Why rendezvous:

- it is deterministic for a given job id and candidate set, so a replay of a decision (tests,
  audits, the simulation) reproduces it exactly, and the full ranking gives the order in which
  replacements are tried without any extra state;
- removing a peer that was not chosen never changes the choice (minimal disruption), and adding
  one changes it only if the newcomer outranks a winner;
- with the logarithmic method (score = -w / ln u) each peer wins the top slot with probability
  proportional to its weight, so reputation and load shift work smoothly instead of by thresholds.

The job id is chosen by the client with a CSPRNG, so executors cannot steer the choice towards
themselves; selection is a local decision and never leaves the node, hence floats are fine here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "LOAD_PENALTY",
    "MIN_WEIGHT",
    "Candidate",
    "peer_weight",
    "rank_peers",
    "rendezvous_score",
    "select_peers",
]

_DOMAIN = b"veilnet/select/v1\x00"
# A fully loaded peer keeps this fraction of its weight: it stays choosable (its load report may
# be stale), but a lightly loaded peer of equal reputation is preferred strongly.
LOAD_PENALTY = 0.8
# Reputation never drives a non-banned peer's weight to zero: a newcomer or a peer recovering from
# a penalty must still be chosen now and then, or it could never earn reputation back.
MIN_WEIGHT = 0.01


@dataclass(frozen=True)
class Candidate:
    """An eligible executor as the router sees it.

    ``reputation`` is the local score in [0, 1] (see protocol.jobs.reputation); ``load`` is the peer's
    advertised queue occupancy in [0, 1]. Values outside the range are clamped, never trusted.
    """

    peer_id: bytes
    reputation: float = 1.0
    load: float = 0.0


def _clamp01(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


def peer_weight(candidate: Candidate) -> float:
    """The selection weight of a candidate: reputation (floored at MIN_WEIGHT) times a load factor."""
    reputation = max(MIN_WEIGHT, _clamp01(candidate.reputation))
    return reputation * (1.0 - LOAD_PENALTY * _clamp01(candidate.load))


def _unit_hash(job_id: bytes, peer_id: bytes) -> float:
    """A uniform value in the open interval (0, 1) derived from the job id and peer id."""
    digest = hashlib.blake2b(
        _DOMAIN + len(job_id).to_bytes(2, "big") + job_id + peer_id, digest_size=8
    ).digest()
    # (n + 0.5) / 2^64 never reaches 0 or 1, so ln(u) is finite and strictly negative.
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def rendezvous_score(job_id: bytes, candidate: Candidate) -> float:
    """Weighted rendezvous score -w / ln(u): larger wins; P(top) is proportional to w."""
    weight = peer_weight(candidate)
    return -weight / math.log(_unit_hash(job_id, candidate.peer_id))


def rank_peers(
    job_id: bytes, candidates: Iterable[Candidate], exclude: Collection[bytes] = ()
) -> list[bytes]:
    """All candidates except ``exclude``, best first. Duplicated peer ids keep their first entry.

    Ties (only possible with equal hashes, i.e. equal peer ids) are broken by peer id bytes so the
    order never depends on the input order.
    """
    seen: set[bytes] = set(exclude)
    scored: list[tuple[float, bytes]] = []
    for candidate in candidates:
        if candidate.peer_id in seen:
            continue
        seen.add(candidate.peer_id)
        scored.append((rendezvous_score(job_id, candidate), candidate.peer_id))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [peer_id for _, peer_id in scored]


def select_peers(
    job_id: bytes, candidates: Sequence[Candidate] | Iterable[Candidate], k: int,
    exclude: Collection[bytes] = (),
) -> list[bytes]:
    """The k best-ranked candidates (fewer if fewer are eligible), best first."""
    if k < 0:
        raise ValueError("k must be >= 0")
    return rank_peers(job_id, candidates, exclude)[:k]
