"""The scale model's exact odds, and the router's selection behaving like uniform sampling."""

from __future__ import annotations

import math

import pytest

from simulations.report import _select
from simulations.scale_model import (
    monte_carlo,
    p_all_bad,
    p_bad_majority,
    p_caught_spot_check,
    spot_check_cost,
)


def test_all_bad_tends_to_f_pow_k() -> None:
    assert p_all_bad(100_000, 20_000, 3) == pytest.approx(0.2**3, rel=1e-3)


def test_bad_majority_small_cases_by_hand() -> None:
    # 4 peers, 2 bad, k=3: bad majority needs both bad ones -> C(2,2)*C(2,1)/C(4,3) = 2/4.
    assert p_bad_majority(4, 2, 3) == pytest.approx(0.5)
    assert p_bad_majority(10, 0, 3) == 0.0
    assert p_bad_majority(10, 10, 3) == 1.0


def test_more_replicas_help_against_a_minority() -> None:
    odds = [p_bad_majority(200, 20, k) for k in (1, 3, 5, 7)]
    assert odds == sorted(odds, reverse=True)


def test_spot_check_figures() -> None:
    assert p_caught_spot_check(0.1, 20) == pytest.approx(1 - 0.9**20)
    assert spot_check_cost(0.1, 3) == pytest.approx(1.3)


def test_rendezvous_selection_matches_uniform_sampling() -> None:
    trials, n, bad, k = 3000, 60, 12, 3
    result = monte_carlo(_select, n, bad, k, trials, seed=b"fixed-seed")
    expected = p_bad_majority(n, bad, k)
    sigma = math.sqrt(expected * (1 - expected) / trials)
    assert abs(result.p_bad_majority - expected) < 4 * sigma
