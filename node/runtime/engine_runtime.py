"""A chat model served by an external engine (vLLM) behind the same interface as the torch runtime.

The executor cannot tell the two apart: ``generate`` and ``score`` take the same prompts and
return the same ``Generation`` and ``TokenScores``. Prompts are encoded here with the model
directory's tokenizer (``node.runtime.prompts``) and sent as ids; the engine's prompt logprobs
(the claimed token's logprob and 1-based rank, and the position's top-1 logprob) become the
comparator's rank (0 = top-1) and logit gap (top-1 minus claimed: log-softmax keeps differences
of logits, so the gap is the same number the torch runtime computes from raw logits).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from node import timeline
from node.runtime.base import Capability, EngineIdentity, ModelRuntime, Task
from node.runtime.engine_client import EngineClient, EngineUnavailable
from node.runtime.errors import InvalidInput
from node.runtime.generation import Generation, TokenCallback, TokenScores, scoring_feed
from node.runtime.prompts import Prompt, PromptEncoder, TextDeltas

__all__ = ["EngineChatRuntime"]

SCORING_FAMILIES = frozenset({"vllm"})  # engines whose OpenAI API returns ranked prompt logprobs


class EngineChatRuntime(ModelRuntime):
    """Chat through an engine; ``engine`` is its attested identity (family, version, dtype, device).

    ``max_concurrency`` bounds requests in flight to the engine from this runtime (the engine
    batches concurrent requests itself; the node's compute limiter is not held for engine calls).
    """

    task = Task.CHAT
    in_process = False

    def __init__(
        self, model_dir: Path, *, model_id: str, client: EngineClient, engine: EngineIdentity,
        name: str | None = None, context_length: int | None = None, max_concurrency: int = 8,
    ) -> None:
        self.path = Path(model_dir)
        self.model_id = model_id
        self.name = name or self.path.name
        self.client = client
        self.engine = engine
        self.prompts = PromptEncoder(self.path)
        self.vocab_size = self.prompts.vocab_size
        self.context_length = min(self.prompts.context_length, context_length or self.prompts.context_length)
        self.max_prompt_bytes = self.prompts.max_prompt_bytes
        self.eos_token_ids = self.prompts.eos_token_ids
        caps = {Capability.GENERATE, Capability.STREAM}
        if engine.score:
            caps.add(Capability.SCORE)
        self.capabilities = frozenset(caps)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._salt_key = os.urandom(32)  # per runtime: salts cannot be guessed from outside

    def _cache_salt(self, scope: bytes | None) -> str:
        """The engine prefix-cache salt of a request: a live stream's verification rounds (one
        ``scope``, the requesting client) share cached blocks, as the torch runtime's PrefixCache
        does; anything else gets a salt of its own, so no user can time another's prompts."""
        if scope is None:
            return os.urandom(16).hex()
        return hmac.new(self._salt_key, scope, hashlib.sha256).hexdigest()

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        return self.prompts.encode(prompt)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.prompts.decode(tokens)

    def generate(self, prompt: Prompt, max_tokens: int, on_token: TokenCallback | None = None) -> Generation:
        """Greedy completion by the engine; ``on_token`` gets each token as its SSE delta arrives."""
        if max_tokens < 1:
            raise InvalidInput("max_tokens must be >= 1")
        prompt_ids = self.encode_prompt(prompt)
        timeline.mark("engine.encoded")
        budget = min(max_tokens, self.context_length - len(prompt_ids))
        deltas = TextDeltas(self.prompts)

        def forward(token: int) -> None:
            assert on_token is not None
            if not deltas.tokens:
                timeline.mark("engine.first_token")
            last = token in self.eos_token_ids or len(deltas.tokens) + 1 >= budget
            on_token(token, deltas.push(token, last=last))

        with self._slots:
            done = self.client.complete(
                prompt_ids, budget, sorted(self.eos_token_ids), on_token=forward if on_token else None,
                cache_salt=self._cache_salt(None),
            )
        tokens = list(done.tokens)
        if any(t < 0 or t >= self.vocab_size for t in tokens):
            raise EngineUnavailable("the engine produced a token outside the model's vocabulary")
        finish = "stop" if tokens and tokens[-1] in self.eos_token_ids else "length"
        if done.finish_reason == "stop" and finish != "stop":
            raise EngineUnavailable("the engine stopped without producing an EOS token")
        return Generation(tuple(prompt_ids), tuple(tokens), self.decode(tokens), finish)

    def score(
        self, prompt: Prompt, tokens: Sequence[int], *, prefix_scope: bytes | None = None
    ) -> TokenScores:
        return self.score_ids(self.encode_prompt(prompt), tokens, prefix_scope=prefix_scope)

    def score_ids(
        self, prompt_ids: Sequence[int], tokens: Sequence[int], *, prefix_scope: bytes | None = None
    ) -> TokenScores:
        """Teacher-forced scores of ``tokens`` after ``prompt_ids`` from one engine prefill.

        ``prefix_scope`` (the requesting client) lets a live stream's rounds reuse the engine's
        cached KV blocks of the earlier rounds (same leading ids, same salt)."""
        if Capability.SCORE not in self.capabilities:
            raise InvalidInput(f"the {self.engine.family} engine cannot score tokens (no prompt logprobs)")
        # reserve=1: the engine needs room for its one generated token.
        feed, outside = scoring_feed(prompt_ids, tokens, self.vocab_size, self.context_length, reserve=1)
        with self._slots:
            salt = self._cache_salt(prefix_scope)
            positions = self.client.prompt_logprobs([*prompt_ids, *feed], cache_salt=salt)
        window = positions[len(prompt_ids) - 1 :]
        ranks = np.array([p.rank - 1 for p in window], dtype=np.uint32)
        gaps = np.array([max(0.0, p.top_logprob - p.logprob) for p in window], dtype=np.float32)
        logprobs = np.array([p.logprob for p in window], dtype=np.float32)
        # A rank counts strictly better tokens: a tie with the top-1 (gap 0) is rank 0, and a
        # token that is not top-1 has a positive gap, as the comparator's decoder insists.
        gaps[ranks == 0] = 0.0
        ranks[gaps == 0.0] = 0
        return TokenScores(ranks=ranks, gaps=gaps, logprobs=logprobs).rejecting(outside, self.vocab_size)
