"""Rendezvous selection: determinism, exclusion, minimal disruption and weight proportionality."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.jobs.selection import (
    MIN_WEIGHT,
    Candidate,
    peer_weight,
    rank_peers,
    rendezvous_score,
    select_peers,
)


def _peer(i: int) -> bytes:
    return b"\x00\x24\x08\x01\x12\x20" + hashlib.sha256(i.to_bytes(4, "big")).digest()


peer_ids = st.integers(min_value=0, max_value=10_000).map(_peer)
candidates_st = st.lists(
    st.builds(
        Candidate,
        peer_id=peer_ids,
        reputation=st.floats(min_value=0.0, max_value=1.0),
        load=st.floats(min_value=0.0, max_value=1.0),
    ),
    max_size=20,
    unique_by=lambda c: c.peer_id,
)
job_ids = st.binary(min_size=16, max_size=16)


@given(job_ids, candidates_st, st.integers(min_value=0, max_value=25), st.randoms(use_true_random=False))
def test_choice_is_deterministic_and_independent_of_input_order(job_id, candidates, k, rnd):
    shuffled = list(candidates)
    rnd.shuffle(shuffled)
    assert select_peers(job_id, candidates, k) == select_peers(job_id, shuffled, k)


@given(job_ids, candidates_st, st.integers(min_value=0, max_value=25))
def test_returns_min_k_n_distinct_candidates(job_id, candidates, k):
    chosen = select_peers(job_id, candidates, k)
    assert len(chosen) == min(k, len(candidates))
    assert len(set(chosen)) == len(chosen)
    assert set(chosen) <= {c.peer_id for c in candidates}


@given(job_ids, candidates_st, st.integers(min_value=0, max_value=25), st.data())
def test_excluded_peers_are_never_chosen(job_id, candidates, k, data):
    excluded = data.draw(st.sets(st.sampled_from([c.peer_id for c in candidates]))) if candidates else set()
    chosen = select_peers(job_id, candidates, k, exclude=excluded)
    assert not set(chosen) & excluded
    assert len(chosen) == min(k, len(candidates) - len(excluded))


@given(job_ids, candidates_st, st.integers(min_value=1, max_value=8), st.data())
def test_removing_an_unchosen_peer_never_changes_the_choice(job_id, candidates, k, data):
    chosen = select_peers(job_id, candidates, k)
    unchosen = [c for c in candidates if c.peer_id not in chosen]
    if not unchosen:
        return
    gone = data.draw(st.sampled_from(unchosen))
    remaining = [c for c in candidates if c is not gone]
    assert select_peers(job_id, remaining, k) == chosen


@given(job_ids, candidates_st, st.integers(min_value=1, max_value=8))
def test_selection_is_a_prefix_of_the_ranking(job_id, candidates, k):
    """Replacements are taken from the ranking in order, so the first k must be the selection."""
    ranking = rank_peers(job_id, candidates)
    assert select_peers(job_id, candidates, k) == ranking[:k]
    assert len(ranking) == len(candidates)


@given(job_ids, candidates_st)
def test_ranking_is_sorted_by_score(job_id, candidates):
    by_id = {c.peer_id: c for c in candidates}
    scores = [rendezvous_score(job_id, by_id[p]) for p in rank_peers(job_id, candidates)]
    assert scores == sorted(scores, reverse=True)


def test_duplicate_peer_ids_appear_once():
    p = _peer(1)
    ranking = rank_peers(b"j" * 16, [Candidate(p), Candidate(p, reputation=0.1), Candidate(_peer(2))])
    assert sorted(ranking) == sorted([p, _peer(2)])


def test_negative_k_is_refused():
    with pytest.raises(ValueError):
        select_peers(b"j", [Candidate(_peer(1))], -1)


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_weight_is_bounded_for_any_reported_values(reputation, load):
    weight = peer_weight(Candidate(_peer(1), reputation=reputation, load=load))
    assert MIN_WEIGHT * 0.2 - 1e-12 <= weight <= 1.0


def test_weights_order_reputation_and_load():
    p = _peer(1)
    assert peer_weight(Candidate(p, 1.0, 0.0)) > peer_weight(Candidate(p, 0.5, 0.0))
    assert peer_weight(Candidate(p, 1.0, 0.0)) > peer_weight(Candidate(p, 1.0, 0.9))
    assert peer_weight(Candidate(p, 0.0, 0.0)) == MIN_WEIGHT


def test_new_job_ids_spread_the_work():
    """Equal weights: every peer is chosen first for a fair share of job ids."""
    peers = [Candidate(_peer(i)) for i in range(5)]
    counts = dict.fromkeys((c.peer_id for c in peers), 0)
    for n in range(5000):
        counts[select_peers(n.to_bytes(16, "big"), peers, 1)[0]] += 1
    for count in counts.values():
        assert 850 <= count <= 1150  # 1000 expected; ±15 % is > 5 sigma


@settings(deadline=None, max_examples=5)
@given(st.sampled_from([(1.0, 0.25), (1.0, 0.5), (0.8, 0.2)]))
def test_top_choice_frequency_is_proportional_to_weight(weights):
    """Weighted rendezvous gives the top slot with probability w_i / sum(w)."""
    heavy, light = weights
    peers = [Candidate(_peer(10), reputation=heavy), Candidate(_peer(11), reputation=light)]
    trials = 6000
    heavy_wins = sum(
        select_peers(n.to_bytes(16, "big"), peers, 1)[0] == _peer(10) for n in range(trials)
    )
    expected = heavy / (heavy + light)
    assert abs(heavy_wins / trials - expected) < 0.03


def test_loaded_peer_is_chosen_less_often():
    idle, busy = Candidate(_peer(20), load=0.0), Candidate(_peer(21), load=1.0)
    wins = sum(select_peers(n.to_bytes(16, "big"), [idle, busy], 1)[0] == idle.peer_id for n in range(2000))
    assert wins > 1500  # weights 1.0 vs 0.2: idle wins ~83 %
