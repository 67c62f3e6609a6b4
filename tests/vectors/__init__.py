"""Real TEE evidence vectors kept inside the repository, with their licences and provenance.

Why one helper: every test and bench names vectors through :func:`vector`, so nothing reads a
path outside the repository and a clone anywhere runs the suite. ``MANIFEST.tsv`` and
``README.md`` in this folder give each file's source and the expected results.
"""

from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).resolve().parent


def vector(*parts: str) -> Path:
    """The path of a vector file, e.g. ``vector("tdx", "dcap-qvl", "tdx_quote")``; it must exist."""
    path = VECTORS.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"no vector {'/'.join(parts)} in {VECTORS}")
    return path
