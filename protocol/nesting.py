"""JSON and TOML parsing with a bound on nesting depth, so hostile input gets a typed error.

Why: ``json`` and ``tomllib`` recurse once per ``[`` or ``{``; 200 KB of ``[`` ends in a
``RecursionError`` (not a ``ValueError``), which escapes every ``except ValueError`` and crashes
the caller. For TOML (a pure-Python parser) we scan the text first and refuse anything nested
deeper than the limit; the C JSON scanner stops itself with a clean ``RecursionError``, which we
turn into the typed error. Then the parsed value's depth is checked iteratively, because TOML
dotted keys (``a.b.c… = 1``) nest tables without any bracket, and JSON may nest below Python's
recursion limit but above ours. Real evidence, collateral and policies nest
fewer than 8 levels.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

__all__ = ["MAX_DEPTH", "NestingError", "check_text_depth", "check_value_depth", "loads_json", "loads_toml"]

MAX_DEPTH = 32


class NestingError(ValueError):
    """The document nests deeper than the limit (or is not well-formed text to scan)."""


# Strings (and TOML comments) are skipped whole, so brackets inside them do not count; the
# unrolled, possessive string patterns keep the scan linear even for an unterminated string.
_JSON_TOKENS = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[\]{}]', re.S)
_TOML_TOKENS = re.compile(
    r'"""(?:[^"\\]|\\.|"(?!""))*+"""|\'\'\'.*?\'\'\'|"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"|\'[^\'\n]*\'|#[^\n]*|[\[\]{}]',
    re.S,
)


def check_text_depth(text: str, limit: int = MAX_DEPTH, *, toml: bool = False) -> None:
    """Raise ``NestingError`` when brackets outside strings (and TOML comments) nest deeper than ``limit``."""
    depth = 0
    for match in (_TOML_TOKENS if toml else _JSON_TOKENS).finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                raise NestingError(f"nested deeper than {limit} levels")
        elif token in "]}":
            depth = max(0, depth - 1)


def check_value_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise ``NestingError`` when lists/dicts in ``value`` nest deeper than ``limit`` (iterative)."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:  # breadth first, one level at a time: only containers are visited
        depth += 1
        if depth > limit:
            raise NestingError(f"nested deeper than {limit} levels")
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]


def loads_json(text: str | bytes, limit: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises ``NestingError`` (a ``ValueError``) instead of recursing without bound."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NestingError(f"not UTF-8 text: {exc}") from None
    # The C JSON scanner guards its own recursion (a clean RecursionError, caught below), so the
    # text scan is not needed here; it would cost more than the parse on large collateral.
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
