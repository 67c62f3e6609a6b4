"""The workload: confidential jobs sent to the nodes' OpenAI-compatible API, one record per job.

Jobs go through ``POST /v1/embeddings`` and ``POST /v1/chat/completions`` on an honest node's
local API, exactly as an application would send them, with the Veilnet options (replicas, mode,
deadline) in the request body. Every answer's verification report is kept whole.

Texts come from a small seeded pool, so the same text is embedded many times by different
executor sets: every accepted vector for a text must agree with the first one accepted for it
(``consistent``). That check does not trust the reports, which is what "no accepted answer is
wrong" needs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from simulations.scenario import CHAT_MODEL, EMBEDDINGS_MODEL, Workload

__all__ = ["AnswerBook", "JobRecord", "JobSpec", "make_pool", "next_job", "send_job"]

# Agreement between two accepted vectors for the same text. Honest executors differ by float
# noise (cosine > 0.99999, docs/CALIBRATION.md); the wrong-output fault lands near 0.999.
CONSISTENT_COSINE = 0.9999

_WORDS = [
    "network", "peer", "node", "model", "vector", "answer", "secure", "enclave", "attested", "evidence",
    "quorum", "vote", "result", "river", "mountain", "city", "market", "coffee", "winter", "summer",
    "train", "station", "library", "museum", "garden", "kitchen", "window", "quickly", "slowly",
    "carefully", "compute", "verify", "encrypt", "gossip", "route", "batch", "queue", "stream", "token",
]


def make_pool(rng: random.Random, size: int = 48) -> list[str]:
    """Short sentences of 4-12 words, reproducible from the seed."""
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) for _ in range(size)]


@dataclass(frozen=True)
class JobSpec:
    kind: str  # "embeddings" | "chat"
    texts: tuple[str, ...]


def next_job(rng: random.Random, pool: list[str], workload: Workload) -> JobSpec:
    if rng.random() < workload.chat_fraction:
        return JobSpec("chat", (rng.choice(pool),))
    return JobSpec("embeddings", tuple(rng.sample(pool, min(workload.texts_per_job, len(pool)))))


@dataclass
class JobRecord:
    seq: int
    kind: str
    entry_node: int
    started_s: float  # since the workload began
    latency_ms: float
    status: str  # "ok", a router error code (no_consensus, deadline, unavailable, ...), or a transport error
    http_status: int | None
    message: str
    job_id: str | None
    executors: list[dict[str, Any]] = field(default_factory=list)
    agreement: dict[str, Any] | None = None
    offenders: list[dict[str, Any]] = field(default_factory=list)
    consistent: bool | None = None
    wrong_accepted: bool = False
    report: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "kind": self.kind, "entry_node": self.entry_node,
            "started_s": round(self.started_s, 3), "latency_ms": round(self.latency_ms, 3),
            "status": self.status, "http_status": self.http_status, "message": self.message,
            "job_id": self.job_id, "executors": self.executors, "agreement": self.agreement,
            "offenders": self.offenders, "consistent": self.consistent,
            "wrong_accepted": self.wrong_accepted, "report": self.report,
        }


class AnswerBook:
    """The first accepted answer per text; later accepted answers must agree with it."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}
        self.completions: dict[str, str] = {}

    def check_vectors(self, texts: tuple[str, ...], vectors: list[list[float]]) -> bool:
        consistent = True
        for text, vector in zip(texts, vectors, strict=True):
            v = np.asarray(vector, dtype=np.float64)
            reference = self.vectors.setdefault(text, v)
            denominator = float(np.linalg.norm(reference) * np.linalg.norm(v))
            cosine = float(reference @ v) / denominator if denominator else 0.0
            if not math.isfinite(cosine) or cosine < CONSISTENT_COSINE:
                consistent = False
        return consistent

    def check_completion(self, prompt: str, completion: str) -> bool:
        return self.completions.setdefault(prompt, completion) == completion


