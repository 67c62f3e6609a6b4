"""The attested-peer registry: who, right now, has shown valid TEE evidence to *this* node.

Entries are only ever created from a bundle this node appraised itself (gossip validator or a
direct pull); nothing here trusts another peer's opinion. An entry disappears when its bundle
expires or when the same peer presents a newer bundle that fails appraisal. The job router reads
it through :meth:`Registry.attested` and :meth:`Registry.get`.

A removed entry (a failed liveness check, a refused new bundle) leaves a *departure* note: a
bundle that another peer relays in a sync comes back only if it is newer than the removed one.
Otherwise two survivors re-admitted a killed node from each other's syncs for as long as its
bundle lived (each sync just after its own liveness round, while the other still held it). The
peer itself (gossip from it, a pull from it) is always heard: it is alive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

import trio

from protocol.identity import peer_id_from_text, peer_id_to_text

__all__ = ["Change", "Registry", "RegistryEntry"]

log = logging.getLogger("veilnet.registry")

_DEPARTED_MAX = 4096  # departure notes kept (oldest dropped first)


class Change(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    REFRESHED = "refreshed"  # same bundle seen again
    REMOVED = "removed"
    EXPIRED = "expired"


@dataclass(frozen=True)
class RegistryEntry:
    """One attested peer, as this node verified it."""

    peer_id: bytes  # binary libp2p peer id (Ed25519, 38 bytes)
    addrs: tuple[str, ...]  # multiaddrs known for the peer (from the peerstore), may be empty
    kind: str  # CPU evidence kind: "simulated", "tdx", "sev-snp"
    label: str  # human-readable TEE label, e.g. "SIMULATED — not secure"
    measurement: str  # hex of the CPU measurement the policy allowed
    models: tuple[str, ...]  # model ids the peer serves
    epoch: int
    issued_at: int
    expires_at: int  # unix seconds; the entry is dropped after this
    enc_pubkey: bytes  # the peer's X25519 job key for this epoch (seal jobs to this)
    verified_at: float  # unix time this node accepted the bundle
    tcb_status: str = ""
    advisories: tuple[str, ...] = ()
    gpu_kinds: tuple[str, ...] = ()
    bundle_digest: str = ""  # hex SHA-256 of the bundle bytes
    bundle: bytes = field(default=b"", repr=False)  # the verified bundle, as received

    @property
    def peer_id_text(self) -> str:
        return peer_id_to_text(self.peer_id)

    @property
    def simulated(self) -> bool:
        return self.kind == "simulated"

    def to_json(self) -> dict[str, Any]:
        """The API view: bytes as hex, no raw bundle."""
        data = asdict(self)
        data.pop("bundle")
        data["peer_id"] = self.peer_id_text
        data["enc_pubkey"] = self.enc_pubkey.hex()
        data["addrs"] = list(self.addrs)
        data["models"] = list(self.models)
        data["advisories"] = list(self.advisories)
        data["gpu_kinds"] = list(self.gpu_kinds)
        data["simulated"] = self.simulated
        return data

    def is_newer_than(self, other: RegistryEntry) -> bool:
        return (self.epoch, self.issued_at) > (other.epoch, other.issued_at)


Listener = Callable[[Change, RegistryEntry], None]


class Registry:
    """Attested peers keyed by binary peer id. Not thread-safe: use from the trio thread only."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[bytes, RegistryEntry] = {}
        # peer id → (epoch, issued_at, expires_at) of its removed entry (see the module docstring)
        self._departed: dict[bytes, tuple[int, int, int]] = {}
        self._clock = clock
        self._listeners: list[Listener] = []
        self._changed = trio.Event()

    # -------------------------------------------------------------------------------- reading

    def get(self, peer_id: bytes | str) -> RegistryEntry | None:
        """The live entry for a peer (binary id or base58 text), or None if absent or expired."""
        key = peer_id_from_text(peer_id) if isinstance(peer_id, str) else peer_id
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry

    def attested(self, model_id: str | None = None) -> list[RegistryEntry]:
        """Every live entry (serving ``model_id`` if given), in a stable order (by peer id)."""
        now = self._clock()
        return [
            entry
            for key, entry in sorted(self._entries.items())
            if entry.expires_at > now and (model_id is None or model_id in entry.models)
        ]

    def by_enc_pubkey(self, enc_pubkey: bytes) -> RegistryEntry | None:
        for entry in self.attested():
            if entry.enc_pubkey == enc_pubkey:
                return entry
        return None

    def __len__(self) -> int:
        return len(self.attested())

    def __contains__(self, peer_id: object) -> bool:
        return isinstance(peer_id, bytes | str) and self.get(peer_id) is not None

    def peer_ids(self) -> set[bytes]:
        return {entry.peer_id for entry in self.attested()}

    # ------------------------------------------------------------------------------- changing

    def upsert(self, entry: RegistryEntry, *, relayed: bool = False) -> Change | None:
        """Add or replace a peer's entry. An older bundle never replaces a newer one (replays).

        ``relayed``: another peer handed the bundle over (a sync), not the peer itself; it does
        not bring back a removed peer unless it is newer than the removed entry.
        """
        departed = self._departed.get(entry.peer_id)
        if departed is not None:
            if relayed and (entry.epoch, entry.issued_at) <= departed[:2]:
                return None
            del self._departed[entry.peer_id]
        current = self._entries.get(entry.peer_id)
        if current is not None and current.expires_at > self._clock():
            if entry.bundle_digest and entry.bundle_digest == current.bundle_digest:
                # The same bundle again (gossip and pull, or a duplicate): keep when it was first
                # verified, take any newly learnt addresses.
                entry = replace(entry, verified_at=current.verified_at)
                self._entries[entry.peer_id] = entry
                return self._notify(Change.REFRESHED, entry)
            if current.is_newer_than(entry):
                return None
            self._entries[entry.peer_id] = entry
            return self._notify(Change.UPDATED, entry)
        self._entries[entry.peer_id] = entry
        log.info(
            "attested peer %s (%s, models %s)", entry.peer_id_text, entry.kind, list(entry.models) or "none"
        )
        return self._notify(Change.ADDED, entry)

    def update_addrs(self, peer_id: bytes, addrs: Iterable[str]) -> None:
        current = self._entries.get(peer_id)
        addrs_tuple = tuple(sorted(set(addrs)))
        if current is not None and addrs_tuple and addrs_tuple != current.addrs:
            self._entries[peer_id] = replace(current, addrs=addrs_tuple)

    def remove(self, peer_id: bytes, reason: str) -> bool:
        entry = self._entries.pop(peer_id, None)
        if entry is None:
            return False
        log.warning("removed attested peer %s: %s", entry.peer_id_text, reason)
        self._note_departure(entry)
        self._notify(Change.REMOVED, entry)
        return True

    def departed(self, peer_id: bytes) -> bool:
        """Whether ``peer_id`` was removed and nothing has brought it back since."""
        return peer_id in self._departed

    def _note_departure(self, entry: RegistryEntry) -> None:
        now = self._clock()
        self._departed.pop(entry.peer_id, None)
        self._departed[entry.peer_id] = (entry.epoch, entry.issued_at, entry.expires_at)
        if len(self._departed) > _DEPARTED_MAX:  # relays of an expired bundle fail appraisal anyway
            self._departed = {p: note for p, note in self._departed.items() if note[2] > now}
            while len(self._departed) > _DEPARTED_MAX:
                del self._departed[next(iter(self._departed))]

    def expire(self) -> list[RegistryEntry]:
        now = self._clock()
        gone = [entry for entry in self._entries.values() if entry.expires_at <= now]
        for entry in gone:
            del self._entries[entry.peer_id]
            log.info("attestation of %s expired", entry.peer_id_text)
            self._notify(Change.EXPIRED, entry)
        return gone

    async def run_expiry(self, interval: float = 1.0) -> None:
        """Drop expired entries on time (a long-running service)."""
        while True:
            self.expire()
            await trio.sleep(interval)

    # ------------------------------------------------------------------------------ observing

    def add_listener(self, listener: Listener) -> None:
        """``listener(change, entry)`` runs synchronously on every change; it must not block."""
        self._listeners.append(listener)

    async def wait_changed(self) -> None:
        """Return after the next change (for loops that react to the registry)."""
        await self._changed.wait()

    def _notify(self, change: Change, entry: RegistryEntry) -> Change:
        for listener in list(self._listeners):
            try:
                listener(change, entry)
            except Exception:
                log.exception("registry listener failed")
        self._changed.set()
        self._changed = trio.Event()
        return change
