"""Bounded-depth JSON/TOML parsing: hostile nesting gets a typed error, never a RecursionError."""

from __future__ import annotations

import contextlib
import json
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.attestation.evidence_files import EvidenceFileError, load_evidence
from protocol.attestation.policy import Policy, PolicyError
from protocol.attestation.tdx_collateral import CollateralError, parse_collateral
from protocol.nesting import MAX_DEPTH, NestingError, loads_json, loads_toml
from tests.conftest import decoder_settings

DEEP_JSON = "[" * 200_000  # the 200 KB of "["


def test_200kb_of_brackets_is_a_typed_error_everywhere_json_is_read() -> None:
    with pytest.raises(NestingError):
        loads_json(DEEP_JSON)
    with pytest.raises(EvidenceFileError, match="nested deeper"):
        load_evidence(DEEP_JSON.encode())
    with pytest.raises(CollateralError, match="nested deeper"):
        parse_collateral(DEEP_JSON)


def test_deep_toml_arrays_inline_tables_and_dotted_keys_are_policy_errors() -> None:
    for text in (
        "a = " + "[" * 100_000,
        "a = " + "{b = " * 5_000,
        "[tdx]\n" + "k." * 5_000 + "k = 1\n",
    ):
        with pytest.raises(PolicyError, match="nested deeper"):
            Policy.from_toml(text)


def test_limit_is_exact_and_strings_and_comments_do_not_count() -> None:
    assert loads_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(NestingError):
        loads_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert loads_json(json.dumps({"s": "[" * 1000})) == {"s": "[" * 1000}
    assert loads_toml("a = \"[[[[[[[[\" # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nb = '[[[['\n") == {
        "a": "[[[[[[[[",
        "b": "[[[[",
    }
    assert loads_toml('c = """\n[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n"""\n')["c"].count("[") == 40


@decoder_settings()
@given(text=st.text(alphabet="[]{}\"\\',:#=\n abc1", max_size=400))
def test_loaders_raise_only_value_errors(text: str) -> None:
    """Random bracket soup: the result is a value or a ValueError (NestingError, JSON, TOML), nothing else."""
    for loader in (loads_json, loads_toml):
        with contextlib.suppress(NestingError, json.JSONDecodeError, tomllib.TOMLDecodeError):
            loader(text)
