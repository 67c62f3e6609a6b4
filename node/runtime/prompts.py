"""The chat prompt as token ids, from the tokenizer files the model id covers (no weights needed).

Every backend encodes prompts here, so the in-process torch runtime and an engine backend send the
same ids for the same job: a chat template can never differ between engines, because the engine
never applies one (it receives token ids). Verifiers re-encode the job input with the same files
and so agree on the prompt tokens without them being sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import AutoTokenizer

from node.runtime.errors import InvalidInput, UnsupportedModel

__all__ = [
    "ROLES",
    "Prompt",
    "PromptEncoder",
    "TextDeltas",
    "check_prompt_size",
    "prompt_bytes",
    "validate_messages",
]

Prompt = str | Sequence[Mapping[str, str]]
"""A raw prompt string, or OpenAI-style chat messages ``[{"role": ..., "content": ...}, ...]``."""

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
_MAX_MESSAGES = 1024


class PromptEncoder:
    """Tokenizer, chat template, context length and EOS ids of one causal-LM model directory."""

    def __init__(self, model_dir: Path) -> None:
        self.path = Path(model_dir)
        try:
            config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise UnsupportedModel(f"cannot load the tokenizer of {self.path}: {exc}") from None
        if not isinstance(config, dict) or not isinstance(config.get("vocab_size"), int):
            raise UnsupportedModel(f"{self.path}/config.json has no integer vocab_size")
        self.vocab_size = int(config["vocab_size"])
        context = config.get("max_position_embeddings") or config.get("n_positions")
        self.context_length = int(context) if isinstance(context, int) and context > 0 else 1024
        # No token spells more bytes than the longest vocabulary entry (its UTF-8 form is an
        # upper bound for byte-level and sentencepiece vocabularies alike), so a prompt longer
        # than this cannot fit the context: refuse it before tokenizing megabytes of text.
        longest = max((len(str(t).encode()) for t in self.tokenizer.get_vocab()), default=16)
        self.max_prompt_bytes = self.context_length * max(1, longest)
        eos = config.get("eos_token_id")
        ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        self.eos_token_ids = frozenset(int(t) for t in ids)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt string, or of chat messages rendered by the model's chat template."""
        check_prompt_size(prompt, self.max_prompt_bytes)
        if isinstance(prompt, str):
            ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        else:
            messages = validate_messages(prompt)
            if getattr(self.tokenizer, "chat_template", None):
                rendered = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
                ids = list(self.tokenizer.encode(str(rendered), add_special_tokens=False))
            else:
                text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
                ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if not ids:
            raise InvalidInput("the prompt encodes to zero tokens")
        if len(ids) >= self.context_length:
            raise InvalidInput(f"prompt has {len(ids)} tokens; the context holds {self.context_length}")
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of generated tokens, without EOS or other special tokens."""
        kept = [t for t in tokens if t not in self.eos_token_ids]
        return str(self.tokenizer.decode(kept, skip_special_tokens=True))


class TextDeltas:
    """Turns a growing token list into the text each new token completes.

    Text is held back while it ends in an incomplete UTF-8 sequence (decoded as U+FFFD), except
    for the last token, so a stream never shows half a character.
    """

    def __init__(self, encoder: PromptEncoder) -> None:
        self._encoder = encoder
        self.tokens: list[int] = []
        self._emitted = ""

    def push(self, token: int, *, last: bool) -> str:
        self.tokens.append(token)
        text = self._encoder.decode(self.tokens)
        held = text.endswith("\ufffd") and not last
        delta = "" if held or not text.startswith(self._emitted) else text[len(self._emitted) :]
        self._emitted += delta
        return delta


def prompt_bytes(prompt: Prompt) -> int:
    """UTF-8 size of a prompt's text (message contents), computed without tokenizing."""
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8", "surrogatepass"))
    return sum(len(str(m.get("content", "")).encode("utf-8", "surrogatepass")) for m in prompt)


def check_prompt_size(prompt: Prompt, limit: int) -> None:
    """``InvalidInput`` for a prompt too long to fit any context of ``limit`` bytes."""
    size = prompt_bytes(prompt)
    if size > limit:
        raise InvalidInput(f"prompt of {size} bytes cannot fit the context (at most {limit} bytes)")


def validate_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Chat messages as plain dicts; ``InvalidInput`` for anything but role/content string pairs."""
    if not isinstance(messages, Sequence) or not messages or len(messages) > _MAX_MESSAGES:
        raise InvalidInput(f"messages must be a non-empty list of at most {_MAX_MESSAGES} items")
    clean: list[dict[str, str]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise InvalidInput("each message must be a map with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise InvalidInput(f"bad message: role must be one of {sorted(ROLES)}, content a string")
        clean.append({"role": role, "content": content})
    return clean
