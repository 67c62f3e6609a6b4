"""Glue between the node and :mod:`protocol.attestation`: which evidence this node presents, and how
it appraises everyone else's.

Evidence sources, chosen by ``evidence`` in the node config:

* real TEE evidence (TDX or SEV-SNP through configfs-tsm, plus NVIDIA GPU evidence when a
  confidential-computing GPU is present) when the hardware is there (``auto``);
* ``simulated`` evidence signed by the testnet's platform key, only when the testnet's policy
  allows the simulated kind. The measurement is a digest of this node's own source files.

An executor (a node that declares models) with neither refuses to start: serving jobs without
attestation would ask clients to trust keys nothing vouches for.

The test-only faults (``test_evidence_fault``) make a node present bad simulated evidence so tests
can check that honest peers refuse it. They are refused unless the evidence is simulated.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from node.config import ConfigError, EvidenceMode, NodeConfig, TestEvidenceFault, TestnetConfig
from node.net.gossip import Appraisal, Appraise
from node.net.registry import RegistryEntry
from protocol.attestation import simulated
from protocol.attestation.appraisal import BundleAppraiser, default_verifiers
from protocol.attestation.bundle import AttestationBundle, build_bundle
from protocol.attestation.evidence import Evidence, EvidenceKind
from protocol.attestation.policy import Policy, PolicyError
from protocol.identity import Identity

__all__ = [
    "SimulatedBundleBuilder",
    "TeeBundleBuilder",
    "load_policy",
    "make_appraise",
    "make_builder",
    "measurement_of",
    "own_measurement",
    "testnet_policy_toml",
]

log = logging.getLogger("veilnet.attest")

_PACKAGES = ("protocol", "node")


# ------------------------------------------------------------------------------ measurement


@functools.cache
def own_measurement_bytes() -> bytes:
    """Digest of this node's own code (the ``protocol`` and ``node`` packages' ``*.py`` files)."""
    repo = Path(__file__).resolve().parents[2]
    return simulated.measure_package_sources([repo / name for name in _PACKAGES])


def own_measurement() -> str:
    return own_measurement_bytes().hex()


def measurement_of(code_root: Path | None = None) -> str:
    """The measurement a node running the packages under ``code_root`` (default: this one) reports."""
    if code_root is None:
        return own_measurement()
    return simulated.measure_package_sources([code_root / name for name in _PACKAGES]).hex()


# ------------------------------------------------------------------------------------ policy


def load_policy(testnet: TestnetConfig) -> Policy:
    try:
        policy = Policy.from_toml(testnet.policy_toml)
    except PolicyError as exc:
        raise ConfigError(f"testnet policy: {exc}") from None
    if policy.epoch_seconds != testnet.epoch_seconds:
        raise ConfigError(
            f"testnet epoch_seconds ({testnet.epoch_seconds}) differs from"
            f" the policy's ({policy.epoch_seconds})"
        )
    return policy


def testnet_policy_toml(
    measurements: Sequence[str], *, platform_public_key: str, testnet_id: str, epoch_seconds: int = 600
) -> str:
    """The policy a local testnet uses: simulated evidence from its own platform, these measurements."""
    policy = Policy.for_simulated_testnet(
        [platform_public_key], list(measurements), testnet=testnet_id, epoch_seconds=epoch_seconds
    )
    return policy.to_toml()


def platform_public_key(seed: bytes) -> str:
    return simulated.SimulatedPlatform(seed).public_key_hex


# ---------------------------------------------------------------------------------- builders


class SimulatedBundleBuilder:
    """Bundles with simulated evidence signed by the testnet platform key (NOT SECURE)."""

    kind = EvidenceKind.SIMULATED.value
    label = simulated.LABEL

    def __init__(
        self,
        testnet: TestnetConfig,
        *,
        fault: TestEvidenceFault | None = None,
    ) -> None:
        if testnet.platform_seed is None:
            raise ConfigError("the testnet config has no platform_key, so simulated evidence is impossible")
        self.epoch_seconds = testnet.epoch_seconds
        self.fault = fault
        measurement = own_measurement_bytes()
        platform = simulated.SimulatedPlatform(testnet.platform_seed, testnet.testnet_id)
        if fault is TestEvidenceFault.MEASUREMENT_OUTSIDE_POLICY:
            measurement = hashlib.sha256(b"veilnet/test-fault/tampered-sources" + measurement).digest()
        elif fault is TestEvidenceFault.WRONG_PLATFORM_KEY:
            platform = simulated.SimulatedPlatform.generate(testnet.testnet_id)
        self._measurement = measurement
        self._platform = platform
        self.measurement = measurement.hex()
        if fault is not None:
            log.warning(
                "TEST-ONLY EVIDENCE FAULT %r: this node presents bad evidence on purpose", fault.value
            )

    def collect_challenge_evidence(self, report_data: bytes, now: int) -> Evidence:
        """Fresh evidence over a challenge's report data (the job router's freshness check)."""
        return self._platform.issue(report_data, measurement=self._measurement, issued_at=now)

    def build_bundle(
        self,
        identity: Identity,
        enc_pubkey: bytes,
        epoch: int,
        issued_at: int,
        expires_at: int,
        models: Sequence[str],
        addrs: Sequence[str],
    ) -> bytes:
        bundle = build_bundle(
            identity,
            enc_pubkey,
            issued_at=issued_at,
            epoch_seconds=self.epoch_seconds,
            collect_cpu_evidence=self._platform.collector(self._measurement, issued_at),
            models=models,
            addrs=addrs,
            expires_at=expires_at,
        )
        if bundle.epoch != epoch:
            raise RuntimeError(f"bundle epoch {bundle.epoch} differs from the key's epoch {epoch}")
        if self.fault is TestEvidenceFault.FORGED_SIGNATURE:
            forged = bytes([bundle.sig[0] ^ 0x01]) + bundle.sig[1:]
            bundle = _with_signature(bundle, forged)
        return bundle.to_wire()


class TeeBundleBuilder:
    """Bundles with real CPU evidence from configfs-tsm, plus NVIDIA GPU evidence when present.

    Collection is blocking file and driver I/O; the attestation service calls ``build_bundle``
    from a worker thread.
    """

    def __init__(self, testnet: TestnetConfig, cpu_kind: EvidenceKind, with_gpus: bool) -> None:
        from node.attest.tee.collateral import CollateralCache

        self.epoch_seconds = testnet.epoch_seconds
        self.kind = cpu_kind.value
        self.label = {EvidenceKind.TDX: "Intel TDX", EvidenceKind.SEV_SNP: "AMD SEV-SNP"}[cpu_kind]
        if with_gpus:
            self.label += " + NVIDIA GPU"
        self.with_gpus = with_gpus
        self.measurement = ""  # known after the first collection
        self._collateral = CollateralCache()

    def _collect_cpu(self, report_data: bytes) -> Evidence:
        from node.attest.tee.configfs import collect_tsm_report, tsm_evidence

        report = collect_tsm_report(report_data)
        endorsements: dict[str, bytes] = {}
        if self.kind == EvidenceKind.TDX.value:
            collateral = self._collateral.for_quote(report.outblob)
            if collateral is not None:
                endorsements["collateral"] = collateral
        return tsm_evidence(report, endorsements)

    def collect_challenge_evidence(self, report_data: bytes, now: int) -> Evidence:
        """Fresh CPU evidence over a challenge's report data (blocking: run it in a worker thread)."""
        return self._collect_cpu(report_data)

    def build_bundle(
        self,
        identity: Identity,
        enc_pubkey: bytes,
        epoch: int,
        issued_at: int,
        expires_at: int,
        models: Sequence[str],
        addrs: Sequence[str],
    ) -> bytes:
        from node.attest.tee import nvml

        bundle = build_bundle(
            identity,
            enc_pubkey,
            issued_at=issued_at,
            epoch_seconds=self.epoch_seconds,
            collect_cpu_evidence=self._collect_cpu,
            collect_gpu_evidence=nvml.collect_gpu_evidence if self.with_gpus else None,
            models=models,
            addrs=addrs,
            expires_at=expires_at,
        )
        verdict = default_verifiers()[self.kind].verify(
            bundle.cpu, expected_report_data=bundle.expected_report_data(), policy={}, now=issued_at
        )
        self.measurement = next(iter(verdict.measurements.values()), "")
        return bundle.to_wire()


