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

from collections.abc import Mapping
from typing import Any

import numpy as np

from protocol.identity import peer_id_to_text
from protocol.jobs import consensus
from protocol.jobs.jobflow import VoteResult

__all__ = ["ChatVoter", "embeddings_voter", "single_voter"]


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
