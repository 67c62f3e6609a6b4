"""Ed25519 identity: domain-separated signatures, tampering, and libp2p peer id compatibility."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from protocol.identity import (
    Domain,
    Identity,
    SignatureError,
    peer_id_from_public_key,
    peer_id_from_text,
    peer_id_to_text,
    public_key_from_peer_id,
    verify,
)

SEED = bytes(range(32))


def test_sign_and_verify() -> None:
    me = Identity(SEED)
    sig = me.sign(Domain.COMMITMENT, b"hello")
    verify(me.peer_id, Domain.COMMITMENT, b"hello", sig)
    assert len(sig) == 64


@pytest.mark.parametrize(("signed_in", "checked_in"), list(itertools.permutations(Domain, 2)))
def test_signature_in_one_domain_fails_in_every_other(signed_in: Domain, checked_in: Domain) -> None:
    me = Identity(SEED)
    sig = me.sign(signed_in, b"same message")
    with pytest.raises(SignatureError):
        verify(me.peer_id, checked_in, b"same message", sig)


def test_domain_signature_is_not_a_plain_signature() -> None:
    """A Veilnet signature never verifies as a raw libp2p signature over the same bytes."""
    me = Identity(SEED)
    sig = me.sign(Domain.BUNDLE, b"record")
    libp2p_key = Ed25519PrivateKey.from_bytes(SEED).get_public_key()
    assert not libp2p_key.verify(b"record", sig)
    assert libp2p_key.verify(b"veilnet/bundle/v1\x00record", sig)


def test_every_flipped_message_or_signature_bit_fails() -> None:
    me = Identity(SEED)
    message = b"commit to this result"
    sig = me.sign(Domain.COMMITMENT, message)
    for i in range(len(message)):
        tampered = bytearray(message)
        tampered[i] ^= 0x01
        with pytest.raises(SignatureError):
            verify(me.peer_id, Domain.COMMITMENT, bytes(tampered), sig)
    for i in range(len(sig)):
        for bit in (0x01, 0x80):
            bad = bytearray(sig)
            bad[i] ^= bit
            with pytest.raises(SignatureError):
                verify(me.peer_id, Domain.COMMITMENT, message, bytes(bad))


def test_wrong_signer_fails() -> None:
    me, other = Identity(SEED), Identity(bytes(32))
    sig = me.sign(Domain.REVEAL, b"x")
    with pytest.raises(SignatureError):
        verify(other.peer_id, Domain.REVEAL, b"x", sig)


@pytest.mark.parametrize("sig", [b"", bytes(63), bytes(65)])
def test_signature_length_is_checked(sig: bytes) -> None:
    with pytest.raises(SignatureError):
        verify(Identity(SEED).peer_id, Domain.JOB, b"x", sig)


@pytest.mark.parametrize(
    "peer_id",
    [
        b"",
        bytes(38),
        Identity(SEED).peer_id[:-1],
        Identity(SEED).peer_id + b"\x00",
        # a sha2-256 multihash peer id (RSA/secp keys) carries no Ed25519 key
        bytes([0x12, 0x20]) + bytes(32),
    ],
)
def test_non_ed25519_peer_ids_are_refused(peer_id: bytes) -> None:
    with pytest.raises(SignatureError):
        public_key_from_peer_id(peer_id)
    with pytest.raises(SignatureError):
        verify(peer_id, Domain.JOB, b"x", bytes(64))


def test_seed_length_and_repr() -> None:
    with pytest.raises(SignatureError):
        Identity(bytes(31))
    me = Identity(SEED)
    assert SEED.hex() not in repr(me)
    assert me.peer_id_text in repr(me)
    with pytest.raises(SignatureError):
        peer_id_from_public_key(bytes(31))


def test_peer_id_text_round_trip_and_garbage() -> None:
    me = Identity.generate()
    assert peer_id_from_text(me.peer_id_text) == me.peer_id
    assert peer_id_to_text(me.peer_id) == me.peer_id_text
    assert me.peer_id_text.startswith("12D3KooW")
    for bad in ("0OIl", "not base58!", "é"):
        with pytest.raises(SignatureError):
            peer_id_from_text(bad)


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_equals_py_libp2p_for_the_same_key(seed: bytes) -> None:
    me = Identity(seed)
    libp2p_private = Ed25519PrivateKey.from_bytes(seed)
    libp2p_id = ID.from_pubkey(libp2p_private.get_public_key())
    assert me.peer_id == libp2p_id.to_bytes()
    assert me.peer_id_text == libp2p_id.to_base58()
    assert me.public_key == libp2p_private.get_public_key().to_bytes()
    assert public_key_from_peer_id(libp2p_id.to_bytes()) == me.public_key
    # and libp2p's signature over our tagged bytes is exactly ours (same key, deterministic Ed25519)
    assert libp2p_private.sign(b"veilnet/job/v1\x00m") == me.sign(Domain.JOB, b"m")
