"""Discrete-event model (simpy) of jobs on a large network: churn, colluding adversaries, bans.

The same questions as the live scenarios, for networks one machine cannot hold:

* **Selection**: executors are drawn uniformly from the router's view, minus banned peers.
  (The router ranks by rendezvous hashing on a fresh random job id; ``simulations/report.py``
  checks on the real function that this behaves like uniform sampling.)
* **Churn**: each node alternates up and down, both exponential. A router still lists a node
  that went down until its bundle expires, so the view holds down nodes for ``stale_s``.
* **Adversaries**: a fraction ``f`` of nodes always answer wrong, and they collude (all give the
  same wrong answer, the worst case for a vote).
* **Consensus** (k executors): an answer is accepted when at least k//2+1 executors agree. A down
  executor costs the commit timeout; the router then escalates once with replacements. With
  ``bans``, executors outvoted by an honest majority are banned for the rest of the run (the
  router's reputation book bans wrong-output offenders on the first offence).
* **Spot-check** (probability p): one primary executes; with probability p, k verifiers check it.
  An unchecked wrong primary is accepted; a checked one is caught (and banned) unless the
  verifiers' majority is colluding too.
* **Latency** of a job that meets no down executor is drawn from job latencies measured on a local
  run; each round spent waiting on a down executor adds the commit timeout.

The analytic bounds this must reproduce without churn or bans: P(wrong) = P(colluders hold a
majority of k) (hypergeometric) in consensus mode, f·(1−p) + f·p·P(bad majority of k verifiers)
in spot-check mode, and P(an always-cheating executor is checked within n of its jobs) = 1−(1−p)^n.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import simpy

__all__ = ["JobModel", "JobStats", "simulate_jobs"]


@dataclass(frozen=True)
class JobModel:
    nodes: int
    bad_fraction: float
    k: int
    mode: str = "consensus"  # or "spot-check"
    spot_check_p: float = 0.1
    bans: bool = True
    jobs: int = 2000
    rate_per_s: float = 5.0
    mean_up_s: float | None = None  # None: no churn
    mean_down_s: float = 60.0
    stale_s: float = 60.0
    commit_timeout_s: float = 10.0
    deadline_s: float = 30.0
    latency_samples: Sequence[float] = (0.2,)
    seed: int = 0


@dataclass
class JobStats:
    jobs: int = 0
    ok: int = 0
    wrong: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    bans_of_bad: int = 0
    bans_of_honest: int = 0
    all_bad_banned_at: float | None = None
    bad_primary_jobs: int = 0  # spot-check: jobs whose primary was an adversary ...
    checked_primary_jobs: int = 0  # ... and of those, how many were cross-checked

    def summary(self) -> dict[str, float | int | None]:
        ordered = sorted(self.latencies)

        def q(p: float) -> float | None:
            return ordered[min(len(ordered) - 1, round(p * len(ordered)))] if ordered else None

        return {
            "jobs": self.jobs, "ok": self.ok, "wrong": self.wrong, "failed": self.failed,
            "p_success": self.ok / self.jobs if self.jobs else None,
            "p_wrong": self.wrong / self.jobs if self.jobs else None,
            "latency_p50_s": q(0.5), "latency_p95_s": q(0.95),
            "bans_of_bad": self.bans_of_bad, "bans_of_honest": self.bans_of_honest,
            "all_bad_banned_at_s": self.all_bad_banned_at,
        }


def simulate_jobs(model: JobModel) -> JobStats:
    rng = random.Random(model.seed)
    env = simpy.Environment()
    n = model.nodes
    bad_count = round(model.bad_fraction * n)
    bad = set(rng.sample(range(n), bad_count))
    up = [True] * n
    listed = [True] * n  # in routers' registries: up, or down for less than stale_s
    banned: set[int] = set()
    stats = JobStats()
    cache: list[list[int]] = []  # the current view; emptied whenever listed or banned changes

    def changed() -> None:
        cache.clear()

    def churn(node: int) -> Generator[simpy.events.Event, Any, None]:  # a simpy process
        assert model.mean_up_s is not None
        while True:
            yield env.timeout(rng.expovariate(1 / model.mean_up_s))
            up[node] = False
            down_for = rng.expovariate(1 / model.mean_down_s)
            if down_for > model.stale_s:  # its bundle expires while it is down
                yield env.timeout(model.stale_s)
                listed[node] = False
                changed()
                yield env.timeout(down_for - model.stale_s)
            else:
                yield env.timeout(down_for)
            up[node] = listed[node] = True
            changed()

    def view() -> list[int]:
        if not cache:
            cache.append([i for i in range(n) if listed[i] and i not in banned])
        return cache[0]

    def ban(nodes: Sequence[int]) -> None:
        for node in nodes:
            if node in banned:
                continue
            banned.add(node)
            changed()
            if node in bad:
                stats.bans_of_bad += 1
                if bad and bad <= banned and stats.all_bad_banned_at is None:
                    stats.all_bad_banned_at = env.now
            else:
                stats.bans_of_honest += 1

    def draw(pool: list[int], count: int, exclude: set[int]) -> list[int]:
        """``count`` distinct peers of ``pool`` outside ``exclude``, uniformly (sampling a few more
        and dropping the excluded keeps every subset equally likely)."""
        picked = rng.sample(pool, min(len(pool), count + len(exclude)))
        return [i for i in picked if i not in exclude][:count]

    def vote(chosen: Sequence[int], need: int) -> str:
        """'ok', 'wrong' or 'none' (no majority among the executors that are up)."""
        answering = [i for i in chosen if up[i]]
        honest = [i for i in answering if i not in bad]
        cheats = [i for i in answering if i in bad]
        if len(honest) >= need:
            if model.bans:
                ban(cheats)
            return "ok"
        if len(cheats) >= need:
            if model.bans:
                ban(honest)  # outvoted honest executors are penalised too: the worst case
            return "wrong"
        return "none"

    def job() -> Generator[simpy.events.Event, Any, None]:  # a simpy process
        stats.jobs += 1
        started = env.now
        pool = view()
        need = model.k // 2 + 1
        waited = 0.0
        if model.mode == "spot-check":
            primary = draw(pool, 1, set())
            if not primary:
                stats.failed += 1
                return
            while not up[primary[0]] and waited + model.commit_timeout_s < model.deadline_s:
                waited += model.commit_timeout_s
                primary = draw(pool, 1, set(primary))
                if not primary:
                    break
            if not primary or not up[primary[0]]:
                stats.failed += 1
                return
            p = primary[0]
            stats.bad_primary_jobs += p in bad
            if rng.random() < model.spot_check_p:
                stats.checked_primary_jobs += p in bad
                verifiers = [i for i in draw(pool, model.k, {p}) if up[i]]
                honest_verifiers = [i for i in verifiers if i not in bad]
                if p in bad and len(honest_verifiers) >= need:
                    if model.bans:
                        ban([p])
                    outcome = "ok"  # caught: the job is answered by the verifiers' side
                elif p not in bad and len(verifiers) - len(honest_verifiers) >= need:
                    outcome = "wrong"
                else:
                    outcome = "wrong" if p in bad else "ok"
            else:
                outcome = "wrong" if p in bad else "ok"
        else:
            chosen = draw(pool, model.k, set())
            outcome = vote(chosen, need)
            if outcome == "none" and waited + model.commit_timeout_s < model.deadline_s:
                # Escalation: after the commit timeout, replacements for the silent executors.
                waited += model.commit_timeout_s
                silent = [i for i in chosen if not up[i]]
                extra = draw(pool, len(silent), set(chosen))
                outcome = vote([i for i in chosen if up[i]] + extra, need)
        latency = waited + rng.choice(model.latency_samples)
        yield env.timeout(latency)
        if outcome == "ok":
            stats.ok += 1
            stats.latencies.append(env.now - started)
        elif outcome == "wrong":
            stats.wrong += 1
            stats.latencies.append(env.now - started)
        else:
            stats.failed += 1

    def arrivals() -> Generator[simpy.events.Event, Any, None]:  # a simpy process
        for _ in range(model.jobs):
            yield env.timeout(rng.expovariate(model.rate_per_s))
            env.process(job())

    if model.mean_up_s is not None:
        for node in range(n):
            env.process(churn(node))
    done = env.process(arrivals())
    env.run(until=done)
    env.run(until=env.now + model.deadline_s + max(model.latency_samples))
    return stats
