"""A bounded replay window for executors: each job id is accepted at most once before its deadline.

Why forgetting is safe: a job's deadline is authenticated (it is in the sealing AAD), so a replayed
request carries the same deadline, and once that deadline has passed the request is refused as
expired anyway. The window therefore only has to remember ids until their deadline.

Why "full" refuses instead of evicting: dropping an unexpired id would let exactly that job be
replayed, silently. Refusing new work with a typed ``ReplayError("full")`` (the executor answers
``busy``) keeps the guarantee and turns a flood into visible back-pressure. Together with
``max_ahead_ms`` (deadlines further ahead are refused) this bounds memory to ``max_entries`` and
the time any id can occupy a slot.

``now_ms`` is the executor's wall clock. If it ever steps backwards, the window keeps using the
highest time it has seen, so ids it already forgot can never become acceptable again.
"""

from __future__ import annotations

import heapq

from protocol.errors import ProtocolError

__all__ = ["ReplayError", "ReplayWindow"]


class ReplayError(ProtocolError):
    """A job was refused: ``reason`` is "replay", "expired", "too_far" or "full"."""


class ReplayWindow:
    """Job ids seen, each kept until its deadline; memory bounded by ``max_entries``."""

    def __init__(self, max_entries: int = 100_000, max_ahead_ms: int = 15 * 60 * 1000) -> None:
        if max_entries < 1 or max_ahead_ms < 1:
            raise ValueError("max_entries and max_ahead_ms must be positive")
        self.max_entries = max_entries
        self.max_ahead_ms = max_ahead_ms
        self._deadlines: dict[bytes, int] = {}
        self._expiry: list[tuple[int, bytes]] = []  # min-heap of (deadline, job id)
        self._clock = 0  # highest now_ms seen

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._deadlines

    def check_and_add(self, job_id: bytes, deadline_ms: int, now_ms: int) -> None:
        """Record ``job_id`` or raise ReplayError. Call after the envelope authenticated the deadline."""
        now = self._advance(now_ms)
        if deadline_ms <= now:
            raise ReplayError("expired", f"deadline {deadline_ms} <= now {now}")
        if deadline_ms - now > self.max_ahead_ms:
            raise ReplayError("too_far", f"deadline more than {self.max_ahead_ms} ms ahead")
        if job_id in self._deadlines:
            raise ReplayError("replay", f"job {bytes(job_id).hex()} was already accepted")
        if len(self._deadlines) >= self.max_entries:
            raise ReplayError("full", f"{self.max_entries} unexpired jobs remembered")
        self._deadlines[job_id] = deadline_ms
        heapq.heappush(self._expiry, (deadline_ms, job_id))

    def expire(self, now_ms: int) -> int:
        """Forget ids whose deadline passed; returns how many. ``check_and_add`` calls it itself."""
        before = len(self._deadlines)
        self._advance(now_ms)
        return before - len(self._deadlines)

    def _advance(self, now_ms: int) -> int:
        self._clock = max(self._clock, now_ms)
        while self._expiry and self._expiry[0][0] <= self._clock:
            _, job_id = heapq.heappop(self._expiry)
            del self._deadlines[job_id]
        return self._clock
