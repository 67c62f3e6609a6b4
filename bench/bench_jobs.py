"""Confidential jobs through a node's API against the same inference in-process.

Topology (real node processes on 127.0.0.1): node 0 is a client-only node (it serves no model, so
every job crosses libp2p), nodes 1–3 serve all-MiniLM-L6-v2. Same model, same input text, measured
in the same run. The four nodes share this machine's cores as ``veilnet testnet up`` shares them
(``node.testnet.shared_cores_env``: torch threads = cores ÷ nodes), and every in-process baseline
runs with one node's thread count (``as_one_node``): the network a user runs, against the same
inference with the same compute. With every node's torch on every core instead, three executors
computing at once oversubscribe the cores (4 clients: 16 jobs/s against 48 for one client, p95
1 s; with the cores shared: 97 against 53, p95 64 ms).

Rows:
- k=1 job through the API, p50/p95 (one executor: seal → job stream → commit → reveal → open →
  vote of one → JSON answer) against ``runtime.embed([text])`` in this process. Goal: p50 overhead
  (API p50 − in-process p50) under 5 ms. A second overhead row (informational) sends the same
  job with the standard library's ``http.client``: the difference is httpx's own client-side
  cost, not the node's.
- k=3 consensus latency p50/p95 against k=1 (interleaved, same executors available). Goal ≤ 1.5×.
- throughput at saturation, jobs/s: 48 concurrent clients sending one-text k=1 jobs to a single
  executor (the others are stopped), against in-process batched inference (batches of 32) on the
  same cores. Goal: at least 0.8×. One-text jobs are the worst case (every job pays HTTP, routing,
  sealing and three libp2p messages in Python); a second row sends 16-text jobs and counts texts/s.
- 1, 4 and 32 concurrent clients of k=1 jobs on the three executors: jobs/s and p95 against one
  client (throughput must not fall as clients arrive; p95 at 4 clients within 2× of one client).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from bench import Result, quick
from node.config import NodeConfig
from node.testnet import (
    NodeProcess,
    create_testnet,
    shared_cores_env,
    snapshot_code,
    start_node_process,
    stop_processes,
    wait_for_info,
)

MODEL = "all-MiniLM-L6-v2"
TEXT = "Confidential inference on attested peers, measured end to end."
LATENCY_SAMPLES = int(quick(40, 30))  # ~60 ms each: quick mode keeps enough for a stable median
THROUGHPUT_WINDOW = quick(12.0, 4.0)
CONCURRENCY = 48
MULTI = 16  # texts per job in the second throughput row (a typical RAG chunk batch)
BATCH = 32
READY_TIMEOUT = 240.0
NODES = 4  # node 0 (client only) and three executors


@contextlib.contextmanager
def as_one_node(nodes: int = NODES) -> Iterator[int]:
    """This process's torch with the thread count each of ``nodes`` nodes gets (yields it)."""
    import torch

    from node.runtime import torch_env

    threads = torch.get_num_threads()
    share = int(shared_cores_env(nodes)["VEILNET_TORCH_THREADS"])
    torch_env.configure_torch(share)
    try:
        yield share
    finally:
        torch_env.configure_torch(threads)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class _Network:
    def __init__(self, root: Path, code_root: Path) -> None:
        self.root = root
        self.code_root = code_root
        self.nodes: list[NodeProcess] = []
        self.http = httpx.Client(timeout=120.0)
        self.lean: http.client.HTTPConnection | None = None
        self.env = shared_cores_env(NODES)  # the node processes' environment

    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        models = () if index == 0 else (MODEL,)
        extra = {"deadline_s": 60, "commit_timeout_s": 30}
        return replace(config, log_level="WARNING", models=models, extra=extra)

    def start(self, executors: int) -> None:
        layout = create_testnet(self.root, nodes=1 + executors, api_port=0, code_root=self.code_root,
                                node_overrides=self._overrides)
        first = start_node_process(0, layout.node_configs[0], env=self.env, code_root=self.code_root)
        self.nodes.append(first)
        wait_for_info(first)
        for index, path in enumerate(layout.node_configs[1:], start=1):
            self.nodes.append(start_node_process(index, path, ("--bootstrap", first.multiaddr),
                                                 env=self.env, code_root=self.code_root))
        for node in self.nodes[1:]:
            wait_for_info(node)
        started = time.monotonic()
        while time.monotonic() - started < READY_TIMEOUT:
            if self.providers() >= executors:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{executors} executors did not announce {MODEL} in time")

    def providers(self) -> int:
        try:
            data = self.http.get(f"{self.nodes[0].api_url}/v1/models").json()["data"]
        except (httpx.HTTPError, KeyError, ValueError):
            return 0
        return sum(entry["veilnet"]["attested_providers"] for entry in data if entry["id"] == MODEL)

    def embed(self, replicas: int) -> dict[str, Any]:
        response = self.http.post(f"{self.nodes[0].api_url}/v1/embeddings", json=_body(replicas))
        response.raise_for_status()
        return dict(response.json())

    def timed(self, replicas: int) -> float:
        started = time.perf_counter()
        answer = self.embed(replicas)
        elapsed = time.perf_counter() - started
        assert answer["veilnet"]["status"] == "ok"
        return elapsed

    def timed_stdlib(self, replicas: int) -> float:
        """``timed`` through the standard library's ``http.client``: httpx's own client-side
        cost (~0.4 ms a request here) is then left out of the figure."""
        if self.lean is None:
            url = urlsplit(self.nodes[0].api_url)
            self.lean = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=120)
        started = time.perf_counter()
        self.lean.request("POST", "/v1/embeddings", json.dumps(_body(replicas)).encode(),
                          {"content-type": "application/json"})
        response = self.lean.getresponse()
        answer = json.loads(response.read())
        elapsed = time.perf_counter() - started
        assert response.status == 200 and answer["veilnet"]["status"] == "ok", answer
        return elapsed

    def close(self) -> None:
        stop_processes(self.nodes)
        self.http.close()
        if self.lean is not None:
            self.lean.close()


