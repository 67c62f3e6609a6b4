"""The appraisal policy: data (a TOML file), not code, so operators can read and diff what they trust.

Top-level keys decide what the bundle appraiser checks itself (kinds, freshness, epochs); one
table per evidence kind (``[tdx]``, ``[sev-snp]``, ``[nvidia-gpu]``, ``[simulated]``) is handed
unchanged to that kind's verifier, which owns its meaning. Unknown keys are refused at load time:
a typo in a security policy must not silently mean "allow".
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.attestation import simulated
from protocol.attestation.allowlist import PolicyError
from protocol.attestation.evidence import EvidenceKind
from protocol.nesting import NestingError, loads_toml

__all__ = ["DEFAULT_ALLOWED_KINDS", "Policy", "PolicyError"]

DEFAULT_ALLOWED_KINDS: tuple[str, ...] = (
    EvidenceKind.TDX.value,
    EvidenceKind.SEV_SNP.value,
    EvidenceKind.NVIDIA_GPU.value,
)
KIND_NAMES = tuple(k.value for k in EvidenceKind)
MAX_POLICY_SIZE = 1 << 20
_SCALAR_KEYS = (
    "allowed_kinds",
    "allow_simulated",
    "max_evidence_age",
    "epoch_seconds",
    "max_clock_skew",
    "require_gpu",
)
_RANGES = {
    "epoch_seconds": (1, 86400),
    "max_evidence_age": (1, 7 * 86400),
    "max_clock_skew": (0, 3600),
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


@dataclass(frozen=True)
class Policy:
    """What this node accepts as evidence. Defaults are the safe ones (no simulated, no debug)."""

    allowed_kinds: tuple[str, ...] = DEFAULT_ALLOWED_KINDS
    allow_simulated: bool = False
    max_evidence_age: int = 1200  # seconds since the bundle's issued_at
    epoch_seconds: int = 600
    max_clock_skew: int = 30
    require_gpu: bool = False
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kinds = self.allowed_kinds
        if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)):
            raise PolicyError("allowed_kinds must be a list of kind names")
        unknown = [k for k in kinds if k not in KIND_NAMES]
        if unknown:
            raise PolicyError(f"allowed_kinds names unknown kinds {unknown}; known: {list(KIND_NAMES)}")
        if len(set(kinds)) != len(kinds):
            raise PolicyError("allowed_kinds lists a kind twice")
        object.__setattr__(self, "allowed_kinds", tuple(kinds))
        for name in ("allow_simulated", "require_gpu"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(f"{name} must be true or false")
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise PolicyError(f"{name} must be an integer number of seconds in [{low}, {high}]")
        if not isinstance(self.sections, Mapping):
            raise PolicyError("sections must map kind names to tables")
        sections: dict[str, dict[str, Any]] = {}
        for name, table in self.sections.items():
            if name not in KIND_NAMES:
                raise PolicyError(f"[{name}] is not a kind section; known: {list(KIND_NAMES)}")
            if not isinstance(table, Mapping):
                raise PolicyError(f"[{name}] must be a table")
            _check_plain(table, f"[{name}]")
            sections[name] = copy.deepcopy(dict(table))
        if EvidenceKind.SIMULATED.value in sections:
            simulated.check_policy_section(sections[EvidenceKind.SIMULATED.value])
        object.__setattr__(self, "sections", sections)

    # -- queries --------------------------------------------------------------------------

    def kind_allowed(self, kind: str) -> bool:
        """Listed in allowed_kinds, and for ``simulated`` also ``allow_simulated = true``."""
        if kind not in self.allowed_kinds:
            return False
        return kind != EvidenceKind.SIMULATED.value or self.allow_simulated

    def section(self, kind: str) -> Mapping[str, Any]:
        """The kind's table (empty when absent), as handed to that kind's verifier."""
        return self.sections.get(kind, {})

    # -- loading and saving ---------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Policy:
        """Build from a parsed TOML document. ``max_evidence_age`` defaults to two epochs."""
        unknown = set(data) - set(_SCALAR_KEYS) - set(KIND_NAMES)
        if unknown:
            raise PolicyError(
                f"unknown policy keys {sorted(unknown)}; known: {sorted(_SCALAR_KEYS)} "
                f"and tables {list(KIND_NAMES)}"
            )
        epoch_seconds = data.get("epoch_seconds", 600)
        default_age = 2 * epoch_seconds if isinstance(epoch_seconds, int) else 1200
        return cls(
            allowed_kinds=data.get("allowed_kinds", DEFAULT_ALLOWED_KINDS),
            allow_simulated=data.get("allow_simulated", False),
            max_evidence_age=data.get("max_evidence_age", default_age),
            epoch_seconds=epoch_seconds,
            max_clock_skew=data.get("max_clock_skew", 30),
            require_gpu=data.get("require_gpu", False),
            sections={k: data[k] for k in KIND_NAMES if k in data},
        )

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        if len(text) > MAX_POLICY_SIZE:
            raise PolicyError(f"policy is larger than {MAX_POLICY_SIZE} characters")
        try:
            data = loads_toml(text)
        except NestingError as exc:
            raise PolicyError(f"policy is {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy is not valid TOML: {exc}") from None
        return cls.from_mapping(data)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_POLICY_SIZE + 1)  # bounded: /dev/zero or a pipe cannot exhaust memory
            if len(raw) > MAX_POLICY_SIZE:
                raise PolicyError(f"policy {path} is larger than {MAX_POLICY_SIZE} bytes")
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policy {path}: {exc}") from None
        try:
            return cls.from_toml(text)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    def to_toml(self) -> str:
        """TOML text that :meth:`from_toml` reads back into an equal Policy."""
        lines = [
            f"allowed_kinds = {_toml_value(list(self.allowed_kinds))}",
            f"allow_simulated = {_toml_value(self.allow_simulated)}",
            f"max_evidence_age = {self.max_evidence_age}",
            f"epoch_seconds = {self.epoch_seconds}",
            f"max_clock_skew = {self.max_clock_skew}",
            f"require_gpu = {_toml_value(self.require_gpu)}",
        ]
        for name in KIND_NAMES:
            if name in self.sections:
                lines.append("")
                lines.extend(_toml_table([name], self.sections[name]))
        return "\n".join(lines) + "\n"

    @classmethod
    def for_simulated_testnet(
        cls,
        platform_keys: list[str],
        measurements: list[str],
        *,
        testnet: str = "",
        epoch_seconds: int = 600,
        max_evidence_age: int | None = None,
    ) -> Policy:
        """The policy a local testnet generator writes: simulated evidence from these platforms only."""
        section: dict[str, Any] = {"platform_keys": list(platform_keys), "measurements": list(measurements)}
        if testnet:
            section["testnet"] = testnet
        return cls(
            allowed_kinds=(EvidenceKind.SIMULATED.value,),
            allow_simulated=True,
            epoch_seconds=epoch_seconds,
            max_evidence_age=max_evidence_age if max_evidence_age is not None else 2 * epoch_seconds,
            sections={EvidenceKind.SIMULATED.value: section},
        )


def _check_plain(value: Any, where: str) -> None:
    """Only what TOML can say and to_toml can write back: str, int, bool, float, lists, tables."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PolicyError(f"{where} has a non-string key")
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, where)
    elif not isinstance(value, (str, int, bool, float)):
        raise PolicyError(f"{where} holds a {type(value).__name__}; use strings, numbers, booleans, lists")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise PolicyError(f"cannot write {type(value).__name__} as TOML")


def _toml_table(path: list[str], table: Mapping[str, Any]) -> list[str]:
    lines = ["[" + ".".join(_toml_key(p) for p in path) + "]"]
    subtables = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables:
        lines.extend(_toml_table([*path, key], value))
    return lines
