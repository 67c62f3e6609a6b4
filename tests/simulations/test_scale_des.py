"""The discrete-event scale model reproduces the analytic bounds, and its constants are the node's."""

from __future__ import annotations

import math
import os
import random
import re
import time
from pathlib import Path

from simulations.des_gossip import build_mesh, simulate_propagation
from simulations.des_jobs import JobModel, simulate_jobs
from simulations.measure import GOSSIP
from simulations.scale import p_wrong_spot_check
from simulations.scale_model import p_bad_majority

JOBS = 20_000
LATENCY = (0.3, 0.5, 0.9)


def _within(observed: float, expected: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(max(expected * (1 - expected), 1e-12) / n)


def test_consensus_without_bans_matches_the_hypergeometric_bound() -> None:
    for bad, k in ((20, 3), (30, 5), (10, 1)):
        stats = simulate_jobs(JobModel(nodes=100, bad_fraction=bad / 100, k=k, bans=False, jobs=JOBS,
                                       latency_samples=LATENCY, seed=k))
        exact = p_bad_majority(100, bad, k)
        assert stats.jobs == JOBS and stats.failed == 0
        assert _within(stats.wrong / JOBS, exact, JOBS), (bad, k, stats.wrong / JOBS, exact)


def test_spot_check_without_bans_matches_the_exact_formula_and_checks_with_rate_p() -> None:
    p = 0.1
    stats = simulate_jobs(JobModel(nodes=100, bad_fraction=0.2, k=3, mode="spot-check", spot_check_p=p,
                                   bans=False, jobs=JOBS, latency_samples=LATENCY, seed=5))
    assert _within(stats.wrong / JOBS, p_wrong_spot_check(100, 20, 3, p), JOBS)
    # Each job of a cheating primary is checked with probability p, independently: 1-(1-p)^n.
    assert _within(stats.checked_primary_jobs / stats.bad_primary_jobs, p, stats.bad_primary_jobs)


def test_bans_remove_every_adversary_and_cut_wrong_answers() -> None:
    common = {"nodes": 200, "bad_fraction": 0.2, "k": 3, "jobs": 5000, "latency_samples": LATENCY, "seed": 2}
    free = simulate_jobs(JobModel(bans=False, **common))  # type: ignore[arg-type]
    banned = simulate_jobs(JobModel(bans=True, **common))  # type: ignore[arg-type]
    assert banned.wrong < free.wrong / 5
    assert banned.bans_of_bad == 40 and banned.all_bad_banned_at is not None


def test_churn_costs_commit_timeouts_but_jobs_escalate() -> None:
    calm = simulate_jobs(JobModel(nodes=300, bad_fraction=0.0, k=3, jobs=3000, latency_samples=LATENCY))
    churn = simulate_jobs(JobModel(nodes=300, bad_fraction=0.0, k=3, jobs=3000, latency_samples=LATENCY,
                                   mean_up_s=120.0, mean_down_s=60.0, stale_s=60.0))
    assert calm.ok == calm.jobs
    assert 0.9 < churn.ok / churn.jobs < 1.0
    assert max(churn.latencies) >= 10.0 > max(calm.latencies)


def test_a_mesh_of_at_most_d_plus_one_nodes_delivers_in_one_hop() -> None:
    hops = (0.01, 0.02, 0.05)
    result = simulate_propagation(7, hops, degree=6, degree_high=12, seed=1)
    assert result.reached == 7 and result.t100_s <= max(hops)


def test_large_meshes_reach_everyone_with_about_d_copies_per_node() -> None:
    result = simulate_propagation(3000, (0.01, 0.03), seed=4)
    assert result.reached == 3000
    assert GOSSIP["degree"] - 1 <= result.messages_per_node <= GOSSIP["degree_high"]
    mesh = build_mesh(3000, 6, 12, random.Random(0))
    assert min(len(n) for n in mesh) >= 1 and max(len(n) for n in mesh) <= 12


def test_the_model_uses_the_gossip_parameters_of_the_node() -> None:
    source = (Path(__file__).parents[2] / "node" / "net" / "gossip.py").read_text()
    for name, key in (("degree", "degree"), ("degree_low", "degree_low"), ("degree_high", "degree_high")):
        assert re.search(rf"\b{name}={GOSSIP[key]}\b", source), name
    assert re.search(rf"heartbeat_interval={int(GOSSIP['heartbeat_s'])}\b", source)


def test_the_shipped_calibration_drives_the_whole_scale_report() -> None:
    from simulations.scale import DEFAULT_CALIBRATION, load_calibration, run_scale

    calibration = load_calibration(DEFAULT_CALIBRATION)
    assert calibration["appraisal_s"] > 0 and calibration["hop_latency_s"] and calibration["job_latency_s"]
    report = run_scale(calibration, quick=True, seed=1)
    assert all(row["within_4_sigma"] for row in report["consensus"])
    assert all(row["within_4_sigma"] for row in report["spot_check"])
    for row in report["propagation"]:
        assert row["saturated"] or row["reached_all"]
    loads = [row["appraisal_utilisation"] for row in report["propagation"]]
    assert loads == sorted(loads)  # appraisal load grows with N
    churn = [row["p_success"] for row in report["churn"]]
    assert churn[0] == 1.0 and churn[-1] < churn[0]
    check = report["propagation_check"]
    assert check["measured_mean_s"] is not None
    # The check: the model's N=20 propagation agrees with the measured one within 25 %.
    assert check["within_25_percent"], check


def test_a_measured_run_records_how_much_contention_stretched_the_nodes_work() -> None:
    from simulations.measure import MachineLoad, sched_seconds

    before = sched_seconds([os.getpid()])
    with MachineLoad(interval=0.01) as load:
        spent, deadline = time.process_time() + 0.1, time.monotonic() + 30
        while time.process_time() < spent and time.monotonic() < deadline:
            pass  # 0.1 s on a core, however long a loaded machine makes that take
    now = sched_seconds([os.getpid()])
    running, waiting = now[0] - before[0], now[1] - before[1]
    assert running >= 0.09 and waiting >= 0.0
    assert load.summary["cores"] >= 1 and 0.0 < load.summary["busy_fraction"] <= 1.0
    assert load.summary["runnable_mean"] >= 0.0
