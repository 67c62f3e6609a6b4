"""The engine backend's pure parts: reading vLLM's answers, the launch command, the [engine] config.

The recorded answers under data/ are vLLM 0.32.0's own (SmolLM2-135M-Instruct, bf16, CPU):
``vllm-0.32.0-prompt-logprobs.json`` scores the chat prompt "What is the capital of France? One
sentence." followed by the model's own answer "The capital of France is Paris." + EOS with
``prompt_logprobs: 1``; ``vllm-0.32.0-stream.sse`` is a streamed greedy
completion. The live engine is exercised by tests/engines (``make test-engines``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.config import ConfigError, EngineSettings, NodeConfig
from node.runtime.engine_client import (
    EngineUnavailable,
    greedy_sampling,
    parse_prompt_logprobs,
    sse_events,
)
from node.runtime.engine_supervisor import EngineLaunch
from protocol.numerics import (
    TORCH_FP32_CPU,
    VLLM_BF16_CPU,
    EngineEntry,
    EngineIdentity,
    NumericsClass,
    NumericsError,
    Profile,
    token_gap_bound,
)

DATA = Path(__file__).parent / "data"
RECORDED = json.loads((DATA / "vllm-0.32.0-prompt-logprobs.json").read_text())
RECORDED_IDS = RECORDED["choices"][0]["prompt_token_ids"]


def test_prompt_logprobs_become_ranks_and_gaps() -> None:
    scores = parse_prompt_logprobs(RECORDED["choices"][0]["prompt_logprobs"], RECORDED_IDS)
    assert len(scores) == len(RECORDED_IDS) - 1
    # "system" after <|im_start|> is not the model's top-1 ("-"): rank 146, gap 6.875
    first = scores[0]
    assert first.rank == 146
    assert first.top_logprob - first.logprob == pytest.approx(6.875, abs=1e-3)
    # the answer tokens (and the EOS) are all the model's own top-1 (rank 1, gap 0)
    answer = scores[-8:]
    assert [s.rank for s in answer] == [1] * 8
    assert all(s.top_logprob == s.logprob for s in answer)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v[:-1],  # one entry short
        lambda v: [*v[:3], {}, *v[4:]],  # an empty position
        lambda v: [*v[:3], {"7": {"logprob": -1.0, "rank": 1}}, *v[4:]],  # lacks the token there
        lambda v: [*v[:3], {k: {**e, "rank": 0} for k, e in v[3].items()}, *v[4:]],  # rank 0
        lambda v: [*v[:3], {k: {**e, "logprob": "x"} for k, e in v[3].items()}, *v[4:]],
        lambda v: "not a list",
    ],
)
def test_malformed_prompt_logprobs_are_engine_failures(mangle: object) -> None:
    value = mangle(list(RECORDED["choices"][0]["prompt_logprobs"]))  # type: ignore[operator]
    with pytest.raises(EngineUnavailable):
        parse_prompt_logprobs(value, RECORDED_IDS)


def test_sse_stream_yields_each_token_and_needs_done() -> None:
    lines = (DATA / "vllm-0.32.0-stream.sse").read_text().splitlines()
    events = list(sse_events(lines))
    tokens = [t for e in events for t in e["choices"][0]["token_ids"]]
    assert tokens[-1] == 2 and events[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(e["choices"][0]["text"] for e in events) == "The capital of France is Paris."
    cut = [line for line in lines if "[DONE]" not in line]
    with pytest.raises(EngineUnavailable, match="without"):
        list(sse_events(cut))
    with pytest.raises(EngineUnavailable, match="not JSON"):
        list(sse_events(["data: {oops", "data: [DONE]"]))


def test_every_sampling_field_is_explicit() -> None:
    body = greedy_sampling(16, [2, 0])
    assert body["temperature"] == 0.0 and body["top_k"] == 0 and body["top_p"] == 1.0
    assert body["repetition_penalty"] == 1.0 and body["stop_token_ids"] == [0, 2]
    assert body["return_token_ids"] is True and body["add_special_tokens"] is False


def test_launch_command_is_loopback_local_and_keeps_the_key_off_the_command_line(tmp_path: Path) -> None:
    launch = EngineLaunch(model_dir=tmp_path / "m", served_name="m", python="/opt/vllm/bin/python")
    argv = launch.command(41234)
    assert argv[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--model") + 1] == str(tmp_path / "m")  # a directory, never a hub name
    assert argv[argv.index("--generation-config") + 1] == "vllm"
    assert not any("key" in a.lower() for a in argv)


def test_engine_config_table(tmp_path: Path) -> None:
    raw = {"data_dir": "d", "engine": {"family": "vllm", "python": "/opt/vllm/bin/python", "kv_cache_gib": 2,
                                       "extra_args": ["--enforce-eager"]}}
    config = NodeConfig.from_mapping(raw, tmp_path)
    assert config.engine.family == "vllm" and not config.engine.in_process
    assert config.engine.extra_args == ("--enforce-eager",)
    again = NodeConfig.from_mapping(__import__("tomllib").loads(config.to_toml()), tmp_path)
    assert again.engine == config.engine
    assert NodeConfig.from_mapping({"data_dir": "d"}, tmp_path).engine.in_process


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"family": "tensorrt"}, "family"),
        ({"family": "vllm", "url": "http://10.0.0.5:8000", "api_key": "k"}, "loopback"),
        ({"family": "vllm", "url": "http://127.0.0.1:8000"}, "api_key"),
        ({"family": "openai"}, "attaches only"),
        ({"family": "vllm", "kv_cache_gib": "1"}, "wrong type"),
        ({"family": "vllm", "colour": "red"}, "unknown keys"),
    ],
)
def test_bad_engine_config_is_refused(table: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        NodeConfig.from_mapping({"data_dir": "d", "engine": table}, tmp_path)


def test_attach_key_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("s3cret\n")
    settings = EngineSettings(family="vllm", url="http://127.0.0.1:8000", api_key_file=str(tmp_path / "key"))
    assert settings.key() == "s3cret"


def test_engine_entry_wire_form_and_numerics_class() -> None:
    identity = EngineIdentity("vllm", "0.32.0", "bfloat16", "cpu")
    entry = EngineEntry("vn-model:" + "ab" * 32, identity)
    assert EngineEntry.from_wire(entry.to_wire()) == entry
    assert NumericsClass.of(entry.model, identity).profile == VLLM_BF16_CPU
    for bad in ({**entry.to_wire(), "extra": 1}, {**entry.to_wire(), "dtype": "bf 16"},
                {**entry.to_wire(), "score": "yes"}):
        with pytest.raises(NumericsError):
            EngineEntry.from_wire(bad)


def test_gap_bounds_per_profile_pair() -> None:
    fp32 = 1.6e-4
    assert token_gap_bound(TORCH_FP32_CPU, TORCH_FP32_CPU, fp32) == fp32
    assert token_gap_bound(None, VLLM_BF16_CPU, fp32) == fp32  # an old bundle: no engine claim
    cross = token_gap_bound(TORCH_FP32_CPU, VLLM_BF16_CPU, fp32)
    assert cross > fp32
    assert token_gap_bound(VLLM_BF16_CPU, TORCH_FP32_CPU, fp32) > fp32
    unmeasured = Profile("sglang", "float16", "cuda")
    assert token_gap_bound(unmeasured, TORCH_FP32_CPU, fp32) >= cross
