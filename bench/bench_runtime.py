"""In-process model runtime figures: the baselines network jobs are compared against.

Rows:
- embedding latency for one text, against sentence-transformers' ``encode`` of the same text;
- embedding throughput (texts/s) at batch 1, 8 and 32, against sentence-transformers at the same
  batch size (the ratio is ours/theirs: >= 1 means no slower than the reference library);
- the trio ``EmbeddingBatcher`` fed 32 concurrent one-text requests, against one direct
  ``embed`` call of the same 32 texts (what dynamic batching recovers of batched speed);
- chat on veilnet-tiny-random-lm: greedy generation of 32 tokens against the teacher-forced
  prefill that verifies them (why verifiers re-score instead of regenerating); and a live
  stream's verification rounds (every 16 tokens) extending the verifier's KV cache against each
  round prefilling the whole prefix again.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import trio

from bench import Result, measure, measure_pair
from node.runtime import (
    MINILM_NAME,
    TINY_LM_NAME,
    ChatRuntime,
    EmbeddingBatcher,
    EmbeddingRuntime,
    load_runtime,
    minilm_dir,
)

SENTENCE = "Confidential inference runs on attested peers that cross-check each other's answers."
TEXTS = [f"{SENTENCE} Request {i} asks about topic {i * 7 % 13}." for i in range(32)]
MESSAGES = [{"role": "user", "content": "Tell me a story about a lighthouse."}]


def _embedding_rows(runtime: EmbeddingRuntime) -> list[Result]:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    rows: list[Result] = []
    ours, theirs = measure_pair(
        lambda: runtime.embed([SENTENCE]),
        lambda: reference.encode([SENTENCE], convert_to_numpy=True),
        min_time=2.0,
    )
    rows.append(
        Result(
            name="embed latency, 1 text (all-MiniLM-L6-v2)",
            value=ours * 1000,
            unit="ms",
            baseline=theirs * 1000,
            baseline_name="sentence-transformers encode, 1 text",
            ratio=ours / theirs,
            goal="<= 1.0x the reference library",
        )
    )
    for batch in (1, 8, 32):
        texts = TEXTS[:batch]

        def ours_fn(texts: list[str] = texts) -> object:
            return runtime.embed(texts)

        def theirs_fn(texts: list[str] = texts, batch: int = batch) -> object:
            return reference.encode(texts, batch_size=batch, convert_to_numpy=True)

        ours, theirs = measure_pair(ours_fn, theirs_fn, min_time=2.0)
        rows.append(
            Result(
                name=f"embed throughput, batch {batch}",
                value=batch / ours,
                unit="texts/s",
                baseline=batch / theirs,
                baseline_name=f"sentence-transformers encode, batch {batch}",
                ratio=theirs / ours,
                goal=">= 1.0x the reference library",
            )
        )
    return rows


async def _through_batcher(runtime: EmbeddingRuntime, rounds: int) -> float:
    batcher = EmbeddingBatcher(runtime, max_batch_size=32, max_wait_ms=2)

    async def one(text: str) -> None:
        await batcher.embed([text])

    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)
        await one(SENTENCE)  # warm up
        started = time.perf_counter()
        for _ in range(rounds):
            async with trio.open_nursery() as callers:
                for text in TEXTS:
                    callers.start_soon(one, text)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return rounds * len(TEXTS) / elapsed


def _batcher_row(runtime: EmbeddingRuntime) -> Result:
    direct = len(TEXTS) / measure(lambda: runtime.embed(TEXTS), min_time=1.0)
    batched = trio.run(_through_batcher, runtime, 10)
    return Result(
        name="EmbeddingBatcher, 32 concurrent 1-text requests",
        value=batched,
        unit="texts/s",
        baseline=direct,
        baseline_name="one direct embed() of the same 32 texts",
        ratio=batched / direct,
        goal=">= 0.8x direct batched inference",
    )


def _chat_row(runtime: ChatRuntime) -> Result:
    generation = runtime.generate(MESSAGES, 32)
    tokens = generation.tokens
    generate_s, score_s = measure_pair(
        lambda: runtime.generate(MESSAGES, 32), lambda: runtime.score_ids(generation.prompt_tokens, tokens)
    )
    return Result(
        name=f"tiny LM: verify {len(tokens)} tokens by one prefill",
        value=score_s * 1000,
        unit="ms",
        baseline=generate_s * 1000,
        baseline_name=f"greedy generation of the same {len(tokens)} tokens",
        ratio=generate_s / score_s,
        goal="verification several times cheaper than generation (ratio = speed-up)",
    )


def _stream_rounds_row(runtime: ChatRuntime) -> Result:
    """A live stream's verification: its prefix re-scored every 16 tokens, as one verifier sees it."""
    generation = runtime.generate(MESSAGES, 64)
    prompt, tokens = generation.prompt_tokens, generation.tokens
    ends = [*range(16, len(tokens), 16), len(tokens)]

    def rounds(scope: bytes | None) -> None:
        runtime.prefix_cache.clear()
        for end in ends:
            runtime.score_ids(prompt, tokens[:end], prefix_scope=scope)

    extend_s, prefill_s = measure_pair(lambda: rounds(b"bench"), lambda: rounds(None))
    return Result(
        name=f"tiny LM: verify a {len(tokens)}-token stream in {len(ends)} rounds, extending the KV cache",
        value=extend_s * 1000,
        unit="ms",
        baseline=prefill_s * 1000,
        baseline_name="each round prefilling the whole prefix",
        ratio=extend_s / prefill_s,
        goal="< 1× (the rounds cost about one prefill in all)",
    )


def run() -> list[Result]:
    embeddings = load_runtime(MINILM_NAME)
    assert isinstance(embeddings, EmbeddingRuntime)
    rows = _embedding_rows(embeddings)
    rows.append(_batcher_row(embeddings))
    with tempfile.TemporaryDirectory() as tmp:
        chat = load_runtime(TINY_LM_NAME, models_dir=Path(tmp))
        assert isinstance(chat, ChatRuntime)
        rows.append(_chat_row(chat))
        rows.append(_stream_rounds_row(chat))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row.to_dict())
