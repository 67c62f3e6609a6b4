"""The inbound-stream boundary and connection admission between two real hosts in one process
(TCP + PSK + Noise + yamux on 127.0.0.1): the attack bytes of issue 9 against py-libp2p's own
protocols, raising handlers, banned peers, and inbound slots that come back."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import multiaddr
import trio
import varint
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import StreamFailure
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.pb import rpc_pb2

from node.metrics import Metrics
from node.net.gossip import ATTEST_TOPIC, Appraisal, AttestationGossip
from node.net.guard import NetGuard, guard_of
from node.net.host import build_host, dial
from node.net.limits import LimitSettings
from node.net.registry import Registry, RegistryEntry
from node.net.scoring import Offence
from protocol.identity import Identity

LOCAL = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
MESHSUB = TProtocol("/meshsub/1.2.0")
PING = TProtocol("/ipfs/ping/1.0.0")


@dataclass
class Pair:
    target: IHost
    attacker: IHost
    target_id: ID
    guard: NetGuard
    guard_psk: bytes

    def metric(self, line: str) -> float:
        for rendered in self.guard.metrics.render().splitlines():
            name, _, value = rendered.rpartition(" ")
            if name == line:
                return float(value)
        return 0.0

    async def connect(self) -> bool:
        return await dial(self.attacker, str(self.target.get_addrs()[0]))


@asynccontextmanager
async def pair(limits: LimitSettings | None = None) -> AsyncIterator[Pair]:
    psk = os.urandom(32)
    target = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"], limits=limits)
    attacker = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
    guard = guard_of(target)
    assert guard is not None
    async with target.run(LOCAL), attacker.run(LOCAL):
        yield Pair(target, attacker, target.get_id(), guard, psk)


async def until(predicate: object, what: str, timeout: float = 15.0) -> None:
    """Bounded wait for a condition the target reaches asynchronously."""
    with trio.move_on_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def reset_by_target(stream: object, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        try:
            while True:
                await stream.read(4096)  # type: ignore[attr-defined]
        except StreamError:
            return


async def ping_works(pair_: Pair) -> bool:
    stream = await pair_.attacker.new_stream(pair_.target_id, [PING])
    payload = os.urandom(32)
    await stream.write(payload)
    with trio.fail_after(10):
        echoed = b""
        while len(echoed) < 32:
            echoed += await stream.read(32 - len(echoed))
    await stream.close()
    return echoed == payload


def registry_entry(peer: bytes) -> RegistryEntry:
    return RegistryEntry(
        peer_id=peer,
        addrs=(),
        kind="simulated",
        label="SIMULATED — not secure",
        measurement="00" * 32,
        models=(),
        epoch=1,
        issued_at=1,
        expires_at=2**40,
        enc_pubkey=bytes(32),
        verified_at=0.0,
    )


def refuse_everything(bundle: bytes, sender: bytes | None, now: int) -> Appraisal:
    return Appraisal(ok=False, reasons=("malformed",))


async def test_a_raising_handler_registered_straight_on_the_host_resets_only_its_stream() -> None:
    async def broken(stream: object) -> None:
        await stream.read(10)  # type: ignore[attr-defined]
        raise ValueError("a handler bug an attacker found")

    async with pair() as p:
        p.target.set_stream_handler(TProtocol("/test/broken/1"), broken)
        assert await p.connect()
        stream = await p.attacker.new_stream(p.target_id, [TProtocol("/test/broken/1")])
        await stream.write(b"anything")
        await reset_by_target(stream)
        assert p.metric('veilnet_stream_errors_total{protocol="/test/broken/1"}') == 1
        assert p.guard.scores.penalty(p.attacker.get_id().to_bytes()) > 0
        assert await ping_works(p), "the connection and its other streams carry on"


async def test_three_bytes_and_random_bytes_on_meshsub_do_not_stop_the_node() -> None:
    async with pair() as p:
        gossip = AttestationGossip(
            p.target, refuse_everything, Registry(), Metrics(), addrs_of=lambda peer: ()
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(gossip.run)
            assert await p.connect()
            for payload in (bytes.fromhex("020a05"), os.urandom(200)):
                stream = await p.attacker.new_stream(p.target_id, [MESHSUB])
                await stream.write(payload)
                await stream.close()
                await trio.sleep(0)  # let the target read it; its answer is bounded below
            await until(
                lambda: p.metric('veilnet_stream_errors_total{protocol="/meshsub/1.2.0"}') >= 1,
                "the meshsub decode error to be counted",
            )
            assert await ping_works(p)
            nursery.cancel_scope.cancel()


async def test_a_gossip_message_with_an_unusable_key_is_dropped_and_charged() -> None:
    """Issue 9: ``from`` a sha256 multihash (no key inside) and ``key`` not a PublicKey protobuf
    made Pubsub's signature check raise inside a service task, which stopped the node."""
    async with pair() as p:
        gossip = AttestationGossip(
            p.target, refuse_everything, Registry(), Metrics(), addrs_of=lambda peer: ()
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(gossip.run)
            assert await p.connect()
            message = rpc_pb2.Message(
                from_id=b"\x12\x20" + os.urandom(32),
                data=b"not a bundle",
                seqno=os.urandom(8),
                topicIDs=[ATTEST_TOPIC],
                signature=os.urandom(64),
                key=b"\x0a\x03not a public key",
            )
            rpc = rpc_pb2.RPC(publish=[message]).SerializeToString()
            stream = await p.attacker.new_stream(p.target_id, [MESHSUB])
            await stream.write(varint.encode(len(rpc)) + rpc)
            await until(
                lambda: gossip.dropped.get(reason="malformed") >= 1, "the message to be dropped as malformed"
            )
            assert p.guard.scores.penalty(p.attacker.get_id().to_bytes()) > 9
            assert await ping_works(p)
            nursery.cancel_scope.cancel()


async def test_a_graylisted_peer_is_disconnected_and_its_reconnects_are_refused() -> None:
    async with pair() as p:
        assert await p.connect()
        attacker = p.attacker.get_id().to_bytes()
        p.guard.scores.penalise(attacker, Offence.BROKEN_STREAM, count=5)
        await until(lambda: not p.target.get_network().get_connections(p.attacker.get_id()), "the disconnect")
        await until(
            lambda: not p.attacker.get_network().get_connections(p.target_id), "the attacker to notice"
        )
        assert p.metric('veilnet_peers_disconnected_total{reason="graylisted"}') == 1
        await p.connect()  # the dial may complete on the attacker's side; the target refuses it
        await until(
            lambda: p.metric('veilnet_connections_refused_total{reason="banned"}') >= 1,
            "the refusal at the gate",
        )
        assert not p.target.get_network().get_connections(p.attacker.get_id())


async def test_inbound_slots_come_back_when_connections_close() -> None:
    async with pair() as p:
        swarm = p.target.get_network()
        swarm._inbound_limiter = trio.CapacityLimiter(2)  # type: ignore[attr-defined]
        for _ in range(6):  # three times the slots, one connection at a time
            assert await p.connect()
            await p.attacker.disconnect(p.target_id)
            await until(lambda: swarm._inbound_limiter.available_tokens == 2, "the slot to come back")  # type: ignore[attr-defined]
        await until(lambda: p.guard.admission.open_connections() == 0, "the last reservation to be released")
        assert p.guard.resources.scopes_in_use() == 0


async def test_streams_over_the_per_peer_protocol_limit_are_reset_and_counted() -> None:
    async with pair() as p:
        gate = trio.Event()

        async def hold(stream: object) -> None:
            await gate.wait()

        p.target.set_stream_handler(TProtocol("/test/hold/1"), hold)
        limit = p.guard.settings.inbound_streams_per_peer_protocol
        assert await p.connect()
        streams = []
        for _ in range(limit + 3):
            # A refused stream may be reset while the negotiation answer is still in flight.
            with contextlib.suppress(StreamFailure):
                streams.append(await p.attacker.new_stream(p.target_id, [TProtocol("/test/hold/1")]))
        await until(
            lambda: p.metric('veilnet_limit_hits_total{scope="protocol",resource="inbound_streams"}') >= 3,
            "three refusals",
        )
        gate.set()
        for stream in streams:
            await stream.reset()
        assert await ping_works(p)


async def test_peer_exchange_is_followed_only_from_a_peer_with_a_positive_score() -> None:
    """Issue 9: one PRUNE with made-up peers made nodes dial attacker-chosen addresses. The same
    PRUNE is sent twice on one stream (processed in order): first while the sender is a stranger,
    then once the target's registry holds the sender (an attested peer's bonus makes it positive).
    Only the second one's peer is dialled."""
    async with pair() as p:
        registry = Registry()
        gossip = AttestationGossip(p.target, refuse_everything, registry, Metrics(), addrs_of=lambda peer: ())
        decoys = [build_host(Identity.generate(), p.guard_psk, ["/ip4/127.0.0.1/tcp/0"]) for _ in range(2)]
        async with trio.open_nursery() as nursery, decoys[0].run(LOCAL), decoys[1].run(LOCAL):
            await nursery.start(gossip.run)
            assert await p.connect()
            stream = await p.attacker.new_stream(p.target_id, [MESHSUB])

            async def prune_naming(decoy: IHost) -> None:
                envelope, _ = env_to_send_in_RPC(decoy)
                info = rpc_pb2.PeerInfo(peerID=decoy.get_id().to_bytes(), signedPeerRecord=envelope)
                prune = rpc_pb2.ControlPrune(topicID=ATTEST_TOPIC, peers=[info], backoff=1)
                rpc = rpc_pb2.RPC(control=rpc_pb2.ControlMessage(prune=[prune])).SerializeToString()
                await stream.write(varint.encode(len(rpc)) + rpc)

            stranger, attested = decoys
            scorer = gossip.router.scorer
            assert scorer is not None
            assert not scorer.allow_px_from(p.attacker.get_id(), [ATTEST_TOPIC])
            await prune_naming(stranger)
            # PRUNE handling records a back-off first, then decides on PX without yielding.
            await until(
                lambda: p.attacker.get_id() in gossip.router.back_off.get(ATTEST_TOPIC, {}), "the first PRUNE"
            )
            attacker = p.attacker.get_id().to_bytes()
            registry.upsert(registry_entry(attacker))
            assert scorer.allow_px_from(p.attacker.get_id(), [ATTEST_TOPIC])
            await prune_naming(attested)
            network = p.target.get_network()
            await until(lambda: bool(network.get_connections(attested.get_id())), "the PX dial")
            assert not network.get_connections(stranger.get_id())
            nursery.cancel_scope.cancel()


async def test_challenge_streams_beyond_the_peer_rate_are_refused() -> None:
    """Issue 9: 300 signed challenge answers/s for anyone who asked. Each challenge is one stream.
    (A near-zero refill keeps the count exact however slowly a loaded machine opens streams.)"""
    async with pair(LimitSettings(challenges_per_second=0.001, challenge_burst=5)) as p:
        answered = 0

        async def answer(stream: object) -> None:
            nonlocal answered
            answered += 1
            await stream.close()  # type: ignore[attr-defined]

        p.target.set_stream_handler(TProtocol("/veilnet/challenge/1.0.0"), answer)
        burst = p.guard.settings.challenge_burst
        assert await p.connect()
        for _ in range(burst + 10):
            with contextlib.suppress(StreamFailure):
                stream = await p.attacker.new_stream(p.target_id, [TProtocol("/veilnet/challenge/1.0.0")])
                await stream.close()
        await until(
            lambda: p.metric('veilnet_limit_hits_total{scope="peer",resource="challenge_rate"}') >= 10,
            "the rate to refuse the excess",
        )
        assert answered <= burst


def test_per_peer_metric_labels_stay_bounded_under_identity_rotation() -> None:
    host = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    gossip = AttestationGossip(host, refuse_everything, Registry(), Metrics(), addrs_of=lambda peer: ())
    labels = {gossip._peer_label(f"peer-{index}") for index in range(1000)}
    assert len(labels) == 257 and "other" in labels
    assert gossip._peer_label("peer-3") == "peer-3"  # a labelled peer keeps its label


def test_gossipsub_control_floods_count_in_the_node_wide_score() -> None:
    host = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    gossip = AttestationGossip(host, refuse_everything, Registry(), Metrics(), addrs_of=lambda peer: ())
    flooder = ID(Identity.generate().peer_id)
    allowed = [gossip.router._check_iwant_rate_limit(flooder) for _ in range(200)]
    assert not all(allowed), "gossipsub's own IWANT limit was reached"
    assert gossip.scores.penalty(flooder.to_bytes()) > 0 or gossip.scores.is_banned(flooder.to_bytes())
