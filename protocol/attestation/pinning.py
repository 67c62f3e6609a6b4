"""Policies that pin known-good evidence, and what a policy lacks to accept a piece of evidence.

Why: an appraisal policy lists 96-character measurements; copying them by hand from a verdict is
how typos and wrong registers get into security policy. ``pinning_section`` turns a verified
verdict into the policy section that accepts exactly those measurements (TDX MRTD and RTMR0–3,
the SNP launch measurement and its current TCB as the minimum, the GPU's certified FWID and
versions), and ``policy_additions`` says which keys a refused verdict would need added. Neither
ever relaxes a cryptographic check or the debug bit: only allow-lists and platform flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol.attestation.evidence import EvidenceKind, EvidenceVerdict, Reason

__all__ = ["FIXABLE_REASONS", "permissive_section", "pinning_section", "policy_additions"]

TDX_PINNED = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")
TDX_PLATFORM_KEYS = {
    "dynamic_platform": "allow_dynamic_platform",
    "cached_keys": "allow_cached_keys",
    "smt_enabled": "allow_smt",
}
# Refusals that adding allow-list entries or platform flags can cure; anything else cannot.
FIXABLE_REASONS = frozenset(
    {Reason.MEASUREMENT_NOT_ALLOWED, Reason.TCB_NOT_ALLOWED, Reason.UNTRUSTED_PLATFORM}
)
_ALL_TCB_STATUSES = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


def permissive_section(kind: str) -> dict[str, Any]:
    """A section that appraises nothing, used only to read a verified verdict's claims for pinning.

    The cryptographic checks still run in full; the debug bit stays refused.
    """
    if kind == EvidenceKind.TDX.value:
        flags = dict.fromkeys(TDX_PLATFORM_KEYS.values(), True)
        return {"allow_any_measurement": True, "allowed_tcb_statuses": _ALL_TCB_STATUSES, **flags}
    if kind == EvidenceKind.SEV_SNP.value:
        return {"allow_any_measurement": True, "max_vmpl": 3}
    if kind == EvidenceKind.NVIDIA_GPU.value:
        return {"allow_any_measurement": True, "require_ocsp": False}
    raise ValueError(f"no pinning for kind {kind!r}")


def pinning_section(verdict: EvidenceVerdict) -> dict[str, Any]:
    """The policy section that accepts this (verified) evidence's measurements and platform as they are."""
    extra = verdict.extra
    if verdict.kind == EvidenceKind.TDX.value:
        section: dict[str, Any] = {key: [verdict.measurements[key]] for key in TDX_PINNED}
        if verdict.tcb_status:
            section["allowed_tcb_statuses"] = [verdict.tcb_status]
        platform = extra.get("platform", {})
        for name, key in TDX_PLATFORM_KEYS.items():
            if platform.get(name) is True:
                section[key] = True
        return section
    if verdict.kind == EvidenceKind.SEV_SNP.value:
        section = {"measurements": [verdict.measurements["measurement"]]}
        if extra.get("product"):
            section["allowed_products"] = [extra["product"]]
        if extra.get("reported_tcb"):
            section["min_tcb"] = dict(extra["reported_tcb"])
        return section
    if verdict.kind == EvidenceKind.NVIDIA_GPU.value:
        section = {"allowed_archs": [extra["arch"]]}
        if extra.get("fwid"):
            section["fwids"] = [extra["fwid"]]
        section["allowed_driver_versions"] = [extra["driver_version"]]
        section["allowed_vbios_versions"] = [extra["vbios_version"]]
        # Without RIMs the 64 measurement blocks are not appraised; the FWID (certified by the
        # device certificate) and the versions pin the firmware instead.
        section["allow_any_measurement"] = True
        return section
    raise ValueError(f"no pinning for kind {verdict.kind!r}")


def policy_additions(verdict: EvidenceVerdict, section: Mapping[str, Any]) -> dict[str, Any] | None:
    """What adding to ``section`` would make this refused verdict acceptable, or None if no policy can.

    Only allow-list entries and platform flags are suggested; a cryptographic failure, a wrong
    binding or the debug bit cannot be cured by policy and gives None.
    """
    if verdict.ok or not verdict.reasons or not set(verdict.reasons) <= FIXABLE_REASONS:
        return None
    gpu = verdict.kind == EvidenceKind.NVIDIA_GPU.value
    if not verdict.measurements or (gpu and "arch" not in verdict.extra):
        return None
    if gpu and verdict.extra.get("reference_measurements") == "mismatch":
        return None  # the RIMs given refuse it; no allow-list entry overrides a RIM
    pinned = pinning_section(verdict)
    additions: dict[str, Any] = {}
    for key, value in pinned.items():
        current = section.get(key)
        if key == "min_tcb":
            continue  # a minimum is never "added" to accept: lowering it is a policy decision
        if isinstance(value, list):
            have = [str(v).lower().removeprefix("0x") for v in current] if isinstance(current, list) else []
            if current is None and key == "allowed_tcb_statuses":
                have = ["uptodate"]
            missing = [v for v in value if str(v).lower() not in have]
            if missing:
                additions[key] = missing
        elif current != value:
            additions[key] = value
    ocsp_refused = verdict.revocation == "not checked" and section.get("require_ocsp", True) is True
    if gpu and Reason.UNTRUSTED_PLATFORM in verdict.reasons and ocsp_refused:
        additions["require_ocsp"] = False  # offline, revocation cannot be checked (see the docs)
    return additions or None
