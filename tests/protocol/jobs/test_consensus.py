"""Comparators, wire encodings and the vote (protocol/jobs/consensus.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.jobs import consensus
from protocol.jobs.consensus import (
    CALIBRATED_EMBEDDING_BOUNDS,
    CALIBRATED_TOKEN_BOUNDS,
    ConsensusError,
    Decision,
    EmbeddingBounds,
    TokenVerdict,
    check_token_scores,
    compare_embeddings,
    decode_token_scores,
    decode_vectors,
    encode_token_scores,
    encode_vectors,
    strict_majority,
    vote,
    vote_chat,
    vote_embeddings,
    vote_exact,
)


def _unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- wire encodings -------------------------------------------------------------------------------


def test_vectors_round_trip_as_float32_little_endian() -> None:
    vectors = _unit_rows(3, 5, 1)
    data, shape = encode_vectors(vectors)
    assert shape == (3, 5)
    assert len(data) == 3 * 5 * 4
    assert data[:4] == np.float32(vectors[0, 0]).astype("<f4").tobytes()
    assert np.array_equal(decode_vectors(data, shape), vectors)


@pytest.mark.parametrize(
    ("data", "shape", "reason"),
    [
        (b"\x00" * 12, (1, 4), "bad_length"),
        (b"", (0, 0), "bad_shape"),
        (b"\x00" * 8, (2,), "bad_shape"),
        (b"\x00" * 8, (True, 2), "bad_shape"),
        (b"\x00" * 8, (-1, 2), "bad_shape"),
        (np.array([np.nan, 1], dtype="<f4").tobytes(), (1, 2), "non_finite"),
        (np.array([np.inf, 1], dtype="<f4").tobytes(), (1, 2), "non_finite"),
    ],
)
def test_decode_vectors_refuses_malformed(data: bytes, shape: tuple[int, ...], reason: str) -> None:
    with pytest.raises(ConsensusError) as info:
        decode_vectors(data, shape)
    assert info.value.reason == reason


def test_decode_vectors_enforces_size_limit() -> None:
    limits = consensus.VectorLimits(max_bytes=64)
    with pytest.raises(ConsensusError) as info:
        decode_vectors(b"\x00" * 80, (4, 5), limits)
    assert info.value.reason == "too_large"


def test_encode_vectors_needs_2d() -> None:
    with pytest.raises(ConsensusError):
        encode_vectors(np.zeros(3))


def test_token_scores_round_trip_and_validation() -> None:
    ranks, gaps = encode_token_scores([0, 2, 0], [0.0, 0.5, 0.0])
    assert len(ranks) == 12 and len(gaps) == 12
    decoded_ranks, decoded_gaps = decode_token_scores(ranks, gaps, 3)
    assert decoded_ranks.tolist() == [0, 2, 0]
    assert decoded_gaps.tolist() == [0.0, 0.5, 0.0]
    with pytest.raises(ConsensusError, match="bad_length"):
        decode_token_scores(ranks, gaps, 4)
    bad_ranks, bad_gaps = encode_token_scores([0, 1], [0.25, 0.0])  # rank 0 with a gap; rank 1 without
    with pytest.raises(ConsensusError, match="bad_value"):
        decode_token_scores(bad_ranks, bad_gaps, 2)
    negative = np.array([-1.0], dtype="<f4").tobytes()
    with pytest.raises(ConsensusError, match="bad_value"):
        decode_token_scores(np.array([1], dtype="<u4").tobytes(), negative, 1)
    with pytest.raises(ConsensusError, match="bad_shape"):
        decode_token_scores(b"", b"", 0)


# -- comparators ----------------------------------------------------------------------------------


def test_embeddings_within_honest_noise_agree() -> None:
    a = _unit_rows(4, 384, 2)
    # honest float noise: relative ~5e-7 per element, well inside the calibrated bound
    b = (a + a * np.float32(5e-8) * np.random.default_rng(3).standard_normal(a.shape)).astype(np.float32)
    result = compare_embeddings(a, b)
    assert result.agree
    assert result.min_cosine > CALIBRATED_EMBEDDING_BOUNDS.min_cosine
    assert result.max_rel_l2 <= CALIBRATED_EMBEDDING_BOUNDS.max_rel_l2


def test_perturbed_quantised_and_other_embeddings_disagree() -> None:
    a = _unit_rows(4, 384, 4)
    noise = np.random.default_rng(5).standard_normal(a.shape)
    perturbed = a + 1e-3 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    peak = np.abs(a).max(axis=1, keepdims=True)
    quantised = np.round(a / peak * 127) / 127 * peak
    other = _unit_rows(4, 384, 6)
    for candidate in (perturbed, quantised, other, 2 * a):
        assert not compare_embeddings(a, candidate.astype(np.float32)).agree
    # one bad row is enough
    mixed = a.copy()
    mixed[2] = other[2]
    assert not compare_embeddings(a, mixed).agree


def test_shape_mismatch_and_zero_vectors() -> None:
    a = _unit_rows(2, 8, 7)
    assert not compare_embeddings(a, a[:1]).agree
    zeros = np.zeros((1, 8), dtype=np.float32)
    assert compare_embeddings(zeros, zeros).agree
    assert not compare_embeddings(zeros, a[:1]).agree
    empty = np.zeros((0, 8), dtype=np.float32)
    assert compare_embeddings(empty, empty).agree


def test_custom_bounds_are_honoured() -> None:
    a = _unit_rows(1, 16, 8)
    b = a + 0.01
    assert not compare_embeddings(a, b).agree
    assert compare_embeddings(a, b, EmbeddingBounds(min_cosine=0.9, max_rel_l2=0.1)).agree


def test_token_checks_accept_top1_and_near_ties_only() -> None:
    ok = check_token_scores([0, 0, 1, 0], [0.0, 0.0, CALIBRATED_TOKEN_BOUNDS.max_logit_gap / 2, 0.0])
    assert ok.accepted and ok.top1 == 3 and ok.first_rejected is None and ok.positions == 4
    bad = check_token_scores([0, 1, 0, 7], [0.0, 0.8, 0.0, 3.0])
    assert not bad.accepted and bad.first_rejected == 1 and bad.worst_gap == pytest.approx(3.0)
    with pytest.raises(ConsensusError):
        check_token_scores([], [])


# -- the vote -------------------------------------------------------------------------------------


def _peer(i: int) -> bytes:
    return bytes([0, 36]) + i.to_bytes(4, "big")


def test_strict_majority() -> None:
    assert [strict_majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_embedding_vote_flags_the_wrong_output() -> None:
    honest = _unit_rows(2, 384, 9)
    wrong = (honest + 1e-2).astype(np.float32)
    results = {_peer(1): honest, _peer(2): honest.copy(), _peer(3): wrong}
    outcome = vote_embeddings(results)
    assert outcome.decision is Decision.ACCEPT
    assert outcome.majority == (_peer(1), _peer(2))
    assert outcome.minority == (_peer(3),)
    assert outcome.winner == _peer(1)
    assert outcome.value is not None and np.array_equal(outcome.value, honest)
    assert outcome.agreement == pytest.approx(2 / 3)
    assert outcome.detail["min_cosine"] >= CALIBRATED_EMBEDDING_BOUNDS.min_cosine


def test_embedding_vote_detail_is_the_worst_of_the_other_majority_members() -> None:
    honest = _unit_rows(2, 384, 9)
    close = honest.copy()
    close[0, 0] += 1e-6  # within the calibrated bounds, but not equal
    alone = vote_embeddings({_peer(1): honest})  # k = 1: nothing to compare
    assert alone.detail["min_cosine"] == 1.0 and alone.detail["max_rel_l2"] == 0.0
    three = vote_embeddings({_peer(1): honest, _peer(2): honest.copy(), _peer(3): close})
    against_close = consensus.compare_embeddings(honest, close)
    assert three.winner == _peer(1) and three.majority == (_peer(1), _peer(2), _peer(3))
    assert three.detail["min_cosine"] == against_close.min_cosine
    assert three.detail["max_rel_l2"] == against_close.max_rel_l2 > 0


def test_split_vote_escalates() -> None:
    outcome = vote_exact({_peer(1): b"a", _peer(2): b"a", _peer(3): b"b", _peer(4): b"b"})
    assert outcome.decision is Decision.ESCALATE
    assert outcome.winner is None and outcome.majority == () and outcome.minority == ()
    assert sorted(outcome.clusters) == [(_peer(1), _peer(2)), (_peer(3), _peer(4))]
    assert vote_exact({}).decision is Decision.ESCALATE


def test_needed_overrides_the_majority_rule() -> None:
    results = {_peer(1): b"a", _peer(2): b"a", _peer(3): b"b"}
    assert vote_exact(results, needed=3).decision is Decision.ESCALATE
    assert vote_exact(results, needed=2).decision is Decision.ACCEPT
    with pytest.raises(ValueError):
        vote_exact(results, needed=0)


def test_non_transitive_agreement_returns_the_bridging_result() -> None:
    # 0 ~ 1 ~ 2 but 0 !~ 2: the result that everyone agrees with is the one returned
    results = {_peer(1): 0, _peer(2): 1, _peer(3): 2}
    outcome = vote(results, lambda a, b: abs(a - b) <= 1)
    assert outcome.decision is Decision.ACCEPT
    assert outcome.winner == _peer(2) and outcome.majority == (_peer(1), _peer(2), _peer(3))


def test_chat_vote() -> None:
    accept = TokenVerdict(accepted=True, positions=5, top1=5, worst_gap=0.0, first_rejected=None)
    reject = TokenVerdict(accepted=False, positions=5, top1=3, worst_gap=2.5, first_rejected=1)
    primary = _peer(9)
    won = vote_chat(primary, {_peer(1): accept, _peer(2): reject})
    assert won.decision is Decision.ACCEPT and won.winner == primary
    assert won.majority == (_peer(1), primary) and won.minority == (_peer(2),)
    lost = vote_chat(primary, {_peer(1): reject, _peer(2): reject})
    assert lost.decision is Decision.ESCALATE and lost.winner is None
    assert lost.clusters == ((primary,), (_peer(1), _peer(2)))
    tie = vote_chat(primary, {_peer(1): reject})
    assert tie.decision is Decision.ESCALATE
    assert vote_chat(primary, {}).decision is Decision.ACCEPT  # spot-check without verifiers
    with pytest.raises(ValueError):
        vote_chat(primary, {primary: accept})


# -- properties -----------------------------------------------------------------------------------

_labels = st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=9)


@settings(max_examples=200, deadline=None)
@given(labels=_labels, seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_vote_is_permutation_invariant(labels: list[int], seed: int) -> None:
    items = [(_peer(i), label) for i, label in enumerate(labels)]
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    for agree in (lambda a, b: a == b, lambda a, b: abs(a - b) <= 1):
        assert vote(dict(items), agree) == vote(dict(shuffled), agree)


@settings(max_examples=200, deadline=None)
@given(labels=_labels)
def test_strict_majority_wins_exactly(labels: list[int]) -> None:
    results = {_peer(i): bytes([label]) for i, label in enumerate(labels)}
    outcome = vote_exact(results)
    counts = {label: labels.count(label) for label in set(labels)}
    top_label, top = max(counts.items(), key=lambda kv: kv[1])
    if 2 * top > len(labels):
        assert outcome.decision is Decision.ACCEPT
        assert outcome.value == bytes([top_label])
        assert len(outcome.majority) == top
        assert set(outcome.majority) | set(outcome.minority) == set(results)
        assert not set(outcome.majority) & set(outcome.minority)
    else:
        assert outcome.decision is Decision.ESCALATE
        assert outcome.winner is None
    assert sorted(p for cluster in outcome.clusters for p in cluster) == sorted(results)


@settings(max_examples=100, deadline=None)
@given(half=st.integers(min_value=1, max_value=5))
def test_even_ties_never_have_a_majority(half: int) -> None:
    results = {_peer(i): (b"x" if i < half else b"y") for i in range(2 * half)}
    assert vote_exact(results).decision is Decision.ESCALATE
