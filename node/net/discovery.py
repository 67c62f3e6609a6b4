"""Finding peers: bootstrap addresses, a Kademlia DHT in server mode, optional mDNS, and model providers.

A node that knows a single bootstrap peer must end up connected to the rest, and gossip mesh
quality depends on how many peers a node is connected to (a sparse chain gave multi-second p95
latencies in our measurements). So besides libp2p's random walk we run a small connection
keeper: after bootstrapping it looks up its own id in the DHT (the Kademlia join), then keeps
dialling known-but-unconnected peers (routing table, peerstore, mDNS) until ``target_peers``
connections are open, re-dialling the bootstrap peers whenever it finds itself alone.

Model providers live under namespaced DHT keys ``/veilnet/model/<model id>``. py-libp2p's
``find_providers`` answers from the local store alone when that is non-empty, so
:meth:`Discovery.find_model_providers` also asks the closest peers directly and merges. Provider
lists are hints: the router must confirm each peer against the attested registry.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.discovery.mdns.mdns import MDNSDiscovery, create_mdns_discovery
from libp2p.kad_dht.kad_dht import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service

from node.metrics import Metrics
from node.net import guard as net_guard
from node.net.dht_answers import bound_find_node_answers
from node.net.dht_limits import VeilnetRecordValidator, rate_limited_handler
from node.net.events import PeerEvents
from node.net.host import DIAL_TIMEOUT, dial, dial_explained
from node.net.peerstore import known_addrs

if TYPE_CHECKING:
    # trio-stubs (pulled in by libp2p) shadow trio's own annotations and lack trio.TaskStatus.
    from trio_typing import TaskStatus

__all__ = ["MODEL_KEY_PREFIX", "Discovery", "model_dht_key", "model_key"]

log = logging.getLogger("veilnet.discovery")

MODEL_KEY_PREFIX = "/veilnet/model/"
_KEEPER_FAST_INTERVAL = 1.0  # while lookups keep finding new peers
_KEEPER_INTERVAL = 10.0  # at target: only check that we still are
_KEEPER_MAX_INTERVAL = 60.0
# Below target while peers we know (with addresses) are not connected: a partition that may heal,
# or peers restarting. Retrying them this often lets registries merge within ~10 s of a heal
# (the simulation's partition check asks for 30 s); the cost is one bounded dial per such peer.
# These retries are the keeper's own back-off, so each one first clears py-libp2p's negative dial
# cache for the peer (60 s after any failed dial, during which every dial is refused unsent): with
# it, registries merged only once the last failure during the partition was 60 s old (29-34 s
# after the heal on the 8-node scenario).
_KEEPER_RETRY_INTERVAL = 8.0
_REPROVIDE_INTERVAL = 120.0
_LOOKUP_TIMEOUT = 10.0
_MAX_PARALLEL_DIALS = 8


def model_key(model_id: str) -> str:
    """The DHT key under which providers of ``model_id`` are announced."""
    if not model_id or len(model_id) > 200 or any(ch.isspace() for ch in model_id):
        raise ValueError(f"bad model id {model_id!r}")
    return MODEL_KEY_PREFIX + model_id


def model_dht_key(model_id: str) -> bytes:
    """The Kademlia key of ``model_id``'s provider records: the sha256 multihash of :func:`model_key`.

    Kademlia keys are multihashes (a CID in js/go): py-libp2p ignores ADD_PROVIDER keys over 80
    bytes and FIND_NODE keys that are no multihash, and the raw ``/veilnet/model/vn-model:<hex>``
    is 88 bytes, so other nodes dropped our provider records (found by tests/interop).
    """
    return _text_dht_key(model_key(model_id))


def _text_dht_key(key: str) -> bytes:
    return b"\x12\x20" + hashlib.sha256(key.encode()).digest()


class Discovery:
    """Keeps the node connected and the DHT populated; announces and finds model providers."""

    def __init__(
        self,
        host: IHost,
        metrics: Metrics,
        *,
        bootstrap: Sequence[str] = (),
        target_peers: int = 12,
        mdns: bool = False,
        network_fingerprint: bytes = b"",
    ) -> None:
        self.host = host
        self.bootstrap = tuple(bootstrap)
        self._last_bootstrap_cause: dict[str, str | None] = {}
        self.target_peers = target_peers
        self.mdns_enabled = mdns
        # DNS-SD service names are at most 15 bytes: "p2p-" + 10 hex digits.
        self._fingerprint = hashlib.sha256(b"veilnet/mdns/v1" + network_fingerprint).hexdigest()[:10]
        guard = net_guard.guard_of(host) or net_guard.install(host, metrics=metrics)
        metrics.include(guard.metrics)
        # Values only under /veilnet/, size- and count-capped per peer; every inbound DHT message
        # metered per peer (node.net.dht_limits). strict_validation must be passed here too: the
        # KadDHT constructor copies its own flag onto the validator.
        self.dht = KadDHT(
            host,
            DHTMode.SERVER,
            enable_random_walk=True,
            validator=VeilnetRecordValidator(guard.resources, guard.scores),
            validator_changed=True,
            strict_validation=True,
        )
        host.set_stream_handler(
            KAD_PROTOCOL_ID, rate_limited_handler(self.dht.handle_stream, guard.resources, guard.scores)
        )
        bound_find_node_answers(self.dht, guard.scores)  # k peers per answer, hints stay hints
        self._provided: set[str] = set()
        self._provide_now = trio.Event()
        self._connect_events_send, self._connect_events = trio.open_memory_channel[ID](256)
        host.get_network().register_notifee(PeerEvents(self._connect_events_send, on="connected"))
        self._mdns: MDNSDiscovery | None = None
        self._connect_listeners: list[Callable[[ID], None]] = []
        self.dials = metrics.counter("veilnet_dials_total", "Outbound dials, by outcome", ("outcome",))
        metrics.gauge(
            "veilnet_connected_peers", "Peers with an open connection", lambda: len(self.connected())
        )
        metrics.gauge(
            "veilnet_dht_routing_table_size",
            "Peers in the Kademlia routing table",
            self.dht.get_routing_table_size,
        )

    # ---------------------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.dht):
            try:
                self._start_mdns()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._absorb_connections)
                    nursery.start_soon(self._keep_connected)
                    nursery.start_soon(self._provide_loop)
                    task_status.started()
            finally:
                self._stop_mdns()

    def add_connect_listener(self, listener: Callable[[ID], None]) -> None:
        """``listener(peer)`` runs (synchronously, must not block) for every new connection."""
        self._connect_listeners.append(listener)

    def connected(self) -> list[ID]:
        return [peer for peer in self.host.get_connected_peers() if peer != self.host.get_id()]

    # ---------------------------------------------------------------------------- bootstrap

    async def bootstrap_once(self) -> int:
        """Dial every bootstrap address (concurrently, each bounded); returns how many connected."""
        results: list[bool] = []

        async def one(addr: str) -> None:
            cause = await dial_explained(self.host, addr)
            ok = cause is None
            self.dials.inc(outcome="ok" if ok else "failed")
            results.append(ok)
            if cause == "":
                return  # not redialled yet (py-libp2p's negative cache): no news
            if cause is not None and cause != self._last_bootstrap_cause.get(addr):
                # Once per address and cause: a join that finds nobody says why, without a line
                # every retry.
                log.warning("bootstrap %s: not connected: %s", addr, cause)
            self._last_bootstrap_cause[addr] = cause

        async with trio.open_nursery() as nursery:
            for addr in self.bootstrap:
                nursery.start_soon(one, addr)
        connected = sum(results)
        if self.bootstrap:
            log.info("bootstrap: connected to %d of %d peers", connected, len(self.bootstrap))
        return connected

    async def _keep_connected(self) -> None:
        """Bootstrap, join, then top up connections while below target.

        A lookup that teaches us no new peer means we already know every peer we can reach (a
        network smaller than ``target_peers``); the interval then doubles (1 s up to 60 s), so a
        small network is not flooded with lookups, and drops back to 1 s when a peer appears.
        While known peers stay unreached (a partition, a restart) it doubles only up to 8 s.
        """
        await self.bootstrap_once()
        # No top-up straight after the first join: the peers whose joins are finding us (a
        # testnet starting together, a busy network) connect within that first interval, and
        # dialling random known peers before they do left 20 nodes starting together with ~17
        # connections each where 12 were wanted.
        await self._join_lookup(top_up=False)
        interval = _KEEPER_FAST_INTERVAL
        while True:
            self._unwire_auto_connector_refresh()
            await trio.sleep(interval)
            await self._sync_routing_table()
            if not self.connected() and self.bootstrap:
                await self.bootstrap_once()
            if len(self.connected()) >= self.target_peers:
                interval = _KEEPER_INTERVAL
                continue
            known_before = self._known_peers()
            # Known but unconnected peers first: after a heal they answer at once, while the
            # lookup below may spend its whole timeout on peers that are still away.
            await self._dial_known_peers(self.target_peers - len(self.connected()), retry=True)
            await self._join_lookup()
            if self._known_peers() - known_before:
                interval = _KEEPER_FAST_INTERVAL
            else:
                cap = _KEEPER_RETRY_INTERVAL if self._unreached_peers() else _KEEPER_MAX_INTERVAL
                interval = min(interval * 2, cap)

    def _unwire_auto_connector_refresh(self) -> None:
        """Stop py-libp2p's auto-connector from forcing DHT random walks.

        KadDHT wires the auto-connector to force a routing-table refresh (three random walks)
        whenever it has fewer candidates than its target; in a network smaller than the target
        that is every 30 s, forever (~1 lookup/s per node, a few % CPU at idle). This loop does
        the same job with backoff, and the DHT's own periodic refresh (every 120 s) stays on.
        """
        auto_connector = getattr(self.host.get_network(), "auto_connector", None)
        if auto_connector is not None and getattr(auto_connector, "_discovery_callback", None) is not None:
            auto_connector.set_discovery_callback(None)

    def _known_peers(self) -> set[ID]:
        peerstore = self.host.get_peerstore()
        return set(self.dht.routing_table.get_peer_ids()) | set(peerstore.peers_with_addrs())

    async def _join_lookup(self, *, top_up: bool = True) -> None:
        """The Kademlia join: look up our own id so our neighbourhood learns us and we learn it.

        The lookup asks for the ``target_peers // 2`` closest peers, not Kademlia's k = 20:
        py-libp2p queries up to ten peers at once and dials every one it queries, so in a network
        of up to ~20 nodes each join connected a node to nearly all the others (18 connections
        each on 20 nodes starting together; each one a handshake, identify both ways, a gossip
        stream each way and DHT answers). Other nodes' joins and the keeper's dials bring a node
        up to its target (~15 connections each on those 20 nodes).
        """
        await self._sync_routing_table()
        with trio.move_on_after(_LOOKUP_TIMEOUT):
            try:
                found = await self.dht.peer_routing.find_closest_peers_network(
                    self.host.get_id().to_bytes(), count=max(1, self.target_peers // 2)
                )
                log.debug("join lookup found %d peers", len(found))
            except Exception as exc:
                log.debug("join lookup failed: %s", exc)
        connected = self.connected()
        if top_up and len(connected) < self.target_peers:
            await self._dial_known_peers(self.target_peers - len(connected))

    def _unreached_peers(self) -> list[ID]:
        """Known peers with addresses that we are not connected to (dial candidates)."""
        me = self.host.get_id()
        connected = set(self.connected())
        # A departed peer's addresses expire (120 s TTL) while it stays in the routing table:
        # known_addrs() answers [] for it instead of raising (issue 9).
        return [
            peer
            for peer in self._known_peers()
            if peer != me and peer not in connected and known_addrs(self.host, peer)
        ]

    async def _dial_known_peers(self, how_many: int, *, retry: bool = False) -> None:
        """Dial up to ``how_many`` known, unconnected peers; ``retry``: also those py-libp2p still
        refuses to redial after a recent failure (the keeper's paced retries)."""
        candidates = self._unreached_peers()
        random.shuffle(candidates)
        chosen = candidates[:how_many]
        if not chosen:
            return
        limiter = trio.CapacityLimiter(_MAX_PARALLEL_DIALS)

        network = self.host.get_network()

        async def one(peer: ID) -> None:
            async with limiter:
                if retry and hasattr(network, "unblock_peer"):
                    network.unblock_peer(peer)  # paced by the keeper (see _KEEPER_RETRY_INTERVAL)
                addrs = known_addrs(self.host, peer)  # may have expired while we waited
                ok = bool(addrs) and await dial(self.host, PeerInfo(peer, addrs), timeout=DIAL_TIMEOUT)
                self.dials.inc(outcome="ok" if ok else "failed")

        async with trio.open_nursery() as nursery:
            for peer in chosen:
                nursery.start_soon(one, peer)

    async def _absorb_connections(self) -> None:
        """Tell listeners about every new connection at once, and put the peer into the routing
        table (the DHT does not do it itself) without letting a slow insert delay the next event."""
        limiter = trio.CapacityLimiter(4)

        async def add(peer: ID) -> None:
            async with limiter:
                await trio.sleep(0.5)  # identify usually has told us the peer's addresses by then
                await self._add_to_routing_table(peer)

        async with trio.open_nursery() as nursery:
            async for peer in self._connect_events:
                for listener in self._connect_listeners:
                    try:
                        listener(peer)
                    except Exception:
                        log.exception("connect listener failed")
                nursery.start_soon(add, peer)
                if self._provided:
                    self._provide_now.set()

    async def _sync_routing_table(self) -> None:
        """Every connected peer belongs in the routing table (all members of a testnet run the DHT
        in server mode); inbound peers only become addable once identify told us their addresses."""
        in_table = set(self.dht.routing_table.get_peer_ids())
        for peer in self.connected():
            if peer not in in_table:
                await self._add_to_routing_table(peer)

    async def _add_to_routing_table(self, peer: ID) -> bool:
        try:
            return await self.dht.routing_table.add_peer(peer, skip_server_mode_check=True)
        except Exception as exc:
            log.debug("routing table refused %s: %s", peer, exc)
            return False

    # --------------------------------------------------------------------------------- mDNS

    def _start_mdns(self) -> None:
        if not self.mdns_enabled:
            return
        tcp_addrs = [addr for addr in self.host.get_addrs() if addr.value_for_protocol("tcp")]
        port = int(tcp_addrs[0].value_for_protocol("tcp")) if tcp_addrs else 4001
        self._mdns = create_mdns_discovery(
            self.host.get_network(),
            port=port,
            listen_addrs=[str(addr) for addr in tcp_addrs],
            private_network_fingerprint=self._fingerprint,
            host=self.host,
        )
        self._mdns.start()
        log.info("mDNS discovery on (service _p2p-%s)", self._fingerprint)

    def _stop_mdns(self) -> None:
        if self._mdns is not None:
            try:
                self._mdns.stop()
            except Exception as exc:
                log.debug("stopping mDNS: %s", exc)
            self._mdns = None

    # ------------------------------------------------------------------------ model providers

    def provide_model(self, model_id: str) -> None:
        """Announce that this node serves ``model_id`` (now, whenever peers join, and periodically)."""
        key = model_key(model_id)
        if key not in self._provided:
            self._provided.add(key)
            self._provide_now.set()

    def provided_models(self) -> list[str]:
        return sorted(key[len(MODEL_KEY_PREFIX) :] for key in self._provided)

    async def _provide_loop(self) -> None:
        while True:
            with trio.move_on_after(_REPROVIDE_INTERVAL):
                await self._provide_now.wait()
            self._provide_now = trio.Event()
            await trio.sleep(0.5)  # coalesce a burst of new connections into one round
            for key in sorted(self._provided):
                with trio.move_on_after(_LOOKUP_TIMEOUT):
                    try:
                        await self.dht.provider_store.provide(_text_dht_key(key))
                    except Exception as exc:
                        log.debug("provide %s failed: %s", key, exc)

    async def find_model_providers(self, model_id: str, timeout: float = _LOOKUP_TIMEOUT) -> set[bytes]:
        """Peer ids (binary) that announced ``model_id``: hints, to be confirmed against the registry."""
        key = model_key(model_id)
        dht_key = model_dht_key(model_id)
        found: set[bytes] = {
            info.peer_id.to_bytes() for info in self.dht.provider_store.get_providers(dht_key)
        }
        if key in self._provided:
            found.add(self.host.get_id().to_bytes())
        with trio.move_on_after(timeout):
            try:
                closest = await self.dht.peer_routing.find_closest_peers_network(dht_key)
            except Exception as exc:
                log.debug("provider lookup for %s failed: %s", model_id, exc)
                closest = []

            async def ask(peer: ID) -> None:
                with trio.move_on_after(timeout / 2):
                    try:
                        (
                            providers,
                            _closer,
                        ) = await self.dht.provider_store._get_providers_from_peer_with_closers(peer, dht_key)
                    except Exception as exc:
                        log.debug("GET_PROVIDERS to %s failed: %s", peer, exc)
                        return
                    found.update(info.peer_id.to_bytes() for info in providers)

            async with trio.open_nursery() as nursery:
                for peer in closest:
                    if peer != self.host.get_id():
                        nursery.start_soon(ask, peer)
        return found


def parse_bootstrap(addrs: Sequence[str]) -> list[PeerInfo]:
    return [info_from_p2p_addr(multiaddr.Multiaddr(addr)) for addr in addrs]
