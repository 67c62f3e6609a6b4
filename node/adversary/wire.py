"""Connections spoken by hand: TCP, the PSK layer, Noise, multistream-select and muxer frames.

py-libp2p refuses to send most of what the attacks need (a cut-off frame, a window violation, a
stream id out of order), so the attacker builds those connections itself from the same pieces a
node uses: :class:`node.net.pnet.XSalsa20PskConn` for the private network and py-libp2p's Noise
transport for the handshake. Everything above the secure channel is bytes written here.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import multiaddr
import trio
from libp2p.abc import ISecureConn
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from node.net.host import key_pair_for
from node.net.pnet import XSalsa20PskConn
from protocol.identity import Identity

__all__ = [
    "MULTISTREAM",
    "NOISE",
    "YAMUX",
    "Reader",
    "Refused",
    "SecureLink",
    "Target",
    "YamuxFrame",
    "open_psk",
    "open_tcp",
    "read_uvarint",
    "uvarint",
    "varint_frame",
]

MULTISTREAM = "/multistream/1.0.0"
NOISE = "/noise"
YAMUX = "/yamux/1.0.0"
MPLEX = "/mplex/6.7.0"


class Refused(Exception):
    """The target declined a protocol (multistream ``na``) or closed the connection."""


@dataclass(frozen=True)
class Target:
    """A node to attack: its TCP address on loopback and its peer id."""

    host: str
    port: int
    peer_id: ID
    multiaddr: str

    @classmethod
    def parse(cls, text: str) -> Target:
        addr = multiaddr.Multiaddr(text)
        host = addr.value_for_protocol("ip4")
        port = int(addr.value_for_protocol("tcp"))
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the adversary attacks only 127.0.0.0/8, not {host}")
        return cls(str(host), port, ID.from_base58(addr.value_for_protocol("p2p")), text)


def uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint_frame(payload: bytes) -> bytes:
    """An unsigned-varint length prefix, then ``payload`` (multistream, meshsub, kad, identify)."""
    return uvarint(len(payload)) + payload


class Reader:
    """Byte-exact reads over anything with ``async read(n) -> bytes`` that may return short."""

    def __init__(self, conn: object) -> None:
        self._conn = conn
        self._buffer = b""

    async def exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            # Ask for exactly what is missing: a Noise session's read(n) blocks until it has n bytes.
            chunk = await self._conn.read(size - len(self._buffer))  # type: ignore[attr-defined]
            if not chunk:
                raise Refused("connection closed")
            self._buffer += chunk
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    async def uvarint(self) -> int:
        return await read_uvarint(self.exactly)


async def read_uvarint(read_exactly: object) -> int:
    value = shift = 0
    for _ in range(10):
        (byte,) = await read_exactly(1)  # type: ignore[operator]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7
    raise Refused("varint longer than 10 bytes")


async def open_tcp(target: Target, source: str | None = None) -> trio.SocketStream:
    """A TCP connection to the target, from ``source`` (another loopback address, e.g. 127.0.0.2,
    so the target can tell the attacker's connections from honest ones on 127.0.0.1)."""
    if source is not None and not ipaddress.ip_address(source).is_loopback:
        raise ValueError(f"the adversary connects only from 127.0.0.0/8, not {source}")
    return await trio.open_tcp_stream(target.host, target.port, local_address=source)


async def open_psk(target: Target, psk: bytes) -> XSalsa20PskConn:
    """A TCP connection inside the private network (nonces exchanged lazily, as a node does)."""
    stream = await open_tcp(target)
    return XSalsa20PskConn(RawConnection(TrioTCPStream(stream), initiator=True), psk)


async def _select(conn: object, reader: Reader, protocol: str) -> None:
    """multistream-select as the initiator: the header, then ``protocol``; raises Refused on ``na``."""
    await conn.write(  # type: ignore[attr-defined]
        varint_frame(f"{MULTISTREAM}\n".encode()) + varint_frame(f"{protocol}\n".encode())
    )
    header = await reader.exactly(await reader.uvarint())
    if header.decode(errors="replace").strip() != MULTISTREAM:
        raise Refused(f"unexpected multistream header {header!r}")
    answer = (await reader.exactly(await reader.uvarint())).decode(errors="replace").strip()
    if answer != protocol:
        raise Refused(f"{protocol} refused ({answer})")


class SecureLink:
    """A Noise session to the target inside the PSK layer, with a chosen muxer negotiated."""

    def __init__(self, conn: ISecureConn, muxer: str) -> None:
        self.conn = conn
        self.muxer = muxer
        self.reader = Reader(conn)

    @classmethod
    async def open(
        cls, target: Target, psk: bytes, identity: Identity | None = None, muxer: str = YAMUX
    ) -> SecureLink:
        raw = await open_psk(target, psk)
        try:
            await _select(raw, Reader(raw), NOISE)
            noise = NoiseTransport(
                key_pair_for(identity or Identity.generate()),
                noise_privkey=create_x25519_key_pair().private_key,
            )
            secure = await noise.secure_outbound(raw, target.peer_id)
            await _select(secure, Reader(secure), muxer)
        except BaseException:
            await raw.close()
            raise
        return cls(secure, muxer)

    async def write(self, data: bytes) -> None:
        await self.conn.write(data)

    async def close(self) -> None:
        try:
            await self.conn.close()
        except Exception:
            return


# ------------------------------------------------------------------------------------- yamux

YAMUX_DATA, YAMUX_WINDOW_UPDATE, YAMUX_PING, YAMUX_GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
_YAMUX_HEADER = struct.Struct(">BBHII")


@dataclass(frozen=True)
class YamuxFrame:
    """One yamux header (version, type, flags, stream id, length); the body follows on the wire."""

    type: int
    flags: int
    stream_id: int
    length: int
    version: int = 0

    def header(self) -> bytes:
        return _YAMUX_HEADER.pack(self.version, self.type, self.flags, self.stream_id, self.length)

    @classmethod
    def parse(cls, data: bytes) -> YamuxFrame:
        version, kind, flags, stream_id, length = _YAMUX_HEADER.unpack(data)
        return cls(kind, flags, stream_id, length, version)


YAMUX_HEADER_SIZE = _YAMUX_HEADER.size


def yamux_open(stream_id: int) -> bytes:
    """Open a stream: a window update with SYN (no window increase)."""
    return YamuxFrame(YAMUX_WINDOW_UPDATE, SYN, stream_id, 0).header()


def yamux_data(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return YamuxFrame(YAMUX_DATA, flags, stream_id, len(payload)).header() + payload


def multistream_open(protocol: str) -> bytes:
    """What an initiator writes on a fresh stream to select ``protocol`` without waiting (pipelined)."""
    return varint_frame(f"{MULTISTREAM}\n".encode()) + varint_frame(f"{protocol}\n".encode())


async def yamux_drain(link: SecureLink, *, answer_pings: bool = True) -> int:
    """Read and discard the target's yamux frames until the connection ends; answer its pings so it
    keeps us connected. Returns the number of frames seen (run it in a nursery; cancel to stop)."""
    seen = 0
    while True:
        try:
            frame = YamuxFrame.parse(await link.reader.exactly(YAMUX_HEADER_SIZE))
        except Exception:
            return seen
        seen += 1
        if frame.type == YAMUX_DATA and frame.length:
            try:
                await link.reader.exactly(frame.length)
            except Exception:
                return seen
        elif frame.type == YAMUX_PING and frame.flags & SYN and answer_pings:
            try:
                await link.write(YamuxFrame(YAMUX_PING, ACK, 0, frame.length).header())
            except Exception:
                return seen
        elif frame.type == YAMUX_GO_AWAY:
            return seen
