"""CI's short fuzzing pass: every decoder and input path on a few thousand mutated inputs.

The full coverage-guided run (10^6 inputs per target under atheris) is ``make fuzz``.
"""

from __future__ import annotations

import pytest

from fuzz.mutate import run_short
from fuzz.targets import TARGETS, seeds


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_survives_mutated_inputs(name: str) -> None:
    assert run_short(name, count=3000) == 3000 + len(seeds(name))

