"""Expected report data from a documented scheme, so a user can check another system's binding.

Why: real systems bind keys into REPORTDATA / the SPDM nonce as ``prefix ‖ H(keys)``, zero-padded
(NEAR MPC: ``0x0001 ‖ SHA3-384(p2p key ‖ account key) ‖ 0^14``; dstack: ``SHA-512(tag ‖ ":" ‖
content)``; Gramine: ``SHA-256(SPKI) ‖ 0^32``). Building those 64 bytes by hand is error-prone, so
the ``hash`` scheme computes them: ``prefix ‖ H(key_1 ‖ … ‖ key_n)``, then zero bytes up to the
evidence's report-data size (64 for CPU evidence, 32 for the GPU nonce). It is refused when the
result would not fit. Keys are written as hex, ``text:<utf-8>``, or ``ed25519:<base58>`` (the
NEAR/Solana public-key form, decoded to its 32 raw bytes). Veilnet's own binding is not here: it
is recomputed from a bundle's fields (``AttestationBundle.expected_report_data``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

__all__ = ["HASHES", "BindingSchemeError", "decode_key", "hashed_report_data"]

HASHES: dict[str, Callable[[bytes], bytes]] = {
    "sha256": lambda b: hashlib.sha256(b).digest(),
    "sha384": lambda b: hashlib.sha384(b).digest(),
    "sha512": lambda b: hashlib.sha512(b).digest(),
    "sha3-256": lambda b: hashlib.sha3_256(b).digest(),
    "sha3-384": lambda b: hashlib.sha3_384(b).digest(),
    "sha3-512": lambda b: hashlib.sha3_512(b).digest(),
    "blake2b-512": lambda b: hashlib.blake2b(b).digest(),
    "blake2b-256": lambda b: hashlib.blake2b(b, digest_size=32).digest(),
}
MAX_KEY_SIZE = 64 * 1024
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
ED25519_KEY_SIZE = 32


class BindingSchemeError(ValueError):
    """The scheme, a key or the prefix is malformed, or the result does not fit."""


def _base58(text: str) -> bytes:
    if not text or len(text) > 128:
        raise BindingSchemeError("base58 key must be 1..128 characters")
    value = 0
    for ch in text:
        digit = _B58.find(ch)
        if digit < 0:
            raise BindingSchemeError(f"{ch!r} is not a base58 character")
        value = value * 58 + digit
    leading = len(text) - len(text.lstrip("1"))
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return b"\x00" * leading + body


def decode_key(text: str) -> bytes:
    """One key: ``ed25519:<base58>`` (32 bytes), ``text:<utf-8>``, or hex (optional ``0x``)."""
    text = text.strip()
    if text.startswith("ed25519:"):
        raw = _base58(text.removeprefix("ed25519:"))
        if len(raw) != ED25519_KEY_SIZE:
            raise BindingSchemeError(f"ed25519 key decodes to {len(raw)} bytes, not {ED25519_KEY_SIZE}")
        return raw
    if text.startswith("text:"):
        raw = text.removeprefix("text:").encode("utf-8")
    else:
        try:
            raw = bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            raise BindingSchemeError(f"key {text[:40]!r} is not hex, text:… or ed25519:<base58>") from None
    if len(raw) > MAX_KEY_SIZE:
        raise BindingSchemeError(f"key longer than {MAX_KEY_SIZE} bytes")
    return raw


def hashed_report_data(algorithm: str, keys: Sequence[bytes], prefix: bytes, size: int) -> bytes:
    """``prefix ‖ H(keys concatenated)``, zero-padded to ``size`` bytes."""
    digest_of = HASHES.get(algorithm)
    if digest_of is None:
        raise BindingSchemeError(f"unknown hash {algorithm!r}; known: {sorted(HASHES)}")
    if not keys:
        raise BindingSchemeError("the hash scheme needs at least one key")
    value = prefix + digest_of(b"".join(keys))
    if len(value) > size:
        raise BindingSchemeError(
            f"prefix ({len(prefix)} bytes) + {algorithm} digest is {len(value)} bytes, "
            f"more than the {size}-byte report data"
        )
    return value + bytes(size - len(value))
