"""Calibrate the chat comparator across engines: torch fp32 CPU vs vLLM bf16 CPU (docs/CALIBRATION.md).

    python -m simulations.calibrate_engines --model-dir DIR --engine-python /venv-vllm/bin/python
    python -m simulations.calibrate_engines --model-dir DIR --engine-url http://127.0.0.1:PORT --api-key K

For every pair (primary profile, verifier profile) the primary generates greedily and the verifier
scores the primary's tokens with one teacher-forced prefill, exactly as in a job; the worst honest
logit gap of the pair, times ``HEADROOM``, is its bound (protocol.numerics). Substitutes show what
a bound lets through: every answer token swapped for the verifier's second choice, and answers of
the same model with perturbed weights (another checkpoint under the same name).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trio

from node.runtime.base import EngineIdentity
from node.runtime.engine_client import EngineClient
from node.runtime.engine_runtime import EngineChatRuntime
from node.runtime.engine_supervisor import EngineLaunch, EngineSupervisor
from node.runtime.generation import ChatRuntime, Generation
from simulations.calibrate import HEADROOM, prompts

__all__ = ["calibrate_pairs", "main"]

Scorer = Callable[[Sequence[int], Sequence[int]], Any]


def _pair(primary: Any, verifier: Any, gens: list[Generation]) -> dict[str, Any]:
    worst, non_top1, positions, worst_case = 0.0, 0, 0, None
    for g in gens:
        s = verifier.score_ids(g.prompt_tokens, g.tokens)
        positions += len(s.ranks)
        non_top1 += int((s.ranks > 0).sum())
        if float(s.gaps.max()) > worst:
            worst = float(s.gaps.max())
            i = int(np.argmax(s.gaps))
            worst_case = {"prompt": primary.decode(g.prompt_tokens[-12:]), "position": i,
                          "claimed": primary.decode([g.tokens[i]]), "rank": int(s.ranks[i]), "gap": worst}
    return {"positions": positions, "non_top1": non_top1, "worst_gap": worst, "worst_case": worst_case}


def calibrate_pairs(torch_rt: ChatRuntime, engine_rt: EngineChatRuntime, n_prompts: int, max_tokens: int,
                    other_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    corpus = prompts(n_prompts)
    started = time.monotonic()
    torch_gens = [torch_rt.generate(m, max_tokens) for m in corpus]
    log(f"  torch generated {len(torch_gens)} answers in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    engine_gens = [engine_rt.generate(m, max_tokens) for m in corpus]
    log(f"  vllm generated {len(engine_gens)} answers in {time.monotonic() - started:.0f} s")
    same_answers = sum(a.tokens == b.tokens for a, b in zip(torch_gens, engine_gens, strict=True))
    pairs = {
        "torch->torch": _pair(torch_rt, torch_rt, torch_gens),
        "torch->vllm": _pair(torch_rt, engine_rt, torch_gens),
        "vllm->torch": _pair(engine_rt, torch_rt, engine_gens),
        "vllm->vllm": _pair(engine_rt, engine_rt, engine_gens),
    }
    for name, figures in pairs.items():
        figures["bound"] = HEADROOM * figures["worst_gap"]
        log(f"  {name}: {figures['positions']} positions, {figures['non_top1']} not top-1, worst gap "
            f"{figures['worst_gap']:.4f} -> bound {figures['bound']:.4f}; worst case {figures['worst_case']}")
    cross_bound = max(pairs[p]["bound"] for p in ("torch->vllm", "vllm->torch", "vllm->vllm"))
    # Substitutes judged with the widest cross-engine bound.
    rng = random.Random(5)
    swapped = caught = 0
    for g in torch_gens:
        s = torch_rt.score_ids(g.prompt_tokens, g.tokens)
        del s
        position = rng.randrange(len(g.tokens))
        with torch.inference_mode():
            ids = torch.tensor([list(g.prompt_tokens) + list(g.tokens)])
            row = torch_rt.model(input_ids=ids).logits[0, len(g.prompt_tokens) - 1 + position].float()
        tampered = list(g.tokens)
        tampered[position] = int(torch.topk(row, 2).indices[1])
        for verifier in (torch_rt, engine_rt):
            scores = verifier.score_ids(g.prompt_tokens, tampered)
            swapped += 1
            caught += int(float(scores.gaps[position]) > cross_bound)
    other = ChatRuntime(other_dir, model_id="perturbed")
    other_caught = 0
    for m in corpus:
        g = other.generate(m, max_tokens)
        other_caught += int(float(engine_rt.score_ids(g.prompt_tokens, g.tokens).gaps.max()) > cross_bound)
    result = {
        "headroom": HEADROOM, "prompts": n_prompts, "max_tokens": max_tokens,
        "torch_engine": torch_rt.engine.describe(), "vllm_engine": engine_rt.engine.describe(),
        "identical_answers_torch_vs_vllm": f"{same_answers}/{n_prompts}",
        "pairs": pairs, "cross_bound": cross_bound,
        "swap_to_second_choice_detected": f"{caught}/{swapped}",
        "perturbed_weights_answers_detected": f"{other_caught}/{n_prompts}",
    }
    log(f"  substitutes: swap {caught}/{swapped}, perturbed weights {other_caught}/{n_prompts}")
    return result


def write_perturbed(model_dir: Path, dest: Path, scale: float = 0.02, seed: int = 11) -> Path:
    """A copy of the model with every weight matrix nudged by ``scale`` of its own spread."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            (dest / item.name).write_bytes(item.read_bytes())
    generator = torch.Generator().manual_seed(seed)
    for weights in model_dir.glob("*.safetensors"):
        tensors = load_file(str(weights))
        for name, t in tensors.items():
            if t.ndim == 2:
                noise = torch.randn(t.shape, generator=generator) * float(t.float().std()) * scale
                tensors[name] = (t.float() + noise).to(t.dtype).contiguous()
        save_file(tensors, str(dest / weights.name), metadata={"format": "pt"})
    return dest


async def _with_engine(args: argparse.Namespace, body: Callable[[EngineClient], Any]) -> Any:
    if args.engine_url:
        client = EngineClient(args.engine_url, args.api_key, args.served_name)
        return await trio.to_thread.run_sync(body, client)
    supervisor = EngineSupervisor(EngineLaunch(model_dir=args.model_dir, served_name=args.served_name,
                                               python=args.engine_python, log_path=args.engine_log))
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        print(f"engine ready in {supervisor.last_start_s:.0f} s", flush=True)
        result = await trio.to_thread.run_sync(body, supervisor.client)
        nursery.cancel_scope.cancel()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--engine-python", default="", help="launch vLLM with this interpreter")
    parser.add_argument("--engine-url", default="", help="or attach to a running vLLM here")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--served-name", default="calibration")
    parser.add_argument("--engine-log", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    torch_rt = ChatRuntime(args.model_dir, model_id="calibration")

    def body(client: EngineClient) -> dict[str, Any]:
        identity = EngineIdentity("vllm", client.version(), "bfloat16", "cpu")
        engine_rt = EngineChatRuntime(args.model_dir, model_id="calibration", client=client, engine=identity)
        with tempfile.TemporaryDirectory() as tmp:
            other = write_perturbed(args.model_dir, Path(tmp) / "perturbed")
            log(f"chat across engines: {args.prompts} prompts x {args.max_tokens} tokens")
            return calibrate_pairs(torch_rt, engine_rt, args.prompts, args.max_tokens, other, log)

    report = trio.run(_with_engine, args, body)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    log(json.dumps({k: report["pairs"][k]["bound"] for k in report["pairs"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
