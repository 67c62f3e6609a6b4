"""Issue 16 §1: a real instruct model answers a factual question through a Veilnet cluster, as the
official ``openai`` client sees it, streamed and not, with its tokens verified by two other nodes.

Three real node processes serve SmolLM2-135M-Instruct from the session's converted directory (one
conversion per test session, shared with tests/node/runtime/test_smollm2.py).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from node.config import NodeConfig
from node.runtime.smollm2 import SMOLLM2_MODEL_ID, SMOLLM2_NAME
from tests.node.cluster import Cluster

pytestmark = [pytest.mark.network, pytest.mark.timeout(600)]

QUESTION = [{"role": "user", "content": "What is the capital of France? One sentence."}]
VERIFIED_BY_THREE = {"veilnet": {"replicas": 3}}


class _SmolCluster(Cluster):
    def __init__(self, root: Path, model_dir: Path) -> None:
        super().__init__(root, 3, reannounce_seconds=4)
        self.model_dir = model_dir

    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        config = super()._overrides(index, config)
        # Generous timeouts: three node processes share two cores with other tests.
        extra = {"commit_timeout_s": 30, "reveal_timeout_s": 10, "deadline_s": 120, "stream_stall_s": 30}
        return replace(config, models=(str(self.model_dir),), extra=extra)


@pytest.fixture(scope="module")
def client(smollm2_dir: Path) -> Iterator[openai.OpenAI]:
    root = Path(tempfile.mkdtemp(prefix="veilnet-smollm2-"))
    cluster = _SmolCluster(root, smollm2_dir)
    try:
        cluster.start()
        url = cluster.nodes[0].api_url

        def served_by_three() -> bool:
            data = httpx.get(f"{url}/v1/models", timeout=5).json()["data"]
            providers = {m["id"]: m["veilnet"]["attested_providers"] for m in data}
            return providers.get(SMOLLM2_NAME, 0) >= 3  # node 0 counts itself

        cluster.wait_until(served_by_three, f"{SMOLLM2_NAME} served by three executors", 240)
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=180, max_retries=0)
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


def _assert_verified_by_three(report: dict[str, Any]) -> None:
    assert report["status"] == "ok", report
    assert report["agreement"]["comparator"] == "chat-teacher-forced"
    assert report["agreement"]["agreeing"] == report["agreement"]["of"] == 3
    # A primary that was too slow on a loaded machine may have been replaced: count the agreeing ones.
    agreeing = sorted(e["role"] for e in report["executors"] if e.get("in_majority"))
    assert agreeing == ["primary", "verifier", "verifier"], report["executors"]


def test_the_model_is_listed_under_its_name_and_content_id(client: openai.OpenAI) -> None:
    listed = {m.id: m.model_extra for m in client.models.list().data}
    assert listed[SMOLLM2_NAME]["veilnet"]["model_id"] == SMOLLM2_MODEL_ID  # type: ignore[index]


def test_a_factual_question_gets_a_verified_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=SMOLLM2_NAME, messages=QUESTION, max_tokens=32, extra_body=VERIFIED_BY_THREE,  # type: ignore[arg-type]
    )
    answer = completion.choices[0].message.content or ""
    assert "Paris" in answer and completion.choices[0].finish_reason == "stop"
    assert completion.model_extra is not None
    _assert_verified_by_three(completion.model_extra["veilnet"])

    stream: Any = client.chat.completions.create(
        model=SMOLLM2_NAME, messages=QUESTION, max_tokens=32, stream=True,  # type: ignore[arg-type]
        extra_body=VERIFIED_BY_THREE,
    )
    chunks = [chunk for chunk in stream if chunk.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer  # greedy: the same text
    assert chunks[-1].choices[0].finish_reason == "stop"
    _assert_verified_by_three(chunks[-1].model_extra["veilnet"]["report"])
