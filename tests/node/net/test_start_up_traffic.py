"""Start-up traffic cuts: each distinct signed peer record is opened once (invalid ones every
time), the attestation router sends IDONTWANT only for messages of 1 KiB or more, and a copy of a
gossip message still being validated is dropped."""

from __future__ import annotations

import importlib
import os

import multiaddr
import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerstore import create_signed_peer_record
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.score import ScoreParams

from node.metrics import Metrics
from node.net import signed_records
from node.net.gossip import ATTEST_TOPIC, Appraisal, AttestationGossip, AttestGossipSub, gossipsub_router
from node.net.host import build_host
from node.net.registry import Registry
from protocol.identity import Identity


def _record(port: int = 4001) -> bytes:
    key_pair = create_new_key_pair()
    peer = ID.from_pubkey(key_pair.public_key)
    addrs = [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")]
    return bytes(create_signed_peer_record(peer, addrs, key_pair.private_key).marshal_envelope())


@pytest.fixture(autouse=True)
def _fresh() -> None:
    signed_records.forget()


def test_a_record_seen_again_is_answered_from_memory_with_the_same_result() -> None:
    data = _record()
    first = signed_records.consume_envelope_once(data, "libp2p-peer-record")
    again = signed_records.consume_envelope_once(data, "libp2p-peer-record")
    assert again is first
    assert first[1].peer_id == ID.from_pubkey(first[0].public_key)


def test_a_forged_record_fails_every_time_and_is_not_remembered() -> None:
    data = bytearray(_record())
    data[-1] ^= 1  # breaks the signature
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 - whatever py-libp2p raises for a bad envelope
            signed_records.consume_envelope_once(bytes(data), "libp2p-peer-record")
    assert not signed_records._opened


def test_memory_is_bounded_and_oversized_records_are_never_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signed_records, "MAX_REMEMBERED", 3)
    records = [_record(4000 + i) for i in range(5)]
    for data in records:
        signed_records.consume_envelope_once(data, "libp2p-peer-record")
    assert len(signed_records._opened) == 3
    assert (records[0], "libp2p-peer-record") not in signed_records._opened
    monkeypatch.setattr(signed_records, "MAX_RECORD_BYTES", 10)
    signed_records.forget()
    signed_records.consume_envelope_once(records[0], "libp2p-peer-record")
    assert not signed_records._opened


def test_install_routes_every_user_module_through_the_memo() -> None:
    signed_records.install()
    for name in signed_records._USERS:
        assert importlib.import_module(name).consume_envelope is signed_records.consume_envelope_once


# ------------------------------------------------------------------- the attestation gossip router


async def test_idontwant_only_for_messages_of_a_kilobyte_or_more(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[bytes] = []

    async def upstream(self: GossipSub, msg_id: bytes, topic_ids: object) -> None:
        sent.append(msg_id)

    monkeypatch.setattr(GossipSub, "_emit_idontwant_for_message", upstream)
    router = gossipsub_router(ScoreParams())
    assert isinstance(router, AttestGossipSub)
    for seqno, size in ((b"\x01", 600), (b"\x02", 1024)):
        message = rpc_pb2.Message(from_id=b"peer", seqno=seqno, data=bytes(size), topicIDs=[ATTEST_TOPIC])
        router.mcache.put(message)
        await router._emit_idontwant_for_message(b"peer" + seqno, [ATTEST_TOPIC])
    assert sent == [b"peer\x02"]


async def test_a_copy_of_a_message_still_in_validation_is_dropped_and_a_later_one_is_not() -> None:
    host = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    metrics = Metrics()
    refuse = lambda *_: Appraisal(ok=False)  # noqa: E731 - never called: the push is replaced
    gossip = AttestationGossip(host, refuse, Registry(), metrics, addrs_of=lambda _: ())
    release = trio.Event()
    pushed: list[ID] = []

    async def slow_push(forwarder: ID, message: rpc_pb2.Message) -> None:
        pushed.append(forwarder)
        await release.wait()

    gossip._push_msg = slow_push  # type: ignore[method-assign]
    first, second = (ID(Identity.generate().peer_id) for _ in range(2))
    message = rpc_pb2.Message(from_id=b"origin", seqno=b"\x01", data=b"bundle", topicIDs=[ATTEST_TOPIC])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gossip._guard_push, first, message)
        await trio.testing.wait_all_tasks_blocked()
        await gossip._guard_push(second, message)  # returns at once: dropped
        assert pushed == [first]
        assert metrics.render().count('veilnet_gossip_messages_dropped_total{reason="duplicate"} 1') == 1
        release.set()
    await gossip._guard_push(second, message)  # validation over: handled again (pubsub's seen check)
    assert pushed == [first, second]
