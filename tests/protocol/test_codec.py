"""Canonical codec: round trips, canonical form, every decoder limit, hostile bytes."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import DEFAULT_LIMITS, CodecError, Limits, decode, encode
from tests.conftest import decoder_settings

INT64_MIN = -(1 << 63)
UINT64_MAX = (1 << 64) - 1

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=UINT64_MAX)
    | st.text(max_size=40)
    | st.binary(max_size=64)
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=24,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types (so True != 1 and b"" != "")."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def sort_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: sort_keys(value[k]) for k in sorted(value, key=lambda k: k.encode())}
    if isinstance(value, list):
        return [sort_keys(v) for v in value]
    return value


@given(values)
def test_round_trip(value: Any) -> None:
    data = encode(value)
    back = decode(data)
    assert same(back, sort_keys(value))
    assert encode(back) == data


@given(st.dictionaries(st.text(max_size=8), st.integers(0, 9), max_size=8), st.randoms(use_true_random=False))
def test_key_order_does_not_change_the_encoding(mapping: dict[str, int], rnd: Any) -> None:
    items = list(mapping.items())
    rnd.shuffle(items)
    assert encode(dict(items)) == encode(mapping)


def test_keys_sorted_by_utf8_bytes_and_bytes_are_bin() -> None:
    data = encode({"b": b"\x01", "a": "x", "é": 1})
    assert data == b"\x83\xa1a\xa1x\xa1b\xc4\x01\x01\xa2\xc3\xa9\x01"


def test_tuples_encode_as_arrays_and_bytearrays_as_bin() -> None:
    assert encode((1, 2)) == encode([1, 2])
    assert encode(bytearray(b"ab")) == encode(b"ab")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1.5, "float"),
        ({"a": [0.0]}, "float"),
        ({1: 2}, "bad_key"),
        ({b"k": 2}, "bad_key"),
        (1 << 64, "bad_value"),
        (INT64_MIN - 1, "bad_value"),
        (object(), "bad_type"),
        ({1, 2}, "bad_type"),
    ],
)
def test_encode_refuses_non_canonical_values(value: Any, reason: str) -> None:
    with pytest.raises(CodecError) as info:
        encode(value)
    assert info.value.reason == reason


def test_encode_refuses_runaway_nesting() -> None:
    value: list[Any] = []
    for _ in range(70):
        value = [value]
    with pytest.raises(CodecError) as info:
        encode(value)
    assert info.value.reason == "too_deep"


# --- decoder limits -----------------------------------------------------------------------------


def raises(data: bytes, *reasons: str, limits: Limits = DEFAULT_LIMITS) -> CodecError:
    with pytest.raises(CodecError) as info:
        decode(data, limits)
    assert info.value.reason in reasons, info.value
    return info.value


def test_total_size_limit() -> None:
    data = encode(b"x" * 100)
    assert decode(data, Limits(max_size=len(data))) == b"x" * 100
    raises(data, "too_large", limits=Limits(max_size=len(data) - 1))


def test_depth_limit() -> None:
    nested: list[Any] = []
    for _ in range(3):
        nested = [nested]
    data = encode(nested)  # depth 4
    assert decode(data, Limits(max_depth=4)) == nested
    raises(data, "too_deep", limits=Limits(max_depth=3))


def test_hostile_depth_is_refused_without_recursion() -> None:
    raises(b"\x91" * 200_000 + b"\xc0", "malformed", "too_deep")


@pytest.mark.parametrize(
    ("value", "limits"),
    [
        ("abcd", Limits(max_str=3)),
        (b"abcd", Limits(max_bin=3)),
        ([1, 2, 3, 4], Limits(max_array=3)),
        ({"a": 1, "b": 2, "c": 3, "d": 4}, Limits(max_map=3)),
        ({"abcd": 1}, Limits(max_str=3)),
    ],
)
def test_length_limits(value: Any, limits: Limits) -> None:
    data = encode(value)
    assert same(decode(data), value)
    raises(data, "malformed", limits=limits)


@pytest.mark.parametrize(
    "data",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4G elements
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4G pairs
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
    ],
)
def test_huge_length_claims_are_refused_before_allocation(data: bytes) -> None:
    raises(data, "malformed")


@pytest.mark.parametrize(
    "data",
    [
        b"\xd4\x05\x00",  # fixext1
        b"\xd5\x05\x00\x00",  # fixext2
        b"\xd6\xff\x00\x00\x00\x00",  # timestamp32
        b"\xd7\xff" + b"\x00" * 8,  # timestamp64
        b"\xc7\x00\x05",  # ext8, empty, type 5
        b"\xc7\x01\x05\x00",  # ext8
        b"\xc8\x00\x01\x05\x00",  # ext16
        b"\xc9\x00\x00\x00\x01\x05\x00",  # ext32
        b"\xc7\x00\xff",  # empty timestamp
    ],
)
def test_extension_types_are_refused(data: bytes) -> None:
    raises(data, "ext_type", "malformed")


@pytest.mark.parametrize("data", [b"\xca\x3f\x80\x00\x00", b"\xcb" + b"\x00" * 8, b"\x91\xcb" + b"\x00" * 8])
def test_floats_are_refused(data: bytes) -> None:
    raises(data, "bad_type")


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\x01\x02",  # int key
        b"\x81\xc4\x01k\x02",  # bin key
        b"\x81\x90\x02",  # array key
        b"\x81\x80\x02",  # map key
        b"\x81\xc0\x02",  # nil key
    ],
)
def test_non_str_keys_are_refused(data: bytes) -> None:
    raises(data, "malformed", "non_canonical")


def test_trailing_bytes_are_refused() -> None:
    raises(encode({"a": 1}) + b"\x00", "trailing_bytes")


def test_non_canonical_key_order_is_refused() -> None:
    unsorted = msgpack.packb({"b": 1, "a": 2}, use_bin_type=True)
    raises(unsorted, "non_canonical")


def test_duplicate_keys_are_refused() -> None:
    raises(b"\x82\xa1a\x01\xa1a\x02", "non_canonical")
    raises(b"\x82\xa1a\x01\xa1a\x01", "non_canonical")


@pytest.mark.parametrize(
    "data",
    [
        b"\xcc\x05",  # uint8 for a fixint
        b"\xcd\x00\x05",  # uint16 for a fixint
        b"\xd0\x05",  # int8 for a positive fixint
        b"\xd1\xff\xff",  # int16 for -1
        b"\xd9\x01a",  # str8 for a fixstr
        b"\xc5\x00\x01a",  # bin16 for a bin8
        b"\xdc\x00\x01\x01",  # array16 for a fixarray
        b"\xde\x00\x01\xa1a\x01",  # map16 for a fixmap
    ],
)
def test_non_shortest_forms_are_refused(data: bytes) -> None:
    raises(data, "non_canonical")


def test_str_without_bin_type_is_not_bytes() -> None:
    # Old-style raw (str) holding non-UTF-8 is neither a valid str nor a bin.
    raises(b"\xa2\xff\xfe", "malformed")


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\xa5abc"])
def test_empty_reserved_and_truncated_inputs(data: bytes) -> None:
    raises(data, "truncated", "malformed")


def test_input_must_be_bytes() -> None:
    with pytest.raises(CodecError) as info:
        decode("not bytes")  # type: ignore[arg-type]
    assert info.value.reason == "bad_input"
    assert decode(bytearray(encode(7))) == 7  # type: ignore[arg-type]
    assert decode(memoryview(encode(7))) == 7  # type: ignore[arg-type]


# --- hostile bytes --------------------------------------------------------------------------------


def check_decoder(data: bytes) -> None:
    try:
        value = decode(data)
    except CodecError:
        return
    assert encode(value) == data  # whatever is accepted is canonical


@decoder_settings()
@given(st.binary(max_size=256))
def test_decoder_on_arbitrary_bytes_raises_only_codec_error(data: bytes) -> None:
    check_decoder(data)


# A mutation program is raw bytes, read 4 at a time as (operation, position hi, position lo, byte):
# one cheap draw per example instead of many, so the CI profile can afford 10,000 of them.
mutations = st.binary(min_size=4, max_size=16)
_OPS = ("flip", "set", "insert", "delete", "truncate")


def mutate(data: bytes, program: bytes) -> bytes:
    buf = bytearray(data)
    for k in range(0, len(program) - 3, 4):
        op, where, byte = _OPS[program[k] % len(_OPS)], program[k + 1] << 8 | program[k + 2], program[k + 3]
        i = where % (len(buf) + 1)
        if op == "insert":
            buf.insert(i, byte)
        elif not buf:
            continue
        elif op == "truncate":
            del buf[i:]
        else:
            i %= len(buf)
            if op == "flip":
                buf[i] ^= 1 << (byte % 8)
            elif op == "set":
                buf[i] = byte
            else:
                del buf[i]
    return bytes(buf)


# A fixed corpus of valid encodings covering every msgpack form the codec emits; mutating it is
# much cheaper per example than generating a fresh nested value, so the CI profile can afford
# 10,000 mutations.
CORPUS_VALUES: list[Any] = [
    None,
    True,
    [False, None],
    0,
    127,
    128,
    255,
    256,
    65535,
    65536,
    UINT64_MAX,
    -1,
    -32,
    -33,
    -128,
    -129,
    -32768,
    -32769,
    INT64_MIN,
    "",
    "a" * 31,
    "b" * 32,
    "c" * 256,
    "ünïcødé ✓",
    b"",
    b"\x00" * 255,
    b"\x01" * 256,
    list(range(20)),
    {"a": 1, "b": [1, 2, {"c": b"x"}], "d": {"e": {"f": None}}},
    {f"k{i:02}": i for i in range(20)},
    [[[[[]]]]],
    {"v": 1, "t": "job_request", "job_id": bytes(16), "stream": False, "deadline_ms": 1_800_000_000_000},
]
CORPUS = [encode(v) for v in CORPUS_VALUES]


@decoder_settings()
@given(st.sampled_from(CORPUS), mutations)
def test_decoder_on_mutated_encodings_raises_only_codec_error(data: bytes, program: bytes) -> None:
    check_decoder(mutate(data, program))


@given(values, mutations)
def test_decoder_on_mutated_generated_values_raises_only_codec_error(value: Any, program: bytes) -> None:
    check_decoder(mutate(encode(value), program))


def reference_encoding(value: Any) -> bytes:
    """The canonical form written out the slow way: keys sorted by their UTF-8 bytes."""

    def canonical(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: canonical(item[k]) for k in sorted(item, key=lambda k: k.encode("utf-8"))}
        if isinstance(item, (list, tuple)):
            return [canonical(v) for v in item]
        return item

    packed = msgpack.packb(canonical(value), use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


tuple_values: st.SearchStrategy[Any] = st.recursive(
    scalars | st.characters().map(lambda c: c * 2),  # every plane, so key order crosses UTF-8 lengths
    lambda children: (
        st.lists(children, max_size=6)
        | st.lists(children, max_size=6).map(tuple)
        | st.dictionaries(st.text(max_size=6), children, max_size=8)
    ),
    max_leaves=30,
)


@given(tuple_values)
def test_the_fast_path_encodes_exactly_as_the_reference(value: Any) -> None:
    assert encode(value) == reference_encoding(value)


def test_keys_across_utf8_lengths_sort_by_bytes() -> None:
    keys = ["\U00010000", "\uffff", "\u07ff", "\u0800", "z", "\x7f", "\u00e9"]
    data = encode(dict.fromkeys(keys, 0))
    assert list(decode(data)) == sorted(keys, key=lambda k: k.encode("utf-8"))
