"""Reproduce the comparator bounds in protocol/jobs/consensus.py (docs/CALIBRATION.md).

    python -m simulations.calibrate [--texts 480] [--prompts 40] [--json out.json]
    python -m simulations.calibrate --no-embeddings --chat-model SmolLM2-135M-Instruct --prompts 12

Honest runs vary everything an honest CPU executor may vary without changing the model: torch
thread count (1, 2), batch size (1, 8, 32) and batch composition (length-sorted vs shuffled
neighbours, which changes padding). The worst honest deviation over every pair of honest runs
sets the bound at 1.5x. Substitutes a cheating executor might run instead (int8 / bf16 model,
a layer dropped, truncated context, a perturbed or int8-quantised output, another text's vector;
for chat: swapped-in second-choice or random tokens, bf16 compute, int8 Linear layers, a layer
dropped, a different random LM for the tiny model, SmolLM2's GGUF weights without the bf16
rounding) must fall outside.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.runtime import torch_env
from node.runtime.embeddings import EmbeddingRuntime
from node.runtime.generation import ChatRuntime
from node.runtime.loader import default_models_dir, minilm_dir
from node.runtime.smollm2 import SMOLLM2_NAME, ensure_smollm2
from node.runtime.tiny_lm import TINY_LM_NAME, write_random_lm
from protocol.jobs.consensus import EmbeddingBounds, compare_embeddings

HEADROOM = 1.5

_VOCABULARY_TEXT = (
    "the a an network peer node model vector answer secure enclave attested evidence quorum vote result "
    "river mountain city market coffee winter summer train station library museum garden kitchen window "
    "quickly slowly carefully brightly quietly never always often sometimes together apart inside outside "
    "compute verify encrypt decrypt gossip route batch queue stream token prompt embed generate measure "
    "red green blue yellow seven eleven hundred thousand million first second third last little large "
    "é ü ß 東京 données naïve café résumé 123 4.56 -7 x=y+z (a, b) [c] {d}; http://example.org/path?q=1"
)
_VOCABULARY = _VOCABULARY_TEXT.split()

_FIXED = [
    "",
    " ",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Confidential inference runs inside attested trusted execution environments.",
    "def f(x):\n    return x * 2  # code",
    "数据 隐私 与 安全",
    "🙂 emoji and symbols ©®™",
    "A" * 2000,
    "word " * 400,
]


def corpus(count: int, seed: int = 7) -> list[str]:
    """Deterministic texts of very different lengths (some beyond the 256-token limit)."""
    rng = random.Random(seed)
    texts = list(_FIXED)
    while len(texts) < count:
        bucket = rng.random()
        words = (
            rng.randint(1, 12)
            if bucket < 0.4
            else rng.randint(13, 60)
            if bucket < 0.8
            else rng.randint(61, 320)
        )
        sentence = " ".join(rng.choice(_VOCABULARY) for _ in range(words))
        texts.append(sentence[:1].upper() + sentence[1:] + rng.choice([".", "?", "!", ""]))
    return texts[:count]


def run_embeddings(
    runtime: EmbeddingRuntime, texts: Sequence[str], batch: int, order: Sequence[int]
) -> np.ndarray:
    """Embed texts in explicit batches (the batch composition is exactly ``order`` chunked)."""
    out = np.empty((len(texts), runtime.dim), dtype=np.float32)
    for start in range(0, len(order), batch):
        rows = list(order[start : start + batch])
        out[rows] = runtime.embed([texts[i] for i in rows])
    return out


def _row_metrics(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = a.astype(np.float64), b.astype(np.float64)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    cos = (x * y).sum(axis=1) / np.maximum(nx * ny, 1e-300)
    rel = np.linalg.norm(x - y, axis=1) / np.maximum(np.maximum(nx, ny), 1e-300)
    return 1.0 - cos, rel


def calibrate_embeddings(n_texts: int, log: Callable[[str], None]) -> dict[str, Any]:
    texts = corpus(n_texts)
    runtime = EmbeddingRuntime(minilm_dir(), model_id="calibration", name="all-MiniLM-L6-v2")
    lengths = [
        len(ids)
        for ids in runtime.tokenizer(texts, truncation=True, max_length=runtime.max_seq_length)["input_ids"]
    ]
    by_length = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    shuffled = list(range(len(texts)))
    random.Random(11).shuffle(shuffled)
    honest: dict[str, np.ndarray] = {}
    for threads in (1, 2):
        torch_env.configure_torch(threads)
        for batch in (1, 8, 32):
            for label, order in (("sorted", by_length), ("shuffled", shuffled)):
                if batch == 1 and label == "shuffled":
                    continue  # a batch of one has no neighbours
                name = f"threads={threads} batch={batch} {label}"
                started = time.perf_counter()
                honest[name] = run_embeddings(runtime, texts, batch, order)
                log(f"  honest run {name}: {time.perf_counter() - started:.1f}s")
    torch_env.configure_torch()
    worst_cos, worst_rel, worst_pair_cos, worst_pair_rel = 0.0, 0.0, "", ""
    for (name_a, a), (name_b, b) in combinations(honest.items(), 2):
        one_minus_cos, rel = _row_metrics(a, b)
        if one_minus_cos.max() > worst_cos:
            worst_cos, worst_pair_cos = float(one_minus_cos.max()), f"{name_a} vs {name_b}"
        if rel.max() > worst_rel:
            worst_rel, worst_pair_rel = float(rel.max()), f"{name_a} vs {name_b}"
    bounds = EmbeddingBounds(min_cosine=1.0 - HEADROOM * worst_cos, max_rel_l2=HEADROOM * worst_rel)
    log(f"  worst honest 1-cos {worst_cos:.3e} ({worst_pair_cos}); rel L2 {worst_rel:.3e} ({worst_pair_rel})")

    reference = honest["threads=2 batch=32 sorted"]
    substitutes: dict[str, np.ndarray] = {}
    torch_env.configure_torch()
    quantised = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(runtime.model), {torch.nn.Linear}, dtype=torch.qint8
    )
    substitutes["int8 dynamic-quantised model"] = run_embeddings(
        runtime.variant(name="int8", model=quantised), texts, 32, by_length
    )
    substitutes["bf16 model"] = run_embeddings(
        runtime.variant(name="bf16", model=_BFloat16(copy.deepcopy(runtime.model))), texts, 32, by_length
    )
    fewer: Any = copy.deepcopy(runtime.model)
    fewer.encoder.layer = fewer.encoder.layer[:5]
    substitutes["5 of 6 layers"] = run_embeddings(
        runtime.variant(name="5-layers", model=fewer), texts, 32, by_length
    )
    truncated = run_embeddings(runtime.variant(name="ctx128", max_seq_length=128), texts, 32, by_length)
    long_rows = [i for i, n in enumerate(lengths) if n > 128]
    rng = np.random.default_rng(5)
    noise = rng.standard_normal(reference.shape)
    for scale in (1e-3, 3e-3):
        perturbed = reference + scale * noise / np.linalg.norm(noise, axis=1, keepdims=True) * np.linalg.norm(
            reference, axis=1, keepdims=True
        )
        substitutes[f"perturbed output (relative noise {scale:g})"] = perturbed.astype(np.float32)
    peak = np.abs(reference).max(axis=1, keepdims=True)
    substitutes["int8-quantised output"] = (np.round(reference / peak * 127) / 127 * peak).astype(np.float32)
    substitutes["another text's vector"] = np.roll(reference, 1, axis=0)

    adversarial: dict[str, dict[str, float]] = {}
    for name, vectors in [
        *substitutes.items(),
        ("context truncated to 128 tokens (long texts only)", truncated),
    ]:
        rows = long_rows if name.startswith("context") else list(range(len(texts)))
        one_minus_cos, rel = _row_metrics(reference[rows], vectors[rows])
        flagged = [not compare_embeddings(reference[[i]], vectors[[i]], bounds).agree for i in rows]
        adversarial[name] = {
            "rows": len(rows),
            "min_1_minus_cos": float(one_minus_cos.min()),
            "min_rel_l2": float(rel.min()),
            "detected_fraction": sum(flagged) / len(rows),
        }
        log(
            f"  {name}: min 1-cos {one_minus_cos.min():.3e}, min rel L2 {rel.min():.3e}, "
            f"detected {sum(flagged)}/{len(rows)}"
        )
    return {
        "texts": len(texts),
        "honest_runs": list(honest),
        "worst_honest_1_minus_cos": worst_cos,
        "worst_honest_pair_cos": worst_pair_cos,
        "worst_honest_rel_l2": worst_rel,
        "worst_honest_pair_rel_l2": worst_pair_rel,
        "bound_min_cosine": bounds.min_cosine,
        "bound_1_minus_cos": HEADROOM * worst_cos,
        "bound_max_rel_l2": bounds.max_rel_l2,
        "adversarial": adversarial,
    }


class _BFloat16(torch.nn.Module):
    """Runs a module in bfloat16 and returns float32 states, like a cheaper low-precision executor."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.inner = module.to(dtype=torch.bfloat16)

    def forward(self, **inputs: Any) -> Any:
        out = self.inner(**inputs)
        out.last_hidden_state = out.last_hidden_state.float()
        return out


