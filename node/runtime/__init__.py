"""Model runtime: load models from local directories and compute on CPU in worker threads.

Importing this package switches the Hugging Face libraries offline before anything imports them.
The heavy parts (torch, transformers) load on first use of the names that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from node.runtime import torch_env
from node.runtime.base import Capability, EngineIdentity, ModelRuntime, Task
from node.runtime.batcher import BatchFailed, Embedder, EmbeddingBatcher
from node.runtime.errors import (
    BatcherClosed,
    Busy,
    InvalidInput,
    ModelNotFound,
    ModelRuntimeError,
    UnsupportedModel,
)

if TYPE_CHECKING:
    from node.runtime.embeddings import EmbeddingRuntime
    from node.runtime.generation import ChatRuntime, Generation, Prompt, TokenScores
    from node.runtime.loader import (
        DEFAULT_MODEL,
        EMBEDDED_MODELS,
        MINILM_NAME,
        default_models_dir,
        describe_model,
        detect_task,
        load_runtime,
        minilm_dir,
        resolve_model_dir,
    )
    from node.runtime.smollm2 import SMOLLM2_NAME, ensure_smollm2
    from node.runtime.tiny_lm import TINY_LM_NAME, ensure_tiny_lm

_LAZY = {
    "EmbeddingRuntime": "node.runtime.embeddings",
    "ChatRuntime": "node.runtime.generation",
    "Generation": "node.runtime.generation",
    "Prompt": "node.runtime.generation",
    "TokenScores": "node.runtime.generation",
    "DEFAULT_MODEL": "node.runtime.loader",
    "EMBEDDED_MODELS": "node.runtime.loader",
    "MINILM_NAME": "node.runtime.loader",
    "default_models_dir": "node.runtime.loader",
    "describe_model": "node.runtime.loader",
    "detect_task": "node.runtime.loader",
    "load_runtime": "node.runtime.loader",
    "minilm_dir": "node.runtime.loader",
    "resolve_model_dir": "node.runtime.loader",
    "SMOLLM2_NAME": "node.runtime.smollm2",
    "ensure_smollm2": "node.runtime.smollm2",
    "TINY_LM_NAME": "node.runtime.tiny_lm",
    "ensure_tiny_lm": "node.runtime.tiny_lm",
}

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "MINILM_NAME",
    "SMOLLM2_NAME",
    "TINY_LM_NAME",
    "BatchFailed",
    "BatcherClosed",
    "Busy",
    "Capability",
    "ChatRuntime",
    "Embedder",
    "EmbeddingBatcher",
    "EmbeddingRuntime",
    "EngineIdentity",
    "Generation",
    "InvalidInput",
    "ModelNotFound",
    "ModelRuntime",
    "ModelRuntimeError",
    "Prompt",
    "Task",
    "TokenScores",
    "UnsupportedModel",
    "default_models_dir",
    "describe_model",
    "detect_task",
    "ensure_smollm2",
    "ensure_tiny_lm",
    "load_runtime",
    "minilm_dir",
    "resolve_model_dir",
    "torch_env",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'node.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
