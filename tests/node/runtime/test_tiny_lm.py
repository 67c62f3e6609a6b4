"""The tiny random LM: deterministic bytes, greedy generation, teacher-forced verification."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.runtime import TINY_LM_NAME, ChatRuntime, InvalidInput, Task, ensure_tiny_lm, load_runtime
from node.runtime.tiny_lm import TINY_LM_FILES
from protocol.jobs.consensus import check_token_scores, decode_token_scores, encode_token_scores
from protocol.models import EMBEDDED_MODEL_IDS, model_id_for_dir

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_lm(tmp_path_factory.mktemp("models") / TINY_LM_NAME)


@pytest.fixture(scope="module")
def lm(lm_dir: Path) -> ChatRuntime:
    runtime = load_runtime(TINY_LM_NAME, models_dir=lm_dir.parent)
    assert isinstance(runtime, ChatRuntime)
    return runtime


def test_same_bytes_and_model_id_everywhere(lm_dir: Path, tmp_path: Path) -> None:
    again = ensure_tiny_lm(tmp_path / "again")
    for name in TINY_LM_FILES:
        assert (again / name).read_bytes() == (lm_dir / name).read_bytes(), name
    assert model_id_for_dir(again) == model_id_for_dir(lm_dir)
    assert ensure_tiny_lm(again) == again  # idempotent, nothing rewritten
    assert "RANDOM WEIGHTS" in (lm_dir / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_runtime_identity(lm: ChatRuntime, lm_dir: Path) -> None:
    assert lm.task is Task.CHAT and lm.name == TINY_LM_NAME
    assert lm.model_id == model_id_for_dir(lm_dir) == EMBEDDED_MODEL_IDS[TINY_LM_NAME]
    assert lm.eos_token_ids and lm.context_length == 512


def test_greedy_generation_is_deterministic_and_streams(lm: ChatRuntime) -> None:
    streamed: list[tuple[int, str]] = []
    first = lm.generate(MESSAGES, 24, on_token=lambda token, text: streamed.append((token, text)))
    second = lm.generate(MESSAGES, 24)
    assert first == second
    assert 1 <= len(first.tokens) <= 24
    assert first.finish_reason == ("stop" if len(first.tokens) < 24 else "length")
    assert [t for t, _ in streamed] == list(first.tokens)
    assert "".join(text for _, text in streamed) == first.text
    assert first.text == lm.decode(first.tokens) and first.text.strip()
    assert list(first.prompt_tokens) == lm.encode_prompt(MESSAGES)
    assert lm.generate("plain prompt", 3).prompt_tokens == tuple(lm.encode_prompt("plain prompt"))


def test_honest_tokens_pass_verification(lm: ChatRuntime) -> None:
    generation = lm.generate(MESSAGES, 32)
    scores = lm.score(MESSAGES, generation.tokens)
    assert scores.ranks.tolist() == [0] * len(generation.tokens)  # greedy: every token is top-1
    assert (scores.logprobs <= 0).all()
    wire = encode_token_scores(scores.ranks, scores.gaps)
    verdict = check_token_scores(*decode_token_scores(*wire, len(generation.tokens)))
    assert verdict.accepted and verdict.top1 == len(generation.tokens)


def test_substituted_token_is_rejected(lm: ChatRuntime) -> None:
    generation = lm.generate(MESSAGES, 16)
    tampered = list(generation.tokens)
    position = len(tampered) // 2
    tampered[position] = (tampered[position] + 5) % lm.vocab_size
    scores = lm.score_ids(generation.prompt_tokens, tampered)
    verdict = check_token_scores(scores.ranks, scores.gaps)
    assert not verdict.accepted and verdict.first_rejected == position


def test_bad_requests_are_typed(lm: ChatRuntime) -> None:
    with pytest.raises(InvalidInput):
        lm.generate(MESSAGES, 0)
    with pytest.raises(InvalidInput):
        lm.score(MESSAGES, [])
    with pytest.raises(InvalidInput):
        lm.score(MESSAGES, [1] * lm.context_length)
    with pytest.raises(InvalidInput):
        lm.encode_prompt([{"role": "wizard", "content": "x"}])
    with pytest.raises(InvalidInput):
        lm.encode_prompt([])
    with pytest.raises(InvalidInput):
        lm.encode_prompt("")
    long_prompt = "word " * (lm.context_length + 5)
    with pytest.raises(InvalidInput):
        lm.generate(long_prompt, 4)
    near_full = "word " * (lm.context_length - 3)
    generation = lm.generate(near_full, 50)  # clamped to the context
    assert len(generation.prompt_tokens) + len(generation.tokens) <= lm.context_length


def test_a_claimed_token_outside_the_vocabulary_is_scored_as_rejected_not_refused(lm: ChatRuntime) -> None:
    """Such a claim is the claimant's fault (a lying primary), so verifiers answer with a verdict."""
    generation = lm.generate(MESSAGES, 8)
    claimed = list(generation.tokens)
    claimed[2] = lm.vocab_size + 7
    scores = lm.score_ids(generation.prompt_tokens, claimed)
    assert int(scores.ranks[2]) == lm.vocab_size and scores.ranks[:2].tolist() == [0, 0]
    verdict = check_token_scores(*decode_token_scores(*encode_token_scores(scores.ranks, scores.gaps), 8))
    assert not verdict.accepted and verdict.first_rejected == 2
