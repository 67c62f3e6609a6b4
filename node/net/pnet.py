"""libp2p private networks (PSK v1) as the spec, go-libp2p and js-libp2p implement them.

Why this module exists: py-libp2p 0.8.1's ``psk=`` protector (``libp2p.security.pnet``) is not
the libp2p "Pre-shared Key Based Private Networks" v1 wire format. It sends an **8-byte** nonce
and encrypts with plain Salsa20; the spec (and every other implementation) sends a **24-byte**
nonce and uses **XSalsa20**. So py-libp2p nodes with a PSK only talk to py-libp2p nodes: a
js-libp2p or go-libp2p peer holding the right key cannot connect (its handshake times out).
tests/interop reproduces that with a real js-libp2p peer.

The wire format (each direction independent, no framing, no authentication — Noise runs inside):

1. As soon as the TCP connection is up, each side sends 24 random bytes, its nonce.
2. Everything a side sends afterwards is XORed with the XSalsa20 key stream of
   (PSK, its own nonce), starting at block counter 0; it decrypts what it receives with the
   stream of (PSK, the peer's nonce).

XSalsa20(k, n) is Salsa20 keyed with HSalsa20(k, n[0:16]) and using n[16:24] as its 8-byte nonce;
HSalsa20 (one 20-round core, run once per connection) is written out below, the bulk stream
cipher is pycryptodome's Salsa20 (already a py-libp2p dependency).

Reading is buffered (the wire is not changed by it): a receive asks the socket for up to
:data:`READ_AHEAD` bytes, decrypts them all at once, in wire order, and later ``read`` calls are
answered from that buffer before the socket is asked again. Noise reads each message as a 2-byte
length and then the body; without the buffer that was two socket receives, each a turn of the
event loop. The buffer never holds more than one receive.

:func:`install` makes py-libp2p's swarm use :class:`XSalsa20PskConn` for ``psk=``; it is called
by :func:`node.net.host.build_host`.
"""

from __future__ import annotations

import os
import struct

import libp2p.network.swarm as _swarm
from Crypto.Cipher import Salsa20
from libp2p.abc import ConnectionType, IRawConnection
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.exceptions import RawConnError
from multiaddr import Multiaddr

from node.net.prompt_lock import PromptLock

__all__ = [
    "NONCE_SIZE",
    "PSK_SIZE",
    "READ_AHEAD",
    "XSalsa20PskConn",
    "hsalsa20",
    "install",
    "xsalsa20_cipher",
]

PSK_SIZE = 32
NONCE_SIZE = 24
READ_AHEAD = 65536  # trio's default receive size: one receive drains what a loopback send wrote

_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_MASK = 0xFFFFFFFF


def _rotl(value: int, shift: int) -> int:
    value &= _MASK
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """The HSalsa20 core: a 32-byte subkey from a 32-byte key and a 16-byte input."""
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("HSalsa20 takes a 32-byte key and a 16-byte input")
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", nonce16)
    x = [_SIGMA[0], k[0], k[1], k[2], k[3], _SIGMA[1], n[0], n[1],
         n[2], n[3], _SIGMA[2], k[4], k[5], k[6], k[7], _SIGMA[3]]  # fmt: skip
    for _ in range(10):  # 10 double rounds = 20 rounds
        # columns
        x[4] ^= _rotl(x[0] + x[12], 7)
        x[8] ^= _rotl(x[4] + x[0], 9)
        x[12] ^= _rotl(x[8] + x[4], 13)
        x[0] ^= _rotl(x[12] + x[8], 18)
        x[9] ^= _rotl(x[5] + x[1], 7)
        x[13] ^= _rotl(x[9] + x[5], 9)
        x[1] ^= _rotl(x[13] + x[9], 13)
        x[5] ^= _rotl(x[1] + x[13], 18)
        x[14] ^= _rotl(x[10] + x[6], 7)
        x[2] ^= _rotl(x[14] + x[10], 9)
        x[6] ^= _rotl(x[2] + x[14], 13)
        x[10] ^= _rotl(x[6] + x[2], 18)
        x[3] ^= _rotl(x[15] + x[11], 7)
        x[7] ^= _rotl(x[3] + x[15], 9)
        x[11] ^= _rotl(x[7] + x[3], 13)
        x[15] ^= _rotl(x[11] + x[7], 18)
        # rows
        x[1] ^= _rotl(x[0] + x[3], 7)
        x[2] ^= _rotl(x[1] + x[0], 9)
        x[3] ^= _rotl(x[2] + x[1], 13)
        x[0] ^= _rotl(x[3] + x[2], 18)
        x[6] ^= _rotl(x[5] + x[4], 7)
        x[7] ^= _rotl(x[6] + x[5], 9)
        x[4] ^= _rotl(x[7] + x[6], 13)
        x[5] ^= _rotl(x[4] + x[7], 18)
        x[11] ^= _rotl(x[10] + x[9], 7)
        x[8] ^= _rotl(x[11] + x[10], 9)
        x[9] ^= _rotl(x[8] + x[11], 13)
        x[10] ^= _rotl(x[9] + x[8], 18)
        x[12] ^= _rotl(x[15] + x[14], 7)
        x[13] ^= _rotl(x[12] + x[15], 9)
        x[14] ^= _rotl(x[13] + x[12], 13)
        x[15] ^= _rotl(x[14] + x[13], 18)
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


