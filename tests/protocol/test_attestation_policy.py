"""The appraisal policy: TOML in, validated Policy out, and back to TOML unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.attestation.policy import DEFAULT_ALLOWED_KINDS, Policy, PolicyError

FULL = """
allowed_kinds = ["tdx", "sev-snp", "nvidia-gpu", "simulated"]
allow_simulated = true
max_evidence_age = 900
epoch_seconds = 300
max_clock_skew = 10
require_gpu = true

[tdx]
allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
mrtd = ["aa"]

["sev-snp"]
measurement = ["bb"]
[sev-snp.min_tcb]
snp = 8
microcode = 115

[nvidia-gpu]
allowed_archs = ["HOPPER"]
require_ocsp = false

[simulated]
platform_keys = ["{}"]
measurements = ["{}"]
testnet = "local-1"
""".format("11" * 32, "22" * 32)


def test_defaults_are_safe() -> None:
    policy = Policy()
    assert policy.allowed_kinds == DEFAULT_ALLOWED_KINDS == ("tdx", "sev-snp", "nvidia-gpu")
    assert policy.allow_simulated is False and policy.require_gpu is False
    assert (policy.epoch_seconds, policy.max_clock_skew, policy.max_evidence_age) == (600, 30, 1200)
    assert not policy.kind_allowed("simulated")
    assert Policy.from_toml("") == policy


def test_full_policy() -> None:
    policy = Policy.from_toml(FULL)
    assert policy.allowed_kinds == ("tdx", "sev-snp", "nvidia-gpu", "simulated")
    assert policy.kind_allowed("simulated") and policy.kind_allowed("tdx")
    assert policy.max_evidence_age == 900 and policy.epoch_seconds == 300 and policy.max_clock_skew == 10
    assert policy.require_gpu
    assert policy.section("sev-snp") == {"measurement": ["bb"], "min_tcb": {"snp": 8, "microcode": 115}}
    assert policy.section("nvidia-gpu")["require_ocsp"] is False
    assert policy.section("simulated")["testnet"] == "local-1"


def test_simulated_needs_both_listing_and_allow_simulated() -> None:
    assert not Policy.from_toml('allowed_kinds = ["simulated"]').kind_allowed("simulated")
    assert not Policy.from_toml("allow_simulated = true").kind_allowed("simulated")
    assert Policy.from_toml('allowed_kinds = ["simulated"]\nallow_simulated = true').kind_allowed("simulated")


def test_max_evidence_age_defaults_to_two_epochs() -> None:
    assert Policy.from_toml("epoch_seconds = 60").max_evidence_age == 120


def test_section_of_an_absent_kind_is_empty() -> None:
    assert Policy().section("tdx") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow_simulate = true", "unknown policy keys"),
        ("[sgx]\nx = 1", "unknown policy keys"),
        ('allowed_kinds = ["tdx", "sgx"]', "unknown kinds"),
        ('allowed_kinds = ["tdx", "tdx"]', "twice"),
        ('allowed_kinds = "tdx"', "list"),
        ('allow_simulated = "yes"', "true or false"),
        ("require_gpu = 1", "true or false"),
        ("epoch_seconds = 0", "epoch_seconds"),
        ("epoch_seconds = 1.5", "epoch_seconds"),
        ("max_clock_skew = -1", "max_clock_skew"),
        ("max_evidence_age = true", "max_evidence_age"),
        ("tdx = 5", "must be a table"),
        ("[simulated]\nplatform_key = []", "unknown keys"),
        ('[simulated]\nplatform_keys = ["00"]', "32-byte"),
        ('[simulated]\nmeasurements = ["xyz"]', "hex"),
        ("[tdx]\nwhen = 1979-05-27", "use strings"),
        ("this is = not toml", "not valid TOML"),
    ],
)
def test_invalid_policies_are_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_toml(text)


def test_load(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(FULL, encoding="utf-8")
    assert Policy.load(path) == Policy.from_toml(FULL)
    path.write_text("epoch_seconds = -5", encoding="utf-8")
    with pytest.raises(PolicyError, match=str(path)):
        Policy.load(path)
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "missing.toml")


def test_to_toml_round_trip() -> None:
    policy = Policy.from_toml(FULL)
    assert Policy.from_toml(policy.to_toml()) == policy
    assert Policy.from_toml(Policy().to_toml()) == Policy()


def test_for_simulated_testnet() -> None:
    policy = Policy.for_simulated_testnet(["33" * 32], ["44" * 32], testnet="t", epoch_seconds=60)
    assert policy.kind_allowed("simulated") and not policy.kind_allowed("tdx")
    assert policy.max_evidence_age == 120
    assert policy.section("simulated") == {
        "platform_keys": ["33" * 32],
        "measurements": ["44" * 32],
        "testnet": "t",
    }
    assert Policy.from_toml(policy.to_toml()) == policy


def test_sections_are_copies() -> None:
    table: dict[str, Any] = {"mrtd": ["aa"]}
    policy = Policy(sections={"tdx": table})
    table["mrtd"].append("bb")
    assert policy.section("tdx") == {"mrtd": ["aa"]}


_keys = st.text(min_size=1, max_size=12)
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4))
_tables = st.dictionaries(_keys, st.one_of(_values, st.dictionaries(_keys, _values, max_size=3)), max_size=5)


@given(
    st.dictionaries(st.sampled_from(["tdx", "sev-snp", "nvidia-gpu"]), _tables, max_size=3),
    st.lists(st.sampled_from(["tdx", "sev-snp", "nvidia-gpu", "simulated"]), unique=True),
    st.booleans(),
    st.integers(min_value=1, max_value=86400),
)
def test_property_to_toml_round_trip(
    sections: dict[str, Any], kinds: list[str], allow_simulated: bool, epoch: int
) -> None:
    policy = Policy(
        allowed_kinds=tuple(kinds), allow_simulated=allow_simulated, epoch_seconds=epoch, sections=sections
    )
    assert Policy.from_toml(policy.to_toml()) == policy