def _body(replicas: int, texts_per_job: int = 1) -> dict[str, Any]:
    """The embeddings request every row sends."""
    return {"model": MODEL, "input": [TEXT] * texts_per_job, "veilnet": {"replicas": replicas}}


def _load() -> Any:
    from node.runtime import load_runtime

    runtime = load_runtime(MODEL)
    for _ in range(3):
        runtime.embed([TEXT])  # type: ignore[attr-defined]
    return runtime


def _embed_once(runtime: Any) -> float:
    started = time.perf_counter()
    runtime.embed([TEXT])
    return time.perf_counter() - started


def _batched_rate(runtime: Any, window: float) -> float:
    """Texts per second of in-process batched inference (batches of BATCH) over ``window`` s."""
    batch = [TEXT] * BATCH
    runtime.embed(batch)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < window:
        runtime.embed(batch)
        count += BATCH
    return count / (time.perf_counter() - started)


async def _saturate(url: str, texts_per_job: int = 1, concurrency: int = CONCURRENCY) -> float:
    """Jobs per second with ``concurrency`` clients sending k=1 jobs back to back."""
    rate, _ = await _clients(url, texts_per_job, concurrency)
    return rate


async def _clients(url: str, texts_per_job: int, concurrency: int) -> tuple[float, list[float]]:
    """(jobs per second, each job's latency in s) with ``concurrency`` clients sending k=1 jobs.

    Each client is its own ``httpx.AsyncClient`` with its own connection, as separate users are.
    One client shared by all of them (a pool of ``concurrency`` connections) is a different
    workload: httpcore rescans its whole pool on every request state change, and at 48
    connections that scan was ~40 % of this process's CPU, which shares the cores with the nodes.
    """
    body = _body(1, texts_per_job)
    done = 0
    failed = 0
    latencies: list[float] = []
    deadline = math.inf  # set once the path is warm: warm-up must not eat the window

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, failed
        while trio.current_time() < deadline:
            sent = trio.current_time()
            response = await client.post(f"{url}/v1/embeddings", json=body)
            if response.status_code == 200:
                done += 1
                latencies.append(trio.current_time() - sent)
            else:
                failed += 1

    async with contextlib.AsyncExitStack() as stack:
        one_connection = httpx.Limits(max_connections=1)
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=120.0, limits=one_connection))
            for _ in range(concurrency)
        ]

        async def warm(client: httpx.AsyncClient) -> None:
            await client.post(f"{url}/v1/embeddings", json=body)

        async with trio.open_nursery() as nursery:  # warm the path (connections, job streams)
            for client in clients:
                nursery.start_soon(warm, client)
        started = trio.current_time()
        deadline = started + THROUGHPUT_WINDOW
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(worker, client)
        elapsed = trio.current_time() - started
    if failed > done:
        raise RuntimeError(f"{failed} of {done + failed} jobs failed at saturation")
    return done / elapsed, latencies