def _executors(report: Mapping[str, Any], peer_index: Mapping[str, int]) -> list[dict[str, Any]]:
    rows = []
    for entry in report.get("executors") or []:
        rows.append({
            "peer_id": entry.get("peer_id"),
            "node": peer_index.get(str(entry.get("peer_id"))),
            "role": entry.get("role"),
            "state": entry.get("state"),
            "failure": entry.get("failure"),
            "in_majority": bool(entry.get("in_majority")),
            "offence": entry.get("offence"),
        })
    return rows


async def _final_report(
    client: httpx.AsyncClient, api_url: str, report: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """The report once every executor was judged: an answer given at a majority of the quorum
    comes before its slower executors are (docs/protocol/jobs.md §4, rule 6)."""
    try:
        response = await client.get(f"{api_url}/veilnet/v1/jobs/{report.get('job_id')}", timeout=timeout)
        final = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        final = None
    return final if isinstance(final, dict) else report


async def send_job(
    client: httpx.AsyncClient, api_url: str, spec: JobSpec, workload: Workload, *, seq: int,
    entry_node: int, started_s: float, clock: Any, peer_index: Mapping[str, int],
    wrong_sources: frozenset[str], answers: AnswerBook,
) -> JobRecord:
    """Send one job and describe its outcome; never raises for a failed job.

    ``wrong_sources`` are the peer ids whose answers are wrong by construction (wrong-output and
    copy adversaries); an accepted answer they carried counts as a wrong answer accepted.
    """
    options = {"replicas": workload.replicas, "mode": workload.mode, "deadline_s": workload.deadline_s}
    if spec.kind == "chat":
        url = f"{api_url}/v1/chat/completions"
        body: dict[str, Any] = {
            "model": CHAT_MODEL, "messages": [{"role": "user", "content": spec.texts[0]}],
            "max_tokens": workload.max_tokens, "veilnet": options,
        }
    else:
        url = f"{api_url}/v1/embeddings"
        body = {"model": EMBEDDINGS_MODEL, "input": list(spec.texts), "veilnet": options}
    t0 = clock()
    record = JobRecord(seq, spec.kind, entry_node, started_s, 0.0, "", None, "", None)
    try:
        response = await client.post(url, json=body, timeout=workload.deadline_s + 15.0)
    except httpx.HTTPError as exc:
        record.latency_ms = (clock() - t0) * 1000
        record.status = "connection_error" if isinstance(exc, httpx.TransportError) else "http_error"
        record.message = f"{type(exc).__name__}: {exc}"
        return record
    record.latency_ms = (clock() - t0) * 1000
    record.http_status = response.status_code
    try:
        data = response.json()
    except ValueError:
        record.status, record.message = "bad_response", response.text[:200]
        return record
    report = data.get("veilnet") if isinstance(data, dict) else None
    if isinstance(report, dict) and report.get("settled") is False:
        report = await _final_report(client, api_url, report, workload.deadline_s + 15.0)
    if isinstance(report, dict):
        record.report = report
        record.job_id = report.get("job_id")
        record.executors = _executors(report, peer_index)
        record.agreement = report.get("agreement")
        record.offenders = [
            {**p, "node": peer_index.get(str(p.get("peer_id")))} for p in report.get("penalties") or []
        ]
    if response.status_code != 200:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        record.status = str(error.get("code") or f"http_{response.status_code}")
        record.message = str(error.get("message", ""))[:300]
        return record
    record.status = "ok"
    winners = {e["peer_id"] for e in record.executors if e["in_majority"]}
    source = (record.report or {}).get("result_from")
    if spec.kind == "chat":
        content = data["choices"][0]["message"]["content"]
        record.consistent = answers.check_completion(spec.texts[0], content)
    else:
        record.consistent = answers.check_vectors(spec.texts, [row["embedding"] for row in data["data"]])
    # Wrong if a wrong-answering adversary carried the vote, or the answer disagrees with earlier ones.
    record.wrong_accepted = bool(winners & wrong_sources) or source in wrong_sources or not record.consistent
    return record
