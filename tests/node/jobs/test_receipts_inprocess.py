"""Receipts built by the router (in process, real models): they verify, name the outvoted
executor, prove the user's input and answer, feed offence records, and stay within their budget."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import pytest
import trio

from node.jobs import receipts as receipt_book
from node.jobs.faults import Fault
from node.jobs.phase import Misbehaviour
from node.jobs.receipts import KeptReceipt
from protocol.identity import Domain, Identity, peer_id_to_text
from protocol.jobs.offences import OffenceKind, OffenceRecord, verify_offence
from protocol.jobs.receipts import StepStatus, verify_receipt
from tests.node.jobs.harness import POLICY, TEXTS, MemoryNetwork, add_member, make_router, models, names_for

pytestmark = pytest.mark.timeout(240)
__all__ = ["models"]


async def test_the_router_signs_a_receipt_that_verifies_and_names_the_outvoted(models, monkeypatch):
    embed, _, _ = models
    monkeypatch.setattr(receipt_book, "MAX_KEPT_BYTES", 1)  # keep only the newest receipt
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery, names=names_for([embed]))
        honest = [add_member(net, {embed.model_id: embed}) for _ in range(2)]
        liar = add_member(net, {embed.model_id: embed}, fault=Fault.WRONG_OUTPUT)
        router = make_router(net)
        assert router.receipts is not None
        told: list[KeptReceipt] = []
        router.receipts.listeners.append(told.append)
        await nursery.start(router.run)
        first = await router.embeddings(embed.model_id, TEXTS[:1], replicas=3)
        await router.settled(first.job_id.hex())  # the liar is judged after the honest answer
        result = await router.embeddings(embed.model_id, TEXTS, replicas=3)
        await router.settled(result.job_id.hex())
        nursery.cancel_scope.cancel()
    assert router.receipts.get(first.job_id.hex()) is None  # over the byte budget: dropped
    kept = router.receipts.get(result.job_id.hex())
    assert kept is not None and told[-1] is kept and len(told) == 2
    receipt = kept.receipt
    assert receipt.user == net.client.peer_id and receipt.quorum == 3 and receipt.needed == 2
    assert set(receipt.winners) == {m.peer_id for m in honest}
    assert {e.peer_id: e.offence for e in receipt.executors}[liar.peer_id] == "wrong_output"
    verdict = verify_receipt(
        kept.wire, policy=POLICY, answer=kept.answer, job_input=kept.job_input, salt=kept.input_salt
    )
    assert verdict.ok, verdict.steps
    assert {s.name: s.status for s in verdict.steps}["answer"] is StepStatus.PASS
    assert verdict.simulated
    # the liar's evidence, as the node publishes it: a slim receipt and the liar's own commitment
    slim = router.receipts.slim(receipt)
    assert all(e.bundle_digest and not e.bundle for e in slim.executors)
    statement = next(e.commitment for e in slim.executors if e.peer_id == liar.peer_id)
    record = OffenceRecord.create(
        net.client,
        OffenceKind.WRONG_OUTPUT,
        job_id=receipt.job_id,
        offender=liar.peer_id,
        statement=statement,
        proof=slim.to_wire(),
    )
    assert verify_offence(record.to_wire()).offender == liar.peer_id


def _router_of_three_honest(net: MemoryNetwork, model: Any) -> Any:
    for _ in range(3):
        add_member(net, {model.model_id: model})
    return make_router(net)


async def test_a_receipt_without_an_offence_is_signed_when_first_asked_for(models):
    embed, _, _ = models
    async with trio.open_nursery() as nursery:
        router = _router_of_three_honest(MemoryNetwork(nursery, names=names_for([embed])), embed)
        assert router.receipts is not None
        told: list[KeptReceipt] = []
        router.receipts.listeners.append(told.append)
        await nursery.start(router.run)
        result = await router.embeddings(embed.model_id, TEXTS, replicas=3)
        await router.settled(result.job_id.hex())  # answered at 2 of 3; signed for all three
        nursery.cancel_scope.cancel()
    assert told == []  # nothing to publish: no offence
    kept = router.receipts.get(result.job_id.hex())
    assert kept is not None and router.receipts.get(result.job_id.hex()) is kept  # signed once
    assert kept.receipt.finished_ms <= int(time.time() * 1000) and len(kept.receipt.winners) == 3
    verdict = verify_receipt(
        kept.wire, policy=POLICY, answer=kept.answer, job_input=kept.job_input, salt=kept.input_salt
    )
    assert verdict.ok, verdict.steps
    assert router.receipts.get(os.urandom(16).hex()) is None


async def test_a_chat_receipt_covers_the_primary_and_its_verifiers(models):
    _, chat, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery, names=names_for([chat]))
        router = _router_of_three_honest(net, chat)
        await nursery.start(router.run)
        result = await router.chat(
            chat.model_id, [{"role": "user", "content": "hello"}], max_tokens=6, replicas=3
        )
        nursery.cancel_scope.cancel()
    assert router.receipts is not None
    kept = router.receipts.get(result.job_id.hex())
    assert kept is not None and result.generation is not None
    receipt = kept.receipt
    assert receipt.task == "chat" and receipt.quorum == 3 and len(receipt.winners) == 3
    primary = [e for e in receipt.executors if not e.job_id]
    verifiers = [e for e in receipt.executors if e.job_id]
    assert len(primary) == 1 and len(verifiers) == 2 and len({e.job_id for e in verifiers}) == 1
    verdict = verify_receipt(
        kept.wire, policy=POLICY, answer=kept.answer, job_input=kept.job_input, salt=kept.input_salt
    )
    assert verdict.ok, verdict.steps
    # a verifier's opening presented as the primary's (wrong job id) does not verify
    moved = [dataclasses.replace(e, job_id=b"") if e is verifiers[0] else e for e in receipt.executors]
    forged = dataclasses.replace(receipt, executors=tuple(moved), sig=b"")
    resigned = dataclasses.replace(forged, sig=net.client.sign(Domain.RECEIPT, forged.signed_body()))
    assert "commitment_wrong_job" in verify_receipt(resigned, policy=POLICY).reasons


@pytest.mark.parametrize(
    ("fault", "kind"),
    [(Fault.BAD_REVEAL, OffenceKind.BAD_REVEAL), (Fault.EQUIVOCATE, OffenceKind.EQUIVOCATION)],
)
async def test_the_router_hands_on_misbehaviour_that_a_third_party_can_verify(models, fault, kind):
    embed, _, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery, names=names_for([embed]))
        for _ in range(3):
            add_member(net, {embed.model_id: embed})
        liar = add_member(net, {embed.model_id: embed}, fault=fault)
        router = make_router(net, escalate=False)
        seen: list[Misbehaviour] = []
        router.misbehaviour_listeners.append(seen.append)
        await nursery.start(router.run)
        result = await router.embeddings(embed.model_id, TEXTS[:1], replicas=4)  # every member is asked
        await router.settled(result.job_id.hex())  # the liar may be judged after the answer
        report = router.report(result.job_id.hex())
        nursery.cancel_scope.cancel()
    assert report is not None and report["status"] == "ok"
    row = next(e for e in report["executors"] if e["peer_id"] == peer_id_to_text(liar.peer_id))
    assert row["offence"] == "bad_reveal" and not row["in_majority"]
    assert [(s.kind, s.offender, s.job_id) for s in seen] == [(kind, liar.peer_id, result.job_id)]
    reporter = Identity.generate()  # anyone holding the two signed messages can prove it
    record = OffenceRecord.create(
        reporter, kind, job_id=seen[0].job_id, offender=liar.peer_id, statement=seen[0].statement,
        proof=seen[0].proof,
    )
    assert verify_offence(record.to_wire()).kind is kind
