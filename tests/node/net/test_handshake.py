"""Connections still in the PSK/Noise handshake: per-address and total budget, short deadline.

The gate's rules are fed fake upgrades on a fake clock; one test holds real idle TCP connections
from another loopback address against a real host and dials it honestly meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import socket

import multiaddr
import pytest
import trio
import trio.testing
from libp2p.network.exceptions import SwarmException

from node.metrics import Metrics
from node.net.handshake import HandshakeGate, HandshakeLimits, install_handshake_gate
from node.net.host import build_host, dial
from protocol.identity import Identity


class FakeRaw:
    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.closed = False

    def get_remote_address(self) -> tuple[str, int]:
        return (self.ip, 4000)

    async def close(self) -> None:
        self.closed = True


def test_the_budget_is_per_address_and_in_all() -> None:
    gate = HandshakeGate(HandshakeLimits(pending_per_ip=2, pending_total=3))
    assert gate.try_begin("10.0.0.1") is None
    assert gate.try_begin("10.0.0.1") is None
    assert gate.try_begin("10.0.0.1") == "ip"
    assert gate.try_begin("10.0.0.2") is None
    assert gate.try_begin("10.0.0.3") == "system"
    gate.end("10.0.0.1")
    assert gate.try_begin("10.0.0.3") is None
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        gate.end(ip)
    assert gate.pending_total == 0 and gate.pending("10.0.0.1") == 0


async def test_an_upgrade_over_budget_is_closed_at_once_and_costs_nothing() -> None:
    metrics = Metrics()
    gate = HandshakeGate(HandshakeLimits(pending_per_ip=1, pending_total=8), metrics)
    release = trio.Event()

    async def slow_upgrade(raw: object, maddr: object) -> object:
        await release.wait()
        return "muxed"

    gated = gate.wrap(slow_upgrade)  # type: ignore[arg-type]
    address = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gated, FakeRaw("10.0.0.9"), address)
        await trio.testing.wait_all_tasks_blocked()
        second = FakeRaw("10.0.0.9")
        with pytest.raises(SwarmException):
            await gated(second, address)  # type: ignore[arg-type]
        assert second.closed
        assert gate.refused.get(scope="ip") == 1
        release.set()
    assert gate.pending_total == 0


async def test_a_handshake_that_stalls_is_closed_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = HandshakeGate(HandshakeLimits(deadline=3.0))

    async def stalled(raw: object, maddr: object) -> object:
        await trio.sleep_forever()

    raw = FakeRaw("10.0.0.7")
    started = trio.current_time()
    with pytest.raises(SwarmException):
        await gate.wrap(stalled)(raw, multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/1"))  # type: ignore[arg-type]
    assert raw.closed
    assert trio.current_time() - started <= 3.0 + 2.0 + 0.01
    assert gate.timeouts.get() == 1 and gate.pending_total == 0


def _idle_connections(port: int, source: str, count: int) -> list[socket.socket]:
    """TCP connections that never send a byte (the keyless attacker of issue 18)."""
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        held.append(sock)
    return held


async def test_idle_keyless_connections_from_one_address_cannot_keep_honest_peers_out() -> None:
    psk = os.urandom(32)
    target = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
    gate = install_handshake_gate(target)  # already installed by build_host: the same gate
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with target.run(listen_addrs=listen):
        address = str(target.get_addrs()[0])
        port = int(multiaddr.Multiaddr(address).value_for_protocol("tcp"))
        held = _idle_connections(port, "127.0.0.2", 300)
        try:
            with trio.fail_after(30):  # the kernel's backlog may drop some; most reach the gate
                while gate.refused.get(scope="ip") < 100:
                    await trio.sleep(0.05)
            assert gate.pending("127.0.0.2") == gate.limits.pending_per_ip
            connected = 0
            for _ in range(4):
                honest = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
                async with honest.run(listen_addrs=listen):
                    connected += await dial(honest, address, timeout=10.0)
            assert connected == 4
            with trio.fail_after(gate.limits.deadline + 20):  # the idle ones are closed on time
                while gate.pending("127.0.0.2"):
                    await trio.sleep(0.1)
            assert gate.timeouts.get() >= gate.limits.pending_per_ip
        finally:
            for sock in held:
                sock.close()
