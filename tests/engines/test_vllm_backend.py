"""vLLM behind the executor's runtime interface: generate, stream and score through the node's
supervisor and client, judged against the in-process torch runtime on the same model directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.runtime.base import Capability, EngineIdentity
from node.runtime.engine_runtime import EngineChatRuntime
from node.runtime.engine_supervisor import EngineSupervisor
from node.runtime.generation import ChatRuntime
from protocol.jobs.consensus import TokenBounds, check_token_scores
from protocol.numerics import TORCH_FP32_CPU, VLLM_BF16_CPU, token_gap_bound

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]  # a vLLM start takes minutes

QUESTION = [{"role": "user", "content": "What is the capital of France? One sentence."}]


@pytest.fixture(scope="module")
def vllm_chat(engine: EngineSupervisor, smollm2_dir: Path) -> EngineChatRuntime:
    identity = EngineIdentity("vllm", engine.client.version(), "bfloat16", "cpu")
    return EngineChatRuntime(smollm2_dir, model_id="smollm2", client=engine.client, engine=identity)


@pytest.fixture(scope="module")
def torch_chat(smollm2_dir: Path) -> ChatRuntime:
    return ChatRuntime(smollm2_dir, model_id="smollm2")


def test_engine_answers_with_token_ids_and_streams_the_same(vllm_chat: EngineChatRuntime) -> None:
    assert vllm_chat.engine.version == "0.32.0"
    assert vllm_chat.capabilities == {Capability.GENERATE, Capability.STREAM, Capability.SCORE}
    answer = vllm_chat.generate(QUESTION, 32)
    assert "Paris" in answer.text and answer.finish_reason == "stop"
    assert answer.tokens[-1] in vllm_chat.eos_token_ids  # the stop decision is verifiable too
    assert list(answer.prompt_tokens) == vllm_chat.encode_prompt(QUESTION)  # our template, our ids
    streamed: list[tuple[int, str]] = []
    again = vllm_chat.generate(QUESTION, 32, on_token=lambda t, text: streamed.append((t, text)))
    assert again == answer
    assert [t for t, _ in streamed] == list(answer.tokens)
    assert "".join(text for _, text in streamed) == answer.text
    short = vllm_chat.generate(QUESTION, 3)
    assert short.finish_reason == "length" and short.tokens == answer.tokens[:3]


def test_teacher_forced_scores_match_the_torch_runtime(
    vllm_chat: EngineChatRuntime, torch_chat: ChatRuntime
) -> None:
    fp32 = 1.6e-4
    answer = vllm_chat.generate(QUESTION, 32)
    own = vllm_chat.score(QUESTION, answer.tokens)
    assert (own.ranks == 0).all()  # an engine's greedy tokens are its own top-1
    cross = TokenBounds(token_gap_bound(VLLM_BF16_CPU, TORCH_FP32_CPU, fp32))
    assert check_token_scores(torch_chat.score(QUESTION, answer.tokens).ranks,
                              torch_chat.score(QUESTION, answer.tokens).gaps, cross).accepted
    torch_answer = torch_chat.generate(QUESTION, 32)
    by_vllm = vllm_chat.score(QUESTION, torch_answer.tokens)
    assert check_token_scores(by_vllm.ranks, by_vllm.gaps,
                              TokenBounds(token_gap_bound(TORCH_FP32_CPU, VLLM_BF16_CPU, fp32))).accepted
    # a substituted token is rejected by the engine's scores
    tampered = list(answer.tokens)
    tampered[2] = 13
    scores = vllm_chat.score(QUESTION, tampered)
    verdict = check_token_scores(scores.ranks, scores.gaps, cross)
    assert not verdict.accepted and verdict.first_rejected == 2
    # a claimed id outside the vocabulary is scored as rejected, not sent to the engine
    outside = vllm_chat.score(QUESTION, [*answer.tokens[:2], vllm_chat.vocab_size + 5])
    assert outside.ranks[2] == vllm_chat.vocab_size


def test_the_engine_listens_on_loopback_with_its_key_only(engine: EngineSupervisor) -> None:
    import httpx

    url = engine.client.base_url
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401  # no key, no service
    assert engine.client.ready()
