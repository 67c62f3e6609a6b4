"""Ed25519 node identity: the libp2p peer id key signs every Veilnet statement.

Every signature is domain separated (``veilnet/<domain>/v1`` + NUL + message) so a signature
made for one message type can never be replayed as another, nor as a libp2p record.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

import base58
import nacl.exceptions
import nacl.signing

__all__ = [
    "Domain",
    "Identity",
    "SignatureError",
    "peer_id_from_public_key",
    "peer_id_from_text",
    "peer_id_to_text",
    "public_key_from_peer_id",
    "verify",
]

# protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}, wrapped in an identity multihash
# (code 0x00, length 36) exactly as libp2p does for keys of 42 bytes or less.
_ED25519_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
PEER_ID_LEN = len(_ED25519_PEER_ID_PREFIX) + 32


class Domain(StrEnum):
    """What a signature is for. Adding a member is how a new signed message type is born."""

    BUNDLE = "bundle"
    SIMULATED_EVIDENCE = "simulated-evidence"
    COMMITMENT = "commitment"
    REVEAL = "reveal"
    CHALLENGE = "challenge"
    ERROR = "error"
    JOB = "job"
    RECEIPT = "receipt"
    OFFENCE = "offence"


class SignatureError(ValueError):
    """A signature, key or peer id did not check out."""


def _tagged(domain: Domain, message: bytes) -> bytes:
    return f"veilnet/{domain.value}/v1".encode() + b"\x00" + message


def peer_id_from_public_key(public_key: bytes) -> bytes:
    """The binary libp2p peer id of an Ed25519 public key."""
    if len(public_key) != 32:
        raise SignatureError("an Ed25519 public key is 32 bytes")
    return _ED25519_PEER_ID_PREFIX + public_key


def public_key_from_peer_id(peer_id: bytes) -> bytes:
    """The Ed25519 public key inside a binary peer id (ids of other key types are refused)."""
    if len(peer_id) != PEER_ID_LEN or not peer_id.startswith(_ED25519_PEER_ID_PREFIX):
        raise SignatureError("not an Ed25519 libp2p peer id")
    return peer_id[len(_ED25519_PEER_ID_PREFIX) :]


def peer_id_to_text(peer_id: bytes) -> str:
    return base58.b58encode(peer_id).decode("ascii")


def peer_id_from_text(text: str) -> bytes:
    try:
        return base58.b58decode(text.encode("ascii"))
    except ValueError as exc:
        raise SignatureError(f"bad peer id text: {exc}") from None


def verify(peer_id: bytes, domain: Domain, message: bytes, signature: bytes) -> None:
    """Raise SignatureError unless ``signature`` is ``peer_id``'s signature of ``message`` in ``domain``."""
    if len(signature) != 64:
        raise SignatureError("an Ed25519 signature is 64 bytes")
    key = nacl.signing.VerifyKey(public_key_from_peer_id(peer_id))
    try:
        key.verify(_tagged(domain, message), signature)
    except nacl.exceptions.BadSignatureError:
        raise SignatureError(f"bad {domain.value} signature") from None


@dataclass(frozen=True)
class Identity:
    """A node's Ed25519 key pair. ``seed`` is the 32-byte private seed (libp2p's private key bytes)."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise SignatureError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> Identity:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @cached_property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @cached_property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @cached_property
    def peer_id(self) -> bytes:
        return peer_id_from_public_key(self.public_key)

    @property
    def peer_id_text(self) -> str:
        return peer_id_to_text(self.peer_id)

    def sign(self, domain: Domain, message: bytes) -> bytes:
        return self._signing_key.sign(_tagged(domain, message)).signature

    def __repr__(self) -> str:  # never print the seed
        return f"Identity({self.peer_id_text})"


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
