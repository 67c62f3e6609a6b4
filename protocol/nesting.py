"""JSON and TOML parsing with a bound on nesting depth, so hostile input gets a typed error.

Why: ``json`` and ``tomllib`` recurse once per ``[`` or ``{``; 200 KB of ``[`` ends in a
``RecursionError`` (not a ``ValueError``), which escapes every ``except ValueError`` and crashes
the caller. We scan the text first, iteratively, and refuse anything nested deeper than the
limit; then we check the parsed value's depth iteratively too, because TOML dotted keys
(``a.b.c… = 1``) nest tables without any bracket. Real evidence, collateral and policies nest
fewer than 8 levels.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

__all__ = ["MAX_DEPTH", "NestingError", "check_text_depth", "check_value_depth", "loads_json", "loads_toml"]

MAX_DEPTH = 32


class NestingError(ValueError):
    """The document nests deeper than the limit (or is not well-formed text to scan)."""


def check_text_depth(text: str, limit: int = MAX_DEPTH, *, toml: bool = False) -> None:
    """Raise ``NestingError`` when brackets outside strings (and TOML comments) nest deeper than ``limit``."""
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in "[{":
            depth += 1
            if depth > limit:
                raise NestingError(f"nested deeper than {limit} levels")
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == '"' or (toml and ch == "'"):
            i = _skip_string(text, i, toml)
            continue
        elif toml and ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        i += 1


def _skip_string(text: str, start: int, toml: bool) -> int:
    """Index just past the string that starts at ``start`` (an unterminated string runs to the end)."""
    quote = text[start]
    if toml and text.startswith(quote * 3, start):
        end = text.find(quote * 3, start + 3)
        while quote == '"' and end > 0 and _escaped(text, end):
            end = text.find(quote * 3, end + 1)
        return len(text) if end < 0 else end + 3
    i = start + 1
    escapes = quote == '"'
    while i < len(text):
        ch = text[i]
        if escapes and ch == "\\":
            i += 2
            continue
        if ch == quote or (toml and ch == "\n"):
            return i + 1
        i += 1
    return len(text)


def _escaped(text: str, pos: int) -> bool:
    backslashes = 0
    while pos - 1 - backslashes >= 0 and text[pos - 1 - backslashes] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def check_value_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise ``NestingError`` when lists/dicts in ``value`` nest deeper than ``limit`` (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth + 1 > limit:
                raise NestingError(f"nested deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def loads_json(text: str | bytes, limit: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises ``NestingError`` (a ``ValueError``) instead of recursing without bound."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NestingError(f"not UTF-8 text: {exc}") from None
    check_text_depth(text, limit)
    try:
        value = json.loads(text)
    except RecursionError:
        raise NestingError(f"nested deeper than {limit} levels") from None
    check_value_depth(value, limit)
    return value


def loads_toml(text: str, limit: int = MAX_DEPTH) -> dict[str, Any]:
    """``tomllib.loads`` with the same bound; TOML syntax errors still raise ``TOMLDecodeError``."""
    check_text_depth(text, limit, toml=True)
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise NestingError(f"nested deeper than {limit} levels") from None
    check_value_depth(value, limit)
    return value
