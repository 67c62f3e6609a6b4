"""Pinned vendor trust anchors, shipped as package data and checked against fingerprints in code.

Why both a file and a fingerprint: the file is what the verifiers load, the fingerprint is what
makes swapping the file (or a packaging mistake) fail loudly instead of silently trusting a new
root. Provenance of every file is in ``PROVENANCE.md`` beside it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import hashes

INTEL_SGX_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
NVIDIA_DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
AMD_ARK_SHA256 = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}
AMD_PRODUCTS = tuple(AMD_ARK_SHA256)


class RootPinError(RuntimeError):
    """A shipped root file does not match its pinned fingerprint (broken install)."""


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


@lru_cache(maxsize=1)
def intel_sgx_root_der() -> bytes:
    """DER of the Intel SGX Root CA, the anchor for every DCAP (TDX) quote."""
    der = _read("intel_sgx_root_ca.der")
    if fingerprint(x509.load_der_x509_certificate(der)) != INTEL_SGX_ROOT_SHA256:
        raise RootPinError("intel_sgx_root_ca.der does not match its pinned fingerprint")
    return der


@dataclass(frozen=True)
class AmdChain:
    product: str
    ask: x509.Certificate
    ark: x509.Certificate


@lru_cache(maxsize=len(AMD_PRODUCTS))
def amd_chain(product: str) -> AmdChain:
    """Pinned ASK and ARK of an AMD product line (``Milan``, ``Genoa``, ``Turin``)."""
    if product not in AMD_ARK_SHA256:
        raise KeyError(f"no pinned AMD root for product {product!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ask, ark = x509.load_pem_x509_certificates(_read(f"amd_{product.lower()}_ask_ark.pem"))
    if fingerprint(ark) != AMD_ARK_SHA256[product]:
        raise RootPinError(f"ARK-{product} does not match its pinned fingerprint")
    return AmdChain(product=product, ask=ask, ark=ark)


@lru_cache(maxsize=1)
def nvidia_device_root() -> x509.Certificate:
    """The NVIDIA Device Identity CA, the anchor of every GPU device certificate chain."""
    cert = x509.load_pem_x509_certificate(_read("nvidia_device_identity_ca.pem"))
    if fingerprint(cert) != NVIDIA_DEVICE_ROOT_SHA256:
        raise RootPinError("nvidia_device_identity_ca.pem does not match its pinned fingerprint")
    return cert
