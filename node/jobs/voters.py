"""How a phase's revealed results become a decision: the ``Voter`` each kind of phase uses.

``protocol.jobs.jobflow.JobFlow`` calls its voter with the results revealed so far and the number
of agreeing executors it needs; the voter answers a ``VoteResult`` (winners, value, detail for the
report). The comparison rules themselves are ``protocol.jobs.consensus``'s; these adapters only
shape their answers for the flow:

- embeddings: ``embeddings_voter`` (cosine agreement of vectors, ``vote_embeddings``);
- chat phase 1: ``single_voter`` (one primary, nothing to compare yet);
- chat phase 2: ``ChatVoter`` (the primary's tokens against each verifier's verdict, ``vote_chat``);
  it remembers who rejected the primary, which the chat flow needs to decide on a penalty.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.identity import peer_id_to_text
from protocol.jobs import consensus
from protocol.jobs.jobflow import VoteResult

__all__ = ["ChatVoter", "ClaimScores", "embeddings_voter", "single_voter"]


@dataclass(frozen=True)
class ClaimScores:
    """A verifier's decoded per-position ranks and gaps, judged by the voter with the bound of
    the (primary, verifier) pair of numerics classes (node.jobs.engines)."""

    ranks: np.ndarray
    gaps: np.ndarray


def embeddings_voter(results: Mapping[bytes, np.ndarray], needed: int) -> VoteResult:
    outcome = consensus.vote_embeddings(results, needed=needed)
    detail = dict(outcome.detail)
    detail["needed"] = needed
    if outcome.decision is not consensus.Decision.ACCEPT or outcome.winner is None:
        return VoteResult(detail=detail)
    return VoteResult(winners=outcome.majority, value=(outcome.winner, outcome.value), detail=detail)


def single_voter(results: Mapping[bytes, Any], needed: int) -> VoteResult:
    """Phase 1 of chat: one primary; its generation is checked by phase 2, not here."""
    if len(results) != 1:
        return VoteResult(detail={"comparator": "primary"})
    ((peer, value),) = results.items()
    return VoteResult(winners=(peer,), value=(peer, value), detail={"comparator": "primary"})


class ChatVoter:
    """Phase 2 of chat: the primary's tokens against each verifier's verdict (vote_chat)."""

    def __init__(
        self, primary: bytes, bounds: Callable[[bytes], consensus.TokenBounds] | None = None
    ) -> None:
        self.primary = primary
        self._bounds = bounds or (lambda _verifier: consensus.CALIBRATED_TOKEN_BOUNDS)
        self.rejecters: tuple[bytes, ...] = ()
        self.last_verdicts: dict[bytes, consensus.TokenVerdict] = {}
        self.bounds_used: dict[bytes, float] = {}

    def __call__(self, results: Mapping[bytes, ClaimScores], needed: int) -> VoteResult:
        verdicts: dict[bytes, consensus.TokenVerdict] = {}
        for peer, scores in results.items():
            bounds = self._bounds(peer)
            self.bounds_used[peer] = bounds.max_logit_gap
            verdicts[peer] = consensus.check_token_scores(scores.ranks, scores.gaps, bounds)
        self.last_verdicts = verdicts
        outcome = consensus.vote_chat(self.primary, verdicts)
        self.rejecters = tuple(p for p, v in verdicts.items() if not v.accepted)
        detail = dict(outcome.detail)
        rejections = detail.get("rejections", {})
        detail["rejections"] = {peer_id_to_text(bytes.fromhex(k)): v for k, v in rejections.items()}
        detail["needed"] = outcome.needed
        detail["respondents"] = outcome.respondents
        detail["max_logit_gap"] = {peer_id_to_text(p): b for p, b in sorted(self.bounds_used.items())}
        if outcome.decision is not consensus.Decision.ACCEPT:
            return VoteResult(detail=detail)
        supporters = tuple(p for p in outcome.majority if p != self.primary)
        if not supporters:
            return VoteResult(detail=detail)
        return VoteResult(winners=supporters, value=(self.primary, None), detail=detail)

    def detail_for_primary(self) -> str:
        return f"rejected by {len(self.rejecters)} of {len(self.last_verdicts)} verifiers"
