"""Shared misbehaviour evidence: offence records on the ``veilnet/evidence/1`` gossip topic.

When this node's router outvotes an executor (``wrong_output``), it publishes an offence record
(``protocol.jobs.offences``) holding the offender's signed commitment and the job's receipt, with
bundles by digest so the record stays small. When the router catches an executor in a signed
reveal that does not open its signed commitment (``bad_reveal``) or in two different signed
commitments for one job (``equivocation``), it publishes a record holding those signed messages.
Each record is checked here before it leaves (an invalid one would be charged to this node).

Every node re-checks a record in the topic validator before it is forwarded or believed: a record
that does not prove its offence is invalid (gossipsub scores the forwarder down, and the node-wide
score is charged). A record that checks out lowers the offender's reputation here, bounded:

* once per (offender, job), however many copies or reporters arrive (deduplicated);
* a ``wrong_output`` record rests on the reporting user's word about the comparison, so each
  reporter counts at most once per offender per ``REPORTER_WINDOW_S`` (one user cannot ban a peer
  alone by running many jobs against it); self-proving records (``bad_reveal``,
  ``equivocation``) count as the ``bad_reveal`` offence every time they are new.

Records about this node itself are forwarded if valid but never applied to its own book.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from node.jobs.phase import Misbehaviour
from node.jobs.receipts import KeptReceipt, ReceiptBook
from node.jobs.standing import Standing
from node.net.scoring import Offence as NetOffence
from protocol.identity import Identity, peer_id_to_text
from protocol.jobs.offences import (
    MAX_OFFENCE_RECORD,
    OffenceError,
    OffenceKind,
    OffenceRecord,
    verify_offence,
)
from protocol.jobs.reputation import EvidenceRecord, Offence

if TYPE_CHECKING:
    from libp2p.peer.id import ID
    from libp2p.pubsub.pb import rpc_pb2

    from node.metrics import Metrics
    from node.net.gossip import AttestationGossip

__all__ = ["EVIDENCE_TOPIC", "REPORTER_WINDOW_S", "EvidenceExchange"]

log = logging.getLogger("veilnet.evidence")

EVIDENCE_TOPIC = "veilnet/evidence/1"
REPORTER_WINDOW_S = 3600.0
_SEEN_MAX = 4096  # (offender, job) pairs remembered for deduplication
_VERIFY_THREADS = 2


class EvidenceExchange:
    """Publishes this node's offence records and checks, forwards and applies everyone's."""

    def __init__(
        self,
        identity: Identity,
        gossip: AttestationGossip,
        standing: Standing,
        receipts: ReceiptBook,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._identity = identity
        self._gossip = gossip
        self._standing = standing
        self._receipts = receipts
        self._clock = clock
        self._seen: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self._reporters: dict[tuple[bytes, bytes], float] = {}  # (reporter, offender) → last counted
        self._limiter = trio.CapacityLimiter(_VERIFY_THREADS)
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes](64)
        self.accepted = metrics.counter(
            "veilnet_offence_records_accepted_total",
            "Offence records that proved their offence, by kind",
            ("kind",),
        )
        self.refused = metrics.counter(
            "veilnet_offence_records_refused_total", "Offence records refused, by reason", ("reason",)
        )
        self.applied = metrics.counter(
            "veilnet_offence_records_applied_total",
            "Offence records that lowered a peer's reputation here",
            ("kind",),
        )
        self.published = metrics.counter(
            "veilnet_offence_records_published_total", "Offence records this node published", ("kind",)
        )
        gossip.pubsub.set_topic_validator(EVIDENCE_TOPIC, self._validate, is_async_validator=True)
        receipts.listeners.append(self._on_receipt)

    async def run(self) -> None:
        """Subscribe (so records reach us and we forward them) and publish what the router found."""
        await self._gossip.ready.wait()
        subscription = await self._gossip.pubsub.subscribe(EVIDENCE_TOPIC)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, subscription)
            async for data in self._outbox:
                try:
                    await self._gossip.pubsub.publish(EVIDENCE_TOPIC, data)
                except Exception as exc:  # no peers on the topic yet, a closing host: not fatal
                    log.info("could not publish an offence record: %s", exc)

    async def _drain(self, subscription: object) -> None:
        # Records are checked and applied in the validator; delivered ones are only drained here.
        while True:
            await subscription.get()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ publishing

    def _on_receipt(self, kept: KeptReceipt) -> None:
        """The router finished a job: publish a record for each executor it outvoted."""
        outvoted = [
            e for e in kept.receipt.executors if e.offence == OffenceKind.WRONG_OUTPUT.value and e.commitment
        ]
        if not outvoted:
            return
        slim = self._receipts.slim(kept.receipt).to_wire()
        for entry in outvoted:
            try:
                record = OffenceRecord.create(
                    self._identity,
                    OffenceKind.WRONG_OUTPUT,
                    job_id=kept.receipt.job_id,
                    offender=entry.peer_id,
                    statement=entry.commitment,
                    proof=slim,
                )
                data = record.to_wire()
            except OffenceError as exc:
                log.warning("no offence record for %s: %s", peer_id_to_text(entry.peer_id), exc)
                continue
            self._queue(record, data)

    def _queue(self, record: OffenceRecord, data: bytes) -> None:
        if not self._remember(record.dedup_key()):  # our own router already counted it
            return  # already published (or received) for this offender and job
        try:
            self._outbox_send.send_nowait(data)
            self.published.inc(kind=record.kind.value)
        except trio.WouldBlock:
            self.refused.inc(reason="outbox_full")

    def on_misbehaviour(self, seen: Misbehaviour) -> None:
        """The router caught an executor proving its own misbehaviour: publish the record."""
        try:
            record = OffenceRecord.create(
                self._identity, seen.kind, job_id=seen.job_id, offender=seen.offender,
                statement=seen.statement, proof=seen.proof,
            )
            data = record.to_wire()
            verify_offence(data)
        except OffenceError as exc:  # e.g. a reveal too large for gossip: penalised here only
            self.refused.inc(reason=f"own_{exc.reason}")
            log.warning("no %s record for %s: %s", seen.kind.value, peer_id_to_text(seen.offender), exc)
            return
        self._queue(record, data)

    # ------------------------------------------------------------------ receiving

    async def _validate(self, forwarder: ID, message: rpc_pb2.Message) -> bool:
        if forwarder == self._gossip.pubsub.my_id:
            return True  # our own record, checked when built
        data = bytes(message.data)
        if len(data) > MAX_OFFENCE_RECORD:
            return self._refuse(forwarder, "too_large")
        try:
            record = await trio.to_thread.run_sync(verify_offence, data, limiter=self._limiter)
        except OffenceError as exc:
            return self._refuse(forwarder, exc.reason)
        self.accepted.inc(kind=record.kind.value)
        self._apply(record)
        return True

    def _refuse(self, forwarder: ID, reason: str) -> bool:
        self.refused.inc(reason=reason)
        self._gossip.scores.penalise(forwarder.to_bytes(), NetOffence.INVALID_MESSAGE)
        log.info("refused an offence record from %s: %s", peer_id_to_text(forwarder.to_bytes()), reason)
        return False

    def _remember(self, key: tuple[bytes, bytes]) -> bool:
        """True when ``key`` is new (and now remembered)."""
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    def _apply(self, record: OffenceRecord) -> None:
        if record.offender == self._identity.peer_id or not self._remember(record.dedup_key()):
            return
        now = self._clock()
        if record.kind is OffenceKind.WRONG_OUTPUT:
            pair = (record.reporter, record.offender)
            if now - self._reporters.get(pair, -REPORTER_WINDOW_S) < REPORTER_WINDOW_S:
                return
            self._reporters[pair] = now
            if len(self._reporters) > _SEEN_MAX:
                self._reporters = {k: t for k, t in self._reporters.items() if now - t < REPORTER_WINDOW_S}
            offence = Offence.WRONG_OUTPUT
        else:
            offence = Offence.BAD_REVEAL
        detail = f"{record.kind.value} reported by {peer_id_to_text(record.reporter)}"
        evidence = EvidenceRecord(record.job_id, offence, now, detail, record.statement)
        self._standing.book.record_offence(record.offender, offence, now, evidence)
        self._standing.mark_changed()
        self.applied.inc(kind=record.kind.value)
        log.info(
            "offence record: %s %s (job %s)", peer_id_to_text(record.offender), detail, record.job_id.hex()
        )
