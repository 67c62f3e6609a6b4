"""Bundle appraisal: a negative test for every verdict reason, kind dispatch, challenges, the cache."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from protocol.attestation import binding
from protocol.attestation.appraisal import BundleAppraiser, default_verifiers
from protocol.attestation.bundle import AttestationBundle, build_bundle
from protocol.attestation.evidence import Evidence, EvidenceKind, EvidenceVerdict, Reason
from protocol.attestation.policy import Policy
from protocol.attestation.simulated import LABEL, SimulatedPlatform, SimulatedVerifier, source_measurement
from protocol.identity import Domain, Identity
from tests.vectors import VECTORS

EPOCH = 600
T0 = EPOCH * 2_833_334  # the start of an epoch
ISSUED = T0 + 10
NOW = ISSUED + 5
MEASUREMENT = source_measurement([("protocol/x.py", b"print('measured')\n")])
OTHER_MEASUREMENT = source_measurement([("protocol/x.py", b"print('something else')\n")])
ENC_KEY = bytes(range(32))
MODELS = ("vn-model:" + "ab" * 32,)
ADDRS = ("/ip4/127.0.0.1/tcp/4001",)


class GpuForTests:
    """A GPU kind verifier for dispatch tests: its "evidence" is the nonce it was asked to carry.

    It implements the real contract (kind, verify) so the appraiser is exercised exactly as with
    the NVIDIA verifier, without needing a GPU transcript whose nonce we could choose.
    """

    kind = EvidenceKind.NVIDIA_GPU

    def __init__(self) -> None:
        self.nonces: list[bytes] = []

    def verify(
        self, evidence: Evidence, *, expected_report_data: bytes, policy: Mapping[str, Any], now: int
    ) -> EvidenceVerdict:
        self.nonces.append(expected_report_data)
        if evidence.data != expected_report_data:
            return EvidenceVerdict.refused(self.kind.value, Reason.REPORT_DATA_MISMATCH, "nonce differs")
        return EvidenceVerdict(kind=self.kind.value, ok=True, label="GPU for tests", advisories=("ADV-1",))


class CountingVerifier:
    """Wraps the simulated verifier and counts calls (to see what the cache avoids)."""

    kind = EvidenceKind.SIMULATED

    def __init__(self) -> None:
        self.calls = 0
        self._inner = SimulatedVerifier()

    def verify(
        self, evidence: Evidence, *, expected_report_data: bytes, policy: Mapping[str, Any], now: int
    ) -> EvidenceVerdict:
        self.calls += 1
        return self._inner.verify(evidence, expected_report_data=expected_report_data, policy=policy, now=now)


class RaisingVerifier:
    kind = EvidenceKind.SIMULATED

    def verify(
        self, evidence: Evidence, *, expected_report_data: bytes, policy: Mapping[str, Any], now: int
    ) -> EvidenceVerdict:
        raise RuntimeError("verifier bug")


@pytest.fixture(scope="module")
def platform() -> SimulatedPlatform:
    return SimulatedPlatform(bytes([7]) * 32, testnet="unit")


@pytest.fixture(scope="module")
def node() -> Identity:
    return Identity(bytes([1]) * 32)


def make_policy(platform: SimulatedPlatform, **overrides: Any) -> Policy:
    base = Policy.for_simulated_testnet(
        [platform.public_key_hex], [MEASUREMENT.hex()], testnet="unit", epoch_seconds=EPOCH
    )
    return dataclasses.replace(base, **overrides)


def make_bundle(
    node: Identity,
    platform: SimulatedPlatform,
    *,
    issued_at: int = ISSUED,
    measurement: bytes = MEASUREMENT,
    debug: bool = False,
    collect: Callable[[bytes], Evidence] | None = None,
    gpus: Callable[[bytes], Sequence[Evidence]] | None = None,
    expires_at: int | None = None,
    epoch_seconds: int = EPOCH,
) -> AttestationBundle:
    return build_bundle(
        node,
        ENC_KEY,
        issued_at=issued_at,
        epoch_seconds=epoch_seconds,
        collect_cpu_evidence=collect or platform.collector(measurement, issued_at, debug=debug),
        collect_gpu_evidence=gpus,
        models=MODELS,
        addrs=ADDRS,
        expires_at=expires_at,
    )


def resign(node: Identity, bundle: AttestationBundle, **changes: Any) -> AttestationBundle:
    """The node itself re-signs altered fields (so only the evidence binding can catch it)."""
    altered = dataclasses.replace(bundle, sig=b"", **changes)
    return dataclasses.replace(altered, sig=node.sign(Domain.BUNDLE, altered.signed_payload()))


def appraise(
    appraiser: BundleAppraiser, bundle: AttestationBundle | bytes, node: Identity, now: int = NOW
) -> Any:
    data = bundle.to_wire() if isinstance(bundle, AttestationBundle) else bundle
    return appraiser.appraise(data, sender_peer_id=node.peer_id, now=now)


# -- the good path ----------------------------------------------------------------------------


def test_valid_simulated_bundle_is_accepted_and_labelled(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    verdict = appraise(BundleAppraiser(make_policy(platform)), bundle, node)
    assert verdict.ok, verdict.detail
    assert verdict.reasons == ()
    assert verdict.label == LABEL == "SIMULATED — not secure"
    assert LABEL in str(verdict)
    assert verdict.kind == "simulated"
    assert verdict.node_id == node.peer_id
    assert verdict.measurements == {"measurement": MEASUREMENT.hex()}
    assert verdict.epoch == ISSUED // EPOCH and verdict.expires_at == bundle.expires_at
    assert verdict.bundle == bundle and verdict.digest == bundle.digest()
    assert verdict.cpu is not None and verdict.cpu.ok


def test_bundle_object_and_no_sender_are_accepted(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    verdict = BundleAppraiser(make_policy(platform)).appraise(bundle, sender_peer_id=None, now=NOW)
    assert verdict.ok, verdict.detail


def test_previous_epoch_is_still_accepted(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    now = T0 + EPOCH + 100  # next epoch; the bundle's epoch is now "previous"
    assert appraise(BundleAppraiser(make_policy(platform)), bundle, node, now).ok


# -- a negative test for every reason -----------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x81\xa1v\x01", b"\xff" * 40, b"not msgpack at all"])
def test_malformed_bytes(data: bytes, node: Identity, platform: SimulatedPlatform) -> None:
    verdict = appraise(BundleAppraiser(make_policy(platform)), data, node)
    assert not verdict.ok and verdict.reasons == (Reason.MALFORMED,)


def test_non_bytes_input_is_malformed(platform: SimulatedPlatform) -> None:
    verdict = BundleAppraiser(make_policy(platform)).appraise("text", sender_peer_id=None, now=NOW)  # type: ignore[arg-type]
    assert verdict.reasons == (Reason.MALFORMED,)


def test_bad_signature_when_a_field_is_altered(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    forged = dataclasses.replace(bundle, addrs=("/ip4/10.0.0.66/tcp/1",))  # keeps the old sig
    verdict = appraise(BundleAppraiser(make_policy(platform)), forged, node)
    assert verdict.reasons == (Reason.BAD_SIGNATURE,)
    assert verdict.label == LABEL  # simulated is labelled even when refused


def test_bad_signature_when_signed_by_another_key(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    other = Identity(bytes([2]) * 32)
    forged = dataclasses.replace(bundle, sig=other.sign(Domain.BUNDLE, bundle.signed_payload()))
    assert appraise(BundleAppraiser(make_policy(platform)), forged, node).reasons == (Reason.BAD_SIGNATURE,)


def test_bad_signature_in_another_domain(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    forged = dataclasses.replace(bundle, sig=node.sign(Domain.COMMITMENT, bundle.signed_payload()))
    assert appraise(BundleAppraiser(make_policy(platform)), forged, node).reasons == (Reason.BAD_SIGNATURE,)


def test_wrong_signer(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    relay = Identity(bytes([3]) * 32)
    verdict = BundleAppraiser(make_policy(platform)).appraise(
        bundle.to_wire(), sender_peer_id=relay.peer_id, now=NOW
    )
    assert verdict.reasons == (Reason.WRONG_SIGNER,)


def test_expired(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    verdict = appraise(BundleAppraiser(make_policy(platform)), bundle, node, now=bundle.expires_at)
    assert verdict.reasons == (Reason.EXPIRED,)


def test_future_dated(node: Identity, platform: SimulatedPlatform) -> None:
    policy = make_policy(platform)
    bundle = make_bundle(node, platform, issued_at=NOW + policy.max_clock_skew + 1)
    assert appraise(BundleAppraiser(policy), bundle, node).reasons == (Reason.FUTURE_DATED,)
    within_skew = make_bundle(node, platform, issued_at=NOW + policy.max_clock_skew)
    assert appraise(BundleAppraiser(policy), within_skew, node).ok


def test_epoch_too_old(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform, expires_at=ISSUED + 4 * EPOCH)
    now = T0 + 2 * EPOCH + 1  # two epochs later; not yet expired
    verdict = appraise(BundleAppraiser(make_policy(platform)), bundle, node, now)
    assert verdict.reasons == (Reason.EPOCH_TOO_OLD,)


def test_epoch_that_does_not_match_issued_at(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform, epoch_seconds=300)  # a node with another epoch length
    verdict = appraise(BundleAppraiser(make_policy(platform)), bundle, node)
    assert verdict.reasons == (Reason.POLICY_VIOLATION,)
    assert "epoch_seconds" in verdict.detail


def test_evidence_older_than_max_evidence_age(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    policy = make_policy(platform, max_evidence_age=60)
    verdict = appraise(BundleAppraiser(policy), bundle, node, now=ISSUED + 61)
    assert verdict.reasons == (Reason.EXPIRED,)
    assert "max_evidence_age" in verdict.detail


def test_report_data_mismatch(node: Identity, platform: SimulatedPlatform) -> None:
    def stale(rd: bytes) -> Evidence:  # evidence over some other binding (e.g. replayed from another key)
        return platform.issue(bytes(64), measurement=MEASUREMENT, issued_at=ISSUED)

    bundle = make_bundle(node, platform, collect=stale)
    verdict = appraise(BundleAppraiser(make_policy(platform)), bundle, node)
    assert verdict.reasons == (Reason.REPORT_DATA_MISMATCH,)


def test_report_data_mismatch_when_job_key_is_swapped(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = resign(node, make_bundle(node, platform), enc_pubkey=bytes(32))
    assert appraise(BundleAppraiser(make_policy(platform)), bundle, node).reasons == (
        Reason.REPORT_DATA_MISMATCH,
    )


def test_report_data_mismatch_when_models_are_swapped(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = resign(node, make_bundle(node, platform), models=("vn-model:" + "cd" * 32,))
    assert appraise(BundleAppraiser(make_policy(platform)), bundle, node).reasons == (
        Reason.REPORT_DATA_MISMATCH,
    )


def test_evidence_replayed_by_another_node(node: Identity, platform: SimulatedPlatform) -> None:
    thief = Identity(bytes([4]) * 32)
    stolen = make_bundle(node, platform).cpu
    bundle = make_bundle(thief, platform, collect=lambda rd: stolen)
    assert appraise(BundleAppraiser(make_policy(platform)), bundle, thief).reasons == (
        Reason.REPORT_DATA_MISMATCH,
    )


def test_measurement_not_allowed(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform, measurement=OTHER_MEASUREMENT)
    verdict = appraise(BundleAppraiser(make_policy(platform)), bundle, node)
    assert verdict.reasons == (Reason.MEASUREMENT_NOT_ALLOWED,)
    assert verdict.measurements == {"measurement": OTHER_MEASUREMENT.hex()}


def test_debug(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform, debug=True)
    assert appraise(BundleAppraiser(make_policy(platform)), bundle, node).reasons == (Reason.DEBUG,)


def test_kind_not_allowed(node: Identity, platform: SimulatedPlatform) -> None:
    policy = make_policy(platform, allowed_kinds=("tdx", "sev-snp"))
    verdict = appraise(BundleAppraiser(policy), make_bundle(node, platform), node)
    assert verdict.reasons == (Reason.KIND_NOT_ALLOWED,)
    assert verdict.label == LABEL


def test_simulated_refused_unless_allow_simulated(node: Identity, platform: SimulatedPlatform) -> None:
    policy = make_policy(platform, allow_simulated=False)  # "simulated" is still in allowed_kinds
    verdict = appraise(BundleAppraiser(policy), make_bundle(node, platform), node)
    assert verdict.reasons == (Reason.KIND_NOT_ALLOWED,)
    assert "allow_simulated" in verdict.detail


def test_default_policy_refuses_simulated(node: Identity, platform: SimulatedPlatform) -> None:
    verdict = appraise(BundleAppraiser(Policy()), make_bundle(node, platform), node)
    assert verdict.reasons == (Reason.KIND_NOT_ALLOWED,)


def test_unknown_kind_is_not_allowed(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform, collect=lambda rd: Evidence("quantum-tee", b"\x01"))
    assert appraise(BundleAppraiser(make_policy(platform)), bundle, node).reasons == (
        Reason.KIND_NOT_ALLOWED,
    )


def test_allowed_kind_without_a_verifier(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform, collect=lambda rd: Evidence("tdx", b"\x04\x00" + bytes(100)))
    policy = make_policy(platform, allowed_kinds=("simulated", "tdx"))
    appraiser = BundleAppraiser(policy, {"simulated": SimulatedVerifier()})
    verdict = appraise(appraiser, bundle, node)
    assert verdict.reasons == (Reason.KIND_NOT_ALLOWED,)
    assert "no verifier" in verdict.detail


def test_unknown_platform_key(node: Identity, platform: SimulatedPlatform) -> None:
    rogue = SimulatedPlatform(bytes([9]) * 32, testnet="unit")
    bundle = make_bundle(node, rogue)
    verdict = appraise(BundleAppraiser(make_policy(platform)), bundle, node)
    assert verdict.reasons == (Reason.UNTRUSTED_PLATFORM,)


def test_platform_of_another_testnet(node: Identity, platform: SimulatedPlatform) -> None:
    elsewhere = SimulatedPlatform(platform.seed, testnet="other")
    verdict = appraise(BundleAppraiser(make_policy(platform)), make_bundle(node, elsewhere), node)
    assert verdict.reasons == (Reason.UNTRUSTED_PLATFORM,)


def test_gpu_evidence_in_the_cpu_slot(node: Identity, platform: SimulatedPlatform) -> None:
    gpu = GpuForTests()
    bundle = make_bundle(node, platform, collect=lambda rd: Evidence("nvidia-gpu", rd))
    policy = make_policy(platform, allowed_kinds=("simulated", "nvidia-gpu"))
    verdict = appraise(
        BundleAppraiser(policy, {"simulated": SimulatedVerifier(), "nvidia-gpu": gpu}), bundle, node
    )
    assert verdict.reasons == (Reason.NOT_CPU_EVIDENCE,)
    assert gpu.nonces == []


def test_cpu_evidence_in_the_gpu_list(node: Identity, platform: SimulatedPlatform) -> None:
    extra = platform.issue(bytes(64), measurement=MEASUREMENT, issued_at=ISSUED)
    bundle = make_bundle(node, platform, gpus=lambda nonce: [extra])
    verdict = appraise(BundleAppraiser(make_policy(platform)), bundle, node)
    assert verdict.reasons == (Reason.NOT_GPU_EVIDENCE,)


def test_require_gpu(node: Identity, platform: SimulatedPlatform) -> None:
    verdict = appraise(
        BundleAppraiser(make_policy(platform, require_gpu=True)), make_bundle(node, platform), node
    )
    assert verdict.reasons == (Reason.POLICY_VIOLATION,)
    assert "require_gpu" in verdict.detail


def test_verifier_that_raises_is_a_refusal_not_a_crash(node: Identity, platform: SimulatedPlatform) -> None:
    appraiser = BundleAppraiser(make_policy(platform), {"simulated": RaisingVerifier()})
    verdict = appraise(appraiser, make_bundle(node, platform), node)
    assert verdict.reasons == (Reason.MALFORMED,)
    assert "verifier bug" in verdict.detail and verdict.label == LABEL


# -- GPU evidence: nonce binding and dispatch ---------------------------------------------------


def gpu_policy(platform: SimulatedPlatform) -> Policy:
    return make_policy(platform, allowed_kinds=("simulated", "nvidia-gpu"), require_gpu=True)


def test_gpu_evidence_is_verified_with_the_gpu_nonce(node: Identity, platform: SimulatedPlatform) -> None:
    gpu = GpuForTests()
    bundle = make_bundle(node, platform, gpus=lambda nonce: [Evidence("nvidia-gpu", nonce)] * 2)
    appraiser = BundleAppraiser(gpu_policy(platform), {"simulated": SimulatedVerifier(), "nvidia-gpu": gpu})
    verdict = appraise(appraiser, bundle, node)
    assert verdict.ok, verdict.detail
    expected = binding.gpu_nonce(node.peer_id, ENC_KEY, ISSUED // EPOCH)
    assert gpu.nonces == [expected, expected]
    assert len(verdict.gpus) == 2 and verdict.label == f"{LABEL} + GPU for tests"
    assert verdict.advisories == ("ADV-1",)


def test_gpu_evidence_with_another_nonce(node: Identity, platform: SimulatedPlatform) -> None:
    gpu = GpuForTests()
    bundle = make_bundle(node, platform, gpus=lambda nonce: [Evidence("nvidia-gpu", bytes(32))])
    appraiser = BundleAppraiser(gpu_policy(platform), {"simulated": SimulatedVerifier(), "nvidia-gpu": gpu})
    verdict = appraise(appraiser, bundle, node)
    assert verdict.reasons == (Reason.REPORT_DATA_MISMATCH,)
    assert len(verdict.gpus) == 1 and not verdict.gpus[0].ok


def test_gpu_evidence_swapped_after_cpu_evidence(node: Identity, platform: SimulatedPlatform) -> None:
    """The CPU report data covers the GPU evidence hashes: a GPU from elsewhere breaks the binding."""
    gpu = GpuForTests()
    bundle = make_bundle(node, platform, gpus=lambda nonce: [Evidence("nvidia-gpu", nonce)])
    other_gpu = Evidence("nvidia-gpu", bundle.gpus[0].data, {"cert_chain": b"another device"})
    swapped = resign(node, bundle, gpus=(other_gpu,))  # endorsements are not part of the hash
    appraiser = BundleAppraiser(gpu_policy(platform), {"simulated": SimulatedVerifier(), "nvidia-gpu": gpu})
    assert appraise(appraiser, swapped, node).ok
    dropped = resign(node, bundle, gpus=())
    assert appraise(appraiser, dropped, node).reasons == (Reason.POLICY_VIOLATION,)  # require_gpu
    replaced = resign(node, bundle, gpus=(Evidence("nvidia-gpu", bundle.gpus[0].data + b"!"),))
    assert appraise(appraiser, replaced, node).reasons == (Reason.REPORT_DATA_MISMATCH,)


# -- fresh challenge ------------------------------------------------------------------------------


def test_challenge_with_fresh_evidence(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    appraiser = BundleAppraiser(make_policy(platform))
    nonce = bytes(range(32))
    fresh = platform.issue(bundle.challenge_report_data(nonce), measurement=MEASUREMENT, issued_at=NOW)
    verdict = appraiser.appraise_challenge(
        bundle.to_wire(), fresh, nonce, sender_peer_id=node.peer_id, now=NOW
    )
    assert verdict.ok, verdict.detail
    assert verdict.label == LABEL


def test_challenge_refusals(node: Identity, platform: SimulatedPlatform) -> None:
    bundle = make_bundle(node, platform)
    appraiser = BundleAppraiser(make_policy(platform))
    nonce = bytes(range(32))

    def answer(evidence: Evidence, n: bytes = nonce) -> Any:
        return appraiser.appraise_challenge(bundle, evidence, n, sender_peer_id=node.peer_id, now=NOW)

    # the gossiped evidence is not an answer (distinct tag), nor is an answer for another nonce
    assert answer(bundle.cpu).reasons == (Reason.REPORT_DATA_MISMATCH,)
    other = platform.issue(bundle.challenge_report_data(bytes(32)), measurement=MEASUREMENT, issued_at=NOW)
    assert answer(other).reasons == (Reason.REPORT_DATA_MISMATCH,)
    assert answer(Evidence("tdx", b"\x04")).reasons == (Reason.KIND_NOT_ALLOWED,)
    assert answer(bundle.cpu, b"short").reasons == (Reason.MALFORMED,)
    expired = appraiser.appraise_challenge(
        bundle, bundle.cpu, nonce, sender_peer_id=node.peer_id, now=bundle.expires_at
    )
    assert expired.reasons == (Reason.EXPIRED,)


# -- cache ------------------------------------------------------------------------------------------


def test_cache_hit_skips_verification(node: Identity, platform: SimulatedPlatform) -> None:
    counting = CountingVerifier()
    appraiser = BundleAppraiser(make_policy(platform), {"simulated": counting})
    wire = make_bundle(node, platform).to_wire()
    first = appraiser.appraise(wire, sender_peer_id=node.peer_id, now=NOW)
    second = appraiser.appraise(wire, sender_peer_id=node.peer_id, now=NOW + 1)
    assert first.ok and second is first
    assert counting.calls == 1
    info = appraiser.cache_info()
    assert (info.hits, info.misses, info.size) == (1, 1, 1)


def test_cache_never_extends_validity(node: Identity, platform: SimulatedPlatform) -> None:
    appraiser = BundleAppraiser(make_policy(platform))
    bundle = make_bundle(node, platform)
    assert appraise(appraiser, bundle, node).ok
    assert appraise(appraiser, bundle, node, now=bundle.expires_at).reasons == (Reason.EXPIRED,)
    assert appraiser.cache_info().size == 0  # the expired entry was dropped
    assert appraise(appraiser, bundle, node, now=bundle.expires_at + 1000).reasons == (Reason.EXPIRED,)


def test_cache_rechecks_sender_epoch_and_age(node: Identity, platform: SimulatedPlatform) -> None:
    appraiser = BundleAppraiser(make_policy(platform, max_evidence_age=300))
    bundle = make_bundle(node, platform, expires_at=ISSUED + 4 * EPOCH)
    assert appraise(appraiser, bundle, node).ok
    relay = Identity(bytes([5]) * 32)
    assert appraise(appraiser, bundle, relay).reasons == (Reason.WRONG_SIGNER,)
    assert appraise(appraiser, bundle, node, now=ISSUED + 301).reasons == (Reason.EXPIRED,)
    assert appraise(appraiser, bundle, node, now=T0 + 2 * EPOCH).reasons == (Reason.EPOCH_TOO_OLD,)
    assert appraise(appraiser, bundle, node, now=ISSUED - 60).reasons == (Reason.FUTURE_DATED,)
    assert appraise(appraiser, bundle, node).ok


def test_cached_evidence_outcome_is_recomputed_after_ttl(node: Identity, platform: SimulatedPlatform) -> None:
    counting = CountingVerifier()
    appraiser = BundleAppraiser(make_policy(platform), {"simulated": counting}, cache_ttl=60)
    bundle = make_bundle(node, platform)
    assert appraise(appraiser, bundle, node).ok
    assert appraise(appraiser, bundle, node, now=NOW + 60).ok
    assert counting.calls == 1
    assert appraise(appraiser, bundle, node, now=NOW + 61).ok
    assert counting.calls == 2


def test_refused_evidence_is_cached_too(node: Identity, platform: SimulatedPlatform) -> None:
    counting = CountingVerifier()
    appraiser = BundleAppraiser(make_policy(platform), {"simulated": counting})
    bundle = make_bundle(node, platform, debug=True)
    assert appraise(appraiser, bundle, node).reasons == (Reason.DEBUG,)
    assert appraise(appraiser, bundle, node).reasons == (Reason.DEBUG,)
    assert counting.calls == 1


def test_cache_is_bounded_lru(node: Identity, platform: SimulatedPlatform) -> None:
    appraiser = BundleAppraiser(make_policy(platform), cache_size=2)
    bundles = [make_bundle(node, platform, issued_at=ISSUED + i) for i in range(3)]
    for bundle in bundles:
        assert appraise(appraiser, bundle, node).ok
    assert appraiser.cache_info().size == 2
    appraiser.clear_cache()
    assert appraiser.cache_info().size == 0


def test_cache_can_be_disabled(node: Identity, platform: SimulatedPlatform) -> None:
    counting = CountingVerifier()
    appraiser = BundleAppraiser(make_policy(platform), {"simulated": counting}, cache_size=0)
    bundle = make_bundle(node, platform)
    assert appraise(appraiser, bundle, node).ok and appraise(appraiser, bundle, node).ok
    assert counting.calls == 2


def test_bad_signature_is_never_served_from_cache(node: Identity, platform: SimulatedPlatform) -> None:
    appraiser = BundleAppraiser(make_policy(platform))
    bundle = make_bundle(node, platform)
    assert appraise(appraiser, bundle, node).ok
    forged = dataclasses.replace(bundle, models=("vn-model:" + "ee" * 32,))
    assert appraise(appraiser, forged, node).reasons == (Reason.BAD_SIGNATURE,)


# -- registry -----------------------------------------------------------------------------------------


def test_default_verifiers_cover_simulated_and_present_real_kinds() -> None:
    verifiers = default_verifiers()
    assert isinstance(verifiers["simulated"], SimulatedVerifier)
    for name, verifier in verifiers.items():
        assert EvidenceKind(verifier.kind).value == name
    assert {"tdx", "sev-snp", "nvidia-gpu"} <= set(verifiers)  # the real kinds ship in this repo


def test_registry_rejects_a_verifier_under_the_wrong_name(platform: SimulatedPlatform) -> None:
    with pytest.raises(ValueError, match="registered under"):
        BundleAppraiser(make_policy(platform), {"tdx": SimulatedVerifier()})


def test_real_kind_refusal_comes_from_its_verifier(node: Identity, platform: SimulatedPlatform) -> None:
    """Dispatch by kind: a TDX-kind CPU evidence goes to the TDX verifier (garbage is malformed)."""
    bundle = make_bundle(node, platform, collect=lambda rd: Evidence("tdx", b"VEILNET" + bytes(40)))
    policy = make_policy(platform, allowed_kinds=("simulated", "tdx"))
    verdict = appraise(BundleAppraiser(policy), bundle, node)
    assert verdict.reasons == (Reason.MALFORMED,)
    assert verdict.cpu is not None and verdict.cpu.kind == "tdx"


def test_real_tdx_quote_reaches_the_tdx_verifier_with_our_binding(node: Identity) -> None:
    """A genuine, UpToDate TDX quote passes every hardware check but carries someone else's report
    data: the appraiser must hand the TDX verifier our recomputed binding, which it then refuses."""
    dcap = VECTORS / "tdx" / "dcap-qvl"
    quote = Evidence(
        "tdx",
        (dcap / "tdx_quote").read_bytes(),
        {"collateral": (dcap / "tdx_quote_collateral.json").read_bytes()},
    )
    now = 1752919234  # pinned: the collateral is valid then
    bundle = build_bundle(
        node, ENC_KEY, issued_at=now - 5, epoch_seconds=EPOCH, collect_cpu_evidence=lambda rd: quote
    )
    section = {
        "allow_any_measurement": True,
        "allow_dynamic_platform": True,
        "allow_cached_keys": True,
        "allow_smt": True,
    }
    appraiser = BundleAppraiser(Policy(allowed_kinds=("tdx",), sections={"tdx": section}))
    verdict = appraiser.appraise(bundle.to_wire(), sender_peer_id=node.peer_id, now=now)
    assert verdict.reasons == (Reason.REPORT_DATA_MISMATCH,)
    assert verdict.label == "Intel TDX" and verdict.tcb_status == "UpToDate"
    assert verdict.cpu is not None and verdict.cpu.report_data != bundle.expected_report_data()
