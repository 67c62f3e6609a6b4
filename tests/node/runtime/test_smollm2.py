"""SmolLM2-135M-Instruct: a deterministic conversion from the packaged GGUF, served for chat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.runtime import SMOLLM2_NAME, ChatRuntime, ensure_smollm2, load_runtime
from node.runtime.errors import UnsupportedModel
from node.runtime.smollm2 import SMOLLM2_FILES, SMOLLM2_MODEL_ID, convert_smollm2
from protocol.jobs.consensus import check_token_scores
from protocol.models import model_id_for_dir

QUESTION = [{"role": "user", "content": "What is the capital of France? One sentence."}]


def test_conversion_gives_the_pinned_model_id(smollm2_dir: Path) -> None:
    """The id is a hash of every tensor byte and the config and tokenizer files: the same pinned
    value on this machine and every other means the same conversion everywhere."""
    assert model_id_for_dir(smollm2_dir) == SMOLLM2_MODEL_ID
    assert sorted(p.name for p in smollm2_dir.iterdir()) == sorted(SMOLLM2_FILES)
    assert not [p for p in smollm2_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "bfloat16"
    assert "quantization_config" not in config and "_name_or_path" not in config  # nothing machine-bound
    tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>assistant" in tokenizer_config["chat_template"]
    before = {name: (smollm2_dir / name).stat().st_mtime_ns for name in SMOLLM2_FILES}
    assert ensure_smollm2(smollm2_dir) == smollm2_dir  # idempotent: nothing rewritten
    assert before == {name: (smollm2_dir / name).stat().st_mtime_ns for name in SMOLLM2_FILES}


def test_a_gguf_with_other_bytes_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsupportedModel, match="pinned"):
        convert_smollm2(fake, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> ChatRuntime:
    runtime = load_runtime(SMOLLM2_NAME, models_dir=smollm2_dir.parent)
    assert isinstance(runtime, ChatRuntime)
    return runtime


def test_answers_a_factual_question_and_verifies_its_own_tokens(smollm2: ChatRuntime) -> None:
    assert smollm2.name == SMOLLM2_NAME and smollm2.model_id == SMOLLM2_MODEL_ID
    prompt = smollm2.encode_prompt(QUESTION)
    assert smollm2.decode(prompt).startswith("system\n")  # the model's own chat template and system line
    answer = smollm2.generate(QUESTION, 24)
    assert "Paris" in answer.text and answer.finish_reason == "stop"
    assert answer.tokens[-1] in smollm2.eos_token_ids
    scores = smollm2.score_ids(answer.prompt_tokens, answer.tokens)
    assert scores.ranks.tolist() == [0] * len(answer.tokens)
    assert check_token_scores(scores.ranks, scores.gaps).accepted
    tampered = list(answer.tokens)
    tampered[2] = smollm2.encode_prompt("Berlin")[0]
    rescored = smollm2.score_ids(answer.prompt_tokens, tampered)
    verdict = check_token_scores(rescored.ranks, rescored.gaps)
    assert not verdict.accepted and verdict.first_rejected == 2


def test_the_protocol_knows_the_model_by_the_converters_id() -> None:
    """The per-model chat bound is keyed by the id the converter writes: the two cannot drift apart."""
    from protocol.jobs.consensus import (
        CALIBRATED_TOKEN_BOUNDS,
        SMOLLM2_135M_INSTRUCT_ID,
        TOKEN_BOUNDS_BY_MODEL,
        token_bounds_for,
    )

    assert SMOLLM2_135M_INSTRUCT_ID == SMOLLM2_MODEL_ID
    assert token_bounds_for(SMOLLM2_MODEL_ID) is TOKEN_BOUNDS_BY_MODEL[SMOLLM2_MODEL_ID]
    assert token_bounds_for("vn-model:" + "0" * 64) is CALIBRATED_TOKEN_BOUNDS
