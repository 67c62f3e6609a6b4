"""The private-network layer (node.net.pnet) is PSK v1: XSalsa20 with 24-byte nonces, as go and js speak it.

py-libp2p 0.8.1's own ``psk=`` layer uses Salsa20 with 8-byte nonces, so a js-libp2p peer with
the right key could not connect (test_js_interop shows the real connection). Here: the cipher
against libsodium, and the connection wrapper over an in-memory byte pipe.
"""

from __future__ import annotations

import itertools
import os

import nacl.secret
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from libp2p.abc import ConnectionType, IRawConnection
from libp2p.network.connection.exceptions import RawConnError
from multiaddr import Multiaddr

from node.net import pnet


def test_hsalsa20_matches_the_nacl_reference_vector() -> None:
    # NaCl's tests/core1.c: HSalsa20(shared secret, 16 zero bytes) = "firstkey".
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    first_key = bytes.fromhex("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389")
    assert pnet.hsalsa20(shared, bytes(16)) == first_key


@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=24, max_size=24),
    message=st.binary(min_size=1, max_size=700),
    chunk=st.integers(min_value=1, max_value=130),
)
def test_xsalsa20_stream_equals_libsodium(key: bytes, nonce: bytes, message: bytes, chunk: int) -> None:
    """secretbox = Poly1305 tag || message XOR XSalsa20 stream from byte 32; chunked calls keep state."""
    sealed = nacl.secret.SecretBox(key).encrypt(message, nonce)
    expected = sealed.ciphertext[nacl.secret.SecretBox.MACBYTES :]
    cipher = pnet.xsalsa20_cipher(key, nonce)
    cipher.encrypt(bytes(32))
    got = b"".join(cipher.encrypt(message[i : i + chunk]) for i in range(0, len(message), chunk))
    assert got == expected


def test_wrong_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        pnet.xsalsa20_cipher(bytes(31), bytes(24))
    with pytest.raises(ValueError):
        pnet.xsalsa20_cipher(bytes(32), bytes(8))  # py-libp2p 0.8.1's nonce size
    with pytest.raises(ValueError):
        pnet._new_protected_conn(_PipeConn(trio.testing.memory_stream_pair()[0], True), "zz" * 32)


_MemoryStream = trio.StapledStream


class _PipeConn(IRawConnection):
    """An in-memory raw connection (one end of a trio memory stream pair)."""

    def __init__(self, stream: _MemoryStream, initiator: bool) -> None:
        self._stream = stream
        self.is_initiator = initiator
        self.sent = bytearray()

    async def read(self, n: int | None = None) -> bytes:
        return bytes(await self._stream.receive_some(n))

    async def write(self, data: bytes) -> None:
        self.sent += data
        await self._stream.send_all(data)

    async def close(self) -> None:
        await self._stream.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 1)

    def get_transport_addresses(self) -> list[Multiaddr]:
        return []

    def get_connection_type(self) -> ConnectionType:
        return ConnectionType.DIRECT


async def test_both_sides_reading_first_do_not_deadlock_and_bytes_round_trip() -> None:
    key = os.urandom(32)
    left_raw, right_raw = trio.testing.memory_stream_pair()
    left_pipe, right_pipe = _PipeConn(left_raw, True), _PipeConn(right_raw, False)
    left = pnet._new_protected_conn(left_pipe, key.hex())
    right = pnet._new_protected_conn(right_pipe, key.hex())
    assert left.is_initiator and not right.is_initiator
    received: dict[str, bytes] = {}

    async def read_then_answer(conn: IRawConnection, name: str, answer: bytes) -> None:
        received[name] = await conn.read(100)
        await conn.write(answer)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_then_answer, right, "right", b"pong")
            await trio.sleep(0.01)  # the right side is already blocked reading
            await left.write(b"ping")
            received["left"] = await left.read(100)
    assert received == {"right": b"ping", "left": b"pong"}
    # On the wire: a 24-byte nonce, then ciphertext (never the plaintext).
    assert len(left_pipe.sent) == pnet.NONCE_SIZE + 4 and b"ping" not in left_pipe.sent
    nonce = bytes(left_pipe.sent[: pnet.NONCE_SIZE])
    assert pnet.xsalsa20_cipher(key, nonce).decrypt(bytes(left_pipe.sent[pnet.NONCE_SIZE :])) == b"ping"


async def test_a_different_key_yields_garbage_not_plaintext() -> None:
    left_raw, right_raw = trio.testing.memory_stream_pair()
    left = pnet._new_protected_conn(_PipeConn(left_raw, True), os.urandom(32).hex())
    right = pnet._new_protected_conn(_PipeConn(right_raw, False), os.urandom(32).hex())
    with trio.fail_after(5):
        await left.write(b"/multistream/1.0.0\n")
        assert await right.read(100) != b"/multistream/1.0.0\n"


