"""Real receipts for tests: three executors with simulated-evidence bundles and signed commitments,
and the offence records built from them (shared by the protocol, node and CLI tests)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from protocol.attestation.bundle import build_bundle
from protocol.attestation.policy import Policy
from protocol.attestation.simulated import SimulatedPlatform, source_measurement
from protocol.identity import Identity
from protocol.jobs.messages import Commitment, result_digest
from protocol.jobs.offences import OffenceKind, OffenceRecord
from protocol.jobs.receipts import ExecutorEntry, Receipt, input_digest

EPOCH = 600
ISSUED = EPOCH * 2_833_334 + 10
CREATED_MS = (ISSUED + 5) * 1000
MEASUREMENT = source_measurement([("protocol/x.py", b"print('measured')\n")])
PLATFORM = SimulatedPlatform(bytes([7]) * 32, testnet="unit")
USER = Identity(bytes([9]) * 32)
EXECUTORS = tuple(Identity(bytes([i]) * 32) for i in (1, 2, 3))
JOB_ID = bytes(range(16))
JOB_INPUT = b"the user's private prompt"
INPUT_SALT = bytes([5]) * 32
ANSWER = b"the majority's answer"
WRONG = b"a wrong answer"


def policy(**overrides: Any) -> Policy:
    base = Policy.for_simulated_testnet(
        [PLATFORM.public_key_hex], [MEASUREMENT.hex()], testnet="unit", epoch_seconds=EPOCH
    )
    return dataclasses.replace(base, **overrides)


def enc_key(identity: Identity) -> bytes:
    return identity.seed[:1] * 32


def bundle_of(identity: Identity, issued_at: int = ISSUED, measurement: bytes = MEASUREMENT) -> bytes:
    return build_bundle(
        identity,
        enc_key(identity),
        issued_at=issued_at,
        epoch_seconds=EPOCH,
        collect_cpu_evidence=PLATFORM.collector(measurement, issued_at),
        models=("vn-model:" + "ab" * 32,),
        addrs=("/ip4/127.0.0.1/tcp/4001",),
    ).to_wire()


@dataclass
class Made:
    receipt: Receipt
    results: dict[bytes, bytes]


def entry(
    identity: Identity,
    result: bytes | None,
    *,
    offence: str = "",
    embed: bool = True,
    bundle: bytes | None = None,
    job_id: bytes = JOB_ID,
) -> ExecutorEntry:
    salt = identity.seed[:1] * 32
    digest = result_digest(result if result is not None else b"")
    commitment = Commitment.create(
        identity, job_id=job_id, salt=salt, result_digest=digest, queue_ms=1, compute_ms=2
    ).to_wire()
    data = bundle if bundle is not None else bundle_of(identity)
    return ExecutorEntry(
        peer_id=identity.peer_id,
        round=0,
        state="revealed" if result is not None else "failed",
        enc_pubkey=enc_key(identity),
        commitment=commitment,
        salt=salt if result is not None else b"",
        result_digest=digest if result is not None else b"",
        bundle=data if embed else b"",
        bundle_digest=b"" if embed else hashlib.sha256(data).digest(),
        offence=offence,
    )


def make_receipt(*, wrong_third: bool = False, embed: bool = True, **changes: Any) -> Receipt:
    a, b, c = EXECUTORS
    job_id = changes.get("job_id", JOB_ID)  # the executors commit for the receipt's job
    entries = (
        entry(a, ANSWER, embed=embed, job_id=job_id),
        entry(b, ANSWER, embed=embed, job_id=job_id),
        entry(
            c, WRONG if wrong_third else ANSWER, offence="wrong_output" if wrong_third else "", embed=embed,
            job_id=job_id,
        ),
    )
    winners = (a.peer_id, b.peer_id) if wrong_third else (a.peer_id, b.peer_id, c.peer_id)
    fields: dict[str, Any] = dict(
        job_id=JOB_ID,
        model_id="vn-model:" + "ab" * 32,
        task="embeddings",
        mode="consensus",
        input_digest=input_digest(INPUT_SALT, JOB_INPUT),
        status="ok",
        quorum=3,
        needed=2,
        escalated=False,
        comparator="embeddings",
        bounds={"min_cosine": "0.9999999999985", "max_rel_l2": "2.1e-06"},
        executors=entries,
        winners=tuple(sorted(winners)),
        created_ms=CREATED_MS,
        finished_ms=CREATED_MS + 250,
        answer_digest=result_digest(ANSWER),
    )
    fields.update(changes)
    return Receipt.create(USER, **fields)


# every field ``Receipt.create`` takes (``user`` and ``sig`` come from the signing key)
SIGNED_FIELDS = tuple(f.name for f in dataclasses.fields(Receipt) if f.name not in ("user", "sig"))


def resign(receipt: Receipt, user: Identity) -> Receipt:
    """The same receipt as ``user`` would sign it (a second user re-signing public statements)."""
    return Receipt.create(user, **{name: getattr(receipt, name) for name in SIGNED_FIELDS})


def wrong_output_record(
    reporter: Identity = USER,
    *,
    job_id: bytes = JOB_ID,
    receipt: Receipt | None = None,
    offender: Identity = EXECUTORS[2],
) -> OffenceRecord:
    """``reporter``'s record that ``offender`` was outvoted in ``receipt`` (default: the third
    executor outvoted, bundles by digest)."""
    proof = receipt or make_receipt(wrong_third=True, embed=False, job_id=job_id)
    statement = next(e.commitment for e in proof.executors if e.peer_id == offender.peer_id)
    return OffenceRecord.create(
        reporter,
        OffenceKind.WRONG_OUTPUT,
        job_id=job_id,
        offender=offender.peer_id,
        statement=statement,
        proof=proof.to_wire(),
    )
