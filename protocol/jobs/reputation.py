"""Local reputation of executors: scores, offences, exponential-backoff bans and kept evidence.

Each node keeps its own book; there is no global score and nobody can write into another node's
book. Why these rules:

- Scores are multiplicative on offences and additive-towards-1 on success, so one proven fault
  costs many successes (as in Nesa's 0.8 / 1.01 rule) while a newcomer still gets work.
- Offence *points* decay exponentially (a half-life), so a peer that times out once a day is
  never banned, while one that returns wrong answers twice in a row is.
- Reaching the ban threshold bans the peer for ``ban_base_s · 2^level`` (capped); each ban raises
  the level and a long clean period lowers it again — temporary bans with backoff, as Petals does.
- Every offence that a signed statement proves (a commitment outvoted by a majority, a reveal
  that does not open its own commitment) is stored with those signed statements, so a node can
  show *why* it stopped trusting a peer.

Time is always passed in (``now``, unix seconds) so the book is deterministic and sans-IO. The
persistent form is canonical msgpack (protocol.codec), with times in integer milliseconds and
scores in integer millionths because the canonical codec has no floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocol.codec import CodecError, Limits, decode, encode

__all__ = [
    "FORMAT_VERSION",
    "EvidenceRecord",
    "Offence",
    "PeerStanding",
    "Penalty",
    "ReputationBook",
    "ReputationFormatError",
    "ReputationPolicy",
]

FORMAT_VERSION = 1


class Offence(StrEnum):
    """What an executor did wrong. Stable strings: they are persisted and shown in reports."""

    WRONG_OUTPUT = "wrong_output"  # revealed a result outside the majority cluster
    BAD_REVEAL = "bad_reveal"  # reveal does not open its own signed commitment, or does not decrypt
    NO_REVEAL = "no_reveal"  # committed, then never revealed (the "last revealer" attack)
    TIMEOUT = "timeout"  # no commitment before its deadline
    CRASH = "crash"  # stream or connection died mid-job
    MALFORMED = "malformed"  # sent bytes that do not decode or violate the protocol
    ATTESTATION_FAILED = "attestation_failed"  # failed a fresh challenge


@dataclass(frozen=True)
class ReputationPolicy:
    """Tunables. Defaults: two wrong outputs within an hour ban; availability faults rarely do."""

    initial_score: float = 0.5
    reward: float = 0.05  # success: score += reward · (1 - score)
    penalty: Mapping[Offence, float] = field(
        default_factory=lambda: {
            Offence.WRONG_OUTPUT: 0.5,
            Offence.BAD_REVEAL: 0.25,
            Offence.NO_REVEAL: 0.7,
            Offence.TIMEOUT: 0.9,
            Offence.CRASH: 0.9,
            Offence.MALFORMED: 0.5,
            Offence.ATTESTATION_FAILED: 0.25,
        }
    )
    points: Mapping[Offence, float] = field(
        default_factory=lambda: {
            Offence.WRONG_OUTPUT: 1.0,
            Offence.BAD_REVEAL: 2.0,
            Offence.NO_REVEAL: 0.5,
            Offence.TIMEOUT: 0.25,
            Offence.CRASH: 0.25,
            Offence.MALFORMED: 1.0,
            Offence.ATTESTATION_FAILED: 2.0,
        }
    )
    ban_points: float = 1.5  # two wrong outputs within one half-life
    points_half_life_s: float = 3600.0
    ban_base_s: float = 60.0
    ban_max_s: float = 86400.0
    forgive_after_s: float = 86400.0  # each clean period of this length lowers the ban level by one
    max_evidence_per_peer: int = 16
    max_peers: int = 4096

    def ban_duration(self, level: int) -> float:
        """Ban length for the ``level``-th ban (0-based): base · 2^level, capped."""
        return min(self.ban_max_s, self.ban_base_s * (2.0 ** min(level, 62)))


@dataclass(frozen=True)
class EvidenceRecord:
    """Why a peer was penalised, with the signed statements that prove it when there are any.

    ``statement`` is the offender's own signed commitment (encoded message bytes, or b"" when the
    offence is an absence such as a timeout); ``counter`` holds the signed commitments of the
    majority it was measured against.
    """

    job_id: bytes
    offence: Offence
    at: float
    detail: str = ""
    statement: bytes = b""
    counter: tuple[bytes, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "offence": self.offence.value,
            "at_ms": _ms(self.at),
            "detail": self.detail,
            "statement": self.statement,
            "counter": list(self.counter),
        }

    @classmethod
    def from_wire(cls, raw: Any) -> EvidenceRecord:
        m = _map(raw, "evidence")
        return cls(
            job_id=_bytes(m, "job_id"),
            offence=_offence(m),
            at=_int(m, "at_ms") / 1000.0,
            detail=_str(m, "detail"),
            statement=_bytes(m, "statement"),
            counter=tuple(_bytes_list(m, "counter")),
        )


@dataclass(frozen=True)
class Penalty:
    """The consequence of one offence, for logs and reports."""

    score: float
    points: float
    banned_until: float | None  # set only when this offence caused a new ban


@dataclass
class PeerStanding:
    """Everything the book knows about one peer."""

    score: float
    points: float = 0.0
    points_at: float = 0.0  # when ``points`` was last brought up to date
    ban_level: int = 0
    banned_until: float = 0.0
    last_offence_at: float = 0.0
    last_seen: float = 0.0
    successes: int = 0
    offences: dict[Offence, int] = field(default_factory=dict)
    evidence: list[EvidenceRecord] = field(default_factory=list)

    def decayed_points(self, now: float, half_life: float) -> float:
        elapsed = max(0.0, now - self.points_at)
        return self.points * math.pow(0.5, elapsed / half_life) if half_life > 0 else self.points


class ReputationFormatError(ValueError):
    """Persisted reputation bytes did not decode; the caller should start from an empty book."""


class ReputationBook:
    """Scores and bans of every executor this node has worked with."""

    def __init__(self, policy: ReputationPolicy | None = None) -> None:
        self.policy = policy or ReputationPolicy()
        self._peers: dict[bytes, PeerStanding] = {}

    # --- queries -------------------------------------------------------------------------

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def peers(self) -> list[bytes]:
        return list(self._peers)

    def standing(self, peer_id: bytes) -> PeerStanding | None:
        return self._peers.get(peer_id)

    def score(self, peer_id: bytes, now: float) -> float:
        """The selection weight input in [0, 1]; 0 while banned; the initial score for strangers."""
        standing = self._peers.get(peer_id)
        if standing is None:
            return self.policy.initial_score
        self._forgive(standing, now)
        if standing.banned_until > now:
            return 0.0
        return standing.score

    def is_banned(self, peer_id: bytes, now: float) -> bool:
        standing = self._peers.get(peer_id)
        return standing is not None and standing.banned_until > now

    def banned_until(self, peer_id: bytes, now: float) -> float | None:
        standing = self._peers.get(peer_id)
        if standing is None or standing.banned_until <= now:
            return None
        return standing.banned_until

    def banned(self, now: float) -> set[bytes]:
        return {peer for peer, s in self._peers.items() if s.banned_until > now}

    def evidence(self, peer_id: bytes) -> list[EvidenceRecord]:
        standing = self._peers.get(peer_id)
        return list(standing.evidence) if standing else []

    # --- updates -------------------------------------------------------------------------

    def _get(self, peer_id: bytes, now: float) -> PeerStanding:
        standing = self._peers.get(peer_id)
        if standing is None:
            self._evict_if_full(now)
            standing = PeerStanding(score=self.policy.initial_score, points_at=now, last_seen=now)
            self._peers[peer_id] = standing
        standing.last_seen = max(standing.last_seen, now)
        return standing

    def _forgive(self, standing: PeerStanding, now: float) -> None:
        """Lower the ban level by one per full clean period since the last offence."""
        if standing.ban_level == 0 or self.policy.forgive_after_s <= 0:
            return
        clean_since = max(standing.last_offence_at, standing.banned_until)
        periods = int(max(0.0, now - clean_since) // self.policy.forgive_after_s)
        if periods > 0:
            standing.ban_level = max(0, standing.ban_level - periods)
            standing.last_offence_at = clean_since + periods * self.policy.forgive_after_s

    def record_success(self, peer_id: bytes, now: float) -> float:
        """A correct, timely result in the majority. Returns the new score."""
        standing = self._get(peer_id, now)
        self._forgive(standing, now)
        standing.successes += 1
        standing.score = min(1.0, standing.score + self.policy.reward * (1.0 - standing.score))
        return standing.score

    def record_offence(
        self, peer_id: bytes, offence: Offence, now: float, evidence: EvidenceRecord | None = None
    ) -> Penalty:
        """Penalise ``peer_id``; ban it when its decayed offence points reach the threshold."""
        policy = self.policy
        standing = self._get(peer_id, now)
        self._forgive(standing, now)
        standing.offences[offence] = standing.offences.get(offence, 0) + 1
        standing.score *= policy.penalty.get(offence, 0.5)
        standing.points = standing.decayed_points(now, policy.points_half_life_s) + policy.points.get(
            offence, 1.0
        )
        standing.points_at = now
        standing.last_offence_at = now
        if evidence is not None:
            standing.evidence.append(evidence)
            del standing.evidence[: -policy.max_evidence_per_peer or None]
        new_ban: float | None = None
        if standing.points >= policy.ban_points and standing.banned_until <= now:
            new_ban = now + policy.ban_duration(standing.ban_level)
            standing.banned_until = new_ban
            standing.ban_level += 1
            standing.points = 0.0  # the ban is the punishment; afterwards the peer starts clean
        return Penalty(score=standing.score, points=standing.points, banned_until=new_ban)

    def _evict_if_full(self, now: float) -> None:
        """Keep the book bounded: drop the least recently seen peer that is not banned."""
        if len(self._peers) < self.policy.max_peers:
            return
        unbanned = [(s.last_seen, p) for p, s in self._peers.items() if s.banned_until <= now]
        pool = unbanned or [(s.last_seen, p) for p, s in self._peers.items()]
        _, victim = min(pool)
        del self._peers[victim]

    # --- reporting -----------------------------------------------------------------------

    def summary(self, peer_id: bytes, now: float) -> dict[str, Any]:
        """A JSON-friendly view of one peer's standing (for the API and logs)."""
        standing = self._peers.get(peer_id)
        if standing is None:
            return {"score": self.policy.initial_score, "banned_until": None, "offences": {}}
        return {
            "score": round(self.score(peer_id, now), 6),
            "banned_until": self.banned_until(peer_id, now),
            "ban_level": standing.ban_level,
            "successes": standing.successes,
            "offences": {o.value: n for o, n in sorted(standing.offences.items())},
            "evidence": len(standing.evidence),
        }

    # --- persistence ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Canonical msgpack of the whole book (for the node's data dir)."""
        peers = []
        for peer_id, s in sorted(self._peers.items()):
            peers.append(
                {
                    "peer_id": peer_id,
                    "score_u": round(s.score * 1_000_000),
                    "points_m": round(s.points * 1000),
                    "points_at_ms": _ms(s.points_at),
                    "ban_level": s.ban_level,
                    "banned_until_ms": _ms(s.banned_until),
                    "last_offence_at_ms": _ms(s.last_offence_at),
                    "last_seen_ms": _ms(s.last_seen),
                    "successes": s.successes,
                    "offences": {o.value: n for o, n in s.offences.items()},
                    "evidence": [e.to_wire() for e in s.evidence],
                }
            )
        return encode({"v": FORMAT_VERSION, "peers": peers})

    @classmethod
    def from_bytes(cls, data: bytes, policy: ReputationPolicy | None = None) -> ReputationBook:
        """Load a persisted book; raises ReputationFormatError on anything malformed."""
        book = cls(policy)
        limits = Limits(max_size=64 << 20, max_array=max(4096, book.policy.max_peers))
        try:
            root = _map(decode(data, limits), "book")
            if root.get("v") != FORMAT_VERSION:
                raise ReputationFormatError(f"unsupported version {root.get('v')!r}")
            raw_peers = root.get("peers")
            if not isinstance(raw_peers, list):
                raise ReputationFormatError("peers must be a list")
            for raw in raw_peers[: book.policy.max_peers]:
                m = _map(raw, "peer")
                offences_raw = _map(m.get("offences"), "offences")
                offences: dict[Offence, int] = {}
                for name, count in offences_raw.items():
                    if not isinstance(count, int) or count < 0:
                        raise ReputationFormatError("offence counts must be non-negative ints")
                    offences[_offence({"offence": name})] = count
                evidence_raw = m.get("evidence")
                if not isinstance(evidence_raw, list):
                    raise ReputationFormatError("evidence must be a list")
                book._peers[_bytes(m, "peer_id")] = PeerStanding(
                    score=min(1.0, max(0.0, _int(m, "score_u") / 1_000_000)),
                    points=max(0.0, _int(m, "points_m") / 1000),
                    points_at=_int(m, "points_at_ms") / 1000,
                    ban_level=max(0, _int(m, "ban_level")),
                    banned_until=_int(m, "banned_until_ms") / 1000,
                    last_offence_at=_int(m, "last_offence_at_ms") / 1000,
                    last_seen=_int(m, "last_seen_ms") / 1000,
                    successes=max(0, _int(m, "successes")),
                    offences=offences,
                    evidence=[EvidenceRecord.from_wire(e) for e in evidence_raw][
                        -book.policy.max_evidence_per_peer :
                    ],
                )
        except CodecError as exc:
            raise ReputationFormatError(f"undecodable: {exc}") from None
        return book

    def merge_peers(self, peer_ids: Iterable[bytes], now: float) -> None:
        """Make sure every peer has a standing (so reports list strangers with the initial score)."""
        for peer_id in peer_ids:
            self._get(peer_id, now)


# --- small decoding helpers (each raises ReputationFormatError) ---------------------------


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _map(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ReputationFormatError(f"{what} must be a map")
    return raw


def _int(m: Mapping[str, Any], key: str) -> int:
    value = m.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ReputationFormatError(f"{key} must be an int")
    return value


def _str(m: Mapping[str, Any], key: str) -> str:
    value = m.get(key)
    if not isinstance(value, str):
        raise ReputationFormatError(f"{key} must be a str")
    return value


def _bytes(m: Mapping[str, Any], key: str) -> bytes:
    value = m.get(key)
    if not isinstance(value, bytes):
        raise ReputationFormatError(f"{key} must be bytes")
    return value


def _bytes_list(m: Mapping[str, Any], key: str) -> list[bytes]:
    value = m.get(key)
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise ReputationFormatError(f"{key} must be a list of bytes")
    return list(value)


def _offence(m: Mapping[str, Any]) -> Offence:
    try:
        return Offence(str(m.get("offence")))
    except ValueError:
        raise ReputationFormatError(f"unknown offence {m.get('offence')!r}") from None
