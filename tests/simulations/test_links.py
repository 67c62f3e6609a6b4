"""The emulated links: the relay really delays, partitions really cut, and nothing is left behind.

The namespace test needs root (``ip netns``); without root it checks instead that a partitioned
scenario is refused with the reason, which is what the harness does on such a machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import trio

from simulations.link_choice import choose_links
from simulations.links import Capabilities, LinkUnavailable
from simulations.relay import RelayLinks
from simulations.scenario import Network, Partition, parse_scenario

NO_CAPS = Capabilities(False, False, False, False, False, ("test: loopback",))


async def _echo_server(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(1024):
                await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, echo, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def test_the_relay_holds_each_direction_for_the_link_delay() -> None:
    delay_ms = 40.0
    links = RelayLinks(Network(delay_ms, 0.0, 0.0, 0, ()), NO_CAPS, namespaces=False)
    async with trio.open_nursery() as nursery:
        port = await _echo_server(nursery)
        await links.setup(nursery, 1)
        links.route(0, "127.0.0.1", port)
        stream = await trio.open_tcp_stream(*links.relay_address(0))
        async with stream:
            rtts = []
            for _ in range(3):
                started = trio.current_time()
                await stream.send_all(b"ping")
                assert await stream.receive_some(16) == b"ping"
                rtts.append(trio.current_time() - started)
        links.close()
        nursery.cancel_scope.cancel()
    # There and back: two link delays at least (an upper bound would only measure the machine).
    assert min(rtts) >= 2 * delay_ms / 1000
    assert links.description["delay"] == "relay" and links.description["mode"] == "loopback"
    assert links.relayed_bytes == 2 * 3 * len(b"ping")


async def test_jitter_never_reorders_a_stream() -> None:
    links = RelayLinks(Network(20.0, 20.0, 0.0, 0, ()), NO_CAPS, namespaces=False, seed=7)
    payload = bytes(range(256)) * 64
    async with trio.open_nursery() as nursery:
        port = await _echo_server(nursery)
        await links.setup(nursery, 1)
        links.route(0, "127.0.0.1", port)
        stream = await trio.open_tcp_stream(*links.relay_address(0))
        received = bytearray()
        async with stream:
            for start in range(0, len(payload), 512):
                await stream.send_all(payload[start:start + 512])
            with trio.fail_after(30):
                while len(received) < len(payload):
                    received += await stream.receive_some(65536)
        links.close()
        nursery.cancel_scope.cancel()
    assert bytes(received) == payload


def test_loopback_refuses_partitions_and_loss_with_the_reason() -> None:
    text = textwrap.dedent("""\
        name = "p"
        [nodes]
        count = 4
        [workload]
        duration_s = 10
        concurrency = 1
        [network]
        delay_ms = 5
        [[network.partitions]]
        at_s = 2
        heal_s = 4
        groups = [[0, 1], [2, 3]]
        """)
    with pytest.raises(LinkUnavailable, match="partitions need network namespaces"):
        choose_links(parse_scenario(text), force_loopback=True)


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


_DIAL = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(5)
s.sendall(b"hello")
try:
    print(s.recv(16).decode() or "closed")
except OSError as exc:
    print("error", exc)
"""

_SERVE = """
import socket
server = socket.create_server(("0.0.0.0", 4001))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    data = conn.recv(16)
    conn.sendall(data)
    conn.close()
"""


@pytest.mark.network
async def test_namespaces_partition_cuts_links_and_close_removes_everything() -> None:
    if os.geteuid() != 0:
        text = ("name='p'\n[nodes]\ncount=2\n[workload]\nduration_s=5\nconcurrency=1\nreplicas=1\n"
                "[network]\ndelay_ms=5\n[[network.partitions]]\nat_s=1\nheal_s=2\ngroups=[[0],[1]]\n")
        with pytest.raises(LinkUnavailable, match="network namespaces"):
            choose_links(parse_scenario(text))
        return
    before = _netns_list()
    caps = Capabilities(True, True, False, False, False)
    network = Network(10.0, 0.0, 0.0, 0, (Partition(1.0, 2.0, ((0,), (1,))),))
    links = RelayLinks(network, caps, namespaces=True)
    server: subprocess.Popen[str] | None = None
    try:
        async with trio.open_nursery() as nursery:
            await links.setup(nursery, 2)
            assert links.ns is not None
            assert links.ns.name(0) in _netns_list()
            server = subprocess.Popen([*links.ns.wrapper(1), sys.executable, "-c", _SERVE],
                                      stdout=subprocess.PIPE, text=True)
            assert server.stdout is not None
            assert await trio.to_thread.run_sync(server.stdout.readline) == "ready\n"
            links.route(1, links.ns.ip(1), 4001)
            host, port = links.relay_address(1)

            async def dial() -> str:
                result = await trio.run_process(
                    [*links.ns.wrapper(0), sys.executable, "-c", _DIAL, host, str(port)],
                    capture_stdout=True, check=False)
                return result.stdout.decode().strip()

            assert await dial() == "hello"
            await links.partition(((0,), (1,)))
            assert await dial() in ("closed", "error [Errno 104] Connection reset by peer")
            await links.heal()
            assert await dial() == "hello"
            assert links.description["mode"] == "netns" and links.description["per_link"]
            nursery.cancel_scope.cancel()
    finally:
        if server is not None:
            server.kill()
            server.wait()
        links.close()
    assert _netns_list() == before


@pytest.mark.network
def test_sim_clean_removes_leftover_namespaces_and_bridges() -> None:
    from simulations.netns import clean_leftovers

    if os.geteuid() != 0:
        assert clean_leftovers()[0].startswith("not root")
        return
    before = _netns_list()
    dead = 9_999_999  # above any pid_max: the harness that made these is certainly gone
    leftover_ns, leftover_bridge = f"vsn{dead}-left", f"vsb{dead}"
    subprocess.run(["ip", "netns", "add", leftover_ns], check=True)
    subprocess.run(["ip", "link", "add", leftover_bridge, "type", "bridge"], check=True)
    lines = clean_leftovers()
    assert f"removed namespace {leftover_ns}" in lines
    assert f"removed interface {leftover_bridge}" in lines
    assert _netns_list() == before
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert leftover_bridge not in links


@pytest.mark.network
def test_loss_bandwidth_and_isolation_rules_are_installed_and_removed() -> None:
    from simulations.links import detect
    from simulations.netns import Namespaces

    caps = detect()
    if not (caps.netns and caps.iptables and caps.tbf):
        # Without them choose_links refuses loss with the reason (see the loopback test above).
        assert caps.notes
        return
    before = _netns_list()
    spaces = Namespaces(2)
    try:
        spaces.create()
        spaces.isolate()
        spaces.drop_randomly(0.19)
        spaces.cap_bandwidth(2000)
        rules = subprocess.run([*spaces.wrapper(1), "iptables", "-S"], capture_output=True, text=True,
                               check=True).stdout
        # Two segments per direction, each dropping q = 1 - sqrt(1 - 0.19) = 0.1.
        assert rules.count("--probability 0.10000") == 2
        assert f"! -s {spaces.hub_ip}/32" in rules and "--dport 4001" in rules
        qdisc = subprocess.run([*spaces.wrapper(0), "tc", "qdisc", "show", "dev", "eth0"],
                               capture_output=True, text=True, check=True).stdout
        assert "tbf" in qdisc and "rate 2Mbit" in qdisc
    finally:
        assert spaces.close() == []
    assert _netns_list() == before
