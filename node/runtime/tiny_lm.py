"""``veilnet-tiny-random-lm``: a GPT-2-shaped causal LM with seeded RANDOM weights, for tests.

It exists so the chat path (generation, streaming, teacher-forced verification, the vote) runs end
to end on any machine in seconds. Its output is gibberish by construction, and its name says so.

Everything is derived from constants: the tokenizer is WordPiece over a fixed built-in vocabulary
(characters, continuations and a few hundred common words; nothing is trained, so nothing depends
on a trainer's tie-breaking, and every generated id decodes to printable text), and each weight
tensor is drawn from its own torch CPU generator seeded from the tensor's name. The same bytes
come out on every machine, hence the same model id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import GPT2Config

from node.runtime import torch_env
from node.runtime.staging import ensure_built

__all__ = ["TINY_LM_FILES", "TINY_LM_NAME", "ensure_tiny_lm", "tiny_lm_config", "write_random_lm"]

TINY_LM_NAME = "veilnet-tiny-random-lm"
TINY_LM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "README.md",
)
_SEED = 20260101
_EOS = "<|endoftext|>"
_EMBED_STD = 0.5  # wide logits (std ≈ 4): a peaky next-token distribution, few near-ties
_WEIGHT_STD = 0.3  # strong enough that layers mix context (weaker weights collapse into 1-token loops)
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_lm_config() -> GPT2Config:
    """The fixed architecture: 2 layers, 4 heads, width 64, the built-in WordPiece vocabulary."""
    vocab = _vocab()
    eos = vocab[_EOS]
    return GPT2Config(
        vocab_size=len(vocab),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_inner=256,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=vocab["[PAD]"],
        tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"],
    )


# Whole words first, then single characters and WordPiece continuations, so any text tokenises
# (unknown symbols become [UNK]) and every generated id decodes to printable text.
_WORD_TEXT = """
the of and to in is was for on that with as by at from it his an are were which be this or had
not but also first one their its new after who they have her she two been other when there all
during into school time may years more most only over city some world would where later up such
used many can state about national out known university united then made however under both year
well part between through three city team called while area under game people film war being
because these since music each against him early second work before years game own including
day group same number four season life each long american best last back including known home
through down water house place name history party make set small large five like still good high
series name around main even end general several public well old big man local way power city
language right family word think help light night story love play read write open close answer
question true false model node peer trust secret proof vote agree check token random tiny veil
net hello world yes no maybe please thanks sorry why how what who when where here now today
"""
_WORDS = _WORD_TEXT.split()
_PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_SPECIALS = ["[PAD]", "[UNK]", _EOS]


def _vocab() -> dict[str, int]:
    pieces: list[str] = list(_SPECIALS)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    for piece in chars + _PUNCTUATION + ["##" + c for c in chars] + _WORDS:
        if piece not in pieces:
            pieces.append(piece)
    return {piece: index for index, piece in enumerate(pieces)}


def _tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(vocab=_vocab(), unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        lowercase=True, strip_accents=True, clean_text=True, handle_chinese_chars=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(_SPECIALS)
    return tokenizer


def _weights(config: GPT2Config, seed: int) -> dict[str, torch.Tensor]:
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in GPT2LMHeadModel(config).state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        shape = shapes[name]
        leaf = name.rsplit(".", 1)[-1]
        is_norm = ".ln_" in name or name.startswith("transformer.ln_f")
        if leaf == "bias":
            tensors[name] = torch.zeros(shape, dtype=torch.float32)
        elif is_norm:
            tensors[name] = torch.ones(shape, dtype=torch.float32)
        else:
            tensor_seed = seed ^ int.from_bytes(hashlib.sha256(name.encode()).digest()[:6], "big")
            generator = torch.Generator(device="cpu").manual_seed(tensor_seed)
            std = _EMBED_STD if name.endswith(("wte.weight", "wpe.weight")) else _WEIGHT_STD
            tensors[name] = torch.randn(shape, generator=generator, dtype=torch.float32) * std
    return tensors


def write_random_lm(directory: Path, seed: int = _SEED) -> None:
    """Write the tiny LM's files into an existing empty ``directory``; another ``seed`` gives a
    different model of the same shape (calibration uses one as a substitute model)."""
    config = tiny_lm_config()
    (directory / "config.json").write_text(json.dumps(config.to_diff_dict(), indent=2, sort_keys=True) + "\n")
    generation = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "do_sample": False,
    }
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    save_file(_weights(config, seed), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "tokenizer.json").write_text(_tokenizer().to_str(pretty=True) + "\n")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _EOS,
        "eos_token": _EOS,
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "model_max_length": 512,
        "chat_template": _CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n"
    )
    (directory / "README.md").write_text(
        f"# {TINY_LM_NAME}\n\nRANDOM WEIGHTS. NOT A REAL MODEL. Its output is gibberish.\n\n"
        "A GPT-2-shaped causal LM (2 layers, width 64, tiny word vocabulary) generated deterministically\n"
        "by Veilnet's `node.runtime.tiny_lm.ensure_tiny_lm` to exercise the chat path in tests.\n"
    )


def ensure_tiny_lm(directory: Path | str) -> Path:
    """Create the tiny random LM in ``directory`` unless it is already there; return the path.

    Written atomically (``staging.ensure_built``): concurrent processes never see half a model.
    """
    target = Path(directory)
    if all((target / name).is_file() for name in TINY_LM_FILES):
        return target
    torch_env.configure_torch()
    return ensure_built(target, TINY_LM_FILES, write_random_lm)
