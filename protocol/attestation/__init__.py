"""Attestation: the signed bundle a node gossips, the report-data binding, evidence kinds, policy, appraisal.

The core API is re-exported here; the real hardware kinds (``tdx``, ``sev_snp``, ``nvidia_gpu``)
are imported on demand by :func:`default_verifiers`, so importing this package stays cheap.
"""

from protocol.attestation.appraisal import BundleAppraiser, BundleVerdict, CacheInfo, default_verifiers
from protocol.attestation.binding import (
    challenge_report_data,
    epoch_of,
    evidence_hash,
    gpu_nonce,
    report_data,
)
from protocol.attestation.bundle import MAX_BUNDLE_SIZE, AttestationBundle, BundleError, build_bundle
from protocol.attestation.evidence import Evidence, EvidenceKind, EvidenceVerdict, EvidenceVerifier, Reason
from protocol.attestation.policy import Policy, PolicyError
from protocol.attestation.simulated import SimulatedPlatform, SimulatedVerifier, measure_package_sources

__all__ = [
    "MAX_BUNDLE_SIZE",
    "AttestationBundle",
    "BundleAppraiser",
    "BundleError",
    "BundleVerdict",
    "CacheInfo",
    "Evidence",
    "EvidenceKind",
    "EvidenceVerdict",
    "EvidenceVerifier",
    "Policy",
    "PolicyError",
    "Reason",
    "SimulatedPlatform",
    "SimulatedVerifier",
    "build_bundle",
    "challenge_report_data",
    "default_verifiers",
    "epoch_of",
    "evidence_hash",
    "gpu_nonce",
    "measure_package_sources",
    "report_data",
]
