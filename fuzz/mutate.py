"""A short, deterministic, in-process pass over every fuzz target (what CI runs).

libFuzzer owns the process it fuzzes, so CI cannot run a dozen atheris targets inside pytest
cheaply; instead each target gets a few thousand inputs made by mutating its seeds (bit flips,
truncations, insertions, splices, random bytes) from a fixed random seed. ``make fuzz`` is the
coverage-guided search.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from fuzz.targets import TARGETS, seeds

__all__ = ["inputs", "run_short"]


def _mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        if choice == 0 and out:
            index = rng.randrange(len(out))
            out[index] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            del out[rng.randrange(len(out)) :]
        elif choice == 2:
            index = rng.randrange(len(out) + 1)
            out[index:index] = rng.randbytes(rng.randint(1, 16))
        elif choice == 3 and out:
            index = rng.randrange(len(out))
            out[index] = rng.choice((0x00, 0x7F, 0x80, 0xFF, 0xC1, 0xDC, 0xDD, 0xDE, 0xDF))
        elif choice == 4:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            out = out[: rng.randrange(len(out) + 1)] + bytearray(other[cut:])
        elif choice == 5 and len(out) > 1:
            start = rng.randrange(len(out))
            out[start:start] = out[start : start + rng.randint(1, 64)] * rng.randint(1, 8)
        else:
            out = bytearray(rng.randbytes(rng.randint(0, 256)))
    return bytes(out[:65536])


def inputs(name: str, count: int, seed: int = 0) -> Iterator[bytes]:
    """The seeds, then ``count`` mutants of them."""
    corpus = seeds(name)
    yield from corpus
    rng = random.Random(f"{name}:{seed}")
    for _ in range(count):
        yield _mutate(rng.choice(corpus), rng, corpus)


def run_short(name: str, count: int = 3000) -> int:
    """Run target ``name`` on ``count`` mutants; raises on the first finding. Returns inputs run."""
    fn = TARGETS[name]
    ran = 0
    for data in inputs(name, count):
        try:
            fn(data)
        except Exception as exc:
            raise AssertionError(f"fuzz target {name} failed on input {data.hex()[:400]}: {exc!r}") from exc
        ran += 1
    return ran
