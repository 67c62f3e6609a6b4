"""Shared appraisal helpers for the hardware kinds: allow-lists, flags and constant-time compare.

Why one module: the "never accept an unknown measurement by default" rule must mean the same
thing for TDX, SEV-SNP and GPUs. A measurement list that the policy leaves out is accepted as
"any value" only when the policy section says ``allow_any_measurement = true``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any


class PolicyError(ValueError):
    """The policy section itself is malformed (wrong type for a key)."""


def check_keys(policy: Mapping[str, Any], known: frozenset[str], section: str) -> None:
    """Refuse unknown keys: a typo in a security policy must not silently mean "default"."""
    unknown = sorted(set(policy) - known)
    if unknown:
        raise PolicyError(f"unknown key(s) {unknown} in [{section}]; known: {sorted(known)}")


def flag(policy: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = policy.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"policy key {key!r} must be true or false")
    return value


def integer(policy: Mapping[str, Any], key: str, default: int) -> int:
    value = policy.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"policy key {key!r} must be an integer")
    return value


def strings(policy: Mapping[str, Any], key: str) -> list[str] | None:
    """A list of strings, or None when the key is absent."""
    if key not in policy:
        return None
    value = policy[key]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"policy key {key!r} must be a list of strings")
    return list(value)


def hex_values(policy: Mapping[str, Any], key: str) -> set[bytes] | None:
    """A list of hex strings as a set of bytes, or None when the key is absent."""
    items = strings(policy, key)
    if items is None:
        return None
    try:
        return {bytes.fromhex(v.removeprefix("0x")) for v in items}
    except ValueError as exc:
        raise PolicyError(f"policy key {key!r} must hold hex strings") from exc


def check_measurement(policy: Mapping[str, Any], key: str, value: bytes) -> str | None:
    """None when ``value`` is acceptable under list ``key``; otherwise why it is not."""
    allowed = hex_values(policy, key)
    if allowed is None:
        if flag(policy, "allow_any_measurement"):
            return None
        return f"{key} {value.hex()} not appraised: the policy has no {key!r} list"
    if any(hmac.compare_digest(value, a) for a in allowed):
        return None
    return f"{key} {value.hex()} is not in the policy's allow-list"


def same(a: bytes, b: bytes) -> bool:
    """Constant-time equality (length is not secret)."""
    return hmac.compare_digest(a, b)


def report_data_problem(actual: bytes, expected: bytes, name: str) -> str | None:
    """None when ``actual`` equals ``expected`` (constant time); otherwise a message that says why.

    A wrong *length* is named as such: it means the expected value was built wrongly (e.g. a
    32-byte hash given for a 64-byte REPORTDATA), which "does not equal" would hide.
    """
    if len(expected) != len(actual):
        return (
            f"the expected report data is {len(expected)} bytes but {name} is {len(actual)} bytes "
            f"(expected {expected.hex() or 'nothing'})"
        )
    if not same(actual, expected):
        return f"{name} {actual.hex()} does not equal the expected {expected.hex()}"
    return None
