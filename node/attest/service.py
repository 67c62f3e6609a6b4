"""This node's own attestation: epoch job keys, building and announcing its bundle, and fetching peers'.

Every epoch (``epoch_seconds`` from the testnet config) the node makes a fresh X25519 job key;
the previous epoch's key is kept so jobs sealed just before the boundary still open. The bundle
binding the key, the models and the evidence is published on gossip at start, at every epoch
change and on a re-announce timer shorter than the bundle's lifetime (gossip is lossy).

Gossip only reaches peers that are in the mesh when it is sent, so a node that just connected
would wait up to a whole re-announce period to learn its peers. Each connection therefore also
pulls the peer's current bundle (or, at most every 2 s, a sync of every bundle it knows) directly
over ``/veilnet/attest/1.0.0`` and appraises it exactly as a gossiped one. The start bundle is
published once the mesh has a peer (see :meth:`AttestService._publish_once_meshed`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import nacl.public
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from node.attest.evidence_sources import EvidenceSource, build_signed_bundle
from node.metrics import Metrics
from node.net.gossip import MAX_BUNDLE_BYTES, AttestationGossip
from node.net.host import read_frame, remote_peer_id, write_frame
from protocol import codec
from protocol.identity import Identity
from protocol.numerics import EngineEntry, EngineIdentity
from protocol.sealing import EncryptionKeyPair

__all__ = [
    "ATTEST_PROTOCOL_ID",
    "AttestService",
    "EpochKey",
    "EpochKeys",
    "epoch_of",
]

log = logging.getLogger("veilnet.attest")

ATTEST_PROTOCOL_ID = "/veilnet/attest/1.0.0"
_REQUEST_LIMITS = codec.Limits(max_size=256, max_depth=2, max_str=64, max_bin=0, max_array=0, max_map=4)
MAX_SYNC_BUNDLES = 256
MAX_SYNC_BYTES = 4 << 20
_RESPONSE_LIMITS = codec.Limits(
    max_size=MAX_SYNC_BYTES + MAX_BUNDLE_BYTES + 4096,
    max_depth=3,
    max_bin=MAX_BUNDLE_BYTES,
    max_array=MAX_SYNC_BUNDLES,
    max_map=4,
)
_PULL_TIMEOUT = 5.0
_PULL_PARALLEL = 8
_REPULL_FAST_INTERVAL = 2.0  # while the node is young and peers are still arriving
_REPULL_FAST_PHASE = 60.0
_REPULL_INTERVAL = 15.0


def epoch_of(now: float, epoch_seconds: int) -> int:
    return int(now) // epoch_seconds


# ---------------------------------------------------------------------------------- epoch keys


@dataclass(frozen=True)
class EpochKey:
    """One epoch's X25519 job key. The private half never leaves this process (nor, on real
    hardware, the TEE); a restart makes new keys."""

    epoch: int
    private_key: bytes = field(repr=False)
    public_key: bytes

    @classmethod
    def generate(cls, epoch: int) -> EpochKey:
        secret = nacl.public.PrivateKey.generate()
        return cls(epoch=epoch, private_key=bytes(secret), public_key=bytes(secret.public_key))

    def nacl_private_key(self) -> nacl.public.PrivateKey:
        return nacl.public.PrivateKey(self.private_key)

    def key_pair(self) -> EncryptionKeyPair:
        """The same key as :mod:`protocol.sealing` takes it."""
        return EncryptionKeyPair(secret=self.private_key, public=self.public_key)


class EpochKeys:
    """The current and previous epoch job keys; executors look keys up by the public key a job names."""

    def __init__(self) -> None:
        self.current: EpochKey | None = None
        self.previous: EpochKey | None = None

    def rotate(self, epoch: int) -> EpochKey:
        if self.current is not None and self.current.epoch == epoch:
            return self.current
        self.previous = self.current
        self.current = EpochKey.generate(epoch)
        return self.current

    def for_public_key(self, public_key: bytes) -> EpochKey | None:
        for key in (self.current, self.previous):
            if key is not None and key.public_key == public_key:
                return key
        return None

    def for_epoch(self, epoch: int) -> EpochKey | None:
        for key in (self.current, self.previous):
            if key is not None and key.epoch == epoch:
                return key
        return None

    def live(self) -> list[EpochKey]:
        return [key for key in (self.current, self.previous) if key is not None]


# --------------------------------------------------------------------------------- the service


class AttestService:
    """Keeps this node's bundle fresh and announced, and pulls peers' bundles on connect.

    ``source`` is None on a node that does not attest (a client-only node): it then announces
    nothing but still pulls and appraises its peers' bundles.
    """

    def __init__(
        self,
        *,
        host: IHost,
        identity: Identity,
        source: EvidenceSource | None,
        gossip: AttestationGossip,
        metrics: Metrics,
        epoch_seconds: int,
        reannounce_seconds: float,
        bundle_lifetime_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.identity = identity
        self.source = source
        self.gossip = gossip
        self.epoch_seconds = epoch_seconds
        self.reannounce_seconds = reannounce_seconds
        self.bundle_lifetime_seconds = bundle_lifetime_seconds
        self.clock = clock
        self.epoch_keys = EpochKeys()
        self.models: list[str] = []
        self.engines: dict[str, EngineIdentity] = {}  # model id → the engine computing it
        self.bundle: bytes | None = None
        self.bundle_issued_at: int | None = None
        self.announced_at: float | None = None  # unix time of the last publish (float, for latency)
        self.self_check_ok: bool | None = None  # did our own policy accept our last bundle?
        self._reannounce_now = trio.Event()
        self._pull_send, self._pull_receive = trio.open_memory_channel[ID](256)
        self._no_bundle: set[ID] = set()
        self._pulling: set[ID] = set()  # peers with a pull in flight
        self._last_sync: float | None = None  # trio time the last sync pull began
        self.announces = metrics.counter(
            "veilnet_bundle_announces_total", "Bundles this node published, by trigger", ("trigger",)
        )
        self.pulls = metrics.counter(
            "veilnet_bundle_pulls_total", "Direct bundle fetches from peers, by outcome", ("outcome",)
        )
        metrics.gauge(
            "veilnet_epoch", "Current attestation epoch", lambda: epoch_of(self.clock(), self.epoch_seconds)
        )

    # -------------------------------------------------------------------------------- models

    def set_models(self, models: Sequence[str], engines: Mapping[str, EngineIdentity] | None = None) -> None:
        """Declare the served models and the engine computing each; the next bundle lists and binds
        them (announced right away if running)."""
        unique = sorted(set(models))
        merged = {**self.engines, **(engines or {})}
        merged = {m: e for m, e in merged.items() if m in unique}
        if unique != self.models or merged != self.engines:
            self.models = unique
            self.engines = merged
            self._reannounce_now.set()

    def request_reannounce(self) -> None:
        self._reannounce_now.set()

    # ---------------------------------------------------------------------------- announcing

    def build(self, now: float) -> bytes:
        """Build (not publish) this node's bundle for the epoch of ``now``; rotates keys at a boundary."""
        assert self.source is not None
        epoch = epoch_of(now, self.epoch_seconds)
        key = self.epoch_keys.rotate(epoch)
        issued_at = int(now)
        return build_signed_bundle(
            self.source,
            self.identity,
            key.public_key,
            epoch=epoch,
            issued_at=issued_at,
            expires_at=min(issued_at + self.bundle_lifetime_seconds, (epoch + 2) * self.epoch_seconds),
            epoch_seconds=self.epoch_seconds,
            models=self.models,
            addrs=[str(addr) for addr in self.host.get_addrs()][:16],
            engines=[EngineEntry(m, e) for m, e in sorted(self.engines.items())],
        )

    async def announce(self, trigger: str, *, publish: bool = True) -> None:
        """Build, self-check and (with ``publish``) publish a fresh bundle."""
        if self.source is None:
            return
        now = self.clock()
        bundle = await trio.to_thread.run_sync(self.build, now)
        self.bundle, self.bundle_issued_at = bundle, int(now)
        own_id = self.identity.peer_id
        accepted = await self.gossip.accept(bundle, own_id, forwarder=own_id, source="self")
        if not accepted and self.self_check_ok is not False:
            log.error("THIS NODE'S OWN BUNDLE FAILS ITS OWN POLICY; peers will refuse it too (reason above)")
        self.self_check_ok = accepted
        self.announced_at = self.clock()  # set before sending: propagation is measured from here
        if publish:
            await self.gossip.publish(bundle)
        self.announces.inc(trigger=trigger)
        log.debug(
            "announced bundle (%s, %d bytes, epoch %d)",
            trigger,
            len(bundle),
            epoch_of(now, self.epoch_seconds),
        )

    async def run_announcer(self) -> None:
        if self.source is None:
            return
        meshed = self.gossip.has_mesh_peers()
        await self.announce("start", publish=meshed)
        async with trio.open_nursery() as nursery:
            if not meshed:
                nursery.start_soon(self._publish_once_meshed)
            await self._announce_forever()

    async def _publish_once_meshed(self) -> None:
        """Publish the start bundle when the first mesh peer arrives.

        A node builds its first bundle before it has peers, and a message published to an empty
        mesh reaches others only later and piecemeal (gossip IHAVE, py-libp2p's replay to each
        new subscriber, which :class:`node.net.gossip.AttestGossipSub` no longer does). Peers
        that connect pull the bundle directly, but a pulled bundle is not forwarded: this
        publish is what carries a newcomer's bundle across an established network at once
        rather than at the next re-announce.
        """
        await self.gossip.wait_for_mesh_peer()
        if self.bundle is not None:
            await self.gossip.publish(self.bundle)
            self.announces.inc(trigger="joined")

    async def _announce_forever(self) -> None:
        last = self.clock()
        while True:
            now = self.clock()
            next_epoch_at = (epoch_of(now, self.epoch_seconds) + 1) * self.epoch_seconds
            wait = max(0.05, min(next_epoch_at - now, last + self.reannounce_seconds - now))
            with trio.move_on_after(wait):
                await self._reannounce_now.wait()
            self._reannounce_now = trio.Event()
            now = self.clock()
            current = self.epoch_keys.current
            if current is None or epoch_of(now, self.epoch_seconds) != current.epoch:
                trigger = "epoch"
            elif now - last >= self.reannounce_seconds - 0.05:
                trigger = "timer"
            else:
                trigger = "models"
            await self.announce(trigger)
            last = self.clock()

    # ------------------------------------------------------------------------- pull protocol

    async def handle_pull(self, stream: INetStream) -> None:
        """Serve ``/veilnet/attest/1.0.0``: one request frame in, one response frame out.

        ``get-bundle`` answers with our current bundle; ``sync`` also lists the bundles of the
        peers we attested (anti-entropy: a newcomer learns the network from any one member).
        """
        request = codec.decode(await read_frame(stream, _REQUEST_LIMITS.max_size), _REQUEST_LIMITS)
        if (
            not isinstance(request, dict)
            or set(request) != {"v", "type"}
            or request["v"] != 1
            or request["type"] not in ("get-bundle", "sync")
        ):
            raise codec.CodecError("schema", "expected {v: 1, type: 'get-bundle' | 'sync'}")
        response: dict[str, object] = {"v": 1, "bundle": self.bundle}
        if request["type"] == "sync":
            response["known"] = self._known_bundles()
        await write_frame(stream, codec.encode(response))

    def _known_bundles(self) -> list[bytes]:
        own = self.identity.peer_id
        known: list[bytes] = []
        budget = MAX_SYNC_BYTES - (len(self.bundle) if self.bundle else 0)
        for entry in self.gossip.registry.attested():
            if entry.peer_id == own or not entry.bundle:
                continue
            if len(known) >= MAX_SYNC_BUNDLES or len(entry.bundle) > budget:
                break  # the rest arrives by gossip or from another peer's sync
            known.append(entry.bundle)
            budget -= len(entry.bundle)
        return known

    def on_connected(self, peer: ID) -> None:
        with contextlib.suppress(trio.WouldBlock):  # when full, the periodic sweep catches up
            self._pull_send.send_nowait(peer)

    async def run_puller(self) -> None:
        """Pull from each newly connected peer, and sweep (below).

        A connection brings a sync (the peer's bundle and every bundle it knows) unless this node
        began one less than ``_REPULL_FAST_INTERVAL`` ago; then it brings only the peer's own
        bundle, and nothing when the registry already holds that, fresh. A newcomer's first
        connection thus teaches it the network, and the dozen connections its DHT join opens
        within the next second do not each fetch the same list again (on 20 nodes starting
        together that was ~330 already-held bundles per node, one stream each way per
        connection).
        """
        limiter = trio.CapacityLimiter(_PULL_PARALLEL)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep, nursery, limiter)
            async for peer in self._pull_receive:
                sync = self._sync_due()
                if peer in self._pulling or not (sync or self._stale(peer, self.clock())):
                    continue
                self._start_pull(nursery, limiter, peer, sync)

    async def _sweep(self, nursery: trio.Nursery, limiter: trio.CapacityLimiter) -> None:
        """Anti-entropy: fetch from connected peers missing from the registry (or close to expiry),
        and sync with one random connected peer, often while the node is young, then calmly.

        Gossip only reaches current mesh members and connect-time pulls can time out on a loaded
        machine; this sweep is what guarantees the registry converges.
        """
        started = trio.current_time()
        while True:
            young = trio.current_time() - started < _REPULL_FAST_PHASE
            await trio.sleep(_REPULL_FAST_INTERVAL if young else _REPULL_INTERVAL)
            now = self.clock()
            connected = [peer for peer in self.host.get_connected_peers() if peer not in self._no_bundle]
            for peer in connected:
                if self._stale(peer, now) and peer not in self._pulling:
                    self._start_pull(nursery, limiter, peer, False)
            idle = [peer for peer in connected if peer not in self._pulling]
            if idle:
                self._start_pull(nursery, limiter, random.choice(idle), True)

    def _stale(self, peer: ID, now: float) -> bool:
        """Missing from the registry, or its entry expires within two re-announce periods."""
        entry = self.gossip.registry.get(peer.to_bytes())
        return entry is None or entry.expires_at - now < 2 * self.reannounce_seconds

    def _sync_due(self) -> bool:
        return self._last_sync is None or trio.current_time() - self._last_sync >= _REPULL_FAST_INTERVAL

    def _start_pull(self, nursery: trio.Nursery, limiter: trio.CapacityLimiter, peer: ID, sync: bool) -> None:
        """One pull per peer at a time, whoever asks (a connection, the sweep)."""
        self._pulling.add(peer)
        if sync:
            self._last_sync = trio.current_time()
        nursery.start_soon(self._pull_limited, peer, limiter, sync)

    async def _pull_limited(self, peer: ID, limiter: trio.CapacityLimiter, sync: bool) -> None:
        try:
            async with limiter:
                await self.pull(peer, sync=sync)
        finally:
            self._pulling.discard(peer)

    async def pull(self, peer: ID, *, sync: bool = False) -> bool | None:
        """Fetch and appraise ``peer``'s bundle (and with ``sync``, the bundles it knows).

        Returns whether the peer's own bundle was accepted; None when it has none or was
        unreachable.
        """
        if peer == self.host.get_id():
            return None
        with trio.move_on_after(_PULL_TIMEOUT):
            try:
                stream = await self.host.new_stream(peer, [TProtocol(ATTEST_PROTOCOL_ID)])
            except Exception as exc:
                self.pulls.inc(outcome="unreachable")
                log.debug("pull from %s: no stream: %s", peer, exc)
                return None
            try:
                request = {"v": 1, "type": "sync" if sync else "get-bundle"}
                await write_frame(stream, codec.encode(request))
                response = codec.decode(await read_frame(stream, _RESPONSE_LIMITS.max_size), _RESPONSE_LIMITS)
                await stream.close()
            except Exception as exc:
                self.pulls.inc(outcome="bad_response")
                log.info("pull from %s failed: %s", peer, exc)
                await _reset_quietly(stream)
                return None
            expected_keys = {"v", "bundle", "known"} if sync else {"v", "bundle"}
            known = response.get("known", []) if isinstance(response, dict) else None
            bundle = response.get("bundle") if isinstance(response, dict) else None
            if (
                not isinstance(response, dict)
                or response.get("v") != 1
                or set(response) != expected_keys
                or not (bundle is None or isinstance(bundle, bytes))
                or not isinstance(known, list)
                or not all(isinstance(item, bytes) for item in known)
            ):
                self.pulls.inc(outcome="bad_response")
                return None
            sender = remote_peer_id(stream).to_bytes()
            # Signed by their own nodes; relayed, so no origin to check.
            await self.gossip.accept_relayed(known, forwarder=sender, source="sync")
            if bundle is None:
                self.pulls.inc(outcome="no_bundle")
                self._no_bundle.add(peer)  # a client-only peer: do not sweep it again
                return None
            accepted = await self.gossip.accept(bundle, sender, forwarder=sender, source="pull")
            self.pulls.inc(outcome="accepted" if accepted else "refused")
            return accepted
        self.pulls.inc(outcome="timeout")
        return None


async def _reset_quietly(stream: INetStream) -> None:
    with trio.CancelScope(deadline=trio.current_time() + 1.0, shield=True):
        try:
            await stream.reset()
        except Exception as exc:
            log.debug("reset failed: %s", exc)
