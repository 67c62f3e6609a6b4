"""The API's JSON encoder (orjson) writes text that means exactly what the standard library's does."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.api.json_text import FastJSONResponse, dumps

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(_values)
def test_the_text_parses_to_what_the_standard_library_writes(value):
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))


def test_an_embedding_keeps_every_float32_exactly():
    vector = np.random.default_rng(7).standard_normal(384).astype(np.float32)
    parsed = json.loads(dumps({"embedding": vector.tolist()}))["embedding"]
    assert np.array_equal(np.asarray(parsed, dtype=np.float32), vector)
    assert all(math.isfinite(x) for x in parsed)


def test_numpy_scalars_and_integer_keys_are_written_as_the_standard_library_would():
    assert json.loads(dumps({1: np.float64(0.25), "n": np.int64(3)})) == {"1": 0.25, "n": 3}


def test_a_value_orjson_cannot_encode_goes_through_the_standard_library():
    class Ratio(float):  # a float subclass: orjson refuses it, json writes the float
        pass

    assert json.loads(dumps({"r": Ratio(0.5)})) == {"r": 0.5}
    response = FastJSONResponse({"ok": "é"})
    assert response.body.decode() == '{"ok":"é"}'
    assert response.headers["content-type"] == "application/json"


def test_what_neither_can_encode_is_a_type_error():
    with pytest.raises(TypeError):
        dumps({"d": Decimal("1.5")})
