"""``python -m fuzz.run_one TARGET [libFuzzer flags]``: fuzz one target in this process with atheris.

The modules under test are imported inside ``atheris.instrument_imports()`` (by running the target
once on each seed), so libFuzzer sees their branch coverage.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["protocol", "node", "libp2p.peer", "fuzz"]):
    from fuzz.targets import TARGETS, seeds


def main() -> None:
    name, flags = sys.argv[1], sys.argv[2:]
    fn = TARGETS[name]
    corpus = Path(tempfile.mkdtemp(prefix=f"veilnet-fuzz-{name}-"))
    with atheris.instrument_imports(include=["protocol", "node", "libp2p.peer"]):
        for index, seed in enumerate(seeds(name)):
            fn(seed)  # imports (and so instruments) what the target exercises
            (corpus / f"seed-{index}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *flags, str(corpus)], fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
