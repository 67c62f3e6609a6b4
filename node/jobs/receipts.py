"""Receipt assembly: a finished job's phase and outcome → a receipt signed by this node's key.

The router keeps what a receipt needs while the job runs (each executor's signed commitment in
its ``Attempt``, each opening in ``Phase.reveals``, each executor's epoch key and bundle in
``Phase.infos``); this module turns that into a ``protocol.jobs.receipts.Receipt`` and keeps the
recent ones for ``GET /veilnet/v1/jobs/{id}/receipt``. Beside each receipt it keeps the user's
private parts (the input salt, the input and answer bytes), which never go into the receipt:
they let the user prove the receipt is about *their* input and answer, if they choose to.

Receipts cover embeddings jobs (one phase) and verified chat jobs (the primary from the generate
phase, the verifiers from the score phase). Building one never fails a job: a receipt that cannot
be built is logged and left out.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from node.jobs.phase import Phase, Submission
from protocol.identity import Domain, Identity
from protocol.jobs import consensus
from protocol.jobs.jobflow import AttemptState, Outcome, majority_of
from protocol.jobs.messages import SALT_LEN
from protocol.jobs.receipts import MAX_RECEIPT_SIZE, ExecutorEntry, Receipt, ReceiptError, input_digest

__all__ = ["MAX_RECEIPTS", "KeptReceipt", "ReceiptBook"]

log = logging.getLogger(__name__)

MAX_RECEIPTS = 256  # receipts (with their private parts) kept for look-up, oldest dropped first
MAX_KEPT_BYTES = 64 << 20  # and at most this much of them (inputs and answers can be MBs each)
_EMBED_BUDGET = MAX_RECEIPT_SIZE - (256 << 10)  # room for everything but the bundles
_RECEIPT_OVERHEAD = 2048 + 512 * 15  # a receipt's bytes besides its bundles, up to 15 executors (estimate)


@dataclass(frozen=True)
class KeptReceipt:
    """A signed receipt and the private parts only the user holds."""

    receipt: Receipt
    wire: bytes
    input_salt: bytes
    job_input: bytes
    answer: bytes  # the returned answer's plaintext (empty when the job had none)

    @property
    def size(self) -> int:
        return len(self.wire) + len(self.job_input) + len(self.answer)


@dataclass(frozen=True)
class _Unsigned:
    """A finished job's receipt with everything it says fixed, not yet signed; ``size`` is what
    it will keep, estimated from above, for the byte budget."""

    sign: Callable[[], KeptReceipt]
    size: int


class ReceiptBook:
    """Builds receipts signed by ``identity``; keeps the last ``MAX_RECEIPTS``, within ``MAX_KEPT_BYTES``."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._kept: OrderedDict[str, KeptReceipt | _Unsigned] = OrderedDict()
        self._kept_bytes = 0
        # told of every receipt that records an offence, signed as the job ends
        self.listeners: list[Callable[[KeptReceipt], None]] = []

    def record(
        self, sub: Submission, outcome: Outcome, phase: Phase, *, quorum: int, finished: float
    ) -> None:
        """Keep the receipt of a finished single-phase job (embeddings)."""
        self._keep(
            sub, lambda: self._build_single(sub, outcome, phase, quorum=quorum, finished=finished),
            offence=bool(outcome.penalties),
        )

    def record_chat(
        self, sub: Submission, generated: tuple[Outcome, Phase], scored: tuple[Outcome, Phase], *,
        verifiers: int, finished: float,
    ) -> None:
        """Keep the receipt of a verified chat job: its primary and its verifiers.

        The primary's entry is from the generate phase, the verifiers' from the score phase (their
        commitments name that phase's job id). The winners are the primary and the verifiers that
        accepted its tokens; the answer is the primary's generation.
        """
        self._keep(
            sub, lambda: self._build_chat(sub, generated, scored, verifiers=verifiers, finished=finished),
            offence=bool(generated[0].penalties or scored[0].penalties),
        )

    def get(self, job_id_hex: str) -> KeptReceipt | None:
        """The job's receipt, signed now if nobody asked for it before (None: unknown or dropped)."""
        kept = self._kept.get(job_id_hex)
        if not isinstance(kept, _Unsigned):
            return kept
        signed = self._sign_kept(job_id_hex, kept)
        if signed is None:
            del self._kept[job_id_hex]
            self._kept_bytes -= kept.size
            return None
        self._kept[job_id_hex] = signed
        self._kept_bytes += signed.size - kept.size
        self._drop_oldest()
        return signed

    def _keep(self, sub: Submission, build: Callable[[], _Unsigned], *, offence: bool) -> None:
        """Fix what the receipt says now; sign it now only if it records an offence (listeners
        publish those), else when it is first asked for. Signing (two canonical encodings and an
        Ed25519 signature, ~0.2 ms per executor named) is off the answer's path that way, and most
        receipts are never fetched."""
        key = sub.job_id.hex()
        try:
            entry: KeptReceipt | _Unsigned | None = build()
        except (ReceiptError, KeyError, ValueError, TypeError) as exc:
            log.warning("no receipt for job %s: %s", key, exc)
            return
        if offence and isinstance(entry, _Unsigned):
            entry = self._sign_kept(key, entry)
        if entry is None:
            return
        self._kept[key] = entry
        self._kept_bytes += entry.size
        self._drop_oldest()
        if isinstance(entry, KeptReceipt):
            for listener in self.listeners:
                listener(entry)

    def _sign_kept(self, key: str, unsigned: _Unsigned) -> KeptReceipt | None:
        try:
            return unsigned.sign()
        except (ReceiptError, KeyError, ValueError, TypeError) as exc:
            log.warning("no receipt for job %s: %s", key, exc)
            return None

    def _drop_oldest(self) -> None:
        while len(self._kept) > MAX_RECEIPTS or (self._kept_bytes > MAX_KEPT_BYTES and len(self._kept) > 1):
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= dropped.size

    def slim(self, receipt: Receipt) -> Receipt:
        """The same receipt with every bundle named by digest, signed anew (for gossip)."""
        entries = tuple(
            dataclasses.replace(e, bundle=b"", bundle_digest=e.bundle_hash()) if e.bundle else e
            for e in receipt.executors
        )
        unsigned = dataclasses.replace(receipt, executors=entries, sig=b"")
        return dataclasses.replace(unsigned, sig=self._identity.sign(Domain.RECEIPT, unsigned.signed_body()))

    def _build_single(
        self, sub: Submission, outcome: Outcome, phase: Phase, *, quorum: int, finished: float
    ) -> _Unsigned:
        entries = _entries(outcome, phase, sub.job_id)
        answer = b""
        answer_digest = b""
        if outcome.ok:
            winner = outcome.value[0]
            answer = phase.reveals[winner].plaintext
            answer_digest = phase.reveals[winner].digest
        bounds = outcome.vote_detail.get("bounds", {})
        return self._prepare(
            sub, entries, status=outcome.status.value, quorum=quorum, escalated=outcome.escalated,
            comparator=str(outcome.vote_detail.get("comparator", "none")),
            bounds={str(k): repr(v) for k, v in bounds.items()} if isinstance(bounds, dict) else {},
            winners=outcome.winners, answer=answer, answer_digest=answer_digest, finished=finished,
        )

    def _build_chat(
        self, sub: Submission, generated: tuple[Outcome, Phase], scored: tuple[Outcome, Phase], *,
        verifiers: int, finished: float,
    ) -> _Unsigned:
        gen, gen_phase = generated
        score, score_phase = scored
        primary = gen.value[0]
        primary_entries = [e for e in _entries(gen, gen_phase, sub.job_id) if e.peer_id == primary]
        opened = gen_phase.reveals[primary]
        return self._prepare(
            sub, primary_entries + _entries(score, score_phase, sub.job_id), status=score.status.value,
            quorum=1 + verifiers, escalated=score.escalated,
            comparator=str(score.vote_detail.get("comparator", "chat-teacher-forced")),
            bounds={"max_logit_gap": repr(consensus.token_bounds_for(sub.model_id).max_logit_gap)},
            winners=(primary, *score.winners) if score.ok else (),
            answer=opened.plaintext if score.ok else b"",
            answer_digest=opened.digest if score.ok else b"", finished=finished,
        )

    def _prepare(
        self, sub: Submission, entries: list[ExecutorEntry], *, status: str, quorum: int, escalated: bool,
        comparator: str, bounds: dict[str, str], winners: tuple[bytes, ...], answer: bytes,
        answer_digest: bytes, finished: float,
    ) -> _Unsigned:
        """Everything the receipt says, fixed now; ``sign`` builds and signs it."""
        if sum(len(e.bundle) for e in entries) > _EMBED_BUDGET:
            entries = [dataclasses.replace(e, bundle=b"", bundle_digest=e.bundle_hash()) for e in entries]
        salt = os.urandom(SALT_LEN)
        job_input = sub.job.to_bytes()
        slimmed = tuple(entries)
        # only these values are held until signing, not the submission (its providers' bundles)
        job_id, model_id, task, mode = sub.job_id, sub.model_id, sub.task.value, sub.mode.value
        created_ms = int(sub.started * 1000)
        finished_ms = max(int(finished * 1000), created_ms)

        def sign() -> KeptReceipt:
            receipt = Receipt.create(
                self._identity, job_id=job_id, model_id=model_id, task=task, mode=mode,
                input_digest=input_digest(salt, job_input), status=status, quorum=quorum,
                needed=majority_of(quorum), escalated=escalated, comparator=comparator, bounds=bounds,
                executors=slimmed, winners=tuple(sorted(winners)), created_ms=created_ms,
                finished_ms=finished_ms, answer_digest=answer_digest,
            )
            return KeptReceipt(receipt, receipt.to_wire(), salt, job_input, answer)

        estimate = _RECEIPT_OVERHEAD + sum(len(e.bundle) for e in entries) + len(job_input) + len(answer)
        return _Unsigned(sign, estimate)


def _entries(outcome: Outcome, phase: Phase, receipt_job_id: bytes) -> list[ExecutorEntry]:
    """One entry per executor the phase asked (bundles embedded; ``_prepare`` slims them if too big)."""
    penalties = {peer: offence.value for peer, offence, _ in outcome.penalties}
    entries = []
    for attempt in outcome.attempts:
        info = phase.infos[attempt.peer_id]
        if not info.bundle:
            raise ReceiptError("no_bundle", f"no bundle for {info.label or attempt.peer_id.hex()}")
        opened = phase.reveals.get(attempt.peer_id)
        revealed = attempt.state is AttemptState.REVEALED and opened is not None
        entries.append(ExecutorEntry(
            peer_id=attempt.peer_id, round=attempt.round, state="revealed" if revealed else "failed",
            enc_pubkey=info.enc_pubkey, commitment=attempt.statement,
            salt=opened.salt if revealed and opened else b"",
            result_digest=opened.digest if revealed and opened else b"",
            bundle=info.bundle, offence=penalties.get(attempt.peer_id, ""),
            job_id=b"" if phase.job_id == receipt_job_id else phase.job_id,
        ))
    return entries
