"""One fuzz target per decoder / input path: ``fn(data: bytes) -> None``.

A target raises only when the code under test fails in a way it must not: anything other than
the decoder's own documented error type. Seeds (valid inputs the coverage-guided search starts
from) come from :func:`seeds`, built here from the project's own encoders so they track the
formats.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["TARGETS", "seeds"]

Target = Callable[[bytes], None]
TARGETS: dict[str, Target] = {}


def target(name: str) -> Callable[[Target], Target]:
    def register(fn: Target) -> Target:
        TARGETS[name] = fn
        return fn

    return register


# ------------------------------------------------------------------------------- protocol/


@target("codec")
def codec_decode(data: bytes) -> None:
    from protocol.codec import CodecError, decode

    try:
        decode(data)
    except CodecError:
        return


@target("job-messages")
def job_messages(data: bytes) -> None:
    from protocol.jobs.messages import MessageError, decode_message

    try:
        decode_message(data)
    except MessageError:
        return


@target("job-frames")
def job_frames(data: bytes) -> None:
    """The stream splitter, fed in the chunk sizes the first byte chooses (as a peer's writes land)."""
    from protocol.jobs.framing import FrameDecoder
    from protocol.jobs.messages import MessageError

    if not data:
        return
    step = 1 + data[0] % 17
    decoder = FrameDecoder(max_frame=4096)
    try:
        for offset in range(1, len(data), step):
            for frame in decoder.feed(data[offset : offset + step]):
                assert 1 <= len(frame) <= 4096, "a frame outside its bounds came out"
            assert decoder.buffered <= 4096 + 4, "the decoder buffered more than one frame"
        decoder.close()
    except MessageError:
        return


@target("job-payloads")
def job_payloads(data: bytes) -> None:
    from protocol.jobs.payloads import PayloadError, decode_input, decode_result

    for decode in (decode_input, decode_result):
        try:
            decode(data)
        except PayloadError:
            continue


@target("attestation-bundle")
def attestation_bundle(data: bytes) -> None:
    from protocol.attestation.bundle import AttestationBundle, BundleError

    try:
        AttestationBundle.from_wire(data)
    except BundleError:
        return


@target("attestation-evidence")
def attestation_evidence(data: bytes) -> None:
    """Evidence maps as they arrive in challenge responses: codec, then the evidence schema."""
    from protocol.attestation.bundle import BundleError, evidence_from_wire
    from protocol.codec import CodecError, decode

    try:
        evidence_from_wire(decode(data))
    except (CodecError, BundleError):
        return


@target("simulated-evidence")
def simulated_evidence(data: bytes) -> None:
    from protocol.attestation.simulated import SimulatedEvidenceError, parse_simulated_evidence

    try:
        parse_simulated_evidence(data)
    except SimulatedEvidenceError:
        return


@target("tdx-quote")
def tdx_quote(data: bytes) -> None:
    from protocol.attestation.tdx_quote import QuoteFormatError, parse_quote

    try:
        parse_quote(data)
    except QuoteFormatError:
        return


@target("snp-report")
def snp_report(data: bytes) -> None:
    from protocol.attestation.snp_report import ReportFormatError, parse_cert_table, parse_report

    for parse in (parse_report, parse_cert_table):
        try:
            parse(data)
        except ReportFormatError:
            continue


@target("spdm-transcript")
def spdm_transcript(data: bytes) -> None:
    from protocol.attestation.spdm import SpdmFormatError, parse_transcript

    try:
        parse_transcript(data)
    except SpdmFormatError:
        return


@target("ccel-event-log")
def ccel_event_log(data: bytes) -> None:
    from protocol.attestation.ccel import EventLogError, parse_event_log

    try:
        parse_event_log(data)
    except EventLogError:
        return


@target("der")
def der(data: bytes) -> None:
    from protocol.attestation.der import DerError, find_fwids, iter_tlvs

    try:
        list(iter_tlvs(data))
        find_fwids(data)
    except DerError:
        return


# ------------------------------------------------------------------------------------ node/


class _ScriptedConn:
    """A raw connection that delivers ``data`` in the chunk sizes a peer's TCP segments might have."""

    is_initiator = False

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._step = step
        self.written = bytearray()

    async def read(self, n: int | None = None) -> bytes:
        size = min(self._step, n if n is not None else self._step)
        out, self._data = self._data[:size], self._data[size:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data

    async def close(self) -> None:
        return


_PSK = bytes(range(32))


class _NoLock:
    """Stands in for the connection's trio locks: the scripted peer never blocks, so there is no
    contention, and the read path can then run to completion without an event loop."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _run_to_completion(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise AssertionError("the read path waited although the peer's bytes were all there")


@target("pnet")
def pnet(data: bytes) -> None:
    """The private-network layer's read path: the peer's nonce, then ciphertext, in any chunking."""
    from libp2p.network.connection.exceptions import RawConnError

    from node.net.pnet import XSalsa20PskConn

    if not data:
        return
    conn = XSalsa20PskConn(_ScriptedConn(data[1:], 1 + data[0] % 40), _PSK)  # type: ignore[arg-type]
    conn._read_lock = conn._write_lock = _NoLock()  # type: ignore[assignment]

    async def drain() -> None:
        total = 0
        while True:
            chunk = await conn.read(1 << 16)
            if not chunk:
                return
            total += len(chunk)
            assert total <= len(data), "more plaintext than ciphertext"

    try:
        _run_to_completion(drain())
    except RawConnError:
        return


@target("libp2p-peer-record")
def libp2p_peer_record(data: bytes) -> None:
    """Signed peer records as identify, identify push, DHT and PX deliver them to py-libp2p."""
    from google.protobuf.message import DecodeError
    from libp2p.peer.envelope import consume_envelope

    try:
        consume_envelope(data, "libp2p-peer-record")
    except (ValueError, DecodeError):
        return


_RECORD_KEY_SEED = bytes(range(32, 64))
_record_key: Any = None


@target("peerstore-record")
def peerstore_record(data: bytes) -> None:
    """The node's peerstore (node.net.peerstore) fed what a peer's identify, identify push, DHT
    message or PX carries: addresses and protocols split from the input, as a validly signed record
    (so the input reaches the store, not just the signature check) and as plain lists. Whatever
    arrives, the per-peer caps hold."""
    import multiaddr
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.envelope import consume_envelope, seal_record
    from libp2p.peer.id import ID
    from libp2p.peer.peer_record import PeerRecord

    from node.net.peerstore import SafePeerStore

    addrs = []
    for chunk in data.split(b"\xfe")[:64]:  # twice the per-peer cap is enough to test the cap
        try:
            addrs.append(multiaddr.Multiaddr(chunk))
        except Exception:
            continue
    protocols = [chunk.decode("utf-8", "replace") for chunk in data.split(b"\xfd")[:128]]
    global _record_key
    if _record_key is None:
        _record_key = create_new_key_pair(_RECORD_KEY_SEED)
    key_pair = _record_key
    peer = ID.from_pubkey(key_pair.public_key)
    store = SafePeerStore(max_peers=8)
    store.add_addrs(peer, addrs, ttl=120)
    store.add_protocols(peer, protocols)
    try:
        envelope_bytes = seal_record(PeerRecord(peer, addrs), key_pair.private_key).marshal_envelope()
    except Exception:
        envelope_bytes = b""  # a record py-libp2p cannot even encode is not one a peer can send
    if envelope_bytes:
        envelope, _record = consume_envelope(envelope_bytes, "libp2p-peer-record")
        store.consume_peer_record(envelope, ttl=120)
    limits = store.limits
    assert len(store.addrs(peer)) <= limits.max_addrs_per_peer, "more addresses stored than the cap"
    assert len(store.get_protocols(peer)) <= limits.max_protocols_per_peer, "more protocols than the cap"


# ------------------------------------------------------------------------------------ seeds


def seeds(name: str) -> list[bytes]:
    """Valid (or nearly valid) inputs for target ``name``, built with the project's encoders."""
    from protocol import codec

    builders: dict[str, Callable[[], list[bytes]]] = {
        "codec": lambda: [codec.encode({"v": 1, "type": "get-bundle", "n": [1, -2, b"x", "y", None, True]})],
        "job-messages": _message_seeds,
        "job-frames": lambda: [b"\x05" + struct.pack(">I", len(m)) + m for m in _message_seeds()],
        "job-payloads": _payload_seeds,
        "attestation-bundle": lambda: [_bundle_seed()],
        "attestation-evidence": lambda: [
            codec.encode({"kind": "simulated", "data": b"\x00" * 8, "endorsements": {}})
        ],
        "simulated-evidence": lambda: [_simulated_evidence_seed()],
        "tdx-quote": lambda: [struct.pack("<HHI", 4, 2, 0x81) + bytes(628)],
        "snp-report": lambda: [struct.pack("<I", 2) + bytes(1180), bytes(24)],
        "spdm-transcript": lambda: [bytes([0x11, 0xE0, 0, 0]) + bytes(40)],
        "ccel-event-log": lambda: [struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", 0)],
        "der": lambda: [bytes.fromhex("300d06092a864886f70d01010b0500")],
        "pnet": lambda: [b"\x07" + os.urandom(24) + b"hello, private network"],
        "libp2p-peer-record": lambda: [_peer_record_seed()],
        "peerstore-record": lambda: [
            b"\xfe".join(multiaddr_bytes(f"/ip4/10.0.0.{i}/tcp/4001") for i in range(40))
            + b"\xfd/ipfs/id/1.0.0\xfd/veilnet/job/1.0.0"
        ],
    }
    return builders[name]()


def multiaddr_bytes(text: str) -> bytes:
    import multiaddr

    return bytes(multiaddr.Multiaddr(text).to_bytes())


def _message_seeds() -> list[bytes]:
    from protocol.identity import Identity
    from protocol.jobs.messages import (
        ChallengeRequest,
        ErrorCode,
        ErrorMessage,
        JobRequest,
        Mode,
        Reveal,
        RevealRequest,
        StreamChunk,
        Task,
    )

    job_id, nonce, sealed = bytes(16), bytes(24), bytes(32)  # envelopes: a 24-byte nonce, a ciphertext
    return [
        ChallengeRequest(nonce=bytes(32)).to_wire(),
        RevealRequest(job_id=job_id).to_wire(),
        ErrorMessage(code=ErrorCode.BUSY, message="busy").to_wire(),
        JobRequest(
            job_id=job_id, model_id="vn-model:ab", task=Task.CHAT, deadline_ms=1_800_000_000_000,
            client_pubkey=bytes(32), executor_enc_pubkey=bytes(32), input_nonce=nonce, sealed_input=sealed,
            mode=Mode.CONSENSUS, stream=True, live=True,
        ).to_wire(),
        Reveal.create(
            Identity(bytes(32)), job_id=job_id, salt=bytes(32), result_digest=bytes(32), result_nonce=nonce,
            sealed_result=sealed,
        ).to_wire(),
        StreamChunk(job_id=job_id, data=sealed, opening_nonce=nonce).to_wire(),
    ]


def _payload_seeds() -> list[bytes]:
    from protocol.jobs.payloads import EmbeddingsInput

    return [EmbeddingsInput(("a text", "another")).to_bytes()]


def _bundle_seed() -> bytes:
    from protocol.attestation.bundle import build_bundle
    from protocol.attestation.simulated import SimulatedPlatform
    from protocol.identity import Identity

    platform = SimulatedPlatform(bytes(32), testnet="fuzz")
    bundle = build_bundle(
        Identity(bytes(32)), bytes(32), issued_at=1_700_000_000, epoch_seconds=3600,
        collect_cpu_evidence=platform.collector(b"\x11" * 32, 1_700_000_000),
        models=("m",), addrs=("/ip4/127.0.0.1/tcp/1",),
    )  # fmt: skip
    return bundle.to_wire()


def _simulated_evidence_seed() -> bytes:
    from protocol.attestation.bundle import AttestationBundle

    return AttestationBundle.from_wire(_bundle_seed()).cpu.data


def _peer_record_seed() -> bytes:
    import multiaddr
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.envelope import seal_record
    from libp2p.peer.id import ID
    from libp2p.peer.peer_record import PeerRecord

    key_pair = create_new_key_pair(bytes(32))
    record = PeerRecord(ID.from_pubkey(key_pair.public_key), [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")])
    return seal_record(record, key_pair.private_key).marshal_envelope()
