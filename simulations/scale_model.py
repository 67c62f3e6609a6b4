"""How safe is cross-checking at scale? Exact odds plus a Monte Carlo over our own peer selection.

The trust model (DESIGN.md) protects results against a *minority* of dishonest executors among the
k chosen. A wrong answer wins only if the colluding, compromised TEEs hold a strict majority of the
chosen executors. With M bad peers among N, choosing k without replacement, that probability is
hypergeometric; for large N it tends to the binomial tail, and the "all k bad" case to f^k.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def p_all_bad(n: int, bad: int, k: int) -> float:
    """Probability that all k executors drawn from n peers (``bad`` of them colluding) are bad."""
    if k > n:
        raise ValueError("k cannot exceed n")
    return math.comb(bad, k) / math.comb(n, k)


def p_bad_majority(n: int, bad: int, k: int) -> float:
    """Probability that colluders hold a strict majority of the k drawn (a wrong answer wins the vote)."""
    if k > n:
        raise ValueError("k cannot exceed n")
    need = k // 2 + 1
    total = math.comb(n, k)
    return sum(math.comb(bad, j) * math.comb(n - bad, k - j) for j in range(need, min(k, bad) + 1)) / total


def p_caught_spot_check(p: float, jobs: int) -> float:
    """Probability that an executor cheating on every job is cross-checked at least once in ``jobs``."""
    return 1.0 - (1.0 - p) ** jobs


def spot_check_cost(p: float, k: int) -> float:
    """Expected executions per job in spot-check mode, against k for full consensus."""
    return 1.0 + p * k


Selector = Callable[[bytes, Sequence[bytes], int], Sequence[bytes]]


@dataclass(frozen=True)
class MonteCarloResult:
    trials: int
    bad_majority: int
    all_bad: int

    @property
    def p_bad_majority(self) -> float:
        return self.bad_majority / self.trials

    @property
    def p_all_bad(self) -> float:
        return self.all_bad / self.trials


def monte_carlo(
    select: Selector, n: int, bad: int, k: int, trials: int, seed: bytes | None = None
) -> MonteCarloResult:
    """Draw ``trials`` random job ids and count how often ``select`` hands colluders the vote.

    ``select(job_id, peers, k)`` is the router's real selection function, so this checks that
    rendezvous hashing behaves like uniform sampling (it must not let an attacker's peers cluster).
    """
    peers = [bytes([i >> 8, i & 0xFF]) + b"peer" for i in range(n)]
    bad_set = set(peers[:bad])
    rng_seed = seed if seed is not None else secrets.token_bytes(16)
    majority = every = 0
    for trial in range(trials):
        job_id = rng_seed + trial.to_bytes(8, "big")
        chosen = select(job_id, peers, k)
        count = sum(1 for peer in chosen if peer in bad_set)
        majority += count > k // 2
        every += count == k
    return MonteCarloResult(trials=trials, bad_majority=majority, all_bad=every)
