"""KV-cache reuse across a live stream's verification rounds gives the verdicts of a full prefill.

A verifier re-scores a growing prefix every 16 tokens; with a ``prefix_scope`` it extends the KV
cache of its last round instead of prefilling everything again. Incremental and full prefill only
reorder float operations, so every claimed token keeps its rank, every gap stays within the
calibrated bound of the full prefill's (``docs/CALIBRATION.md``: 1.6e-4), and the comparator
(``check_token_scores``) reaches the same verdict at the same position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from node.runtime import ChatRuntime, TokenScores, load_runtime
from node.runtime.generation import PrefixCache
from protocol.jobs.consensus import CALIBRATED_TOKEN_BOUNDS, check_token_scores

PROMPTS = [
    [{"role": "user", "content": "Tell me about enclaves."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}],
    [{"role": "user", "content": "why is the secret vote random? answer in one long line"}],
    "the city team played a game in the national league",
]
SCOPE, OTHER = b"client-a", b"client-b"


@pytest.fixture(scope="module")
def lm() -> ChatRuntime:
    runtime = load_runtime("veilnet-tiny-random-lm")
    assert isinstance(runtime, ChatRuntime)
    return runtime


def _rounds(
    lm: ChatRuntime, prompt_ids: Sequence[int], tokens: Sequence[int], ends: Sequence[int]
) -> TokenScores:
    """Score the growing prefixes ``tokens[:end]`` in turn, as a live stream's rounds do; the last result."""
    scores = None
    for end in ends:
        scores = lm.score_ids(prompt_ids, tokens[:end], prefix_scope=SCOPE)
    assert scores is not None
    return scores


def _assert_equivalent(incremental: TokenScores, full: TokenScores) -> None:
    assert np.array_equal(incremental.ranks, full.ranks)
    assert np.max(np.abs(incremental.gaps - full.gaps)) <= CALIBRATED_TOKEN_BOUNDS.max_logit_gap
    assert np.allclose(incremental.logprobs, full.logprobs, atol=1e-4)
    _assert_same_verdict(incremental, full)


def _assert_same_verdict(incremental: TokenScores, full: TokenScores) -> None:
    """The comparator decides alike: same acceptance, positions, top-1 count and first rejection."""
    mine = check_token_scores(incremental.ranks, incremental.gaps)
    theirs = check_token_scores(full.ranks, full.gaps)
    assert (mine.accepted, mine.positions, mine.top1, mine.first_rejected) == (
        theirs.accepted, theirs.positions, theirs.top1, theirs.first_rejected
    )
    assert abs(mine.worst_gap - theirs.worst_gap) <= CALIBRATED_TOKEN_BOUNDS.max_logit_gap


@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_rounds_over_a_growing_prefix_score_like_one_full_prefill(lm: ChatRuntime, prompt) -> None:
    lm.prefix_cache.clear()
    generation = lm.generate(prompt, 64)
    tokens = list(generation.tokens)
    full = lm.score_ids(generation.prompt_tokens, tokens)
    assert check_token_scores(full.ranks, full.gaps).accepted
    hits = lm.prefix_cache.hits
    # every 16 tokens, then the rest; and uneven rounds, as the 250 ms timer cuts them
    for ends in ([*range(16, len(tokens), 16), len(tokens)], [1, 2, 7, 19, 20, len(tokens)]):
        lm.prefix_cache.clear()
        ends = sorted({min(end, len(tokens)) for end in ends})
        _assert_equivalent(_rounds(lm, generation.prompt_tokens, tokens, ends), full)
    assert lm.prefix_cache.hits > hits  # the rounds did extend the cache, not prefill from scratch


def test_a_lie_is_rejected_at_the_same_position_whichever_round_sees_it(lm: ChatRuntime) -> None:
    generation = lm.generate(PROMPTS[0], 48)
    tokens = list(generation.tokens)
    assert len(tokens) > 30
    for lie_at in (0, 15, 16, 21):
        lied = list(tokens)
        lied[lie_at] = (lied[lie_at] + 1) % lm.vocab_size
        full = lm.score_ids(generation.prompt_tokens, lied)
        verdict = check_token_scores(full.ranks, full.gaps)
        assert not verdict.accepted and verdict.first_rejected == lie_at
        lm.prefix_cache.clear()
        ends = [16, 32, len(lied)]
        _assert_equivalent(_rounds(lm, generation.prompt_tokens, lied, ends), full)


def test_a_claim_outside_the_vocabulary_is_rejected_as_in_a_full_prefill(lm: ChatRuntime) -> None:
    generation = lm.generate(PROMPTS[1], 32)
    claimed = list(generation.tokens)
    claimed[len(claimed) // 2] = lm.vocab_size + 5
    full = lm.score_ids(generation.prompt_tokens, claimed)
    lm.prefix_cache.clear()
    incremental = _rounds(lm, generation.prompt_tokens, claimed, [4, len(claimed) // 2 + 1, len(claimed)])
    assert np.array_equal(incremental.ranks, full.ranks)
    _assert_same_verdict(incremental, full)


def test_a_cached_prefix_serves_only_its_own_scope(lm: ChatRuntime) -> None:
    generation = lm.generate(PROMPTS[2], 32)
    tokens = list(generation.tokens)
    lm.prefix_cache.clear()
    lm.score_ids(generation.prompt_tokens, tokens[:16], prefix_scope=SCOPE)
    hits = lm.prefix_cache.hits
    lm.score_ids(generation.prompt_tokens, tokens, prefix_scope=OTHER)
    assert lm.prefix_cache.hits == hits  # another client's request prefilled from scratch
    lm.score_ids(generation.prompt_tokens, tokens, prefix_scope=SCOPE)
    assert lm.prefix_cache.hits == hits + 1
    lm.score_ids(generation.prompt_tokens, tokens)  # no scope: neither reads nor writes the cache
    assert lm.prefix_cache.hits == hits + 1 and len(lm.prefix_cache) == 2


def test_the_cache_forgets_idle_and_least_recently_used_prefixes(lm: ChatRuntime) -> None:
    now = [0.0]
    cache = PrefixCache(entries=2, ttl_s=30.0, clock=lambda: now[0])
    original, lm.prefix_cache = lm.prefix_cache, cache
    try:
        generation = lm.generate(PROMPTS[0], 24)
        prompt, tokens = generation.prompt_tokens, list(generation.tokens)
        for scope in (b"a", b"b", b"c"):
            lm.score_ids(prompt, tokens[:8], prefix_scope=scope)
        assert len(cache) == 2  # "a", the least recently used, was dropped
        lm.score_ids(prompt, tokens, prefix_scope=b"a")
        assert cache.hits == 0
        now[0] = 31.0
        lm.score_ids(prompt, tokens, prefix_scope=b"b")
        assert cache.hits == 0 and len(cache) == 1  # idle past the TTL: expired, not extended
    finally:
        lm.prefix_cache = original
