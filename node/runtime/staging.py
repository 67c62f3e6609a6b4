"""Write a generated model directory once, atomically, however many processes ask at the same time."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ensure_built"]


def ensure_built(target: Path, files: Iterable[str], build: Callable[[Path], None]) -> Path:
    """Return ``target`` once it holds ``files``, calling ``build(staging)`` if it does not yet.

    ``build`` writes a sibling temporary directory that is then renamed into place, so concurrent
    processes (a local testnet starting) never see a half-written model; the loser of a race
    keeps the winner's copy.
    """
    names = tuple(files)

    def complete() -> bool:
        return all((target / name).is_file() for name in names)

    if complete():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not complete():
                raise  # target exists but is incomplete or foreign: refuse to guess
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    return target
