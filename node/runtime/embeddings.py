"""Sentence embeddings from any Hugging Face encoder directory (transformers + tokenizers, CPU).

The pipeline mirrors sentence-transformers' Transformer → Pooling → Normalize modules, read from
the directory's own ``modules.json`` / ``1_Pooling/config.json`` / ``sentence_bert_config.json``
when present, so the node's vectors equal the reference library's for the same model. A plain
encoder directory without those files gets mean pooling and L2 normalisation.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from node.runtime import torch_env
from node.runtime.base import Capability, EngineIdentity, ModelRuntime, Task
from node.runtime.errors import InvalidInput, UnsupportedModel

__all__ = ["EmbeddingRuntime", "PoolingConfig", "read_pooling_config"]

# Texts per forward pass inside one embed() call: bounds padding waste and peak memory.
DEFAULT_CHUNK = 32
_POOLING_MODES = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
}


@dataclass(frozen=True)
class PoolingConfig:
    """How token states become one vector, and how long inputs may be."""

    mode: str = "mean"
    normalize: bool = True
    max_seq_length: int | None = None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"unreadable {path.name}: {exc}") from None


def read_pooling_config(model_dir: Path) -> PoolingConfig:
    """Read sentence-transformers' module files if present; defaults otherwise (mean + L2)."""
    modules_file = model_dir / "modules.json"
    pooling_dir: Path | None = None
    normalize = True
    if modules_file.is_file():
        modules = _load_json(modules_file)
        if not isinstance(modules, list):
            raise UnsupportedModel("modules.json is not a list")
        types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)]
        normalize = any(t.endswith(".Normalize") for t in types)
        for module in modules:
            if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
                pooling_dir = model_dir / str(module.get("path", ""))
        known = (".Transformer", ".Pooling", ".Normalize")
        unknown = [t for t in types if not t.endswith(known)]
        if unknown:
            raise UnsupportedModel(f"unsupported sentence-transformers modules: {unknown}")
    mode = "mean"
    if pooling_dir is not None and (pooling_dir / "config.json").is_file():
        cfg = _load_json(pooling_dir / "config.json")
        enabled = [m for m, key in _POOLING_MODES.items() if cfg.get(key)]
        others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
        if len(enabled) != 1 or len(others) != 1:
            raise UnsupportedModel(f"unsupported pooling configuration: {others}")
        mode = enabled[0]
    max_seq_length: int | None = None
    sbert = model_dir / "sentence_bert_config.json"
    if sbert.is_file():
        value = _load_json(sbert).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            max_seq_length = value
    return PoolingConfig(mode=mode, normalize=normalize, max_seq_length=max_seq_length)


class EmbeddingRuntime(ModelRuntime):
    """An encoder that maps texts to float32 vectors ``[n, dim]``."""

    task = Task.EMBEDDINGS
    capabilities = frozenset({Capability.EMBED})

    def __init__(
        self, model_dir: Path, *, model_id: str, name: str | None = None, chunk_size: int = DEFAULT_CHUNK
    ) -> None:
        torch_env.configure_torch()
        self.path = Path(model_dir)
        self.model_id = model_id
        self.name = name or self.path.name
        self.engine = EngineIdentity.torch_cpu_fp32()
        self.pooling = read_pooling_config(self.path)
        self.chunk_size = chunk_size
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise UnsupportedModel(f"cannot load {self.path}: {exc}") from None
        self._model = torch_env.load_local_model(AutoModel, self.path)
        self.max_seq_length = self._resolve_max_length()
        self.dim = int(self._model.config.hidden_size)
        self._lock = threading.Lock()

    def _resolve_max_length(self) -> int:
        limits = [int(getattr(self._model.config, "max_position_embeddings", 512))]
        if self.pooling.max_seq_length is not None:
            limits.append(self.pooling.max_seq_length)
        tok_max = getattr(self._tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        return min(limits)

    def variant(
        self, *, name: str, model: torch.nn.Module | None = None, max_seq_length: int | None = None
    ) -> EmbeddingRuntime:
        """A copy sharing the tokenizer with another model or input limit, for calibration: it is
        how a cheating executor's substitutes (quantised, truncated, fewer layers) are produced."""
        clone = copy.copy(self)
        clone.name = name
        clone.model_id = f"{self.model_id}+{name}"
        clone._lock = threading.Lock()
        if model is not None:
            clone._model = model.eval()
        if max_seq_length is not None:
            clone.max_seq_length = max_seq_length
        return clone

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (thread-unsafe on its own: use it under no concurrent embed)."""
        return self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        """The underlying torch module (read-only use: calibration builds substitutes from it)."""
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``; returns a C-contiguous float32 array ``[len(texts), dim]``.

        Inputs longer than ``max_seq_length`` tokens are truncated (as sentence-transformers
        does). Texts are grouped by length into chunks of ``chunk_size`` to limit padding.
        """
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InvalidInput("texts must be a list of str")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._lock, torch.inference_mode():
            if len(texts) <= self.chunk_size:
                out[:] = self._forward(texts)
                return out
            lengths = [
                len(ids)
                for ids in self._tokenizer(texts, truncation=True, max_length=self.max_seq_length)[
                    "input_ids"
                ]
            ]
            order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
            for start in range(0, len(order), self.chunk_size):
                rows = order[start : start + self.chunk_size]
                out[rows] = self._forward([texts[i] for i in rows])
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        enc = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"
        )
        states = self._model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        if self.pooling.mode == "mean":
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        elif self.pooling.mode == "cls":
            pooled = states[:, 0]
        else:  # max over real tokens only
            pooled = states.masked_fill(mask == 0, -1e9).max(dim=1).values
        if self.pooling.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.numpy()
