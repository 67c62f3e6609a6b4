"""Attestation gossip on ``veilnet/attest/1``: every bundle is appraised *before* it is forwarded.

The gossipsub topic validator runs the protocol's bundle appraiser (signature by the publishing
peer, expiry, epoch, evidence, policy, report-data binding). A rejected message is never
delivered or forwarded; it is counted by reason and by the peer that sent it, and charged to that
peer's score (:mod:`node.net.scoring`, one score per peer across every protocol; gossipsub's own
invalid-message penalty adds to it). A stale bundle (expired, an older epoch) is an *ignore*, not
a reject: it is dropped without charging anyone, since an honest relay forwards delayed copies.
A peer whose score falls below the graylist threshold is disconnected and banned; its messages
still queued are dropped before appraisal, so a 1,000-message batch costs a few appraisals.

Hostile input inside py-libp2p's Pubsub service tasks (issue 9: a message whose ``from`` is a
sha256 multihash and whose ``key`` is no protobuf PublicKey made the signature check raise and
stop the node) is contained by :meth:`AttestationGossip._guard_push`: whatever handling one
message raises is counted, charged to the forwarding peer and dropped.

Peer exchange (PRUNE with PX) is accepted only from peers with a positive score: attested peers
in the registry get a bonus, strangers start at zero (gossipsub's ``accept_px_threshold`` is
compared with ``>=``, so the threshold is set just above zero).

py-libp2p's defaults silently drop announce traffic (a 10 msg/s per-peer rate limit, 32-slot
queues, a 120 s heartbeat); the parameters below are chosen so a whole network's re-announce
wave is delivered. Gossip is still treated as lossy: bundles are re-announced on a timer and
fetched directly from each newly connected peer (``/veilnet/attest/1.0.0``, see
:mod:`node.attest.service`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.tools.anyio_service import background_trio_service

from node.metrics import Metrics
from node.net import guard as net_guard
from node.net.registry import Change, Registry, RegistryEntry
from node.net.scoring import Offence
from protocol.attestation.bundle import MAX_BUNDLE_SIZE
from protocol.identity import peer_id_to_text

if TYPE_CHECKING:
    # trio-stubs (pulled in by libp2p) shadow trio's own annotations and lack trio.TaskStatus.
    from trio_typing import TaskStatus

__all__ = ["ATTEST_TOPIC", "MAX_BUNDLE_BYTES", "Appraisal", "Appraise", "AttestationGossip"]

log = logging.getLogger("veilnet.gossip")

ATTEST_TOPIC = "veilnet/attest/1"
MAX_BUNDLE_BYTES = MAX_BUNDLE_SIZE  # the protocol's limit on one bundle's wire size
_APPRAISAL_THREADS = 2
# Reasons a bundle can fail just because it is old: an honest peer's previous bundle, delayed.
_STALENESS_REASONS = frozenset({"expired", "epoch_too_old"})
# Score bonus of a peer this node has verified (registry entry): makes its score positive, which
# peer exchange requires. Penalties of a few offences outweigh it.
ATTESTED_BONUS = 10.0
_LABELLED_PEERS = 256
_PX_THRESHOLD = 1e-6  # gossipsub accepts PX when score >= threshold; ours wants score > 0


@dataclass(frozen=True)
class Appraisal:
    """What appraising one bundle concluded, in the node's terms.

    ``entry`` is set when ``ok``; ``claimed_node``/``issued_at`` are whatever could be parsed from a
    refused bundle (used to decide whether the refusal should cost the peer its registry entry).
    """

    ok: bool
    reasons: tuple[str, ...] = ()
    detail: str = ""
    entry: RegistryEntry | None = None
    claimed_node: bytes | None = None
    issued_at: int | None = None


# (bundle bytes, authenticated origin peer id or None when relayed, now) -> Appraisal.
# Pure and thread-safe.
Appraise = Callable[[bytes, bytes | None, int], Appraisal]


class AttestGossipSub(GossipSub):
    """py-libp2p's GossipSub with two start-up costs removed and a mesh signal added.

    * No replay on subscription: py-libp2p sends a newly subscribed peer every message of the
      last ``gossip_window`` heartbeats, one RPC each. At start-up that was most of the publish
      RPCs a node sent (82 of 144 per node, 20 nodes) and every one repeated a bundle the
      connect-time pull and sync already fetch (``/veilnet/attest/1.0.0``). The node's own
      first announce, which the replay used to carry to its first peers, is published again
      once its mesh has a peer (:meth:`node.attest.service.AttestService.run_announcer`).
    * IDONTWANT only for messages of at least ``IDONTWANT_MIN_BYTES`` (go-libp2p's default
      threshold, 1 KiB): py-libp2p sends one for every message to every mesh peer, each its own
      RPC, which for a 600-byte bundle costs about what the duplicate it may prevent costs.
    * ``mesh_joined`` is set whenever a peer joins the mesh of any topic.
    """

    IDONTWANT_MIN_BYTES = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mesh_joined = trio.Event()

    async def send_recent_messages(self, peer_id: ID, topic: str) -> None:
        return

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        message = self.mcache.get(msg_id)
        if message is not None and len(message.data) < self.IDONTWANT_MIN_BYTES:
            return
        await super()._emit_idontwant_for_message(msg_id, topic_ids)

    def _notify_mesh_peer_added(self, peer_id: ID, topic: str) -> None:
        super()._notify_mesh_peer_added(peer_id, topic)
        self.mesh_joined.set()
        self.mesh_joined = trio.Event()

    def has_mesh_peers(self, topic: str) -> bool:
        return bool(self.mesh.get(topic))


def gossipsub_router(score_params: ScoreParams) -> AttestGossipSub:
    return AttestGossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=1,  # default 120 s: a new mesh would take minutes to form
        time_to_live=60,
        gossip_window=3,
        gossip_history=10,  # IWANT can fetch a missed announce for 10 heartbeats
        prune_back_off=10,  # a restarted peer may re-graft soon
        unsubscribe_back_off=5,
        score_params=score_params,
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=1000.0,  # default 10/s per forwarder drops re-announce waves
        max_pending_messages_per_peer=256,
        pending_messages_ttl=30.0,
    )


class AttestationGossip:
    """Owns the pubsub stack for the attestation topic and feeds the registry.

    ``appraise`` is the pure appraisal function; ``addrs_of`` maps a peer id to the multiaddrs we
    know for it (registry entries carry them so the job router can dial).
    """

    def __init__(
        self,
        host: IHost,
        appraise: Appraise,
        registry: Registry,
        metrics: Metrics,
        addrs_of: Callable[[bytes], tuple[str, ...]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._host = host
        self._appraise = appraise
        self.registry = registry
        self._addrs_of = addrs_of
        self._clock = clock
        self._limiter = trio.CapacityLimiter(_APPRAISAL_THREADS)
        guard = net_guard.guard_of(host) or net_guard.install(host, metrics=metrics)
        metrics.include(guard.metrics)
        self.scores = guard.scores
        self.scores.set_bonus(self._bonus)
        self._labelled: set[str] = set()
        self._validating: set[bytes] = set()  # ids of messages being pushed (validated, forwarded)
        self.ready = trio.Event()

        self.accepted = metrics.counter(
            "veilnet_bundles_accepted_total",
            "Bundles that passed appraisal, by source (gossip, pull)",
            ("source",),
        )
        self.rejected = metrics.counter(
            "veilnet_bundles_rejected_total", "Bundles refused, by reason", ("reason",)
        )
        self.rejected_by_peer = metrics.counter(
            "veilnet_bundles_rejected_by_peer_total", "Bundles refused, by the peer that sent them", ("peer",)
        )
        self.already_held = metrics.counter(
            "veilnet_bundles_already_held_total",
            "Relayed bundles not appraised again: the registry holds the same bytes, unexpired",
            ("source",),
        )
        self.messages_in = metrics.counter(
            "veilnet_gossip_messages_in_total", "Gossip messages received on the attestation topic"
        )
        self.messages_out = metrics.counter(
            "veilnet_gossip_messages_out_total", "Gossip messages this node published"
        )
        self.self_check_failures = metrics.counter(
            "veilnet_self_check_failures_total", "Times this node's own bundle failed its own policy"
        )
        self.removed = metrics.counter(
            "veilnet_registry_removals_total", "Registry entries dropped, by cause", ("cause",)
        )
        self.dropped = metrics.counter(
            "veilnet_gossip_messages_dropped_total",
            "Gossip messages dropped before appraisal or after their handling failed, by reason",
            ("reason",),
        )

        score_params = ScoreParams(
            # Each invalid message costs 10, decaying by 3 % per heartbeat (half-life ~23 s).
            p4_invalid_messages=TopicScoreParams(weight=10.0, cap=100.0, decay=0.97),
            p6_appl_slack_weight=1.0,
            p6_appl_slack_decay=1.0,
            app_specific_score_fn=self._app_score,
            gossip_threshold=-30.0,  # after 3 invalid bundles: no more IHAVE to/from the peer
            publish_threshold=-50.0,  # after 5: its messages are dropped unread
            graylist_threshold=-80.0,
            accept_px_threshold=_PX_THRESHOLD,  # PX only from peers with a positive score
        )
        self.router = gossipsub_router(score_params)
        self.pubsub = Pubsub(host, self.router, max_inbound_rpc_size=MAX_BUNDLE_BYTES + (64 << 10))
        self.pubsub.set_topic_validator(ATTEST_TOPIC, self._validate, is_async_validator=True)
        self._bridge_flood_penalties()
        self._push_msg = self.pubsub.push_msg
        self.pubsub.push_msg = self._guard_push  # type: ignore[method-assign,assignment]

    # ---------------------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            await self.pubsub.wait_until_ready()
            subscription = await self.pubsub.subscribe(ATTEST_TOPIC)
            self.ready.set()
            task_status.started()
            # Registry updates happen in the validator; delivered messages are only drained and
            # counted here so the bounded subscription channel never fills.
            while True:
                await subscription.get()

    async def publish(self, bundle: bytes) -> None:
        await self.ready.wait()
        await self.pubsub.publish(ATTEST_TOPIC, bundle)
        self.messages_out.inc()

    def has_mesh_peers(self) -> bool:
        """Whether a publish now reaches anyone directly (the attestation topic's mesh has a peer)."""
        return self.router.has_mesh_peers(ATTEST_TOPIC)

    async def wait_for_mesh_peer(self) -> None:
        """Return once the attestation topic's mesh has a peer."""
        await self.ready.wait()
        while not self.has_mesh_peers():
            await self.router.mesh_joined.wait()

    # --------------------------------------------------------------------------- validation

    async def _guard_push(self, forwarder: ID, message: rpc_pb2.Message) -> None:
        """Pubsub's per-message entry (run as a Pubsub service task): nothing one message does may
        raise out of it, a banned forwarder's messages are dropped unread, and a copy of a message
        that is still being validated is dropped.

        py-libp2p marks a message seen only once its validation has finished, so every copy that
        arrived from other mesh peers meanwhile (our validator appraises in a thread) was validated
        again and forwarded again, each to the whole mesh: on 20 nodes starting together, ~28
        validations per node for 20 bundles, and the extra forwards fed further copies. Copies
        carry the same origin-signed data, so they would get the same verdict.
        """
        if forwarder == self._host.get_id():
            await self._push_msg(forwarder, message)  # our own publish: errors are ours to see
            return
        peer = forwarder.to_bytes()
        if self.scores.is_banned(peer):
            self.dropped.inc(reason="banned")
            return
        try:
            message_id = self.pubsub.get_message_id(message)
            if message_id in self._validating:
                self.dropped.inc(reason="duplicate")
                return
            self._validating.add(message_id)
            try:
                await self._push_msg(forwarder, message)
            finally:
                self._validating.discard(message_id)
        except Exception as exc:
            self.dropped.inc(reason="malformed")
            self.scores.penalise(peer, Offence.INVALID_MESSAGE)
            log.info("dropped a gossip message from %s: %s: %s", _text(peer), type(exc).__name__, exc)

    async def _validate(self, forwarder: ID, message: rpc_pb2.Message) -> bool:
        if forwarder == self._host.get_id():
            return True  # our own announcement; the node appraises it before publishing
        if self.scores.is_banned(forwarder.to_bytes()):
            self.dropped.inc(reason="banned")  # graylisted while this message waited
            return False
        self.messages_in.inc()
        origin = bytes(message.from_id)
        return await self.accept(bytes(message.data), origin, forwarder=forwarder.to_bytes(), source="gossip")

    async def accept(self, bundle: bytes, sender: bytes | None, *, forwarder: bytes, source: str) -> bool:
        """Appraise ``bundle`` claimed by ``sender`` (the authenticated origin) and update the registry.

        ``sender`` is None for a bundle relayed by a sync (it is still signed by its node, but no
        transport vouches for who published it). ``forwarder`` is the peer that handed it to us
        (penalised on refusal). Returns whether the bundle was accepted.
        """
        if len(bundle) > MAX_BUNDLE_BYTES:
            appraisal = Appraisal(ok=False, reasons=("malformed",), detail=f"bundle of {len(bundle)} bytes")
        else:
            # Queue for an appraisal thread here, so a bundle whose forwarder was banned while it
            # waited is dropped unappraised (a flood's queued bundles cost nothing once it is cut off).
            async with self._limiter:
                if source != "self" and self.scores.is_banned(forwarder):
                    self.dropped.inc(reason="banned")
                    return False
                now = int(self._clock())
                appraisal = await trio.to_thread.run_sync(self._safe_appraise, bundle, sender, now)
        if appraisal.ok and appraisal.entry is not None:
            entry = appraisal.entry
            if source == "sync" and entry.peer_id == self._host.get_id().to_bytes():
                return True  # our own bundle, relayed back: our entry comes from our self-check
            addrs = tuple(sorted(set(entry.addrs) | set(self._addrs_of(entry.peer_id))))
            entry = replace(entry, addrs=addrs, verified_at=self._clock())
            change = self.registry.upsert(entry, relayed=sender is None)
            self.accepted.inc(source=source)
            if change is Change.ADDED:
                log.debug("registry: added %s via %s", entry.peer_id_text, source)
            return True
        if source == "self" and sender is not None:
            self.self_check_failures.inc()
            log.error(
                "own bundle refused by own policy: %s — %s", ",".join(appraisal.reasons), appraisal.detail
            )
            self.registry.remove(sender, "own bundle refused")
            return False
        self._refused(appraisal, sender=sender, forwarder=forwarder, source=source)
        return False

    async def accept_relayed(self, bundles: list[bytes], *, forwarder: bytes, source: str) -> None:
        """Bundles another peer relays (a sync answer: up to 256, signed by their own nodes).

        A bundle whose exact bytes the registry already holds, unexpired, is skipped: appraising it
        again changes nothing. Every sync used to re-appraise all of them; on 20 loaded nodes that
        was 7,132 appraisals against 1,821 for gossip in 37 s, most of the nodes' CPU.
        """
        held = {entry.bundle_digest for entry in self.registry.attested() if entry.bundle_digest}
        for bundle in bundles:
            if bundle_digest(bundle) in held:
                self.already_held.inc(source=source)
                continue
            await self.accept(bundle, None, forwarder=forwarder, source=source)

    def _safe_appraise(self, bundle: bytes, sender: bytes | None, now: int) -> Appraisal:
        try:
            return self._appraise(bundle, sender, now)
        except Exception as exc:  # an appraiser bug must not become an accepted bundle or a crash
            log.exception("appraiser raised on a bundle from %s", _text(sender or b""))
            return Appraisal(ok=False, reasons=("malformed",), detail=f"appraiser error: {exc}")

    def _refused(self, appraisal: Appraisal, *, sender: bytes | None, forwarder: bytes, source: str) -> None:
        reasons = appraisal.reasons or ("malformed",)
        for reason in reasons:
            self.rejected.inc(reason=reason)
        forwarder_text = _text(forwarder)
        self.rejected_by_peer.inc(peer=self._peer_label(forwarder_text))
        if not set(reasons) <= _STALENESS_REASONS:  # stale copies are ignored, not held against anyone
            self.scores.penalise(forwarder, Offence.REFUSED_BUNDLE)
        log.warning(
            "refused a bundle from %s via %s (%s): %s%s",
            _text(sender or appraisal.claimed_node or b""),
            source,
            forwarder_text,
            ",".join(reasons),
            f" — {appraisal.detail}" if appraisal.detail else "",
        )
        # The peer itself presented a bundle that fails: it loses its entry, unless the refusal is
        # only that this bundle is older than the one we hold (a delayed copy). A relayed bundle
        # (no sender) never costs its node anything: the relay may be the one lying.
        if sender is None:
            return
        current = self.registry.get(sender)
        if current is None:
            return
        stale = set(reasons) <= _STALENESS_REASONS or (
            appraisal.issued_at is not None and appraisal.issued_at < current.issued_at
        )
        claimed = appraisal.claimed_node
        if not stale and (claimed is None or claimed == sender):
            self.registry.remove(sender, f"new bundle refused: {','.join(reasons)}")
            self.removed.inc(cause="refused")

    def _peer_label(self, peer_text: str) -> str:
        """A per-peer metric label, for at most ``_LABELLED_PEERS`` peers: identities an attacker
        rotates through must not grow the metrics without bound; the rest count as ``other``."""
        if peer_text in self._labelled or len(self._labelled) < _LABELLED_PEERS:
            self._labelled.add(peer_text)
            return peer_text
        return "other"

    # -------------------------------------------------------------------------------- scores

    def _bridge_flood_penalties(self) -> None:
        """Gossipsub's IHAVE/IWANT rate limits penalise only its own score; make each hit a flood
        offence in the node-wide score too, so a control-message flood can end in a ban."""
        scorer = self.router.scorer
        if scorer is None:
            return
        for name in ("penalize_iwant_spam", "penalize_ihave_spam"):
            original = getattr(scorer, name)

            def charged(
                peer: ID, amount: float = 5.0, _original: Callable[[ID, float], None] = original
            ) -> None:
                _original(peer, amount)
                self.scores.penalise(peer.to_bytes(), Offence.FLOOD)

            setattr(scorer, name, charged)

    def _bonus(self, peer: bytes) -> float:
        return ATTESTED_BONUS if self.registry.get(peer) is not None else 0.0

    def _app_score(self, peer_id: ID) -> float:
        return self.scores.score(peer_id.to_bytes())

    def penalty(self, peer: bytes) -> float:
        return self.scores.penalty(peer)


def bundle_digest(bundle: bytes) -> str:
    return hashlib.sha256(bundle).hexdigest()


def _text(peer: bytes) -> str:
    try:
        return peer_id_to_text(peer)
    except Exception:
        return peer.hex()
