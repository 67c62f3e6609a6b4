"""A live scenario: real node processes, a workload through their APIs, faults on time.

The run goes through the same doors an operator uses: :mod:`node.testnet` writes the testnet and
node configs and starts each node as ``veilnet node start`` in its own process (placed by the
link layer: loopback, or a network namespace); jobs go through each node's OpenAI-compatible
HTTP API; the registry and metrics are read from ``/veilnet/v1/peers`` and ``/metrics``.
Adversarial nodes are ordinary nodes whose config carries a test fault (``[extra] fault`` for job
faults, ``test_evidence_fault`` for forged evidence), which the node refuses unless its evidence
is simulated.

Order of a run:

1. validate the scenario and choose the link layer (errors before any process starts);
2. write the testnet (a snapshot of this checkout's code, so measurements cannot drift);
3. start node 0, then every other node bootstrapping from it; wait (bounded) until every
   honest registry holds every honest executor;
4. for ``duration_s``: the workload, the sampler, the fault schedule and the progress display
   run side by side in one nursery;
5. always, also on Ctrl-C, SIGTERM or an error: stop every process, undo the links, and write
   ``results.json`` and the plots from whatever was collected.

Why one module over 500 lines: the workload, the sampler, the fault schedule and the hostile
peers all read and change the same per-node state (up, ready, identities) inside one nursery;
split apart they would pass that state around for no gain.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import trio

from node.config import NodeConfig, TestEvidenceFault
from node.testnet import (
    NodeProcess,
    TestnetLayout,
    create_testnet,
    snapshot_code,
    start_node_process,
    stop_processes,
    wait_for_info,
)
from simulations.links import LinkLayer
from simulations.scenario import (
    CHAT_MODEL,
    EMBEDDINGS_MODEL,
    EVIDENCE_FAULTS,
    HOSTILE_PEERS,
    JOB_FAULTS,
    Action,
    Attacks,
    Behaviour,
    Scenario,
)
from simulations.workload import AnswerBook, JobRecord, make_pool, next_job, send_job

__all__ = ["FaultRecord", "LiveRun", "NodeState"]

START_TIMEOUT = 240.0  # many nodes import torch and load a model at once on two cores
SETTLE_TIMEOUT = 120.0  # registries complete (several re-announce periods on a loaded machine)
SAMPLE_EVERY = 2.0
READY_TIMEOUT = 60.0  # a restarted node's registry refills within a few re-announce periods
FAILURE_BACKOFF_S = 0.5  # a client backs off after a failed job instead of spinning on errors
MAX_OUTSTANDING = 64  # open-loop jobs in flight before arrivals are counted as shed


@dataclass
class NodeState:
    index: int
    role: str  # "honest" | "client" | "adversary"
    behaviour: Behaviour | None
    config_path: Path
    process: NodeProcess | None = None
    info: dict[str, Any] = field(default_factory=dict)
    peer_ids: list[str] = field(default_factory=list)  # every identity it had (identity churn adds)
    up: bool = False
    ready: bool = False  # up, and its registry lists enough providers to take jobs
    churn: bool = False

    @property
    def api_url(self) -> str:
        return str(self.info.get("api_url", ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "role": self.role,
            "behaviour": self.behaviour.value if self.behaviour else None,
            "peer_ids": self.peer_ids, "api_url": self.api_url or None,
            "addrs": list(self.info.get("addrs", [])), "churn": self.churn,
            "exit_code": self.process.process.returncode if self.process else None,
            "pid": self.process.process.pid if self.process else None,
        }


@dataclass(frozen=True)
class FaultRecord:
    t: float
    kind: str
    nodes: tuple[int, ...]
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "kind": self.kind, "nodes": list(self.nodes), "detail": self.detail}


class LiveRun:
    """One run of one scenario; :meth:`run` returns the collected data whatever happened."""

    def __init__(self, scenario: Scenario, out_dir: Path, links: LinkLayer,
                 on_update: Callable[[LiveRun], None] | None = None) -> None:
        self.scenario = scenario
        self.out_dir = out_dir
        self.links = links
        self.on_update = on_update
        self.rng = random.Random(scenario.seed)
        self.nodes: list[NodeState] = []
        self.layout: TestnetLayout | None = None
        self.code_root: Path | None = None
        self.jobs: list[JobRecord] = []
        self.faults: list[FaultRecord] = []
        self.detections: list[dict[str, Any]] = []
        self.registry: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.messages: list[str] = []
        self.attacks: list[dict[str, Any]] = []  # one per hostile-peer attack run, with its outcome
        self.phase = "starting"
        self.interrupted = ""
        self.error = ""
        self.traceback = ""
        self.setup_s = 0.0
        self.settle_s: float | None = None
        self.t0: float | None = None  # workload start (time.monotonic)
        self.t_end: float | None = None  # when the run stopped (workload over, or interrupted)
        self.started_wall = time.time()
        self.shed = 0
        self._answers = AnswerBook()
        self._cpu: dict[int, tuple[float, float]] = {}
        self._seq = 0
        self._slow: dict[int, float] = {}

    # ------------------------------------------------------------------------------ clock

    def now(self) -> float:
        """Seconds since the workload began (0 during setup; frozen once the run stopped)."""
        if self.t0 is None:
            return 0.0
        return (self.t_end if self.t_end is not None else time.monotonic()) - self.t0

    def note(self, message: str) -> None:
        self.messages.append(f"[{self.now():7.1f}s] {message}")

    # ---------------------------------------------------------------------------- roles

    def _assign_roles(self) -> None:
        s = self.scenario
        n = s.nodes.count
        clients = set(range(n - s.nodes.clients, n))
        executors = [i for i in range(1, n) if i not in clients]
        chosen = self.rng.sample(executors, s.adversary_count)
        behaviours: dict[int, Behaviour] = {}
        slow: dict[int, float] = {}
        it = iter(chosen)
        for adversary in s.adversaries:
            if adversary.behaviour in HOSTILE_PEERS:
                continue  # extra attacker processes, not nodes (see _hostile_peer)
            for _ in range(adversary.count):
                index = next(it)
                behaviours[index] = adversary.behaviour
                slow[index] = adversary.slow_seconds
        self._slow = slow
        honest_executors = [i for i in executors if i not in behaviours]
        churners = set(self.rng.sample(honest_executors, s.churn.nodes)) if s.churn else set()
        root = self.out_dir / "testnet"
        for i in range(n):
            role = "client" if i in clients else ("adversary" if i in behaviours else "honest")
            self.nodes.append(NodeState(i, role, behaviours.get(i), root / f"node-{i}" / "node.toml",
                                        churn=i in churners))

    def _override(self, index: int, config: NodeConfig) -> NodeConfig:
        s = self.scenario
        state = self.nodes[index]
        place = self.links.placement(index)
        extra: dict[str, Any] = {
            "replicas": s.workload.replicas, "mode": s.workload.mode,
            "spot_check_probability": s.workload.spot_check_probability, "deadline_s": s.workload.deadline_s,
        }
        evidence_fault = None
        if state.behaviour in JOB_FAULTS:
            extra["fault"] = state.behaviour.value
            extra["fault_slow_seconds"] = self._slow[index]
        elif state.behaviour in EVIDENCE_FAULTS:
            evidence_fault = TestEvidenceFault(state.behaviour.value)
        return replace(
            config,
            listen=place.listen, api=place.api, announce=place.announce,
            models=() if state.role == "client" else s.nodes.models,
            reannounce_seconds=s.nodes.reannounce_seconds,
            bundle_lifetime_seconds=s.nodes.bundle_lifetime_seconds,
            target_peers=s.nodes.target_peers,
            test_evidence_fault=evidence_fault,
            extra=extra,
        )

    # --------------------------------------------------------------------------- processes

    async def _start_node(self, state: NodeState, *, fresh_identity: bool = False) -> None:
        assert self.code_root is not None
        if fresh_identity:
            (state.config_path.parent / "identity.key").unlink(missing_ok=True)
        args: tuple[str, ...] = ()
        if state.index != 0:
            args = ("--bootstrap", self.links.bootstrap_addr(0, self.nodes[0].info))
        place = self.links.placement(state.index)
        process = start_node_process(state.index, state.config_path, args, code_root=self.code_root,
                                     wrapper=place.wrapper)
        state.process = process
        # Abandoned on Ctrl-C: the wait is a bounded poll of a file; trio-stubs lack the keyword.
        info = await trio.to_thread.run_sync(  # type: ignore[call-arg]
            wait_for_info, process, START_TIMEOUT, abandon_on_cancel=True
        )
        state.info = info
        if info["peer_id"] not in state.peer_ids:
            state.peer_ids.append(info["peer_id"])
        self.links.attach(state.index, info)
        state.up = True

    def _signal(self, state: NodeState, sig: signal.Signals) -> None:
        state.up = state.ready = False
        if state.process is not None and state.process.alive():
            state.process.process.send_signal(sig)

    async def _wait_exit(self, state: NodeState, timeout: float = 10.0) -> None:
        process = state.process
        if process is None:
            return
        with trio.move_on_after(timeout):
            while process.alive():
                await trio.sleep(0.05)
        if process.alive():
            process.process.kill()

    def peer_index(self) -> dict[str, int]:
        return {peer: state.index for state in self.nodes for peer in state.peer_ids}

    def wrong_sources(self) -> frozenset[str]:
        wrong = {Behaviour.WRONG_OUTPUT, Behaviour.COPY}
        return frozenset(p for s in self.nodes if s.behaviour in wrong for p in s.peer_ids)

    # ----------------------------------------------------------------------------- the run

    async def run(self) -> None:
        """Everything; returns normally after Ctrl-C, SIGTERM or a failure (see ``interrupted``/``error``)."""
        started = time.monotonic()
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:

                    async def watch() -> None:
                        async for signum in signals:
                            self.interrupted = signal.Signals(signum).name
                            self.note(f"{self.interrupted}: stopping and writing what was collected")
                            nursery.cancel_scope.cancel()
                            return

                    nursery.start_soon(watch)
                    try:
                        await self._run_inside(nursery, started)
                    finally:
                        nursery.cancel_scope.cancel()
        except Exception as exc:  # recorded, and the results are still written
            leaves = _leaves(exc)
            self.error = "; ".join(f"{type(e).__name__}: {e}" for e in leaves)
            self.note(f"run failed: {self.error}")
            self.traceback = "".join(traceback.format_exception(leaves[0]))
            self.messages.append(self.traceback)
        finally:
            if self.t0 is not None and self.t_end is None:
                self.t_end = time.monotonic()
            self.phase = "stopping"
            self._update()
            processes = [s.process for s in self.nodes if s.process is not None]
            stop_processes(processes)
            for s in self.nodes:
                s.up = False
            self.links.close()
            self.phase = "done"

    async def _run_inside(self, nursery: trio.Nursery, started: float) -> None:
        s = self.scenario
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._assign_roles()
        await self.links.setup(nursery, s.nodes.count)
        root = self.out_dir / "testnet"
        _fresh(root)
        self.code_root = snapshot_code(root / "code")
        self.layout = create_testnet(
            root, nodes=s.nodes.count, base_port=0, api_port=0,
            reannounce_seconds=s.nodes.reannounce_seconds,
            bundle_lifetime_seconds=s.nodes.bundle_lifetime_seconds,
            node_overrides=self._override, code_root=self.code_root,
        )
        nursery.start_soon(self._progress_loop)
        self.phase = "starting node 0"
        await self._start_node(self.nodes[0])
        self.phase = f"starting {s.nodes.count - 1} more nodes"
        async with trio.open_nursery() as starters:
            for state in self.nodes[1:]:
                starters.start_soon(self._start_node, state)
        self.phase = "waiting for registries"
        settle_started = time.monotonic()
        async with httpx.AsyncClient(timeout=5.0) as client:
            complete = await self._wait_registries(client)
            self.settle_s = time.monotonic() - settle_started
            if not complete:
                self.note(f"registries still incomplete after {SETTLE_TIMEOUT:.0f} s; starting anyway")
            self.setup_s = time.monotonic() - started
            for state in self.nodes:
                state.ready = state.up
            self.t0 = time.monotonic()
            self.phase = "running"
            async with trio.open_nursery() as inner:
                inner.start_soon(self._sampler, client)
                inner.start_soon(self._schedule, inner)
                await self._workload(client)
                self.t_end = time.monotonic()
                inner.cancel_scope.cancel()
            await self._sample_once(client)

    # ----------------------------------------------------------------------------- settling

    async def _wait_registries(self, client: httpx.AsyncClient) -> bool:
        """Until every honest registry holds every node with valid evidence, and every entry node
        sees every provider of the workload's models (models load after start-up)."""
        wanted = {s.info["peer_id"] for s in self.nodes if s.behaviour not in EVIDENCE_FAULTS}
        providers = sum(1 for s in self.nodes if s.role != "client" and s.behaviour not in EVIDENCE_FAULTS)
        with trio.move_on_after(SETTLE_TIMEOUT):
            while True:
                views = await self._registries(client)
                honest = [views.get(s.index) for s in self.nodes if s.role != "adversary"]
                if all(view is not None and wanted <= view for view in honest):
                    models = await self._providers(client)
                    needed = self._workload_models()
                    if all(all(m.get(name, 0) >= providers for name in needed) for m in models.values()):
                        return True
                await trio.sleep(0.5)
        return False

    def _workload_models(self) -> list[str]:
        w = self.scenario.workload
        shares = ((EMBEDDINGS_MODEL, 1 - w.chat_fraction), (CHAT_MODEL, w.chat_fraction))
        return [name for name, share in shares if share > 0]

    async def _providers(
        self, client: httpx.AsyncClient, only: NodeState | None = None
    ) -> dict[int, dict[str, int]]:
        """Entry node → model name → attested providers (from ``GET /v1/models``)."""
        out: dict[int, dict[str, int]] = {}
        for state in self.nodes if only is None else [only]:
            if state.role == "adversary" or not state.up:
                continue
            try:
                data = (await client.get(f"{state.api_url}/v1/models")).json()["data"]
                out[state.index] = {m["id"]: int(m["veilnet"]["attested_providers"]) for m in data}
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                out[state.index] = {}
        return out

    async def _registries(self, client: httpx.AsyncClient) -> dict[int, set[str]]:
        views: dict[int, set[str]] = {}

        async def one(state: NodeState) -> None:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                response = await client.get(f"{state.api_url}/veilnet/v1/peers")
                views[state.index] = {p["peer_id"] for p in response.json()["peers"]}

        async with trio.open_nursery() as n:
            for state in self.nodes:
                if state.up:
                    n.start_soon(one, state)
        return views

    # ----------------------------------------------------------------------------- workload

    def _entry(self, seq: int) -> NodeState | None:
        candidates = [s for s in self.nodes if s.role == "client" and s.ready]
        if not candidates:
            candidates = [s for s in self.nodes if s.role == "honest" and s.ready]
        return candidates[seq % len(candidates)] if candidates else None

    async def _one_job(self, client: httpx.AsyncClient, job_rng: random.Random, pool: list[str]) -> None:
        seq = self._seq
        self._seq += 1
        spec = next_job(job_rng, pool, self.scenario.workload)
        entry = self._entry(seq)
        started_s = self.now()
        if entry is None:
            record = JobRecord(seq, spec.kind, -1, started_s, 0.0, "no_entry_node", None,
                               "no honest node is up to take the job", None)
            await trio.sleep(0.5)
        else:
            record = await send_job(
                client, entry.api_url, spec, self.scenario.workload, seq=seq, entry_node=entry.index,
                started_s=started_s, clock=time.monotonic, peer_index=self.peer_index(),
                wrong_sources=self.wrong_sources(), answers=self._answers,
            )
        self.jobs.append(record)
        if record.status != "ok":
            await trio.sleep(FAILURE_BACKOFF_S)
        for offender in record.offenders:
            self.detections.append({
                "t": round(self.now(), 3), "node": offender.get("node"), "peer_id": offender.get("peer_id"),
                "offence": offender.get("offence"), "banned_until": offender.get("banned_until"),
                "reporter": record.entry_node, "job_seq": seq,
            })

    async def _workload(self, client: httpx.AsyncClient) -> None:
        w = self.scenario.workload
        job_rng = random.Random(self.rng.getrandbits(64))
        pool = make_pool(random.Random(self.scenario.seed ^ 0x5EED))
        assert self.t0 is not None
        end = self.t0 + w.duration_s
        if w.concurrency is not None:

            async def worker() -> None:
                while time.monotonic() < end:
                    await self._one_job(client, job_rng, pool)

            async with trio.open_nursery() as n:
                for _ in range(w.concurrency):
                    n.start_soon(worker)
            return
        assert w.rate_per_s is not None
        outstanding = {"n": 0}

        async def tracked() -> None:
            outstanding["n"] += 1
            try:
                await self._one_job(client, job_rng, pool)
            finally:
                outstanding["n"] -= 1

        async with trio.open_nursery() as n:
            next_at = time.monotonic()
            while True:
                next_at += job_rng.expovariate(w.rate_per_s)
                if next_at >= end:
                    break
                await trio.sleep(max(0.0, next_at - time.monotonic()))
                if outstanding["n"] >= MAX_OUTSTANDING:
                    self.shed += 1
                    continue
                n.start_soon(tracked)

    # ----------------------------------------------------------------------------- faults

    def _plan(self) -> list[tuple[float, str, tuple[int, ...]]]:
        s = self.scenario
        plan: list[tuple[float, str, tuple[int, ...]]] = [(e.at_s, e.action.value, e.nodes) for e in s.events]
        if s.churn is not None:
            churners = [st.index for st in self.nodes if st.churn]
            t, turn = s.churn.start_s, 0
            while t < s.workload.duration_s and churners:
                index = churners[turn % len(churners)]
                plan.append((t, Action.CRASH.value, (index,)))
                if t + s.churn.down_s < s.workload.duration_s:
                    plan.append((t + s.churn.down_s, Action.RESTART.value, (index,)))
                t += s.churn.interval_s
                turn += 1
        for p_index, p in enumerate(s.network.partitions):
            plan.append((p.at_s, "partition", (p_index,)))
            if p.heal_s < s.workload.duration_s:
                plan.append((p.heal_s, "heal", (p_index,)))
        for peer, spec in enumerate(s.hostile_peers()):
            plan.append((spec.at_s, "attack", (peer,)))
        for adversary_state in self.nodes:
            if adversary_state.behaviour is Behaviour.IDENTITY_CHURN:
                interval = next(
                    a.interval_s for a in s.adversaries if a.behaviour is Behaviour.IDENTITY_CHURN
                )
                t = interval
                while t < s.workload.duration_s:
                    plan.append((t, "identity-churn", (adversary_state.index,)))
                    t += interval
        return sorted(plan, key=lambda item: item[0])

    async def _schedule(self, nursery: trio.Nursery) -> None:
        assert self.t0 is not None
        for at, kind, targets in self._plan():
            await trio.sleep(max(0.0, self.t0 + at - time.monotonic()))
            nursery.start_soon(self._apply, kind, targets)

    async def _apply(self, kind: str, targets: tuple[int, ...]) -> None:
        now = self.now()
        if kind == "attack":
            await self._hostile_peer(targets[0], self.scenario.hostile_peers()[targets[0]])
            return
        if kind in ("partition", "heal"):
            partition = self.scenario.network.partitions[targets[0]]
            if kind == "partition":
                await self.links.partition(partition.groups)
                self.faults.append(FaultRecord(now, kind, tuple(i for g in partition.groups for i in g),
                                               " | ".join(",".join(map(str, g)) for g in partition.groups)))
            else:
                await self.links.heal()
                self.faults.append(FaultRecord(now, kind, ()))
            self.note(f"{kind} applied")
            return
        for index in targets:
            state = self.nodes[index]
            if kind in (Action.CRASH.value, Action.STOP.value):
                if not state.up:
                    continue
                self.faults.append(FaultRecord(now, kind, (index,)))
                self._signal(state, signal.SIGKILL if kind == Action.CRASH.value else signal.SIGTERM)
                await self._wait_exit(state)
                self.note(f"node {index}: {kind}")
            elif kind == Action.RESTART.value:
                if state.up or (state.process is not None and state.process.alive()):
                    continue
                self.faults.append(FaultRecord(now, kind, (index,)))
                await self._restart(state)
            elif kind == "identity-churn":
                self.faults.append(FaultRecord(now, kind, (index,)))
                self._signal(state, signal.SIGTERM)
                await self._wait_exit(state)
                await self._restart(state, fresh_identity=True)

    async def _hostile_peer(self, peer: int, spec: Attacks) -> None:
        """One hostile peer (``veilnet adversary run``, its own process, holding only the PSK):
        its attacks in turn against its targets, again until the workload ends if ``repeat``."""
        assert self.layout is not None and self.code_root is not None and self.t0 is not None
        end = self.t0 + self.scenario.workload.duration_s
        turn = 0
        while True:
            for name in spec.attacks:
                remaining = end - time.monotonic()
                if remaining < 1.0:
                    return
                targets = [self.nodes[i] for i in spec.targets if self.nodes[i].up] if spec.targets else [
                    s for s in self.nodes if s.role != "adversary" and s.up]
                if not targets:
                    await trio.sleep(1.0)
                    continue
                target = targets[(peer + turn) % len(targets)]
                turn += 1
                duration = min(spec.duration_s, remaining)
                started = self.now()
                self.faults.append(FaultRecord(started, "attack", (target.index,), f"peer {peer}: {name}"))
                command = [
                    sys.executable, "-c", "from node.cli.main import main; main()", "adversary", "run",
                    "--target", self.links.bootstrap_addr(target.index, target.info), "--attack", name,
                    "--testnet-config", str(self.layout.testnet_path), "--duration", f"{duration:.1f}",
                    "--scale", str(spec.scale),
                ]
                env = dict(os.environ, PYTHONPATH=str(self.code_root))
                result = await trio.run_process(
                    command, capture_stdout=True, capture_stderr=True, check=False, env=env,
                    cwd=str(self.out_dir),
                )
                outcome: dict[str, Any] = {}
                for line in result.stdout.decode(errors="replace").splitlines():
                    with contextlib.suppress(ValueError):
                        outcome = json.loads(line)
                if result.returncode != 0 and not outcome:
                    outcome = {"attack": name, "failure": result.stderr.decode(errors="replace")[-300:]}
                self.attacks.append({"t": round(started, 3), "peer": peer, "target": target.index,
                                     "attack": name, "exit_code": result.returncode, "outcome": outcome})
            if not spec.repeat:
                return

    async def _restart(self, state: NodeState, *, fresh_identity: bool = False) -> None:
        try:
            await self._start_node(state, fresh_identity=fresh_identity)
            self.note(f"node {state.index}: back as {state.info['peer_id'][-8:]}")
        except Exception as exc:
            self.note(f"node {state.index}: restart failed: {exc}")
            return
        state.ready = await self._wait_ready(state)

    async def _wait_ready(self, state: NodeState) -> bool:
        """A restarted node takes jobs once it sees ``replicas`` providers of every workload model
        (a client would not send jobs to a node that cannot place them yet). Bounded."""
        needed = min(self.scenario.workload.replicas, self.scenario.nodes.count)
        async with httpx.AsyncClient(timeout=5.0) as client:
            with trio.move_on_after(READY_TIMEOUT):
                while state.up:
                    models = (await self._providers(client, only=state)).get(state.index, {})
                    if all(models.get(name, 0) >= needed for name in self._workload_models()):
                        return True
                    await trio.sleep(0.5)
        if state.up:
            self.note(f"node {state.index}: not ready within {READY_TIMEOUT:.0f} s; taking jobs anyway")
        return state.up

    # ----------------------------------------------------------------------------- sampling

    async def _sampler(self, client: httpx.AsyncClient) -> None:
        while True:
            await self._sample_once(client)
            await trio.sleep(SAMPLE_EVERY)

    async def _sample_once(self, client: httpx.AsyncClient) -> None:
        t = round(self.now(), 3)
        sizes: dict[str, int | None] = {}
        members: dict[str, list[int]] = {}
        index = self.peer_index()

        async def one(state: NodeState) -> None:
            key = str(state.index)
            sizes[key] = None
            if state.up and state.process is not None and not state.process.alive():
                code = state.process.process.returncode
                state.up = state.ready = False
                self.faults.append(FaultRecord(self.now(), "exit", (state.index,), f"exit code {code}"))
                self.note(f"node {state.index} exited unexpectedly (code {code})")
            if not state.up:
                return
            try:
                peers = (await client.get(f"{state.api_url}/veilnet/v1/peers")).json()["peers"]
                text = (await client.get(f"{state.api_url}/metrics")).text
            except (httpx.HTTPError, ValueError, KeyError):
                return
            sizes[key] = len(peers)
            members[key] = sorted(index.get(p["peer_id"], -1) for p in peers)
            self.metrics.append({"t": t, "node": state.index, "values": _veilnet_metrics(text)})
            usage = self._usage(state)
            if usage is not None:
                self.resources.append({"t": t, "node": state.index, **usage})

        async with trio.open_nursery() as n:
            for state in self.nodes:
                n.start_soon(one, state)
        self.registry.append({"t": t, "sizes": sizes, "members": members})

    def _usage(self, state: NodeState) -> dict[str, float] | None:
        """CPU % since the last sample and RSS, from /proc (Linux); None elsewhere."""
        if state.process is None:
            return None
        pid = state.process.process.pid
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/status", encoding="ascii") as handle:
                rss_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
        except (OSError, StopIteration, IndexError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        cpu_s = (int(fields[11]) + int(fields[12])) / ticks
        wall = time.monotonic()
        previous = self._cpu.get(pid)
        self._cpu[pid] = (wall, cpu_s)
        percent = 0.0
        if previous is not None and wall > previous[0]:
            percent = 100.0 * (cpu_s - previous[1]) / (wall - previous[0])
        return {"cpu_percent": round(percent, 1), "rss_bytes": rss_kb * 1024}

    # ----------------------------------------------------------------------------- progress

    def _update(self) -> None:
        if self.on_update is not None:
            self.on_update(self)

    async def _progress_loop(self) -> None:
        while True:
            self._update()
            await trio.sleep(0.5)

    # ----------------------------------------------------------------------------- views

    def latencies(self, ok_only: bool = True) -> list[float]:
        return [j.latency_ms for j in self.jobs if (j.status == "ok" or not ok_only)]

    def offenders(self) -> dict[int, set[str]]:
        """Node index → offences it was penalised for (as seen in job reports)."""
        out: dict[int, set[str]] = {}
        for d in self.detections:
            if d["node"] is not None:
                out.setdefault(int(d["node"]), set()).add(str(d["offence"]))
        return out


def _fresh(root: Path) -> None:
    """Start from an empty testnet dir: a previous run's identities and reputation files (bans!)
    would otherwise leak into this one. Only a dir an earlier run made (it has testnet.toml) is
    removed; anything else in the way is an error."""
    if not root.exists():
        return
    if not (root / "testnet.toml").exists() and any(root.iterdir()):
        raise RuntimeError(f"{root} exists and is not a simulation testnet; choose another --out")
    shutil.rmtree(root)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, so the message names the real failure."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _veilnet_metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("veilnet_"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                number = float(value)
                if math.isfinite(number):
                    values[name] = number
    return values