_PROMPTS = [
    "Tell me a story about a lighthouse.",
    "What is the capital of France?",
    "hello",
    "Explain attestation.",
    "List three colours.",
    "Why is the sky blue?",
    "Write a haiku about trains.",
    "2 + 2 = ?",
]


def prompts(count: int, seed: int = 3) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        text = (
            _PROMPTS[i % len(_PROMPTS)]
            if i < len(_PROMPTS)
            else " ".join(rng.choice(_VOCABULARY) for _ in range(rng.randint(1, 40)))
        )
        out.append([{"role": "user", "content": text}])
    return out


def calibrate_chat(
    runtime: ChatRuntime,
    substitutes: dict[str, ChatRuntime],
    n_prompts: int,
    max_tokens: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    worst_gap, worst_drift, non_top1, positions = 0.0, 0.0, 0, 0
    generations = []
    for threads in (1, 2):
        torch_env.configure_torch(threads)
        for messages in prompts(n_prompts):
            generation = runtime.generate(messages, max_tokens)
            generations.append(generation)
            for verifier_threads in (1, 2):
                torch_env.configure_torch(verifier_threads)
                scores = runtime.score_ids(generation.prompt_tokens, generation.tokens)
                worst_gap = max(worst_gap, float(scores.gaps.max()))
                non_top1 += int((scores.ranks > 0).sum())
                positions += len(scores.ranks)
            torch_env.configure_torch(threads)
            # logit drift between the primary's KV-cache decode and a one-shot prefill
            with torch.inference_mode():
                ids = torch.tensor([list(generation.prompt_tokens) + list(generation.tokens)])
                prefill = runtime.model(input_ids=ids).logits[0].float()
                past, step_ids, decode_rows = None, torch.tensor([list(generation.prompt_tokens)]), []
                for token in generation.tokens:
                    out = runtime.model(input_ids=step_ids, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    decode_rows.append(out.logits[0, -1].float())
                    step_ids = torch.tensor([[token]])
                start = len(generation.prompt_tokens) - 1
                drift = (
                    (torch.stack(decode_rows) - prefill[start : start + len(generation.tokens)]).abs().max()
                )
                worst_drift = max(worst_drift, float(drift))
    torch_env.configure_torch()
    bound = HEADROOM * max(worst_gap, 2 * worst_drift)
    log(
        f"  chat: {positions} honest positions, {non_top1} not top-1, worst honest gap {worst_gap:.3e}, "
        f"worst decode/prefill logit drift {worst_drift:.3e} -> bound {bound:.3e}"
    )

    rng = random.Random(13)
    swapped_detected = swapped_total = random_detected = 0
    margins = []
    for generation in generations[: len(generations) // 2]:
        with torch.inference_mode():
            ids = torch.tensor([list(generation.prompt_tokens) + list(generation.tokens)])
            logits = runtime.model(input_ids=ids).logits[0].float()
        position = rng.randrange(len(generation.tokens))
        row = logits[len(generation.prompt_tokens) - 1 + position]
        top2 = torch.topk(row, 2)
        second = int(top2.indices[1])
        margins.append(float(top2.values[0] - top2.values[1]))
        tampered = list(generation.tokens)
        tampered[position] = second
        tampered_scores = runtime.score_ids(generation.prompt_tokens, tampered)
        swapped_total += 1
        swapped_detected += int(tampered_scores.gaps[position] > bound)
        tampered[position] = (
            generation.tokens[position] + 1 + rng.randrange(runtime.vocab_size - 1)
        ) % runtime.vocab_size
        random_scores = runtime.score_ids(generation.prompt_tokens, tampered)
        random_detected += int(random_scores.gaps.max() > bound)
    result: dict[str, Any] = {
        "model": runtime.name,
        "prompts": n_prompts,
        "max_tokens": max_tokens,
        "generations": len(generations),
        "positions": positions,
        "honest_non_top1_positions": non_top1,
        "worst_honest_gap": worst_gap,
        "worst_decode_prefill_logit_drift": worst_drift,
        "bound_max_logit_gap": bound,
        "swap_to_second_choice_detected": f"{swapped_detected}/{swapped_total}",
        "swap_margin_min": min(margins),
        "swap_to_random_token_detected": f"{random_detected}/{swapped_total}",
        "substitutes": {},
    }
    honest_by_prompt = generations[n_prompts:]  # the threads=2 generations, one per prompt
    for name, substitute in substitutes.items():
        detected = differing = positions_detected = sub_positions = 0
        smallest_worst_gap = float("inf")
        for messages, honest in zip(prompts(n_prompts), honest_by_prompt, strict=True):
            generation = substitute.generate(messages, max_tokens)
            scores = runtime.score_ids(generation.prompt_tokens, generation.tokens)
            bad = scores.gaps > bound
            detected += int(bad.any())
            differing += int(generation.tokens != honest.tokens)
            positions_detected += int(bad.sum())
            sub_positions += len(bad)
            if generation.tokens != honest.tokens:
                smallest_worst_gap = min(smallest_worst_gap, float(scores.gaps.max()))
        result["substitutes"][name] = {
            "outputs_detected": f"{detected}/{n_prompts}",
            "outputs_differing_from_honest": f"{differing}/{n_prompts}",
            "positions_detected": f"{positions_detected}/{sub_positions}",
            # null when every output equals the honest one (nothing to detect)
            "smallest_worst_gap_of_a_differing_output": (
                None if smallest_worst_gap == float("inf") else smallest_worst_gap
            ),
        }
        log(f"  chat substitute {name}: {json.dumps(result['substitutes'][name])}")
    log(f"  chat swaps detected: second choice {result['swap_to_second_choice_detected']}, "
        f"random token {result['swap_to_random_token_detected']}")
    return result


def chat_substitutes(runtime: ChatRuntime, other_dir: Path | None) -> dict[str, ChatRuntime]:
    """Cheaper or different models a cheating executor might serve under the honest model's id."""
    torch_env.configure_torch()
    substitutes: dict[str, ChatRuntime] = {}
    if other_dir is not None:
        substitutes["a different model of the same shape"] = ChatRuntime(
            other_dir, model_id="calibration-other"
        )
    substitutes["bf16 compute"] = runtime.variant(
        name="bf16", model=copy.deepcopy(runtime.model).to(dtype=torch.bfloat16)
    )
    substitutes["int8 dynamic-quantised Linear layers"] = runtime.variant(
        name="int8",
        model=torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(runtime.model), {torch.nn.Linear}, dtype=torch.qint8
        ),
    )
    fewer: Any = copy.deepcopy(runtime.model)
    layers = fewer.model.layers if hasattr(fewer, "model") else fewer.transformer.h
    del layers[-1]
    fewer.config.num_hidden_layers = len(layers)
    substitutes["last layer dropped"] = runtime.variant(name="fewer-layers", model=fewer)
    return substitutes


def smollm2_unrounded(runtime: ChatRuntime) -> ChatRuntime:
    """SmolLM2 straight from the GGUF in float32, without the converter's bfloat16 rounding: the
    closest substitute there is (same quantised weights, each off by at most half a bf16 step)."""
    from transformers import AutoModelForCausalLM

    from node.runtime.smollm2 import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
    )
    return runtime.variant(name="gguf-fp32", model=model)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=480)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument(
        "--chat-model", choices=(TINY_LM_NAME, SMOLLM2_NAME), default=TINY_LM_NAME,
        help="the chat model to calibrate (each has its own bound in protocol/jobs/consensus.py)",
    )
    parser.add_argument("--no-embeddings", action="store_true", help="calibrate the chat model only")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    report: dict[str, Any] = {"headroom": HEADROOM}
    bounds: dict[str, float] = {}
    if not args.no_embeddings:
        log(f"embeddings: all-MiniLM-L6-v2, {args.texts} texts")
        embeddings = calibrate_embeddings(args.texts, log)
        report["embeddings"] = embeddings
        bounds["bound_min_cosine"] = embeddings["bound_min_cosine"]
        bounds["bound_max_rel_l2"] = embeddings["bound_max_rel_l2"]
    with tempfile.TemporaryDirectory() as tmp:
        log(f"chat: {args.chat_model}, {args.prompts} prompts x {args.max_tokens} tokens")
        if args.chat_model == SMOLLM2_NAME:
            # the model store's copy (converted on first use), as a node would serve it
            runtime = ChatRuntime(ensure_smollm2(default_models_dir() / SMOLLM2_NAME), model_id="calibration",
                                  name=SMOLLM2_NAME)
            substitutes = {"GGUF weights in fp32 (no bf16 rounding)": smollm2_unrounded(runtime)}
            substitutes.update(chat_substitutes(runtime, None))
        else:
            model_dir, other_dir = Path(tmp) / "lm", Path(tmp) / "other"
            model_dir.mkdir()
            other_dir.mkdir()
            write_random_lm(model_dir)
            write_random_lm(other_dir, seed=99)
            runtime = ChatRuntime(model_dir, model_id="calibration", name=TINY_LM_NAME)
            substitutes = chat_substitutes(runtime, other_dir)
        chat = calibrate_chat(runtime, substitutes, args.prompts, args.max_tokens, log)
    report["chat"] = chat
    bounds["bound_max_logit_gap"] = chat["bound_max_logit_gap"]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    log(json.dumps(bounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
