"""Sealing throughput against raw XChaCha20-Poly1305 measured in the same run.

Rows per payload size (1 KiB, 64 KiB, 1 MiB):
- job envelope seal+open (session): what the router and an executor do per job once their session
  exists (X25519 cached on both sides): binding checks, per-job key derivation, AAD, a random nonce,
  AEAD, on each side; the envelope is the (nonce, ciphertext) pair that goes on the wire as is;
- job envelope seal+open (one-job key): the same with a fresh client key, so X25519 on both sides;
- result envelope seal+open: the per-job session keys already exist (the common reply path);
- baseline: one raw ``crypto_aead_xchacha20poly1305_ietf_encrypt`` + ``_decrypt`` of the same bytes
  (fixed key and nonce, no AAD: the cheapest correct-looking use of the primitive).
Plus a 1 MiB result streamed in 64 KiB secretstream chunks, and the fixed per-envelope key
agreement cost, which is what separates job envelopes from the baseline at small sizes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import nacl.bindings as sodium

from bench import Result, measure, measure_pair
from protocol.sealing import (
    ClientKeys,
    EncryptionKeyPair,
    StreamOpener,
    StreamSealer,
    open_job,
    open_result,
    seal_job,
    seal_result,
)

SIZES = {"1 KiB": 1 << 10, "64 KiB": 64 << 10, "1 MiB": 1 << 20}
GOAL_FROM = 64 << 10
JOB_ID = bytes(range(16))
MODEL = "vn-model:" + "ab" * 32
DEADLINE = 1_800_000_000_000
MIB = float(1 << 20)


def _raw(payload: bytes) -> Callable[[], object]:
    key, nonce = os.urandom(32), os.urandom(24)

    def once() -> bytes:
        ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(payload, None, nonce, key)
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, None, nonce, key)

    return once


def _job(payload: bytes, executor: EncryptionKeyPair) -> Callable[[], object]:
    """One job's seal and open as the router and an executor do them: within a session (one client
    key per executor key, the X25519 agreement cached on both sides)."""
    ring = ClientKeys()

    def once() -> bytes:
        sealed = seal_job(
            payload, recipient_pubkey=executor.public, job_id=JOB_ID, model_id=MODEL, deadline_ms=DEADLINE,
            client_keys=ring,
        )
        return open_job(
            sealed.envelope,
            recipient=executor,
            client_pubkey=sealed.client_keys.public,
            job_id=JOB_ID,
            model_id=MODEL,
            deadline_ms=DEADLINE,
        ).payload

    return once


def _job_one_off(payload: bytes, executor: EncryptionKeyPair) -> Callable[[], object]:
    """A job sealed under a fresh one-job client key: X25519 on both sides every time."""

    def once() -> bytes:
        sealed = seal_job(
            payload, recipient_pubkey=executor.public, job_id=JOB_ID, model_id=MODEL, deadline_ms=DEADLINE,
            client_keys=EncryptionKeyPair.generate(),
        )
        return open_job(
            sealed.envelope, recipient=executor, client_pubkey=sealed.client_keys.public, job_id=JOB_ID,
            model_id=MODEL, deadline_ms=DEADLINE,
        ).payload

    return once


def _result(payload: bytes, executor: EncryptionKeyPair) -> Callable[[], object]:
    sealed = seal_job(
        b"x", recipient_pubkey=executor.public, job_id=JOB_ID, model_id=MODEL, deadline_ms=DEADLINE
    )
    opened = open_job(
        sealed.envelope,
        recipient=executor,
        client_pubkey=sealed.client_keys.public,
        job_id=JOB_ID,
        model_id=MODEL,
        deadline_ms=DEADLINE,
    )

    def once() -> bytes:
        return open_result(sealed.session, seal_result(opened.session, payload))

    return once


def _stream(payload: bytes, chunk: int) -> Callable[[], object]:
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)]

    def once() -> int:
        sealer = StreamSealer()
        wire = [sealer.push(p) for p in pieces[:-1]] + [sealer.final(pieces[-1])]
        opener = StreamOpener(sealer._key, sealer.header)
        total = sum(len(opener.pull(c)) for c in wire)
        opener.close()
        return total

    return once


def _raw_chunks(payload: bytes, chunk: int) -> Callable[[], object]:
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)]
    key, nonce = os.urandom(32), os.urandom(24)

    def once() -> int:
        total = 0
        for p in pieces:
            ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(p, None, nonce, key)
            total += len(sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, None, nonce, key))
        return total

    return once


def _row(name: str, size: int, seconds: float, base_seconds: float, goal: str) -> Result:
    return Result(
        name=name,
        value=size / seconds / MIB,
        unit="MiB/s",
        baseline=size / base_seconds / MIB,
        baseline_name="raw XChaCha20-Poly1305",
        ratio=base_seconds / seconds,
        goal=goal,
    )


def run() -> list[Result]:
    executor = EncryptionKeyPair.generate()
    results: list[Result] = []
    for label, size in SIZES.items():
        payload = os.urandom(size)
        goal = "≥0.9× raw" if size >= GOAL_FROM else ""
        t_job, t_raw = measure_pair(_job(payload, executor), _raw(payload))
        job_goal = goal or "≥0.5× raw"
        results.append(_row(f"job envelope seal+open {label} (session)", size, t_job, t_raw, job_goal))
        if size < GOAL_FROM:
            t_one, t_raw = measure_pair(_job_one_off(payload, executor), _raw(payload))
            one = _row(f"job envelope seal+open {label} (one-job key)", size, t_one, t_raw, "informational")
            results.append(one)
        t_result, t_raw = measure_pair(_result(payload, executor), _raw(payload))
        results.append(_row(f"result envelope seal+open {label}", size, t_result, t_raw, goal))
    payload = os.urandom(1 << 20)
    t_stream, t_raw = measure_pair(_stream(payload, 64 << 10), _raw_chunks(payload, 64 << 10))
    row = _row("result stream 1 MiB in 64 KiB chunks", 1 << 20, t_stream, t_raw, "≥0.9× raw")
    row.baseline_name = "raw XChaCha20-Poly1305 per 64 KiB chunk"
    results.append(row)
    client = EncryptionKeyPair.generate()
    t_dh = measure(lambda: sodium.crypto_scalarmult(client.secret, executor.public))
    t_keygen = measure(EncryptionKeyPair.generate)
    results.append(
        Result(
            name="fixed cost per session (keygen + 2 X25519; per job with one-job keys)",
            value=(t_keygen + 2 * t_dh) * 1e6,
            unit="µs",
            goal="informational",
        )
    )
    return results
