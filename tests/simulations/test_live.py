"""Live scenarios end to end on real node processes (shortened to fit CI on two cores).

* smoke: every job accepted, ``results.json`` valid against its schema, four non-empty PNGs;
* byzantine (6 nodes, 2 wrong-output): no accepted answer is wrong, every wrong-output node is
  flagged and banned by the router. One client node takes every job: a ban needs two offences
  seen by the same router, and with jobs spread over four entry nodes a loaded CI machine ran too
  few jobs per router in 30 s for that to be certain;
* partition (root: network namespaces, relayed 20 ± 5 ms links): jobs inside the split succeed
  with executors of the entry node's side, and no namespace is left behind;
* Ctrl-C: every node stops, the results are written anyway.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from simulations.links import LinkUnavailable
from simulations.results import validate
from simulations.runner import SCENARIO_DIR, run_scenario
from tests.node.cluster import read_until

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.network


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_smoke_runs_end_to_end_and_writes_valid_results_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    document, code = run_scenario(SCENARIO_DIR / "smoke.toml", out, duration_s=15, console=_quiet())
    assert code == 0, document.get("error") or document["checks"]
    saved = json.loads((out / "results.json").read_text())
    validate(saved)
    summary = saved["summary"]
    assert summary["jobs"] > 0 and summary["ok"] == summary["jobs"]
    assert summary["latency_ms"]["p50"] > 0
    assert saved["links"]["mode"] == "loopback"
    for job in saved["jobs"]:
        assert job["report"]["job_id"] == job["job_id"]
        assert len([e for e in job["executors"] if e["in_majority"]]) >= 2
    assert {s["node"] for s in saved["timeline"]["resources"]} == {0, 1, 2, 3}
    assert all(s["sizes"] == {"0": 4, "1": 4, "2": 4, "3": 4} for s in saved["timeline"]["registry"])
    assert sorted(saved["plots"]) == ["detection.png", "latency.png", "registry.png", "throughput.png"]
    for name in saved["plots"]:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    # Every node process was stopped.
    assert all(node["exit_code"] is not None for node in saved["nodes"])


BYZANTINE = textwrap.dedent("""\
    name = "byzantine-ci"
    seed = 3
    [nodes]
    count = 6
    clients = 1
    models = ["all-MiniLM-L6-v2"]
    [workload]
    duration_s = 30
    concurrency = 2
    replicas = 3
    texts_per_job = 2
    [[adversaries]]
    behaviour = "wrong-output"
    count = 2
    [checks]
    no_wrong_accepted = true
    all_wrong_flagged = true
    """)


def test_byzantine_no_wrong_answer_accepted_and_every_wrong_node_flagged(tmp_path: Path) -> None:
    path = tmp_path / "byzantine-ci.toml"
    path.write_text(BYZANTINE)
    document, code = run_scenario(path, tmp_path / "out", console=_quiet())
    summary = document["summary"]
    assert code == 0, (document.get("error"), document["checks"])
    wrong = sorted(n["index"] for n in document["nodes"] if n["behaviour"] == "wrong-output")
    assert len(wrong) == 2
    assert summary["ok"] > 0 and summary["wrong_accepted"] == 0
    assert summary["adversaries_flagged"] == wrong
    assert summary["adversaries_banned"] == wrong
    assert all(job["consistent"] for job in document["jobs"] if job["status"] == "ok")


def test_the_schema_refuses_a_job_without_a_status() -> None:
    document = json.loads((SCENARIO_DIR.parent / "results.schema.json").read_text())
    assert document["$id"] == "veilnet-sim-results/1"
    broken = {"schema": "veilnet-sim-results/1", "jobs": [{"seq": 0}]}
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_ctrl_c_stops_every_node_and_still_writes_the_results(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    process = subprocess.Popen(
        [sys.executable, "-c", "from node.cli.main import main; main()", "sim", "run", "smoke",
         "--out", str(out), "--duration", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    try:
        read_until(process, "running", timeout=240)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    saved = json.loads((out / "results.json").read_text())
    validate(saved)
    assert saved["interrupted"] == "SIGINT"
    assert saved["duration_s"] < 600
    pids = [node["pid"] for node in saved["nodes"]]
    assert len(pids) == 4 and all(pids)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


PARTITION = textwrap.dedent("""\
    name = "partition-ci"
    [nodes]
    count = 6
    reannounce_seconds = 10
    bundle_lifetime_seconds = 40
    [workload]
    duration_s = 40
    concurrency = 2
    replicas = 3
    texts_per_job = 2
    [network]
    delay_ms = 20
    jitter_ms = 5
    [[network.partitions]]
    at_s = 10
    heal_s = 30
    groups = [[0, 1, 2], [3, 4, 5]]
    """)


def test_partition_jobs_on_each_side_use_that_sides_executors(tmp_path: Path) -> None:
    path = tmp_path / "partition-ci.toml"
    path.write_text(PARTITION)
    if os.geteuid() != 0:
        with pytest.raises(LinkUnavailable, match="network namespaces"):
            run_scenario(path, tmp_path / "out", console=_quiet())
        return
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    document, code = run_scenario(path, tmp_path / "out", console=_quiet())
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert after == before
    assert document["error"] is None and code == 0
    assert document["links"]["mode"] == "netns" and document["links"]["delay"] == "relay"
    assert document["links"]["relayed_bytes"] > 0
    kinds = [f["kind"] for f in document["timeline"]["faults"]]
    assert kinds == ["partition", "heal"]
    side = {i: 0 if i < 3 else 1 for i in range(6)}
    split, healed = document["timeline"]["faults"][0]["t"], document["timeline"]["faults"][1]["t"]
    # Jobs sent well inside the split (after in-flight ones settled, before the heal).
    inside = [j for j in document["jobs"] if split + 1 <= j["started_s"] and
              j["started_s"] + j["latency_ms"] / 1000 < healed]
    assert inside, "no job ran inside the partition"
    assert all(j["status"] == "ok" for j in inside), [j["status"] for j in inside]
    for job in inside:
        winners = [e["node"] for e in job["executors"] if e["in_majority"]]
        assert len(winners) >= 2
        assert all(side[w] == side[job["entry_node"]] for w in winners)
