"""AttestationBundle wire format: round trips, schema and limits, hostile bytes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol.attestation import binding
from protocol.attestation.bundle import (
    MAX_ADDRS,
    MAX_BUNDLE_SIZE,
    MAX_EVIDENCE_DATA,
    MAX_GPUS,
    MAX_LIFETIME,
    MAX_MODEL_ID_LEN,
    MAX_MODELS,
    AttestationBundle,
    BundleError,
    build_bundle,
)
from protocol.attestation.evidence import Evidence
from protocol.attestation.evidence_files import load_evidence
from protocol.identity import Domain, Identity, SignatureError, verify
from protocol.numerics import EngineEntry, EngineIdentity
from tests.conftest import decoder_settings
from tests.vectors import VECTORS

NODE = Identity(bytes([11]) * 32)
ISSUED = 1_700_000_410
ENC = bytes(range(100, 132))


def cpu_collector(rd: bytes) -> Evidence:
    # The schema does not care which kind; these tests are about the wire format, not appraisal.
    return Evidence("simulated", b"evidence over " + rd, {"note": b"x"})


def sample(**overrides: Any) -> AttestationBundle:
    kwargs: dict[str, Any] = {
        "issued_at": ISSUED,
        "epoch_seconds": 600,
        "collect_cpu_evidence": cpu_collector,
        "models": ["vn-model:" + "ab" * 32],
        "addrs": ["/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooW"],
    }
    kwargs.update(overrides)
    return build_bundle(NODE, ENC, **kwargs)


def wire_map(bundle: AttestationBundle) -> dict[str, Any]:
    value = codec.decode(bundle.to_wire(), codec.Limits(max_size=1 << 20))
    assert isinstance(value, dict)
    return value


def test_round_trip_and_signature() -> None:
    bundle = sample(collect_gpu_evidence=lambda n: [Evidence("nvidia-gpu", n, {"cert_chain": b"pem"})])
    wire = bundle.to_wire()
    again = AttestationBundle.from_wire(wire)
    assert again == bundle
    assert again.to_wire() == wire
    assert again.digest() == bundle.digest() == hashlib.sha256(wire).digest()
    again.verify_signature()
    assert bundle.epoch == ISSUED // 600
    assert bundle.expires_at == (bundle.epoch + 2) * 600  # end of the next epoch
    assert bundle.gpus[0].data == binding.gpu_nonce(NODE.peer_id, ENC, bundle.epoch)
    assert bundle.cpu.data == b"evidence over " + bundle.expected_report_data()


def test_wire_form_is_the_documented_map() -> None:
    value = wire_map(sample())
    assert sorted(value) == sorted(
        [
            "v",
            "node_id",
            "enc_pubkey",
            "epoch",
            "issued_at",
            "expires_at",
            "models",
            "addrs",
            "cpu",
            "gpus",
            "sig",
        ]
    )
    assert value["v"] == 1 and value["node_id"] == NODE.peer_id and len(value["sig"]) == 64
    assert value["cpu"] == {"kind": "simulated", "data": value["cpu"]["data"], "endorsements": {"note": b"x"}}
    unsigned = {k: v for k, v in value.items() if k != "sig"}
    verify(NODE.peer_id, Domain.BUNDLE, codec.encode(unsigned), value["sig"])


def test_unsigned_bundle_has_no_wire_form() -> None:
    unsigned = dataclasses.replace(sample(), sig=b"")
    with pytest.raises(BundleError, match="unsigned"):
        unsigned.to_wire()


def test_signature_of_tampered_bundle_fails() -> None:
    forged = dataclasses.replace(sample(), issued_at=ISSUED + 1)
    with pytest.raises(SignatureError):
        forged.verify_signature()


def encode_raw(value: dict[str, Any]) -> bytes:
    return codec.encode(value)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m.update(v=2), "unsupported_version"),
        (lambda m: m.update(v=True), "unsupported_version"),
        (lambda m: m.update(extra=1), "bad_field"),
        (lambda m: m.pop("addrs"), "bad_field"),
        (lambda m: m.update(node_id=b"\x00" * 38), "bad_field"),
        (lambda m: m.update(node_id=m["node_id"][:-1]), "bad_field"),
        (lambda m: m.update(enc_pubkey=b"\x01" * 31), "bad_field"),
        (lambda m: m.update(epoch=-1), "bad_field"),
        (lambda m: m.update(issued_at="now"), "bad_field"),
        (lambda m: m.update(issued_at=True), "bad_field"),
        (lambda m: m.update(expires_at=m["issued_at"]), "bad_field"),
        (lambda m: m.update(expires_at=m["issued_at"] + MAX_LIFETIME + 1), "bad_field"),
        (lambda m: m.update(models=["has space"]), "bad_field"),
        (lambda m: m.update(models=["x" * (MAX_MODEL_ID_LEN + 1)]), "bad_field"),
        (lambda m: m.update(models=["a", "a"]), "bad_field"),
        (lambda m: m.update(models=[""]), "bad_field"),
        (lambda m: m.update(models=[f"m{i}" for i in range(MAX_MODELS + 1)]), "malformed"),  # array limit
        (lambda m: m.update(models="vn-model:x"), "bad_field"),
        (lambda m: m.update(addrs=["ip4/1.2.3.4"]), "bad_field"),
        (lambda m: m.update(addrs=[f"/a/{i}" for i in range(MAX_ADDRS + 1)]), "too_many"),
        (lambda m: m.update(addrs=["/" + "a" * 300]), "malformed"),  # beyond the decoder's string limit
        (lambda m: m.update(cpu={"kind": "simulated", "data": b"x"}), "bad_field"),
        (lambda m: m.update(cpu={"kind": "Bad Kind", "data": b"x", "endorsements": {}}), "bad_field"),
        (lambda m: m.update(cpu={"kind": "simulated", "data": b"", "endorsements": {}}), "bad_field"),
        (
            lambda m: m.update(cpu={"kind": "simulated", "data": b"x", "endorsements": {"a b": b""}}),
            "bad_field",
        ),
        (
            lambda m: m.update(cpu={"kind": "simulated", "data": b"x", "endorsements": {"n": "text"}}),
            "bad_field",
        ),
        (lambda m: m.update(cpu={"kind": "simulated", "data": b"x", "endorsements": []}), "bad_field"),
        (lambda m: m.update(cpu=[]), "bad_field"),
        (lambda m: m.update(gpus={}), "bad_field"),
        (lambda m: m.update(gpus=[m["cpu"]] * (MAX_GPUS + 1)), "too_many"),
        (lambda m: m.update(sig=b"\x00" * 63), "bad_field"),
        (lambda m: m.update(cpu={**m["cpu"], "data": b"\x00" * (MAX_EVIDENCE_DATA + 1)}), "bad_field"),
    ],
)
def test_schema_violations_are_refused(change: Any, reason: str) -> None:
    value = wire_map(sample())
    change(value)
    with pytest.raises(BundleError) as info:
        AttestationBundle.from_wire(encode_raw(value))
    assert info.value.reason == reason


def test_not_a_map() -> None:
    with pytest.raises(BundleError, match="malformed"):
        AttestationBundle.from_wire(codec.encode([1, 2]))


def test_non_canonical_encoding_is_refused() -> None:
    value = wire_map(sample())
    unsorted = msgpack.packb(dict(reversed(list(value.items()))), use_bin_type=True)
    with pytest.raises(BundleError) as info:
        AttestationBundle.from_wire(unsorted)
    assert info.value.reason == "malformed"


def test_size_limit_on_decode_and_build() -> None:
    with pytest.raises(BundleError, match="too_large"):
        AttestationBundle.from_wire(b"\x00" * (MAX_BUNDLE_SIZE + 1))
    big = [Evidence("nvidia-gpu", b"\x01" * MAX_EVIDENCE_DATA) for _ in range(5)]  # > 256 KiB in all
    with pytest.raises(BundleError, match="too_large"):
        sample(collect_gpu_evidence=lambda n: big)


def test_real_tdx_and_eight_gpus_fit_the_size_limit() -> None:
    """The 256 KiB limit leaves room for a real TDX quote with collateral and 8 real H100 evidences."""
    vectors = VECTORS
    dcap = vectors / "tdx" / "dcap-qvl"
    tdx = Evidence(
        "tdx",
        (dcap / "tdx_quote").read_bytes(),
        {"collateral": (dcap / "tdx_quote_collateral.json").read_bytes()},
    )
    gpus = [
        e.evidence
        for e in load_evidence((vectors / "nvidia-gpu" / "nvtrust" / "ppcie_gpu_evidence.json").read_bytes())
    ]
    assert len(gpus) == 8
    bundle = sample(collect_cpu_evidence=lambda rd: tdx, collect_gpu_evidence=lambda n: gpus)
    assert len(bundle.to_wire()) < 128 * 1024
    assert AttestationBundle.from_wire(bundle.to_wire()) == bundle


def test_direct_construction_validates() -> None:
    good = sample()
    with pytest.raises(BundleError):
        dataclasses.replace(good, models=("ok", "not ok"))
    with pytest.raises(BundleError):
        dataclasses.replace(good, cpu=b"evidence")  # type: ignore[arg-type]
    with pytest.raises(BundleError):
        dataclasses.replace(good, v=2)


def test_challenge_report_data_differs_from_gossip_binding() -> None:
    bundle = sample()
    nonce = bytes(32)
    assert bundle.challenge_report_data(nonce) != bundle.expected_report_data()
    assert bundle.challenge_report_data(nonce) != bundle.challenge_report_data(b"\x01" * 32)


# -- properties -------------------------------------------------------------------------------------

_token = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
_evidence = st.builds(
    Evidence,
    kind=st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True),
    data=st.binary(min_size=1, max_size=300),
    endorsements=st.dictionaries(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True), st.binary(max_size=100), max_size=4
    ),
)


@st.composite
def bundles(draw: st.DrawFn) -> AttestationBundle:
    issued = draw(st.integers(min_value=0, max_value=(1 << 40) - MAX_LIFETIME - 1))
    seed = draw(st.binary(min_size=32, max_size=32))
    gpus = draw(st.lists(_evidence, max_size=3))
    cpu = draw(_evidence)
    return build_bundle(
        Identity(seed),
        draw(st.binary(min_size=32, max_size=32)),
        issued_at=issued,
        epoch_seconds=draw(st.integers(min_value=1, max_value=86400)),
        collect_cpu_evidence=lambda rd: cpu,
        collect_gpu_evidence=lambda nonce: gpus,
        models=draw(st.lists(_token, max_size=5, unique=True)),
        addrs=draw(st.lists(_token.map(lambda t: "/" + t), max_size=5, unique=True)),
        expires_at=issued + draw(st.integers(min_value=1, max_value=MAX_LIFETIME)),
    )


@given(bundles())
def test_property_round_trip(bundle: AttestationBundle) -> None:
    wire = bundle.to_wire()
    again = AttestationBundle.from_wire(wire)
    assert again == bundle and again.to_wire() == wire
    # the payload sliced out of the wire bytes equals the one encoded from the fields
    assert again.signed_payload() == dataclasses.replace(again).signed_payload() == bundle.signed_payload()
    again.verify_signature()


_VALID_WIRE = sample(collect_gpu_evidence=lambda n: [Evidence("nvidia-gpu", n)]).to_wire()
_VALID_MAP = codec.decode(_VALID_WIRE)


@decoder_settings()
@given(st.binary(max_size=2048))
def test_property_arbitrary_bytes_only_raise_bundle_error(data: bytes) -> None:
    with contextlib.suppress(BundleError):
        AttestationBundle.from_wire(data)


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.text(max_size=50),
    st.binary(max_size=80),
)
_values = _leaf | st.lists(_leaf, max_size=4) | st.dictionaries(st.text(max_size=12), _leaf, max_size=4)
_fields = st.dictionaries(st.sampled_from([*sorted(_VALID_MAP), "extra"]), _values, min_size=1, max_size=4)


@given(_fields)
def test_property_structured_garbage_only_raises_bundle_error(fields: dict[str, Any]) -> None:
    """Canonical maps with the bundle's keys (and another) holding arbitrary values: schema fuzzing.

    The byte-level decoder properties above run at the decoder example count; this one explores
    field types and runs at the profile's default.
    """
    value = {**_VALID_MAP, **fields}
    with contextlib.suppress(BundleError):
        AttestationBundle.from_wire(codec.encode(value))


@decoder_settings()
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "truncate"]),
            st.integers(0, 10_000),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_property_mutated_bytes_only_raise_bundle_error(mutations: list[tuple[str, int, int]]) -> None:
    data = bytearray(_VALID_WIRE)
    for op, position, byte in mutations:
        i = position % (len(data) + 1)
        if op == "flip" and i < len(data):
            data[i] ^= byte or 1
        elif op == "insert":
            data.insert(i, byte)
        elif op == "delete" and i < len(data):
            del data[i]
        elif op == "truncate":
            del data[i:]
    try:
        decoded = AttestationBundle.from_wire(bytes(data))
    except BundleError:
        return
    if bytes(data) != _VALID_WIRE:  # still well-formed: then the signature must catch it
        with pytest.raises(SignatureError):
            decoded.verify_signature()


# -- engine entries (per served model: the engine computing it, bound like the model ids) ---------

MODEL = "vn-model:" + "ab" * 32
VLLM = EngineIdentity("vllm", "0.32.0", "bfloat16", "cpu")


def test_engine_entries_round_trip_and_are_bound_by_the_evidence() -> None:
    with_engine = sample(engines=[EngineEntry(MODEL, VLLM)])
    decoded = AttestationBundle.from_wire(with_engine.to_wire())
    assert decoded == with_engine and decoded.engine_for(MODEL) == EngineEntry(MODEL, VLLM)
    decoded.verify_signature()  # the sliced signed payload is right for a 12-entry map too
    assert decoded.signed_payload() == codec.encode(
        {k: v for k, v in wire_map(with_engine).items() if k != "sig"}
    )
    plain = sample()
    assert "engines" not in wire_map(plain)  # older bundles keep their exact bytes
    # The evidence's report data covers the engine: the same bundle claiming another engine
    # (or none) no longer matches the evidence it carries.
    assert with_engine.expected_report_data() != plain.expected_report_data()
    assert with_engine.cpu.data.endswith(with_engine.expected_report_data())
    claimed_torch = dataclasses.replace(
        with_engine, engines=(EngineEntry(MODEL, EngineIdentity("torch", "2.13.0", "float32", "cpu")),)
    )
    assert not claimed_torch.cpu.data.endswith(claimed_torch.expected_report_data())
    nonce = bytes(32)
    assert with_engine.challenge_report_data(nonce) != plain.challenge_report_data(nonce)


@pytest.mark.parametrize(
    "engines",
    [
        [],  # present but empty: not canonical
        [{**EngineEntry(MODEL, VLLM).to_wire(), "model": "vn-model:" + "cd" * 32}],  # not a served model
        [EngineEntry(MODEL, VLLM).to_wire()] * 2,  # two entries for one model
        [{**EngineEntry(MODEL, VLLM).to_wire(), "family": ""}],
        ["vllm"],
    ],
)
def test_bad_engine_entries_are_refused(engines: list[Any]) -> None:
    value = wire_map(sample())
    value["engines"] = engines
    with pytest.raises(BundleError):
        AttestationBundle.from_wire(codec.encode(value))
