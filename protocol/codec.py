"""Canonical msgpack: one encoding for every signed or hashed value, one hardened decoder.

Canonical means: maps have ``str`` keys sorted by their UTF-8 bytes, bytes are msgpack ``bin``,
integers use the shortest form, and there are no floats or extension types. Because the encoding
is unique, a signature or hash over ``encode(x)`` is well defined, and the decoder can refuse any
input that is not exactly ``encode(decode(input))`` (no duplicate keys, no alternative forms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.errors import ProtocolError

__all__ = ["DEFAULT_LIMITS", "CodecError", "Limits", "decode", "encode"]


class CodecError(ProtocolError):
    """The only error the codec raises. ``reason`` is a short machine-readable code."""


@dataclass(frozen=True)
class Limits:
    """Hard bounds applied while decoding untrusted bytes."""

    max_size: int = 4 << 20
    max_depth: int = 16
    max_str: int = 64 << 10
    max_bin: int = 4 << 20
    max_array: int = 4096
    max_map: int = 256


DEFAULT_LIMITS = Limits()

Value = Any  # None | bool | int | str | bytes | list[Value] | dict[str, Value]


_PLAIN = frozenset({str, bytes, int, bool, type(None)})


def _canonicalize(obj: Any, depth: int) -> Any:
    """The value with every map's keys in canonical order, tuples as lists, no floats.

    Exact built-in types take a fast path (this runs over every message signed, hashed, encoded
    or checked after decoding): a ``str`` key's code-point order is its UTF-8 byte order, so a
    map of ``str`` keys sorts by its keys as they are. Anything else (subclasses, other mappings
    and sequences, bytearray, memoryview) goes through ``_canonicalize_any``.
    """
    if depth > 64:
        raise CodecError("too_deep", "value nests more than 64 levels")
    kind = type(obj)
    if kind in _PLAIN:
        return obj
    if kind is dict:
        if all(type(key) is str for key in obj):
            return {key: _canonicalize(obj[key], depth + 1) for key in sorted(obj)}
    elif kind is list or kind is tuple:
        return [_canonicalize(item, depth + 1) for item in obj]
    return _canonicalize_any(obj, depth)


def _canonicalize_any(obj: Any, depth: int) -> Any:
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        return obj
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, float):
        raise CodecError("float", "floats are not allowed in canonical values")
    if isinstance(obj, Mapping):
        items = []
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CodecError("bad_key", f"map keys must be str, got {type(key).__name__}")
            items.append((key.encode("utf-8"), key, _canonicalize(value, depth + 1)))
        items.sort(key=lambda item: item[0])
        return {key: value for _, key, value in items}
    if isinstance(obj, Sequence):
        return [_canonicalize(item, depth + 1) for item in obj]
    raise CodecError("bad_type", f"cannot encode {type(obj).__name__}")


def encode(obj: Any) -> bytes:
    """Encode ``obj`` canonically. Raises CodecError for floats, non-str keys, unknown types."""
    try:
        packed = msgpack.packb(_canonicalize(obj, 0), use_bin_type=True)
    except CodecError:
        raise
    except (OverflowError, ValueError, TypeError) as exc:  # e.g. int beyond 64 bits
        raise CodecError("bad_value", str(exc)) from None
    assert isinstance(packed, bytes)
    return packed


def _refuse_ext(code: int, data: bytes) -> Any:
    raise CodecError("ext_type", f"extension type {code} is not allowed")


def _check_shape(value: Any, limits: Limits) -> None:
    """Iteratively check depth and types (no recursion, so hostile depth cannot blow the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limits.max_depth:
            raise CodecError("too_deep", f"nesting exceeds {limits.max_depth}")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif item is None or isinstance(item, (bool, int, str, bytes)):
            continue
        else:
            raise CodecError("bad_type", f"{type(item).__name__} is not allowed")


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode untrusted bytes. Only canonical encodings within ``limits`` are accepted."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("bad_input", "expected bytes")
    data = bytes(data)
    if len(data) > limits.max_size:
        raise CodecError("too_large", f"{len(data)} bytes exceeds {limits.max_size}")
    if not data:
        raise CodecError("truncated", "empty input")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            timestamp=0,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bin,
            max_array_len=limits.max_array,
            max_map_len=limits.max_map,
            max_ext_len=0,
        )
    except CodecError:
        raise
    except msgpack.ExtraData:
        raise CodecError("trailing_bytes", "data after the first value") from None
    except (ValueError, TypeError, msgpack.UnpackException, UnicodeDecodeError, RecursionError) as exc:
        raise CodecError("malformed", f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # msgpack may raise other internal errors on hostile input
        raise CodecError("malformed", f"{type(exc).__name__}: {exc}") from None
    _check_shape(value, limits)
    try:
        again = encode(value)
    except CodecError as exc:
        raise CodecError("non_canonical", exc.reason) from None
    if again != data:
        raise CodecError("non_canonical", "input is not in canonical form")
    return value
