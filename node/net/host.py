"""The libp2p host: TCP + Noise (only) + yamux + a per-testnet pre-shared key, and a persistent identity.

Why each choice (see shared notes on py-libp2p 0.8.1):

* ``new_host()`` by default also offers TLS, secio and *plaintext* and accepts plaintext inbound
  connections, where peer ids can be spoofed. We pass ``sec_opt`` with Noise alone.
* A PSK (libp2p private network) makes a testnet unreachable to anyone without its key. A peer
  with a different key does not fail fast, it hangs, so every dial here has a deadline.
* ``max_connections_per_peer=1``: with the default (3) every dial waits out a 250 ms
  "happy eyeballs" delay after it has already succeeded; with 1 it returns at once (~10 ms).
* An exception escaping a raw stream handler kills the connection or the whole swarm, so every
  inbound stream, py-libp2p's own protocols included, passes one isolation point
  (:mod:`node.net.boundary`), and the host is built with its guard (:mod:`node.net.guard`:
  resource limits, peer scores and bans, connection admission that returns inbound slots).
  :func:`wrap_handler` adds a deadline and polite close/reset for the node's own handlers.
* Below the streams, :mod:`node.net.muxer` offers yamux alone (py-libp2p also offers mplex,
  where one bad frame ended the process) with strict frames and per-connection stream limits;
  :mod:`node.net.handshake` bounds connections still in the PSK/Noise handshake.
"""

from __future__ import annotations

import functools
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from node.keyfile import IdentityFileError
from node.metrics import Metrics
from node.net import guard as net_guard
from node.net import pnet, signed_records
from node.net.boundary import report_stream_failure
from node.net.handshake import install_handshake_gate
from node.net.limits import LimitSettings
from node.net.muxer import install_muxer
from node.net.peerstore import SafePeerStore
from node.net.yamux import GuardedYamux
from protocol.identity import Identity

__all__ = [
    "DIAL_TIMEOUT",
    "FrameError",
    "StreamHandler",
    "build_host",
    "dial",
    "dial_explained",
    "dial_failure_cause",
    "key_pair_for",
    "peer_id_of",
    "read_frame",
    "remote_peer_id",
    "wrap_handler",
    "write_frame",
]

log = logging.getLogger("veilnet.host")

StreamHandler = Callable[[INetStream], Awaitable[None]]

# A dial that has not finished by then is abandoned. Loopback connects take ~10 ms; a PSK
# mismatch never fails on its own, it just hangs.
DIAL_TIMEOUT = 5.0


class FrameError(ValueError):
    """A length-prefixed frame was truncated, empty where forbidden, or over its size limit."""


# ------------------------------------------------------------------------------------ identity


def key_pair_for(identity: Identity) -> KeyPair:
    """libp2p's key pair for the same Ed25519 seed, so the libp2p peer id equals ``identity.peer_id``."""
    key_pair = create_new_key_pair(identity.seed)
    if key_pair.public_key.to_bytes() != identity.public_key:
        raise IdentityFileError("libp2p derived a different public key from the seed")
    return key_pair


# ---------------------------------------------------------------------------------------- host


def local_ipv4_addresses() -> list[str]:
    """This machine's IPv4 interface addresses, non-loopback first (Linux ioctl; loopback elsewhere)."""
    found: list[str] = []
    try:
        import fcntl

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _index, name in socket.if_nameindex():
                request = struct.pack("256s", name.encode()[:15])
                try:
                    reply = fcntl.ioctl(sock.fileno(), 0x8915, request)  # SIOCGIFADDR
                except OSError:
                    continue  # interface without an IPv4 address
                found.append(socket.inet_ntoa(reply[20:24]))
    except (ImportError, OSError):
        pass
    ordered = sorted(set(found), key=lambda ip: (ip.startswith("127."), ip))
    return ordered or ["127.0.0.1"]