def xsalsa20_cipher(key: bytes, nonce: bytes) -> Salsa20.Salsa20Cipher:
    """A stateful XSalsa20 stream (counter 0) whose ``encrypt``/``decrypt`` XOR the key stream."""
    if len(key) != PSK_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError("XSalsa20 takes a 32-byte key and a 24-byte nonce")
    return Salsa20.new(key=hsalsa20(key, nonce[:16]), nonce=nonce[16:])


class XSalsa20PskConn(IRawConnection):
    """A raw connection wrapped in the PSK v1 layer (see the module docstring)."""

    def __init__(self, conn: IRawConnection, psk: bytes) -> None:
        if len(psk) != PSK_SIZE:
            raise ValueError("the pre-shared key is 32 bytes")
        self._conn = conn
        _prompt_tcp_locks(conn)
        self._psk = psk
        self.is_initiator = conn.is_initiator
        self._local_nonce = os.urandom(NONCE_SIZE)
        self._write_cipher = xsalsa20_cipher(psk, self._local_nonce)
        self._read_cipher: Salsa20.Salsa20Cipher | None = None
        # Decrypted bytes received but not yet handed out: self._plain[self._plain_at:].
        self._plain = b""
        self._plain_at = 0
        self._nonce_sent = False
        # Encrypt-then-write must keep key-stream order equal to byte order on the wire.
        self._write_lock = PromptLock()
        self._read_lock = PromptLock()

    async def _send_nonce_locked(self) -> None:
        if not self._nonce_sent:
            await self._conn.write(self._local_nonce)
            self._nonce_sent = True

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            await self._send_nonce_locked()
            await self._conn.write(self._write_cipher.encrypt(data))

    async def read(self, n: int | None = None) -> bytes:
        if not self._nonce_sent:
            # Both sides send their nonce first; waiting for the peer's before sending ours could
            # deadlock two readers.
            async with self._write_lock:
                await self._send_nonce_locked()
        async with self._read_lock:
            if self._read_cipher is None:
                self._read_cipher = xsalsa20_cipher(self._psk, await self._read_exactly(NONCE_SIZE))
            if n is not None and n < 1:
                if n < 0:
                    raise ValueError("read size must be None or >= 0")
                return b""
            if self._plain_at >= len(self._plain):
                data = await self._conn.read(READ_AHEAD if n is None else max(n, READ_AHEAD))
                if not data:
                    return b""
                # Every received byte is decrypted exactly once, in wire order.
                self._plain = self._read_cipher.decrypt(data)
                self._plain_at = 0
            return self._take(n)

    def _take(self, n: int | None) -> bytes:
        start = self._plain_at
        end = len(self._plain) if n is None else min(len(self._plain), start + n)
        self._plain_at = end
        whole = start == 0 and end == len(self._plain)
        chunk = self._plain if whole else self._plain[start:end]  # the whole receive: no copy
        if end == len(self._plain):
            self._plain = b""
            self._plain_at = 0
        return chunk

    async def _read_exactly(self, size: int) -> bytes:
        buffer = b""
        while len(buffer) < size:
            chunk = await self._conn.read(size - len(buffer))
            if not chunk:
                raise RawConnError("connection closed before the private-network nonce")
            buffer += chunk
        return buffer

    async def close(self) -> None:
        await self._conn.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._conn.get_remote_address()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self._conn.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self._conn.get_connection_type()


def _prompt_tcp_locks(conn: IRawConnection) -> None:
    """The TCP stream under this layer takes a lock per read and per write; only this layer
    reads and writes it, under its own locks, so free they need not be schedule points either."""
    tcp = getattr(conn, "stream", None)
    if isinstance(tcp, TrioTCPStream):
        tcp.read_lock = PromptLock()  # type: ignore[assignment]
        tcp.write_lock = PromptLock()  # type: ignore[assignment]


def _new_protected_conn(conn: IRawConnection, psk: str) -> IRawConnection:
    """Drop-in for ``libp2p.security.pnet.protector.new_protected_conn`` (``psk`` is 64 hex digits)."""
    try:
        key = bytes.fromhex(psk)
    except ValueError:
        raise ValueError("the pre-shared key must be 64 hex digits") from None
    return XSalsa20PskConn(conn, key)


def install() -> None:
    """Make py-libp2p's swarm (every host in this process) speak PSK v1 for ``psk=``. Idempotent."""
    _swarm.new_protected_conn = _new_protected_conn  # type: ignore[assignment]
