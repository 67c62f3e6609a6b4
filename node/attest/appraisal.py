"""How this node appraises everyone else's bundles: the testnet policy, and the gossip appraiser.

The appraisal itself is pure (:mod:`protocol.attestation.appraisal`); this module only loads the
policy from the testnet config and turns a verdict into what the net room stores: a registry
entry for an accepted bundle, or the reasons for a refusal.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.config import ConfigError, TestnetConfig
from node.net.gossip import Appraisal, Appraise
from node.net.registry import RegistryEntry
from protocol.attestation.appraisal import BundleAppraiser, default_verifiers
from protocol.attestation.policy import Policy, PolicyError

__all__ = ["load_policy", "make_appraise", "testnet_policy_toml"]


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
