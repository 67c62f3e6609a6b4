"""Greedy generation and teacher-forced re-scoring for causal language models (CPU, fp32).

Compute is float32 whatever dtype the weights are stored in (SmolLM2 ships bfloat16): widening
bfloat16 to float32 is exact, so every node computes on the same weights, and float32 CPU kernels
keep the logit drift between honest nodes (thread counts, KV-cache decode vs one prefill) below
1e-4 (6.3e-5 measured on SmolLM2), which is what lets the comparator's bound stay tight. bfloat16
compute would be faster but moves SmolLM2's logits by up to 1.3 against fp32, an honest band wide
enough to hide a substituted token; it would need its own numerics class and calibration
(docs/CALIBRATION.md).

Chat jobs are cross-checked the "one generator, many scorers" way: the primary executor generates
greedily; each verifier runs ONE prefill over prompt ‖ claimed tokens and reports, per position,
the rank of the claimed token and its logit gap to the top-1 token. Independent regeneration would
diverge under harmless float noise (and cost a full decode); a prefill conditions every position
on the same prefix and costs one parallel forward pass.

Live streams are verified in rounds over a growing prefix (every 16 tokens): given a
``prefix_scope`` (the requesting client's peer id) a verifier keeps the KV cache of the sequence it
scored last (``PrefixCache``) and prefills only the new tokens on top of it, so a stream of n
tokens costs one prefill of n tokens in total instead of one per round. Incremental and full
prefill differ only by float reordering, far inside the calibrated bounds
(``tests/node/runtime/test_prefix_cache.py``). Entries are only reused within their scope, so one
client cannot time another's cached prompts.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from node.runtime import torch_env
from node.runtime.base import Capability, EngineIdentity, ModelRuntime, Task
from node.runtime.errors import InvalidInput
from node.runtime.prompts import Prompt, PromptEncoder, TextDeltas, check_prompt_size, prompt_bytes

__all__ = [
    "ChatRuntime",
    "Generation",
    "PrefixCache",
    "Prompt",
    "TokenCallback",
    "TokenScores",
    "check_prompt_size",
    "prompt_bytes",
    "scoring_feed",
]

TokenCallback = Callable[[int, str], None]
"""Called from the worker thread after each generated token with (token id, new text)."""

PREFIX_CACHE_ENTRIES = 4  # live streams verified at once by one verifier, each keeps its KV cache ...
PREFIX_CACHE_TTL_S = 30.0  # ... until its next round is this late (then it is dropped: memory, privacy)


@dataclass(frozen=True)
class Generation:
    """A greedy completion. ``tokens`` include the final EOS token when ``finish_reason == "stop"``
    (so verifiers check the decision to stop too); ``text`` never contains it."""

    prompt_tokens: tuple[int, ...]
    tokens: tuple[int, ...]
    text: str
    finish_reason: str  # "stop" (EOS produced) | "length" (max_tokens or context reached)


@dataclass(frozen=True)
class TokenScores:
    """Per claimed token, as recomputed by a verifier's prefill.

    ``ranks[i]``: how many vocabulary entries have a strictly higher logit than claimed token i
    (0 = the claimed token is top-1). ``gaps[i]``: top-1 logit minus the claimed token's logit
    (>= 0). ``logprobs[i]``: log-softmax of the claimed token. Raw logits, no temperature.
    """

    ranks: np.ndarray  # uint32 [n]
    gaps: np.ndarray  # float32 [n]
    logprobs: np.ndarray  # float32 [n]

    def rejecting(self, positions: Sequence[int], vocab_size: int) -> TokenScores:
        """These scores with ``positions`` (claims outside the vocabulary) marked as rejected:
        the worst rank and the largest finite gap. Modifies and returns ``self``."""
        if positions:
            self.ranks[list(positions)] = vocab_size
            self.gaps[list(positions)] = np.finfo(np.float32).max
            self.logprobs[list(positions)] = np.finfo(np.float32).min
        return self


@dataclass
class _Scored:
    """A scored sequence and the model state after it: the start of the next round."""

    scope: bytes  # whose requests may reuse it
    ids: tuple[int, ...]  # prompt ids ‖ fed claimed tokens
    prompt_len: int
    past: Any  # the model's KV cache over ``ids`` (mutated in place when extended)
    next_logits: torch.Tensor  # [vocab]: the logits that predict the token after ``ids``
    ranks: np.ndarray  # raw scores of ids[prompt_len:], before out-of-vocabulary claims are marked
    gaps: np.ndarray
    logprobs: np.ndarray
    used: float


class PrefixCache:
    """The KV caches of the last few scored sequences, for re-scoring a prefix that grew.

    An entry is taken out when a longer sequence extends it (its KV cache is extended in place)
    and put back as that sequence; least recently used entries, and entries idle for ``ttl_s``,
    are dropped. Not thread-safe: the runtime's lock guards it.
    """

    def __init__(self, entries: int = PREFIX_CACHE_ENTRIES, ttl_s: float = PREFIX_CACHE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[tuple[bytes, tuple[int, ...]], _Scored] = OrderedDict()
        self._max = entries
        self._ttl_s = ttl_s
        self._clock = clock
        self.hits = 0  # rounds that extended a cached prefix (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, scope: bytes, ids: tuple[int, ...], prompt_len: int) -> _Scored | None:
        """The longest sequence of ``scope`` that ``ids`` starts with (same prompt), taken out."""
        self._expire()
        best: _Scored | None = None
        for entry in self._entries.values():
            extends = len(entry.ids) <= len(ids) and ids[: len(entry.ids)] == entry.ids
            if entry.scope == scope and entry.prompt_len == prompt_len and extends and (
                best is None or len(entry.ids) > len(best.ids)
            ):
                best = entry
        if best is not None:
            del self._entries[(best.scope, best.ids)]
            self.hits += 1
        return best

    def put(self, entry: _Scored) -> None:
        entry.used = self._clock()
        key = (entry.scope, entry.ids)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def _expire(self) -> None:
        now = self._clock()
        for key in [key for key, entry in self._entries.items() if now - entry.used > self._ttl_s]:
            del self._entries[key]


class ChatRuntime(ModelRuntime):
    """A causal LM served for chat: greedy ``generate`` and teacher-forced ``score``."""

    task = Task.CHAT
    capabilities = frozenset({Capability.GENERATE, Capability.STREAM, Capability.SCORE})

    def __init__(self, model_dir: Path, *, model_id: str, name: str | None = None) -> None:
        torch_env.configure_torch()
        self.path = Path(model_dir)
        self.model_id = model_id
        self.name = name or self.path.name
        self.prompts = PromptEncoder(self.path)
        self._model = torch_env.load_local_model(AutoModelForCausalLM, self.path)
        self.vocab_size = self.prompts.vocab_size
        self.context_length = self.prompts.context_length
        self.max_prompt_bytes = self.prompts.max_prompt_bytes
        self.eos_token_ids = self.prompts.eos_token_ids
        self.engine = EngineIdentity.torch_cpu_fp32()
        self._lock = threading.Lock()
        self.prefix_cache = PrefixCache()

    @property
    def model(self) -> torch.nn.Module:
        """The underlying torch module (read-only use: calibration measures logit drift with it)."""
        return self._model

    def variant(self, *, name: str, model: torch.nn.Module) -> ChatRuntime:
        """A copy sharing the tokenizer with another model, for calibration: it is how a cheating
        executor's substitutes (quantised, bf16, fewer layers) are produced."""
        clone = copy.copy(self)
        clone.name = name
        clone.model_id = f"{self.model_id}+{name}"
        clone._lock = threading.Lock()
        clone._model = model.eval()
        clone.prefix_cache = PrefixCache()  # KV states of another model must never be reused
        return clone

    # -- prompts --------------------------------------------------------------------------------

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt string, or of chat messages rendered by the model's chat template.

        Primary and verifiers call this with the same job input and the same tokenizer files
        (covered by the model id), so they agree on the prompt tokens without sending them.
        """
        return self.prompts.encode(prompt)

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of generated tokens, without EOS or other special tokens."""
        return self.prompts.decode(tokens)

    # -- compute --------------------------------------------------------------------------------

    def generate(self, prompt: Prompt, max_tokens: int, on_token: TokenCallback | None = None) -> Generation:
        """Greedy decoding (argmax, lowest id on ties) with a KV cache, up to ``max_tokens``.

        Stops at EOS (included in ``tokens``) or when the context is full. ``on_token`` receives
        each token with the text it completes (held back while a UTF-8 sequence is incomplete).
        """
        if max_tokens < 1:
            raise InvalidInput("max_tokens must be >= 1")
        prompt_ids = self.encode_prompt(prompt)
        budget = min(max_tokens, self.context_length - len(prompt_ids))
        tokens: list[int] = []
        deltas = TextDeltas(self.prompts)
        finish = "length"
        with self._lock, torch.inference_mode():
            input_ids = torch.tensor([prompt_ids], dtype=torch.long)
            past = None
            for step in range(budget):
                out = self._model(input_ids=input_ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = int(torch.argmax(out.logits[0, -1]).item())
                tokens.append(token)
                last = token in self.eos_token_ids or step == budget - 1
                if on_token is not None:
                    on_token(token, deltas.push(token, last=last))
                if token in self.eos_token_ids:
                    finish = "stop"
                    break
                input_ids = torch.tensor([[token]], dtype=torch.long)
        text = self.decode(tokens)
        return Generation(tuple(prompt_ids), tuple(tokens), text, finish)

    def score(
        self, prompt: Prompt, tokens: Sequence[int], *, prefix_scope: bytes | None = None
    ) -> TokenScores:
        """Teacher-forced verification of claimed ``tokens`` after ``prompt`` in one prefill.

        ``prefix_scope``: start from the cached KV state of an earlier call of the same scope
        whose sequence this one extends (a live stream's next round), and cache this call's state
        for the next; None computes from scratch and caches nothing.
        """
        return self.score_ids(self.encode_prompt(prompt), tokens, prefix_scope=prefix_scope)

    def score_ids(
        self, prompt_ids: Sequence[int], tokens: Sequence[int], *, prefix_scope: bytes | None = None
    ) -> TokenScores:
        """As ``score``, for an already tokenised prompt."""
        feed, outside = scoring_feed(prompt_ids, tokens, self.vocab_size, self.context_length)
        total = len(prompt_ids) + len(feed)
        sequence = tuple(int(t) for t in prompt_ids) + tuple(feed)
        with self._lock, torch.inference_mode():
            if prefix_scope is not None:
                rank_array, gap_array, logprob_array = self._score_extending(
                    prefix_scope, sequence, len(prompt_ids)
                )
            else:
                ids = torch.tensor([sequence], dtype=torch.long)
                logits = self._model(input_ids=ids, use_cache=False).logits[0].float()
                # Position p predicts token p+1: claimed token i is predicted at len(prompt)-1+i.
                rank_array, gap_array, logprob_array = _token_scores(
                    logits[len(prompt_ids) - 1 : total - 1], feed
                )
        scores = TokenScores(ranks=rank_array.copy(), gaps=gap_array.copy(), logprobs=logprob_array.copy())
        return scores.rejecting(outside, self.vocab_size)


    def _score_extending(
        self, scope: bytes, sequence: tuple[int, ...], prompt_len: int
    ) -> tuple[np.ndarray, ...]:
        """Raw scores of ``sequence[prompt_len:]``, prefilling only what the cache does not cover."""
        cached = self.prefix_cache.take(scope, sequence, prompt_len)
        if cached is None:
            ids = torch.tensor([sequence], dtype=torch.long)
            out = self._model(input_ids=ids, use_cache=True)
            logits = out.logits[0].float()
            scores = _token_scores(logits[prompt_len - 1 : len(sequence) - 1], sequence[prompt_len:])
            entry = _Scored(scope, sequence, prompt_len, out.past_key_values, logits[-1], *scores, used=0.0)
        elif len(cached.ids) == len(sequence):
            entry = cached
        else:
            new = sequence[len(cached.ids) :]
            out = self._model(
                input_ids=torch.tensor([new], dtype=torch.long), past_key_values=cached.past, use_cache=True
            )
            logits = out.logits[0].float()
            # the cached next-token logits predict new[0]; the new positions predict new[1:] and beyond
            window = torch.cat([cached.next_logits[None, :], logits[:-1]])
            ranks, gaps, logprobs = _token_scores(window, new)
            entry = _Scored(
                scope, sequence, prompt_len, out.past_key_values, logits[-1],
                np.concatenate([cached.ranks, ranks]), np.concatenate([cached.gaps, gaps]),
                np.concatenate([cached.logprobs, logprobs]), used=0.0,
            )
        self.prefix_cache.put(entry)
        return entry.ranks, entry.gaps, entry.logprobs


def scoring_feed(
    prompt_ids: Sequence[int], tokens: Sequence[int], vocab_size: int, context_length: int, *,
    reserve: int = 0,
) -> tuple[list[int], list[int]]:
    """Check a scoring request and return (ids to feed for the claimed tokens, positions outside
    the vocabulary); ``reserve`` is room the backend needs beyond the scored tokens.

    A claimed token outside the vocabulary is a claim this model can never make: it is the
    claimant's fault, not a bad request, so it is scored as rejected (``TokenScores.rejecting``)
    and a stand-in id feeds the forward pass for the positions after it."""
    claimed = [int(t) for t in tokens]
    if not prompt_ids:
        raise InvalidInput("empty prompt")
    if not claimed:
        raise InvalidInput("no tokens to score")
    if any(t < 0 or t >= vocab_size for t in prompt_ids):
        raise InvalidInput(f"prompt token ids must lie in [0, {vocab_size})")
    total = len(prompt_ids) + len(claimed)
    if total + reserve > context_length:
        raise InvalidInput(f"{total} tokens exceed the context of {context_length}")
    outside = [i for i, t in enumerate(claimed) if t < 0 or t >= vocab_size]
    feed = [t if 0 <= t < vocab_size else 0 for t in claimed]
    return feed, outside


def _token_scores(window: torch.Tensor, claimed: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank, gap to top-1, log-probability) of each claimed token under its row of logits."""
    target = torch.tensor(list(claimed), dtype=torch.long)
    claimed_logit = window.gather(1, target[:, None])[:, 0]
    ranks = (window > claimed_logit[:, None]).sum(dim=1)
    gaps = window.max(dim=1).values - claimed_logit
    logprobs = torch.log_softmax(window, dim=1).gather(1, target[:, None])[:, 0]
    return (ranks.numpy().astype(np.uint32), gaps.numpy().astype(np.float32),
            logprobs.numpy().astype(np.float32))

