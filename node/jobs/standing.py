"""Where each executor stands with this node: its reputation (persisted) and its current load.

Both feed selection (``protocol.jobs.selection.rank_peers`` weighs reputation × advertised load)
and both are this node's own observations, so they live together in one small object the router
owns. The rules and arithmetic of reputation are in ``protocol.jobs.reputation``; this module only
applies outcomes to the book and keeps it on disk:

1. the book is read once at start from ``<data_dir>/reputation.msgpack``; an unreadable file is
   renamed ``.bad`` and the node starts afresh rather than refusing to run;
2. ``save`` writes only when something changed, via a temporary file and an atomic rename, so a
   crash never leaves half a book.

Load is "how busy does this executor look right now": a recent ``busy`` answer marks it full for
``BUSY_BACKOFF_S``, commitments report queue time (smoothed), and our own in-flight jobs count.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from protocol.identity import peer_id_to_text
from protocol.jobs.jobflow import Failure, Outcome
from protocol.jobs.reputation import EvidenceRecord, Offence, ReputationBook, ReputationFormatError

__all__ = ["BUSY_BACKOFF_S", "REPUTATION_FILE", "Standing"]

log = logging.getLogger("veilnet.router")

REPUTATION_FILE = "reputation.msgpack"
BUSY_BACKOFF_S = 2.0  # a peer that said busy is ranked as fully loaded for this long
_QUEUE_FULL_MS = 1000.0  # smoothed queue time that counts as full load
_INFLIGHT_FULL = 16.0  # our own concurrent jobs on one peer that count as full load
_QUEUE_WEIGHT = 0.3  # EWMA weight of the newest queue_ms report (smooths one slow batch away)
_QUEUE_KEEP = 0.7  # and of the history (1 - _QUEUE_WEIGHT, written out so the arithmetic is exact)


class Standing:
    """The reputation book plus load tracking; ``data_dir`` None keeps the book in memory only."""

    def __init__(self, data_dir: Path | None, clock: Callable[[], float]) -> None:
        self.data_dir = data_dir
        self._clock = clock
        self.book = self._load()
        self._dirty = False
        self._inflight: dict[bytes, int] = {}
        self._busy_until: dict[bytes, float] = {}
        self._queue_ewma: dict[bytes, float] = {}

    # ------------------------------------------------------------------ persistence

    def _load(self) -> ReputationBook:
        if self.data_dir is None:
            return ReputationBook()
        path = self.data_dir / REPUTATION_FILE
        try:
            return ReputationBook.from_bytes(path.read_bytes())
        except FileNotFoundError:
            return ReputationBook()
        except ReputationFormatError as exc:
            log.warning("reputation file %s is unreadable (%s); starting afresh", path, exc)
            path.rename(path.with_suffix(".bad"))
            return ReputationBook()

    def mark_changed(self) -> None:
        """The book changed outside ``apply``/``record_success``/``penalise``; save it next time."""
        self._dirty = True

    def save(self) -> None:
        if self.data_dir is None or not self._dirty:
            return
        path = self.data_dir / REPUTATION_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(self.book.to_bytes())
        os.replace(tmp, path)
        self._dirty = False

    # ------------------------------------------------------------------ reputation

    def apply(self, outcome: Outcome) -> None:
        """Record a phase's successes and penalties (with their signed evidence)."""
        now = self._clock()
        for peer in outcome.successes:
            self.book.record_success(peer, now)
        for peer, offence, record in outcome.penalties:
            penalty = self.book.record_offence(peer, offence, now, record)
            if penalty.banned_until is not None:
                log.warning(
                    "banned executor %s until %s after %s (job %s)", peer_id_to_text(peer),
                    time.strftime("%H:%M:%S", time.localtime(penalty.banned_until)), offence.value,
                    record.job_id.hex(),
                )
            else:
                log.info("executor %s penalised for %s (job %s)", peer_id_to_text(peer), offence.value,
                         record.job_id.hex())
        if outcome.successes or outcome.penalties:
            self._dirty = True

    def record_success(self, peer: bytes) -> None:
        self.book.record_success(peer, self._clock())
        self._dirty = True

    def penalise(self, peer: bytes, offence: str, job_id: bytes, detail: str) -> None:
        now = self._clock()
        kind = Offence(offence)
        self.book.record_offence(peer, kind, now, EvidenceRecord(job_id, kind, now, detail))
        self._dirty = True

    # ------------------------------------------------------------------ load

    def load_of(self, peer: bytes, now: float) -> float:
        """Advertised load: recent busy answers, queue time in commitments, our own in-flight jobs."""
        if self._busy_until.get(peer, 0.0) > now:
            return 1.0
        queue = min(1.0, self._queue_ewma.get(peer, 0.0) / _QUEUE_FULL_MS)
        inflight = min(1.0, self._inflight.get(peer, 0) / _INFLIGHT_FULL)
        return max(queue, inflight)

    def note_queue(self, peer: bytes, queue_ms: int) -> None:
        previous = self._queue_ewma.get(peer, float(queue_ms))
        self._queue_ewma[peer] = _QUEUE_KEEP * previous + _QUEUE_WEIGHT * queue_ms

    def note_busy(self, peer: bytes, now: float) -> None:
        self._busy_until[peer] = now + BUSY_BACKOFF_S

    def note_failure(self, peer: bytes, failure: Failure, now: float) -> None:
        if failure is Failure.BUSY:
            self.note_busy(peer, now)

    def job_started(self, peer: bytes) -> None:
        self._inflight[peer] = self._inflight.get(peer, 0) + 1

    def job_ended(self, peer: bytes) -> None:
        self._inflight[peer] = max(0, self._inflight.get(peer, 1) - 1)
