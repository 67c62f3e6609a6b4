"""What a node's evidence must carry: the report-data binding, the GPU nonce, the challenge variant.

Why a tagged hash over one canonical map: every TEE kind gets the same 64 bytes, so a verifier
recomputes them from the bundle's own fields and compares; the version tag lets the binding
change later without any chance of one version's value being read as another's. The CPU report
data covers the hashes of the GPU evidence, which ties those GPUs to that VM (GPU evidence alone
does not say which VM collected it). See docs/protocol/attestation.md for the exact bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from protocol import codec
from protocol.attestation.evidence import Evidence

__all__ = [
    "ATTEST_TAG",
    "BINDING_VERSION",
    "CHALLENGE_NONCE_MAX",
    "CHALLENGE_NONCE_MIN",
    "CHALLENGE_TAG",
    "GPU_NONCE_SIZE",
    "GPU_TAG",
    "REPORT_DATA_SIZE",
    "BindingError",
    "challenge_report_data",
    "epoch_of",
    "evidence_hash",
    "gpu_nonce",
    "report_data",
]

BINDING_VERSION = 1
ATTEST_TAG = b"veilnet/attest/v1:"
GPU_TAG = b"veilnet/gpu/v1:"
CHALLENGE_TAG = b"veilnet/challenge/v1:"
REPORT_DATA_SIZE = 64
GPU_NONCE_SIZE = 32
EVIDENCE_HASH_SIZE = 32
ENC_PUBKEY_SIZE = 32
CHALLENGE_NONCE_MIN = 16
CHALLENGE_NONCE_MAX = 64


class BindingError(ValueError):
    """An input to the binding has the wrong type or size (a programming error, not bad evidence)."""


def epoch_of(issued_at: int, epoch_seconds: int) -> int:
    """The integer epoch id of a unix time: ``floor(issued_at / epoch_seconds)``."""
    if epoch_seconds <= 0:
        raise BindingError("epoch_seconds must be positive")
    if issued_at < 0:
        raise BindingError("issued_at must not be negative")
    return issued_at // epoch_seconds


def evidence_hash(evidence: Evidence) -> bytes:
    """SHA-256 of ``canonical({"data": evidence.data, "kind": evidence.kind})``.

    Endorsements (certificate chains, collateral) are left out on purpose: they are public,
    verified on their own, and may be refreshed; the signed evidence bytes are what identify it.
    """
    return hashlib.sha256(codec.encode({"data": evidence.data, "kind": evidence.kind})).digest()


def _binding_map(
    node_id: bytes,
    enc_pubkey: bytes,
    epoch: int,
    issued_at: int,
    models: Sequence[str],
    gpu_evidence_hashes: Sequence[bytes],
    engines: Sequence[Mapping[str, Any]] = (),
) -> dict[str, object]:
    if not isinstance(node_id, bytes) or not node_id:
        raise BindingError("node_id must be non-empty bytes")
    if not isinstance(enc_pubkey, bytes) or len(enc_pubkey) != ENC_PUBKEY_SIZE:
        raise BindingError(f"enc_pubkey must be {ENC_PUBKEY_SIZE} bytes")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise BindingError("epoch must be a non-negative integer")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int) or issued_at < 0:
        raise BindingError("issued_at must be a non-negative integer")
    if isinstance(models, (str, bytes)) or not all(isinstance(m, str) for m in models):
        raise BindingError("models must be a sequence of strings")
    if not all(isinstance(h, bytes) and len(h) == EVIDENCE_HASH_SIZE for h in gpu_evidence_hashes):
        raise BindingError(f"GPU evidence hashes must be {EVIDENCE_HASH_SIZE} bytes each")
    fields: dict[str, object] = {
        "v": BINDING_VERSION,
        "node_id": node_id,
        "enc_pubkey": enc_pubkey,
        "epoch": epoch,
        "issued_at": issued_at,
        "models": list(models),
        "gpus": list(gpu_evidence_hashes),
    }
    if engines:  # absent when empty: a bundle without engine entries binds the same bytes as before
        fields["engines"] = [dict(e) for e in engines]
    return fields


def report_data(
    node_id: bytes,
    enc_pubkey: bytes,
    epoch: int,
    issued_at: int,
    models: Sequence[str],
    gpu_evidence_hashes: Sequence[bytes],
    engines: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    """The 64-byte report data of CPU evidence: ``SHA-512(ATTEST_TAG ‖ canonical(binding map))``.

    ``engines`` (the bundle's engine entries, when it has any) are bound too, so the hardware
    vouches for which engine computes each model, not only for the model ids."""
    body = codec.encode(
        _binding_map(node_id, enc_pubkey, epoch, issued_at, models, gpu_evidence_hashes, engines)
    )
    return hashlib.sha512(ATTEST_TAG + body).digest()


def challenge_report_data(
    node_id: bytes,
    enc_pubkey: bytes,
    epoch: int,
    issued_at: int,
    models: Sequence[str],
    gpu_evidence_hashes: Sequence[bytes],
    nonce: bytes,
    engines: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    """Report data for a fresh challenge: the same binding plus the verifier's nonce, another tag.

    The distinct tag means a challenge answer can never pass as gossiped evidence, nor the reverse.
    """
    if not isinstance(nonce, bytes) or not CHALLENGE_NONCE_MIN <= len(nonce) <= CHALLENGE_NONCE_MAX:
        raise BindingError(f"a challenge nonce is {CHALLENGE_NONCE_MIN}..{CHALLENGE_NONCE_MAX} bytes")
    fields = _binding_map(node_id, enc_pubkey, epoch, issued_at, models, gpu_evidence_hashes, engines)
    fields["nonce"] = nonce
    return hashlib.sha512(CHALLENGE_TAG + codec.encode(fields)).digest()


def gpu_nonce(node_id: bytes, enc_pubkey: bytes, epoch: int) -> bytes:
    """The 32-byte SPDM nonce of GPU evidence.

    ``SHA-256(GPU_TAG ‖ canonical({v, node_id, enc_pubkey, epoch}))``. It cannot cover the
    CPU evidence (collected after it, over the GPU evidence hashes), so it binds
    what is known first: who, which job key, which epoch.
    """
    _binding_map(node_id, enc_pubkey, epoch, 0, (), ())  # validates the inputs
    body = codec.encode({"v": BINDING_VERSION, "node_id": node_id, "enc_pubkey": enc_pubkey, "epoch": epoch})
    return hashlib.sha256(GPU_TAG + body).digest()