def _with_signature(bundle: AttestationBundle, sig: bytes) -> AttestationBundle:
    return AttestationBundle(
        node_id=bundle.node_id,
        enc_pubkey=bundle.enc_pubkey,
        epoch=bundle.epoch,
        issued_at=bundle.issued_at,
        expires_at=bundle.expires_at,
        models=bundle.models,
        addrs=bundle.addrs,
        cpu=bundle.cpu,
        gpus=bundle.gpus,
        sig=sig,
    )


def _real_tee() -> tuple[EvidenceKind | None, bool]:
    """The CPU TEE kind this machine can attest with (if any) and whether CC GPUs are present."""
    from node.attest.tee.detect import detect

    cpu: EvidenceKind | None = None
    gpus = False
    for availability in detect():
        if not availability.available:
            continue
        if availability.kind is EvidenceKind.NVIDIA_GPU:
            gpus = True
        elif cpu is None:
            cpu = availability.kind
    return cpu, gpus


def make_builder(
    config: NodeConfig, testnet: TestnetConfig
) -> SimulatedBundleBuilder | TeeBundleBuilder | None:
    """This node's bundle builder, or None for a node that does not attest. Raises ConfigError when
    the node must attest (it serves models, or asked for evidence) but cannot."""
    policy = load_policy(testnet)
    simulated_ok = policy.kind_allowed(EvidenceKind.SIMULATED.value) and testnet.platform_seed is not None
    mode = config.evidence
    fault = config.test_evidence_fault
    if fault is not None and mode is not EvidenceMode.SIMULATED:
        raise ConfigError("test_evidence_fault is a test-only switch and needs evidence = 'simulated'")
    if mode is EvidenceMode.NONE:
        if config.models:
            raise ConfigError("a node that serves models must attest (evidence = 'none' was given)")
        return None
    if mode is EvidenceMode.AUTO:
        cpu_kind, gpus = _real_tee()
        if cpu_kind is not None:
            log.info(
                "attesting with real %s evidence%s",
                cpu_kind.value,
                " and NVIDIA GPU evidence" if gpus else "",
            )
            return TeeBundleBuilder(testnet, cpu_kind, gpus)
        if not simulated_ok:
            if config.models:
                raise ConfigError(
                    "this executor has no TEE evidence (no TDX/SEV-SNP guest found) and the testnet"
                    " policy does not allow simulated evidence: refusing to start"
                )
            log.info("no TEE found and simulated evidence not allowed: running as a client-only node")
            return None
    elif not simulated_ok:
        raise ConfigError(
            "evidence = 'simulated' but the testnet does not allow it (policy allow_simulated and a"
            " platform_key are both needed): refusing to start"
        )
    return SimulatedBundleBuilder(testnet, fault=fault)


