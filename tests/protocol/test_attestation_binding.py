"""The report-data binding, GPU nonce and challenge variant: exact bytes and separation."""

from __future__ import annotations

import hashlib

import pytest

from protocol import codec
from protocol.attestation.binding import (
    BindingError,
    challenge_report_data,
    epoch_of,
    evidence_hash,
    gpu_nonce,
    report_data,
)
from protocol.attestation.evidence import Evidence
from protocol.identity import Identity

NODE = Identity(bytes([31]) * 32).peer_id
KEY = bytes(range(32))
HASHES = [hashlib.sha256(b"gpu0").digest(), hashlib.sha256(b"gpu1").digest()]
MODELS = ["vn-model:" + "ab" * 32]


def test_report_data_exact_bytes() -> None:
    body = codec.encode(
        {
            "v": 1,
            "node_id": NODE,
            "enc_pubkey": KEY,
            "epoch": 7,
            "issued_at": 4200,
            "models": MODELS,
            "gpus": HASHES,
        }
    )
    expected = hashlib.sha512(b"veilnet/attest/v1:" + body).digest()
    assert report_data(NODE, KEY, 7, 4200, MODELS, HASHES) == expected
    assert len(expected) == 64


def test_gpu_nonce_exact_bytes() -> None:
    body = codec.encode({"v": 1, "node_id": NODE, "enc_pubkey": KEY, "epoch": 7})
    assert gpu_nonce(NODE, KEY, 7) == hashlib.sha256(b"veilnet/gpu/v1:" + body).digest()


def test_challenge_exact_bytes_and_separation() -> None:
    nonce = bytes(32)
    fields = {
        "v": 1,
        "node_id": NODE,
        "enc_pubkey": KEY,
        "epoch": 7,
        "issued_at": 4200,
        "models": MODELS,
        "gpus": HASHES,
        "nonce": nonce,
    }
    expected = hashlib.sha512(b"veilnet/challenge/v1:" + codec.encode(fields)).digest()
    assert challenge_report_data(NODE, KEY, 7, 4200, MODELS, HASHES, nonce) == expected
    assert expected != report_data(NODE, KEY, 7, 4200, MODELS, HASHES)


def test_every_field_changes_the_binding() -> None:
    base = report_data(NODE, KEY, 7, 4200, MODELS, HASHES)
    other_node = Identity(bytes([32]) * 32).peer_id
    variants = [
        report_data(other_node, KEY, 7, 4200, MODELS, HASHES),
        report_data(NODE, bytes(32), 7, 4200, MODELS, HASHES),
        report_data(NODE, KEY, 8, 4200, MODELS, HASHES),
        report_data(NODE, KEY, 7, 4201, MODELS, HASHES),
        report_data(NODE, KEY, 7, 4200, [], HASHES),
        report_data(NODE, KEY, 7, 4200, MODELS, HASHES[:1]),
        report_data(NODE, KEY, 7, 4200, MODELS, list(reversed(HASHES))),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_evidence_hash_covers_kind_and_data_not_endorsements() -> None:
    a = Evidence("nvidia-gpu", b"spdm")
    assert evidence_hash(a) == hashlib.sha256(codec.encode({"data": b"spdm", "kind": "nvidia-gpu"})).digest()
    assert evidence_hash(Evidence("nvidia-gpu", b"spdm", {"cert_chain": b"x"})) == evidence_hash(a)
    assert evidence_hash(Evidence("nvidia-gpu", b"spdm!")) != evidence_hash(a)
    assert evidence_hash(Evidence("other-gpu", b"spdm")) != evidence_hash(a)


def test_epoch_of() -> None:
    assert epoch_of(0, 600) == 0
    assert epoch_of(599, 600) == 0
    assert epoch_of(600, 600) == 1
    with pytest.raises(BindingError):
        epoch_of(1, 0)
    with pytest.raises(BindingError):
        epoch_of(-1, 600)


@pytest.mark.parametrize(
    "call",
    [
        lambda: report_data(b"", KEY, 1, 1, [], []),
        lambda: report_data(NODE, KEY[:31], 1, 1, [], []),
        lambda: report_data(NODE, KEY, -1, 1, [], []),
        lambda: report_data(NODE, KEY, True, 1, [], []),
        lambda: report_data(NODE, KEY, 1, -1, [], []),
        lambda: report_data(NODE, KEY, 1, 1, "model", []),
        lambda: report_data(NODE, KEY, 1, 1, [b"model"], []),  # type: ignore[list-item]
        lambda: report_data(NODE, KEY, 1, 1, [], [b"short"]),
        lambda: challenge_report_data(NODE, KEY, 1, 1, [], [], b"short"),
        lambda: challenge_report_data(NODE, KEY, 1, 1, [], [], bytes(65)),
        lambda: gpu_nonce(NODE, b"", 1),
    ],
)
def test_bad_inputs_raise_binding_error(call: object) -> None:
    with pytest.raises(BindingError):
        call()  # type: ignore[operator]
