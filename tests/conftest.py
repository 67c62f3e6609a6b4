"""Shared test configuration: deterministic hypothesis profiles.

``dev`` (default) keeps the suite quick; ``ci`` (``HYPOTHESIS_PROFILE=ci``) runs more examples, and
at least ``DECODER_EXAMPLES`` for every property test of a decoder on hostile bytes. Decoder tests
use ``@decoder_settings()`` so their example count follows the active profile.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "print_blob": False,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}

settings.register_profile("dev", max_examples=100, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("ci", max_examples=500, **_COMMON)  # type: ignore[arg-type]

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
settings.load_profile(PROFILE)

# Property tests that feed arbitrary or mutated bytes to a decoder.
DECODER_EXAMPLES = 10_000 if PROFILE == "ci" else 300


def decoder_settings() -> settings:
    """Settings for a decoder property test: the profile's defaults with the decoder example count."""
    return settings(max_examples=DECODER_EXAMPLES)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted once per test session (about a minute on 2 cores), in a
    models directory of its own: every test that needs the real chat model shares it."""
    from node.runtime.smollm2 import SMOLLM2_NAME, ensure_smollm2

    return ensure_smollm2(tmp_path_factory.mktemp("smollm2-models") / SMOLLM2_NAME)
