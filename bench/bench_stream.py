"""Live chat streaming through a node's API against the same generation in-process (issue 13).

Topology (real node processes on 127.0.0.1): node 0 is a client-only node (no model, so every
token crosses libp2p), nodes 1–3 serve the chat model; k = 3 (one primary, two verifiers
re-scoring the growing prefix). Same prompt, same model, measured interleaved in the same run.
Twice: with the tiny random model (~1,400 tokens/s on one core, so every per-token cost of the
network shows) and with the embedded SmolLM2-135M-Instruct (a real model's pace).

Rows:
- time to first token via the API (request sent → first content delta over SSE), p50, against
  in-process ``generate`` (call → first ``on_token``). Goal: ≤ in-process + 10 ms.
- tokens/s via the API (completion tokens / time from request to the last delta) against
  in-process (tokens / generate time). Goal ≥ 0.8×.
- the primary's generation time (its report's ``compute``) against the same generation
  in-process, and the content events (SSE deltas) per stream: what the primary's per-write cost
  and its pacing (``node.jobs.live_sender``) do to the model.
- verification lag: generated − verified tokens on each delta, p50 and p95; and in ms, per
  token, from its arrival at the client to the event that reported it verified.

The four nodes share this machine's cores as ``veilnet testnet`` shares them
(``node.testnet.shared_cores_env``: torch threads = cores ÷ nodes), and the in-process baseline
runs with the same thread count. With every node's torch on every core, four processes computing
at once measured oversubscription: on a loaded 2-core machine the primary's 48 tokens took
0.85 s with 2 threads per node against 0.12 s with 1, and 0.84 s of CPU per stream against 0.13 s.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from bench import Result, quick
from bench.bench_jobs import NODES, _Network, _percentile, as_one_node
from node.config import NodeConfig
from node.runtime.smollm2 import SMOLLM2_NAME
from node.testnet import snapshot_code

TINY = "veilnet-tiny-random-lm"
MESSAGES = [{"role": "user", "content": "Tell me about enclaves."}]
MAX_TOKENS = 48
SAMPLES = {TINY: int(quick(20, 5)), SMOLLM2_NAME: int(quick(8, 3))}
LABELS = {TINY: "chat live k=3", SMOLLM2_NAME: "SmolLM2 chat live k=3"}


class _ChatNetwork(_Network):
    def __init__(self, root: Path, code_root: Path, model: str) -> None:
        super().__init__(root, code_root)
        self.model = model

    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        models = () if index == 0 else (self.model,)
        extra = {"deadline_s": 60, "commit_timeout_s": 30}
        return replace(config, log_level="WARNING", models=models, extra=extra)

    def providers(self) -> int:
        try:
            data = self.http.get(f"{self.nodes[0].api_url}/v1/models").json()["data"]
        except (httpx.HTTPError, KeyError, ValueError):
            return 0
        return sum(entry["veilnet"]["attested_providers"] for entry in data if entry["id"] == self.model)

    def stream(self) -> _Stream:
        """One live k=3 stream through node 0's API, as the client saw it."""
        body = {"model": self.model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True,
                "veilnet": {"replicas": 3}}
        first = last = None
        lags: list[int] = []
        arrived: list[float] = []  # when token i reached the client
        verified: list[float] = []  # when the client learnt that token i was verified
        tokens = 0
        primary_ms = math.nan
        started = time.perf_counter()
        with self.http.stream("POST", f"{self.nodes[0].api_url}/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[len("data: "):])
                if "error" in event:
                    raise RuntimeError(f"stream failed: {event['error']}")
                progress = event.get("veilnet", {})
                now = time.perf_counter()
                arrived += [now] * (progress.get("generated_tokens", 0) - len(arrived))
                verified += [now] * (progress.get("verified_tokens", 0) - len(verified))
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    first = now if first is None else first
                    last = now
                    lags.append(progress["generated_tokens"] - progress["verified_tokens"])
                if event["choices"] and event["choices"][0]["finish_reason"]:
                    tokens = progress["generated_tokens"]
                    executors = progress["report"]["executors"]
                    primary_ms = next(float(e["timings_ms"]["compute"]) for e in executors
                                      if e["role"] == "primary" and e["state"] == "revealed")
        assert first is not None and last is not None and tokens
        lag_ms = [(v - a) * 1000.0 for a, v in zip(arrived, verified, strict=False)]
        return _Stream(first - started, last - started, tokens, lags, lag_ms, primary_ms)


@dataclass(frozen=True)
class _Stream:
    first_s: float  # request sent → first content delta
    last_s: float  # request sent → last content delta
    tokens: int
    lags: list[int]  # generated − verified tokens at each content delta (one per SSE event)
    lag_ms: list[float]  # per token: from its arrival to the event that reported it verified
    primary_ms: float  # the primary's generation, from its start to its last write (the report)


def _in_process(runtime: Any) -> tuple[float, float, int]:
    """(seconds to the first token, seconds for the whole generation, tokens) in this process."""
    marks: list[float] = []
    started = time.perf_counter()
    generation = runtime.generate(
        MESSAGES, MAX_TOKENS, on_token=lambda _t, _s: marks.append(time.perf_counter())
    )
    return marks[0] - started, time.perf_counter() - started, len(generation.tokens)


def run() -> list[Result]:
    from node.runtime import load_runtime

    rows: list[Result] = []
    for model in (TINY, SMOLLM2_NAME):
        runtime = load_runtime(model)
        with as_one_node():
            rows += _measure(runtime, model)
        del runtime
    return rows


def _measure(runtime: Any, model: str) -> list[Result]:
    for _ in range(3 if model == TINY else 1):
        _in_process(runtime)
    with tempfile.TemporaryDirectory(prefix="veilnet-bench-stream-") as tmp:
        root = Path(tmp)
        network = _ChatNetwork(root / "testnet", snapshot_code(root / "code"), model)
        try:
            network.start(executors=NODES - 1)
            for _ in range(3 if model == TINY else 1):
                network.stream()
            api_first, api_rate, local_first, local_rate, lags, lag_ms = [], [], [], [], [], []
            events, primary, local_total = [], [], []
            for _ in range(SAMPLES[model]):
                got = network.stream()
                api_first.append(got.first_s)
                api_rate.append(got.tokens / got.last_s)
                lags.extend(got.lags)
                lag_ms.extend(got.lag_ms)
                events.append(len(got.lags))
                primary.append(got.primary_ms)
                first, total, tokens = _in_process(runtime)
                local_first.append(first)
                local_rate.append(tokens / total)
                local_total.append(total * 1000.0)
        finally:
            network.close()
    ms = 1000.0
    ttft, ttft_local = statistics.median(api_first), statistics.median(local_first)
    rate, rate_local = statistics.median(api_rate), statistics.median(local_rate)
    label = LABELS[model]
    return [
        Result(f"{label}: time to first token via API, p50", ttft * ms, "ms", ttft_local * ms,
               "in-process first token, p50", ttft / ttft_local, "≤ in-process + 10 ms"),
        Result(f"{label}: TTFT overhead (API p50 − in-process p50)", (ttft - ttft_local) * ms, "ms",
               goal="≤ 10 ms"),
        Result(f"{label}: tokens/s via API, p50", rate, "tokens/s", rate_local,
               "in-process tokens/s, p50", rate / rate_local, "≥ 0.8×"),
        Result(f"{label}: primary's generation, p50", statistics.median(primary), "ms",
               statistics.median(local_total), "in-process generation, p50",
               statistics.median(primary) / statistics.median(local_total)),
        Result(f"{label}: content events per stream, p50", float(statistics.median(events)), "events",
               float(MAX_TOKENS), "tokens per stream (at most)"),
        Result(f"{label}: verification lag, p50", float(statistics.median(lags)), "tokens"),
        Result(f"{label}: verification lag, p95", float(_percentile([float(x) for x in lags], 0.95)),
               "tokens"),
        Result(f"{label}: verification lag, p50", statistics.median(lag_ms), "ms"),
        Result(f"{label}: verification lag, p95", _percentile(lag_ms, 0.95), "ms"),
    ]
