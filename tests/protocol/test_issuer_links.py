"""Remembered certificate links save work but never a check: failures and time still decide."""

from __future__ import annotations

import itertools

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from protocol.attestation import issuer_links, nvidia_gpu
from protocol.attestation.evidence import Evidence, Reason
from tests.protocol.test_tee_nvidia_gpu import CHAIN, NOW, OFFLINE, SAMPLE, nonce_of

AFTER_9999 = 253_402_300_800 + 1  # the device certificates' notAfter is 9999-12-31T23:59:59Z


def _verify(chain: bytes, now: int = NOW) -> object:
    return nvidia_gpu.VERIFIER.verify(
        Evidence("nvidia-gpu", SAMPLE, {"cert_chain": chain}),
        expected_report_data=nonce_of(SAMPLE),
        policy=OFFLINE,
        now=now,
    )


def _tampered_leaf() -> bytes:
    certs = x509.load_pem_x509_certificates(CHAIN)
    der = bytearray(certs[0].public_bytes(Encoding.DER))
    der[-1] ^= 1  # the last byte of the leaf's ECDSA signature: still DER, no longer BROM's
    leaf = x509.load_der_x509_certificate(bytes(der))
    return b"".join(c.public_bytes(Encoding.PEM) for c in (leaf, *certs[1:]))


def test_a_verified_chain_is_remembered_and_a_forged_link_still_refused() -> None:
    issuer_links.cache_clear()
    assert _verify(CHAIN).ok  # type: ignore[attr-defined]
    remembered = issuer_links.cache_size()
    assert remembered >= 3
    assert _verify(CHAIN).ok  # type: ignore[attr-defined]
    assert issuer_links.cache_size() == remembered  # nothing new to verify
    refused = _verify(_tampered_leaf())
    assert refused.reasons == (Reason.CHAIN_INVALID,)  # type: ignore[attr-defined]
    assert issuer_links.cache_size() == remembered  # a failure is not remembered
    assert _verify(_tampered_leaf()).reasons == (Reason.CHAIN_INVALID,)  # type: ignore[attr-defined]


def test_a_remembered_chain_is_still_checked_at_each_time() -> None:
    assert _verify(CHAIN).ok  # type: ignore[attr-defined]
    late = _verify(CHAIN, now=AFTER_9999)
    assert late.reasons == (Reason.EXPIRED,)  # type: ignore[attr-defined]


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(issuer_links, "MAX_LINKS", 2)
    issuer_links.cache_clear()
    certs = x509.load_pem_x509_certificates(CHAIN)
    for child, parent in itertools.pairwise(certs):
        issuer_links.verify_issued_by(child, parent)
    assert len(certs) - 1 > 2 and issuer_links.cache_size() == 2
    issuer_links.verify_issued_by(certs[0], certs[1])  # the oldest link was let go: verified again