# ---------------------------------------------------------------------------------- appraisal


def make_appraise(testnet: TestnetConfig) -> Appraise:
    """A pure, thread-safe appraisal function for peers' bundles under the testnet policy."""
    appraiser = BundleAppraiser(load_policy(testnet), default_verifiers())

    def appraise(bundle_bytes: bytes, sender: bytes | None, now: int) -> Appraisal:
        verdict = appraiser.appraise(bundle_bytes, sender_peer_id=sender, now=now)
        bundle = verdict.bundle
        if not verdict.ok or bundle is None:
            return Appraisal(
                ok=False,
                reasons=tuple(reason.value for reason in verdict.reasons) or ("malformed",),
                detail=verdict.detail,
                claimed_node=verdict.node_id,
                issued_at=verdict.issued_at,
            )
        entry = RegistryEntry(
            peer_id=bundle.node_id,
            addrs=bundle.addrs,
            kind=verdict.kind,
            label=verdict.label,
            measurement=next(iter(verdict.measurements.values()), ""),
            models=bundle.models,
            epoch=bundle.epoch,
            issued_at=bundle.issued_at,
            expires_at=bundle.expires_at,
            enc_pubkey=bundle.enc_pubkey,
            verified_at=float(now),
            tcb_status=verdict.tcb_status,
            advisories=tuple(verdict.advisories),
            gpu_kinds=tuple(gpu.kind for gpu in bundle.gpus),
            bundle_digest=verdict.digest.hex(),
            bundle=bundle_bytes,
        )
        return Appraisal(ok=True, entry=entry)

    return appraise
