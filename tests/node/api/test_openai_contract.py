"""Issue 17 §2: the node answers like OpenAI, as the official ``openai`` client sees it.

One module-scoped cluster of three real node processes (each an executor of both models); node
0's API is the user's. Each case asserts the exception class and status the client raises, so a
client mistake is a 4xx the client does not retry, and the network's failure a 5xx.
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
from tests.node.cluster import Cluster

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

EMBED = "all-MiniLM-L6-v2"
CHAT = "veilnet-tiny-random-lm"
MODELS = (EMBED, CHAT)
HI = [{"role": "user", "content": "Say something about enclaves."}]


class _ModelCluster(Cluster):
    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        config = super()._overrides(index, config)
        # Generous timeouts: three node processes share two cores with other tests.
        extra = {"commit_timeout_s": 15, "reveal_timeout_s": 5, "deadline_s": 60}
        return replace(config, models=MODELS, extra=extra)


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="veilnet-openai-"))
    cluster = _ModelCluster(root, 3, reannounce_seconds=4)
    try:
        cluster.start()
        url = cluster.nodes[0].api_url

        def every_model_on_three() -> bool:
            data = httpx.get(f"{url}/v1/models", timeout=5).json()["data"]
            providers = {m["id"]: m["veilnet"]["attested_providers"] for m in data}
            return all(providers.get(model, 0) >= 3 for model in MODELS)  # node 0 counts itself

        cluster.wait_until(every_model_on_three, "both models served by three executors", 180)
        yield url
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def client(api: str) -> openai.OpenAI:
    # max_retries=0: a case that retried would hide behind the retry; the classes are what count.
    return openai.OpenAI(base_url=f"{api}/v1", api_key="unused", timeout=120, max_retries=0)


def _raises(kind: type[openai.APIStatusError], status: int, call: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(kind) as caught:
        call(**kwargs)
    assert caught.value.status_code == status, caught.value.body
    body = caught.value.body
    assert isinstance(body, dict)
    return body


def test_the_wrong_task_for_a_model_is_a_400_decided_before_dispatch(client: openai.OpenAI) -> None:
    body = _raises(openai.BadRequestError, 400, client.embeddings.create, model=CHAT, input="x")
    assert body["code"] == "wrong_model_task" and body["param"] == "model"
    body = _raises(openai.BadRequestError, 400, client.chat.completions.create, model=EMBED, messages=HI)
    assert body["code"] == "wrong_model_task" and "/v1/embeddings" in body["message"]


def test_a_prompt_over_the_context_window_is_a_400_with_the_executors_reason(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "enclave " * 3000}]
    body = _raises(openai.BadRequestError, 400, client.chat.completions.create, model=CHAT, messages=long,
                   max_tokens=4)
    assert body["param"] == "messages"
    assert "context" in body["message"], body["message"]


def test_replicas_above_the_attested_providers_say_so(client: openai.OpenAI) -> None:
    body = _raises(openai.BadRequestError, 400, client.embeddings.create, model=EMBED, input="x",
                   extra_body={"veilnet": {"replicas": 9}})
    assert body["param"] == "veilnet.replicas" and "only 3 attested executors" in body["message"]


def test_a_deadline_that_passes_is_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model=EMBED, input=["x"] * 64,
                                 extra_body={"veilnet": {"deadline_s": 0.001, "replicas": 3}})
    assert caught.value.status_code == 504, caught.value.body


def test_errors_before_a_stream_are_http_errors(client: openai.OpenAI) -> None:
    create = client.chat.completions.create
    _raises(openai.NotFoundError, 404, create, model="no-such-model", messages=HI, stream=True)
    _raises(openai.BadRequestError, 400, create, model=EMBED, messages=HI, stream=True)


def test_a_stream_carries_the_same_verified_text(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=CHAT, messages=HI, max_tokens=8)  # type: ignore[arg-type]
    stream: Any = client.chat.completions.create(
        model=CHAT, messages=HI, max_tokens=8, stream=True  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == plain.choices[0].message.content


def test_parameters_are_typed_as_openai_types_them(client: openai.OpenAI, api: str) -> None:
    create = client.chat.completions.create
    # refused with 400, naming the parameter
    cases: list[tuple[dict[str, Any], str]] = [
        ({"stop": ["\n"]}, "stop"),
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"extra_body": {"veilnet": {"replicas": 0}}}, "veilnet.replicas"),
    ]
    for kwargs, param in cases:
        body = _raises(openai.BadRequestError, 400, create, model=CHAT, messages=HI, **kwargs)
        assert body["param"] == param, body
    raw = httpx.post(f"{api}/v1/chat/completions", json={"model": CHAT, "messages": HI, "stream": "false"})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "stream"
    # accepted: text parts, n null, temperature within [0, 2]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say something "},
                                          {"type": "text", "text": "about enclaves."}]}]
    a = create(model=CHAT, messages=parts, max_tokens=6, n=None, temperature=0.7)  # type: ignore[arg-type]
    b = create(model=CHAT, messages=HI, max_tokens=6)  # type: ignore[arg-type]
    assert a.choices[0].message.content == b.choices[0].message.content


def test_embeddings_input_of_token_ids_is_a_400_that_says_to_send_text(client: openai.OpenAI) -> None:
    for token_ids in ([9906, 1917], [[9906, 1917], [36, 77]]):  # what LangChain sends by default
        body = _raises(openai.BadRequestError, 400, client.embeddings.create, model=EMBED, input=token_ids)
        assert body["param"] == "input"
        assert "token ids are not accepted" in body["message"], body
    body = _raises(openai.BadRequestError, 400, client.embeddings.create, model=EMBED, input=[])
    assert "token ids" not in body["message"]


def test_embeddings_usage_counts_tokens(client: openai.OpenAI) -> None:
    answer = client.embeddings.create(model=EMBED, input=["hello world", "enclaves"])
    # [CLS] hello world [SEP] + [CLS] en ##cl ##aves [SEP]: at least 4 + 3 tokens
    assert answer.usage.prompt_tokens >= 7 and answer.usage.total_tokens == answer.usage.prompt_tokens


def test_models_by_id(client: openai.OpenAI) -> None:
    assert client.models.retrieve(EMBED).id == EMBED
    _raises(openai.NotFoundError, 404, client.models.retrieve, model="no-such-model")


def test_every_answer_is_json(api: str) -> None:
    for method, path, status in [("GET", "/nope", 404), ("GET", "/v1/embeddings", 405),
                                 ("DELETE", "/v1/models", 405), ("POST", "/v1/unknown", 404)]:
        response = httpx.request(method, f"{api}{path}")
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_body_over_the_limit_is_413_before_it_is_read_whole(client: openai.OpenAI, api: str) -> None:
    big = "x" * (9 << 20)
    _raises(openai.APIStatusError, 413, client.embeddings.create, model=EMBED, input=big)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield b'{"model": "all-MiniLM-L6-v2", "input": "'
        for _ in range(10):
            yield b"x" * (1 << 20)
        yield b'"}'

    headers = {"content-type": "application/json"}
    response = httpx.post(f"{api}/v1/embeddings", content=chunks(), headers=headers)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    # and the node keeps serving
    assert client.embeddings.create(model=EMBED, input="still here").data
