"""The embedding runtime and the loader: equal to sentence-transformers, offline, typed errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from node.runtime import (
    MINILM_NAME,
    EmbeddingRuntime,
    InvalidInput,
    ModelNotFound,
    Task,
    UnsupportedModel,
    detect_task,
    load_runtime,
    minilm_dir,
)
from protocol.jobs.consensus import compare_embeddings
from protocol.models import EMBEDDED_MODEL_IDS, model_id_for_dir

TEXTS = [
    "Confidential inference on attested peers.",
    "",
    "The quick brown fox jumps over the lazy dog. " * 60,  # beyond 256 tokens: truncated
    "数据 隐私 🙂 café",
    "short",
]


@pytest.fixture(scope="module")
def runtime() -> EmbeddingRuntime:
    loaded = load_runtime(MINILM_NAME)
    assert isinstance(loaded, EmbeddingRuntime)
    return loaded


def test_identity_and_offline_mode(runtime: EmbeddingRuntime) -> None:
    assert runtime.task is Task.EMBEDDINGS
    assert runtime.name == MINILM_NAME
    assert runtime.model_id == model_id_for_dir(minilm_dir()) == EMBEDDED_MODEL_IDS[MINILM_NAME]
    assert runtime.dim == 384 and runtime.max_seq_length == 256
    assert runtime.pooling.mode == "mean" and runtime.pooling.normalize
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert load_runtime(minilm_dir()).model_id == runtime.model_id  # by path, same identity


def test_equals_sentence_transformers(runtime: EmbeddingRuntime) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    expected = reference.encode(TEXTS, convert_to_numpy=True, batch_size=8)
    ours = runtime.embed(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384) and ours.flags.c_contiguous
    cosines = (ours * expected).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosines.min() >= 0.99999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batching_and_chunking_stay_within_calibrated_bounds(runtime: EmbeddingRuntime) -> None:
    texts = [f"sentence {i} about {'many ' * (i % 7)}things" for i in range(40)]  # > one chunk of 32
    batched = runtime.embed(texts)
    singles = np.concatenate([runtime.embed([t]) for t in texts[:6]])
    assert compare_embeddings(batched[:6], singles).agree
    assert runtime.embed([]).shape == (0, 384)


def test_bad_input_is_typed(runtime: EmbeddingRuntime) -> None:
    with pytest.raises(InvalidInput):
        runtime.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        runtime.embed("not a list")  # type: ignore[arg-type]


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        load_runtime("no-such-model")
    with pytest.raises(ModelNotFound):
        load_runtime(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UnsupportedModel, match="safetensors"):
        load_runtime(tmp_path)


def test_detect_task(tmp_path: Path) -> None:
    assert detect_task(minilm_dir()) is Task.EMBEDDINGS
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert detect_task(tmp_path) is Task.CHAT
    (tmp_path / "config.json").write_text('{"architectures": "oops"}')
    with pytest.raises(UnsupportedModel):
        detect_task(tmp_path)