async def test_a_peer_that_closes_before_its_nonce_is_a_connection_error() -> None:
    left_raw, right_raw = trio.testing.memory_stream_pair()
    right = pnet._new_protected_conn(_PipeConn(right_raw, False), os.urandom(32).hex())
    await left_raw.send_all(b"short")
    await left_raw.send_stream.aclose()  # half-close: 5 of the 24 nonce bytes, then EOF
    with trio.fail_after(5), pytest.raises(RawConnError):
        await right.read(100)


class _ScriptedConn(_PipeConn):
    """A raw connection whose receives are given in advance, as a socket would hand them out:
    each read returns at most ``n`` bytes of the next receive (the rest stays for the next read);
    when the script is done, EOF."""

    def __init__(self, receives: list[bytes]) -> None:
        super().__init__(trio.testing.memory_stream_pair()[0], False)
        self._receives = [chunk for chunk in receives if chunk]
        self.asked: list[int | None] = []

    async def read(self, n: int | None = None) -> bytes:
        self.asked.append(n)
        await trio.lowlevel.checkpoint()
        if not self._receives:
            return b""
        chunk = self._receives.pop(0)
        if n is not None and n < len(chunk):
            self._receives.insert(0, chunk[n:])
            chunk = chunk[:n]
        return chunk

    async def write(self, data: bytes) -> None:
        self.sent += data


def _peer_wire(key: bytes, plaintext: bytes) -> bytes:
    """What a PSK v1 peer sends: its nonce, then the plaintext XORed with its key stream."""
    nonce = os.urandom(pnet.NONCE_SIZE)
    return nonce + pnet.xsalsa20_cipher(key, nonce).encrypt(plaintext)


async def test_a_length_then_its_message_from_one_receive_cost_one_socket_read() -> None:
    key = os.urandom(32)
    message = os.urandom(900)
    plaintext = len(message).to_bytes(2, "big") + message
    wire = _peer_wire(key, plaintext)
    raw = _ScriptedConn([wire[: pnet.NONCE_SIZE], wire[pnet.NONCE_SIZE :]])
    conn = pnet.XSalsa20PskConn(raw, key)
    with trio.fail_after(5):
        assert await conn.read(2) == plaintext[:2]
        assert await conn.read(900) == message
        assert await conn.read(10) == b""  # EOF after the buffer is spent
    # The nonce read is exact (24), then one receive for length and body, then the EOF.
    assert raw.asked == [pnet.NONCE_SIZE, pnet.READ_AHEAD, pnet.READ_AHEAD]


async def test_a_message_split_across_receives_is_handed_out_in_order_and_never_over_n() -> None:
    key = os.urandom(32)
    plaintext = os.urandom(300)
    wire = _peer_wire(key, plaintext)
    body = wire[pnet.NONCE_SIZE :]
    raw = _ScriptedConn([wire[:10], wire[10 : pnet.NONCE_SIZE] + body[:3], body[3:200], body[200:]])
    conn = pnet.XSalsa20PskConn(raw, key)
    with trio.fail_after(5):
        assert await conn.read(2) == plaintext[:2]  # the nonce's receive carried 3 bytes more
        assert await conn.read(100) == plaintext[2:3]  # what is buffered, without a receive
        assert await conn.read(100) == plaintext[3:103]
        assert await conn.read() == plaintext[103:200]  # n None: the rest of the buffer
        assert await conn.read() == plaintext[200:]
        assert await conn.read() == b""
        assert await conn.read(0) == b""
    with pytest.raises(ValueError):
        await conn.read(-1)


@given(
    plaintext=st.binary(min_size=1, max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3100), max_size=12),
    sizes=st.lists(st.one_of(st.none(), st.integers(min_value=1, max_value=1200)), min_size=1, max_size=40),
)
def test_any_split_into_receives_and_any_read_sizes_give_back_the_plaintext_in_order(
    plaintext: bytes, cuts: list[int], sizes: list[int | None]
) -> None:
    key = os.urandom(32)
    wire = _peer_wire(key, plaintext)
    bounds = sorted({0, len(wire), *(min(cut, len(wire)) for cut in cuts)})
    raw = _ScriptedConn([wire[a:b] for a, b in itertools.pairwise(bounds)])
    conn = pnet.XSalsa20PskConn(raw, key)
    got = bytearray()

    async def drain() -> None:
        with trio.fail_after(5):
            index = 0
            while True:
                size = sizes[index % len(sizes)]
                index += 1
                chunk = await conn.read(size)
                if not chunk:
                    return
                assert size is None or len(chunk) <= size
                got.extend(chunk)

    trio.run(drain)
    assert bytes(got) == plaintext