def advertised_addrs(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """What we tell peers (identify, bundles): a wildcard listen address becomes one address per
    local interface, because nobody can dial ``0.0.0.0``."""
    out: list[multiaddr.Multiaddr] = []
    for addr in candidates:
        text = str(addr)
        if text.startswith("/ip4/0.0.0.0/"):
            rest = text[len("/ip4/0.0.0.0") :]
            out.extend(multiaddr.Multiaddr(f"/ip4/{ip}{rest}") for ip in local_ipv4_addresses())
        else:
            out.append(addr)
    return list(dict.fromkeys(out))


def build_host(
    identity: Identity,
    psk: bytes,
    listen_addrs: Sequence[str],
    announce_addrs: Sequence[str] = (),
    target_peers: int = 12,
    *,
    limits: LimitSettings | None = None,
    metrics: Metrics | None = None,
) -> IHost:
    """A host that speaks only TCP + Noise + yamux inside the private network keyed by ``psk``.

    ``announce_addrs`` (e.g. a public address behind NAT) replace what the host advertises;
    otherwise wildcard listen addresses are expanded to the interface addresses. py-libp2p's
    auto-connector aims at the midpoint of the watermarks (default 200 connections); ours aim at
    ``target_peers`` so a large network is not dialled wholesale. ``limits`` (the node config's
    ``[limits]``) and ``metrics`` (the node's registry) go to the host's guard; without them the
    guard uses the defaults and a registry of its own (``guard_of(host).metrics``).
    """
    if len(psk) != 32:
        raise ValueError("the pre-shared key is 32 bytes")
    key_pair = key_pair_for(identity)
    pnet.install()  # py-libp2p's own psk= layer is not the PSK v1 wire format (see node.net.pnet)
    signed_records.install()  # each distinct peer record is opened once, not once per message
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    addrs = [multiaddr.Multiaddr(addr) for addr in listen_addrs]
    peerstore = SafePeerStore()
    host = new_host(
        key_pair=key_pair,
        peerstore_opt=peerstore,  # bounded, linear, addrs() of a departed peer is []
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_preference="YAMUX",
        listen_addrs=addrs,
        psk=psk.hex(),
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            dial_timeout=DIAL_TIMEOUT,
            min_connections=target_peers,
            low_watermark=target_peers,
            high_watermark=target_peers,  # the auto-connector aims at the watermarks' midpoint
            max_connections=max(300, 8 * target_peers),
        ),
        enable_mDNS=False,
        announce_addrs=[multiaddr.Multiaddr(addr) for addr in announce_addrs] or None,
        addrs_factory=None if announce_addrs else advertised_addrs,
    )
    if host.get_id().to_bytes() != identity.peer_id:
        raise IdentityFileError("libp2p host peer id differs from the node identity")
    net_guard.install(host, limits, metrics)
    install_muxer(host, GuardedYamux)  # yamux only, strict frames; faults and buffers go to the guard
    install_handshake_gate(host)  # keyless connections: a small budget per address, 6 s
    network = host.get_network()
    peerstore.set_protection(lambda peer: bool(network.get_connections(peer)))
    return host


async def dial(
    host: IHost, addr: str | multiaddr.Multiaddr | PeerInfo, timeout: float = DIAL_TIMEOUT
) -> bool:
    """Connect to a peer within ``timeout``; False (logged at DEBUG) instead of raising or hanging."""
    return (await dial_explained(host, addr, timeout)) is None


async def dial_explained(
    host: IHost, addr: str | multiaddr.Multiaddr | PeerInfo, timeout: float = DIAL_TIMEOUT
) -> str | None:
    """Like :func:`dial`; None when connected, else the likely cause in words (for an operator)."""
    try:
        info = addr if isinstance(addr, PeerInfo) else info_from_p2p_addr(multiaddr.Multiaddr(str(addr)))
    except Exception as exc:
        log.warning("cannot dial %s: %s", addr, exc)
        return f"not a dialable address: {exc}"
    if info.peer_id == host.get_id():
        return "that is this node's own peer id"
    with trio.move_on_after(timeout):
        try:
            await host.connect(info)
            return None
        except Exception as exc:
            log.debug("dial %s failed: %s", info.peer_id, exc)
            return dial_failure_cause(exc)
    log.debug("dial %s timed out after %.1fs (different pre-shared key?)", info.peer_id, timeout)
    return (
        f"no handshake within {timeout:.0f} s: most likely a pre-shared key mismatch"
        " (is this the testnet's own testnet.toml?), or a firewall dropping packets"
    )


def _exception_text(exc: BaseException, seen: set[int] | None = None) -> str:
    """Every message in an exception's cause chain and groups, lower-cased (py-libp2p wraps the
    transport's error two or three levels deep)."""
    seen = seen if seen is not None else set()
    if id(exc) in seen:
        return ""
    seen.add(id(exc))
    parts = [f"{type(exc).__name__}: {exc}"]
    for inner in (exc.__cause__, exc.__context__, *getattr(exc, "exceptions", ())):
        if isinstance(inner, BaseException):
            parts.append(_exception_text(inner, seen))
    for arg in exc.args:
        if isinstance(arg, BaseException):
            parts.append(_exception_text(arg, seen))
        elif isinstance(arg, (list, tuple)):
            parts.extend(_exception_text(a, seen) for a in arg if isinstance(a, BaseException))
    return " | ".join(parts).lower()