def _client_rows(url: str) -> list[Result]:
    """Throughput and p95 with 1, 4 and 32 concurrent clients on the 3-executor network: adding
    clients must not lower throughput, and p95 at 4 clients should stay within 2× of 1 client."""
    rows: list[Result] = []
    one_rate, one_latencies = trio.run(_clients, url, 1, 1)
    one_p95 = _percentile(one_latencies, 0.95) if one_latencies else float("nan")
    rows.append(Result("clients 1, k=1 jobs, 3 executors", one_rate, "jobs/s", goal="informational"))
    for clients in (4, 32):
        rate, latencies = trio.run(_clients, url, 1, clients)
        rows.append(Result(f"clients {clients}, k=1 jobs, 3 executors", rate, "jobs/s", one_rate,
                           "1 client, jobs/s", rate / one_rate if one_rate else float("nan"),
                           "≥ 1× (no fall as clients are added)"))
        p95 = _percentile(latencies, 0.95) if latencies else float("nan")
        rows.append(Result(f"clients {clients}, k=1 jobs, 3 executors, p95", p95 * 1000.0, "ms",
                           one_p95 * 1000.0, "1 client, p95", p95 / one_p95,
                           "≤ 2× at 4 clients" if clients == 4 else "informational"))
    return rows


def run() -> list[Result]:
    """Baselines are measured interleaved with the network figures, so both see the same load."""
    runtime = _load()  # loading sets torch's threads; the baseline's count is set after it
    with as_one_node():
        return _measure(runtime)


def _measure(runtime: Any) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="veilnet-bench-jobs-") as tmp:
        root = Path(tmp)
        network = _Network(root / "testnet", snapshot_code(root / "code"))
        try:
            network.start(executors=3)
            for _ in range(5):
                network.timed(1)
                network.timed(3)
            k1, k3, single, lean = [], [], [], []
            for _ in range(LATENCY_SAMPLES):
                k1.append(network.timed(1))
                single.append(_embed_once(runtime))
                k3.append(network.timed(3))
                lean.append(network.timed_stdlib(1))
            client_rows = _client_rows(network.nodes[0].api_url)
            # saturation against one executor: stop the other two so every job lands on node 1
            stop_processes(network.nodes[2:])
            network.nodes = network.nodes[:2]
            started = time.monotonic()
            while network.providers() > 1 and time.monotonic() - started < 30:
                time.sleep(0.5)
            before = _batched_rate(runtime, THROUGHPUT_WINDOW / 2)
            rate = trio.run(_saturate, network.nodes[0].api_url)
            middle = _batched_rate(runtime, THROUGHPUT_WINDOW / 2)
            multi_rate = trio.run(_saturate, network.nodes[0].api_url, MULTI, CONCURRENCY // 4)
            after = _batched_rate(runtime, THROUGHPUT_WINDOW / 2)
        finally:
            network.close()
    batched_rate = statistics.median([before, middle, after])
    in_process_p50 = statistics.median(single)
    k1_p50, k3_p50 = statistics.median(k1), statistics.median(k3)
    ms = 1000.0
    return [
        Result("job k=1 via API, p50", k1_p50 * ms, "ms", in_process_p50 * ms, "in-process embed, p50",
               k1_p50 / in_process_p50, "p50 overhead < 5 ms"),
        Result("job k=1 via API, p95", _percentile(k1, 0.95) * ms, "ms", _percentile(single, 0.95) * ms,
               "in-process embed, p95", _percentile(k1, 0.95) / _percentile(single, 0.95)),
        Result("job k=1 overhead (API p50 − in-process p50)", (k1_p50 - in_process_p50) * ms, "ms",
               goal="< 5 ms"),
        Result("job k=1 overhead, client http.client (API p50 − in-process p50)",
               (statistics.median(lean) - in_process_p50) * ms, "ms",
               goal="informational: the row above less httpx's client-side cost"),
        Result("job k=3 consensus via API, p50", k3_p50 * ms, "ms", k1_p50 * ms, "k=1 via API, p50",
               k3_p50 / k1_p50, "≤ 1.5×"),
        Result("job k=3 consensus via API, p95", _percentile(k3, 0.95) * ms, "ms", _percentile(k1, 0.95) * ms,
               "k=1 via API, p95", _percentile(k3, 0.95) / _percentile(k1, 0.95), "≤ 1.5×"),
        Result("throughput at saturation, k=1, 1 executor, 1-text jobs", rate, "jobs/s", batched_rate,
               f"in-process batched ({BATCH}) texts/s", rate / batched_rate, "≥ 0.8×"),
        Result(f"throughput at saturation, k=1, 1 executor, {MULTI}-text jobs", multi_rate * MULTI,
               "texts/s", batched_rate, f"in-process batched ({BATCH}) texts/s",
               multi_rate * MULTI / batched_rate, "≥ 0.8×"),
        *client_rows,
    ]
