"""Reading evidence, collateral and policy files with a hard size bound.

Why not ``stat`` then ``read_bytes``: ``/dev/zero``, a pipe or a FIFO reports size 0 and then
streams without end, so a size check before reading proves nothing. We read at most
``limit + 1`` bytes and refuse when that last byte arrives.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputTooLarge", "read_bounded"]


class InputTooLarge(ValueError):
    """The file holds more than the limit (it may be endless)."""


def read_bounded(path: Path, limit: int) -> bytes:
    """The file's bytes; ``InputTooLarge`` beyond ``limit`` bytes, ``OSError`` when unreadable."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputTooLarge(f"{path} is larger than {limit} bytes (or endless)")
    return data
