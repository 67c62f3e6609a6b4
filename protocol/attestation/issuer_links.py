"""Certificate signature checks, each done once per process: a verified (certificate, issuer) pair.

Why: a receipt for k executors carries k GPU certificate chains whose upper links (NVIDIA's
provisioning CA and the device identity CA) are the same in every chain, and a node appraises the
same chains again each epoch. An ECDSA P-384 link costs about a millisecond, most of a chain's
check. Whether ``issuer`` signed ``cert`` depends only on the two certificates' DER encodings, so a
success can be remembered under their SHA-256 digests. Only the signature is remembered: validity
windows, names and extensions stay the caller's to check at its own ``now``. A failure is never
remembered (it is re-checked, and costs the one who sent it). Bounded (least recently used
first out) and thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes

__all__ = ["MAX_LINKS", "cache_clear", "cache_size", "verify_issued_by"]

MAX_LINKS = 1024

_verified: OrderedDict[bytes, None] = OrderedDict()
_lock = threading.Lock()


def _key(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256()) + issuer.fingerprint(hashes.SHA256())


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """``cert.verify_directly_issued_by(issuer)``, remembered when it succeeds; raises as it does."""
    key = _key(cert, issuer)
    with _lock:
        if key in _verified:
            _verified.move_to_end(key)
            return
    cert.verify_directly_issued_by(issuer)  # InvalidSignature, ValueError or TypeError when not
    with _lock:
        _verified[key] = None
        while len(_verified) > MAX_LINKS:
            _verified.popitem(last=False)


def cache_size() -> int:
    with _lock:
        return len(_verified)


def cache_clear() -> None:
    """Forget every verified link (benchmarks measure a cold process this way)."""
    with _lock:
        _verified.clear()
