"""Engine identity and numerics classes: which honest results may differ, and by how much.

Honest nodes running different engines, dtypes or devices do not produce bit-identical logits, so
one tolerance cannot fit every pair: a bound wide enough for vLLM in bf16 against torch in fp32
would let a substituted token slip past two fp32 verifiers. Each executor therefore attests, per
served model, the engine that computes it (family, version, dtype, device, and whether it can
score tokens); its *numerics class* is that identity plus the model id. Verifiers of the
primary's class are preferred, and a cross-class pair is judged with the bound calibrated for that
pair of *profiles* (family, dtype, device), see docs/CALIBRATION.md.

Wire form of an engine entry (inside the attestation bundle, bound by the TEE evidence): a map
``{"model", "family", "version", "dtype", "device", "score"}`` (docs/protocol/attestation.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.errors import ProtocolError

__all__ = [
    "ENGINE_KEYS",
    "TORCH_FP32_CPU",
    "VLLM_BF16_CPU",
    "EngineEntry",
    "EngineIdentity",
    "NumericsClass",
    "NumericsError",
    "Profile",
    "token_gap_bound",
]

ENGINE_KEYS = frozenset({"model", "family", "version", "dtype", "device", "score"})
MAX_FIELD_LEN = 64
_FIELD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+:-]*\Z")


class NumericsError(ProtocolError):
    """An engine entry is malformed (unknown keys, wrong types, fields outside the limits)."""


def _field(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD_LEN or not _FIELD_RE.match(value):
        raise NumericsError("bad_field", f"engine {name} must be 1-{MAX_FIELD_LEN} identifier characters")
    return value


@dataclass(frozen=True)
class Profile:
    """What decides an engine's float behaviour, independent of model and version."""

    family: str
    dtype: str
    device: str

    def __str__(self) -> str:
        return f"{self.family}-{self.dtype}-{self.device}"


@dataclass(frozen=True)
class EngineIdentity:
    """The engine computing a model: ``family`` (torch, vllm, sglang, openai), its ``version``,
    the ``dtype`` of its weights and activations, the ``device`` kind, and whether it can score
    claimed tokens (teacher-forced prompt logprobs); a node that cannot is never a verifier."""

    family: str
    version: str
    dtype: str
    device: str
    score: bool = True

    def __post_init__(self) -> None:
        for name in ("family", "version", "dtype", "device"):
            _field(getattr(self, name), name)
        if not isinstance(self.score, bool):
            raise NumericsError("bad_field", "engine score must be a boolean")

    @property
    def profile(self) -> Profile:
        return Profile(self.family, self.dtype, self.device)

    def describe(self) -> str:
        return f"{self.family} {self.version} ({self.dtype}, {self.device})"

    @classmethod
    def torch_cpu_fp32(cls) -> EngineIdentity:
        """The in-process runtime: torch, fp32, CPU (its version is filled in by the node)."""
        import importlib.metadata

        try:
            version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return cls("torch", version, "float32", "cpu")


@dataclass(frozen=True)
class EngineEntry:
    """One bundle entry: ``model`` (a served model id) is computed by ``engine``."""

    model: str
    engine: EngineIdentity

    def to_wire(self) -> dict[str, Any]:
        e = self.engine
        return {"model": self.model, "family": e.family, "version": e.version, "dtype": e.dtype,
                "device": e.device, "score": e.score}

    @classmethod
    def from_wire(cls, value: Any, max_model_len: int = 128) -> EngineEntry:
        if not isinstance(value, Mapping) or set(value) != ENGINE_KEYS:
            raise NumericsError("bad_field", f"an engine entry is a map with exactly {sorted(ENGINE_KEYS)}")
        model = value["model"]
        if not isinstance(model, str) or not 0 < len(model) <= max_model_len:
            raise NumericsError("bad_field", "engine model must be a model id")
        engine = EngineIdentity(value["family"], value["version"], value["dtype"], value["device"],
                                value["score"])
        return cls(model, engine)


@dataclass(frozen=True)
class NumericsClass:
    """Results of two executors of one class may differ only by the class's own float noise."""

    model_id: str
    family: str
    version: str
    dtype: str
    device: str

    @classmethod
    def of(cls, model_id: str, engine: EngineIdentity) -> NumericsClass:
        return cls(model_id, engine.family, engine.version, engine.dtype, engine.device)

    @property
    def profile(self) -> Profile:
        return Profile(self.family, self.dtype, self.device)

    def __str__(self) -> str:
        return f"{self.family}-{self.version}-{self.dtype}-{self.device}"


TORCH_FP32_CPU = Profile("torch", "float32", "cpu")
VLLM_BF16_CPU = Profile("vllm", "bfloat16", "cpu")

# Logit-gap bounds per (primary profile, verifier profile), calibrated on SmolLM2-135M-Instruct
# (docs/CALIBRATION.md, "Across engines"; ``python -m simulations.calibrate_engines``): the worst
# honest gap of any pair with vLLM bf16 on one side was 0.098 (a vLLM primary's token that was
# rank 1 for a torch fp32 verifier), times the usual 1.5 headroom, rounded up: 0.15. vLLM-vLLM
# measured 0 on an idle engine, but vLLM batches concurrent requests (another reduction order,
# in bf16), so it gets the cross-engine bound too. The same-profile torch bound is the
# in-process calibration (protocol.jobs.consensus).
_PAIR_BOUNDS: dict[tuple[Profile, Profile], float] = {
    (VLLM_BF16_CPU, VLLM_BF16_CPU): 0.15,
    (VLLM_BF16_CPU, TORCH_FP32_CPU): 0.15,
    (TORCH_FP32_CPU, VLLM_BF16_CPU): 0.15,
}


def token_gap_bound(primary: Profile | None, verifier: Profile | None, same_class_bound: float) -> float:
    """The largest logit gap a verifier of profile ``verifier`` may report for an honest primary
    of profile ``primary``. Same class, unknown profiles (an old bundle without engine entries)
    and torch fp32 on both sides: ``same_class_bound``. A pair never calibrated takes the widest
    calibrated cross-profile bound, so an honest node is never out-voted for running an engine
    nobody measured; the router prefers same-class verifiers, so this is the rare case."""
    if primary is None or verifier is None or (primary == verifier and primary == TORCH_FP32_CPU):
        return same_class_bound
    bound = _PAIR_BOUNDS.get((primary, verifier))
    if bound is not None:
        return max(bound, same_class_bound)
    return max(max(_PAIR_BOUNDS.values()), same_class_bound)