def dial_failure_cause(exc: BaseException) -> str:
    """The likely cause of a failed dial, from what the transport and handshake said ("" when
    py-libp2p did not even try: it still remembers the last failure)."""
    text = _exception_text(exc)
    if "negative cache" in text:
        return ""  # py-libp2p refused to redial so soon: nothing new to say
    if "gaierror" in text or "name or service not known" in text or "resolve" in text:
        return "cannot resolve the address's host name (check the spelling, or use an IP address)"
    if "refused" in text or "errno 111" in text:
        return "connection refused: nothing listens at that address and port (is the node running?)"
    if "peer id" in text or "peerid" in text or "mismatch" in text or "invalid remote" in text:
        return "the node there has another peer id than the address's /p2p/<id> (copy its current address)"
    if "no route" in text or "unreachable" in text or "timed out" in text:
        return "the host is unreachable (check the address and the network)"
    return f"the dial failed: {text[:300]}"


def peer_id_of(peer: ID | bytes) -> bytes:
    return peer if isinstance(peer, bytes) else peer.to_bytes()


def remote_peer_id(stream: INetStream) -> ID:
    """The Noise-authenticated peer on the other end of ``stream``."""
    return stream.muxed_conn.peer_id


# ------------------------------------------------------------------------------ stream handling


def wrap_handler(
    protocol_id: str,
    handler: StreamHandler,
    *,
    timeout: float | None = None,
    on_error: Callable[[str, str, BaseException], None] | None = None,
) -> StreamHandler:
    """Make a raw stream handler safe to register: nothing it raises can reach the swarm.

    Any exception is logged, reported to ``on_error(protocol_id, peer_text, exc)`` and answered
    with a stream reset; the connection and every other stream carry on. ``timeout`` bounds the
    whole exchange so a silent peer cannot hold a handler forever. Cancellation still propagates
    (the node is shutting down).
    """

    @functools.wraps(handler)
    async def wrapped(stream: INetStream) -> None:
        try:
            peer_text = remote_peer_id(stream).to_base58()
        except Exception:
            peer_text = "unknown"
        failure: BaseException | None = None
        try:
            if timeout is None:
                await handler(stream)
            else:
                with trio.fail_after(timeout):
                    await handler(stream)
        except Exception as exc:  # includes ExceptionGroup and trio.TooSlowError, not Cancelled
            failure = exc
        if failure is None:
            try:
                await stream.close()
            except Exception as exc:
                log.debug("%s: closing the stream from %s failed: %s", protocol_id, peer_text, exc)
            return
        log.info("%s: stream from %s reset: %s", protocol_id, peer_text, _describe(failure))
        report_stream_failure(failure)  # the boundary charges the peer (node.net.boundary)
        if on_error is not None:
            try:
                on_error(protocol_id, peer_text, failure)
            except Exception:
                log.exception("error callback failed")
        with trio.CancelScope(deadline=trio.current_time() + 1.0, shield=True):
            try:
                await stream.reset()
            except Exception as exc:
                log.debug("%s: reset failed: %s", protocol_id, exc)

    return wrapped


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_LENGTH = struct.Struct(">I")


async def read_exactly(stream: INetStream, size: int) -> bytes:
    """Read exactly ``size`` bytes (py-libp2p raises StreamEOF at EOF instead of returning b"")."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        try:
            chunk = await stream.read(remaining)
        except StreamEOF:
            raise FrameError(f"stream ended {remaining} bytes short") from None
        if not chunk:
            raise FrameError(f"stream ended {remaining} bytes short")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


async def read_frame(stream: INetStream, max_size: int) -> bytes:
    """One frame: a 4-byte big-endian length, then that many bytes (1 ≤ length ≤ ``max_size``)."""
    (length,) = _LENGTH.unpack(await read_exactly(stream, _LENGTH.size))
    if length == 0 or length > max_size:
        raise FrameError(f"frame length {length} outside 1..{max_size}")
    return await read_exactly(stream, length)


async def write_frame(stream: INetStream, payload: bytes) -> None:
    if not payload:
        raise FrameError("empty frames are not allowed")
    await stream.write(_LENGTH.pack(len(payload)) + payload)
