"""Emulated links in user space: a TCP relay in front of every node that delays, paces and cuts.

tc netem is absent on these machines (its qdisc kind is unknown to the kernel), so delay and
jitter cannot come from the kernel. Instead every node advertises (``announce``) the address of its
own relay, and every byte another node sends it passes through that relay:

* each chunk read is released ``delay ± jitter`` after it arrived (jitter uniform in
  [-jitter, +jitter], seeded), never before the previous chunk of the same direction — TCP is in
  order, so jitter stretches the stream rather than reordering it;
* both directions of a relayed connection are delayed, so a message from A to B and B's answer
  each take one link delay, as on a real link;
* with network namespaces (root) the relay sees which node dialled (each namespace has its own
  address), so partitions cut exactly the links between groups: open connections are closed and
  new ones refused until the heal. On loopback every dial comes from 127.0.0.1, so partitions are
  refused there (see :func:`simulations.link_choice.choose_links`);
* bandwidth: ``tbf`` on the veths when the kernel has it (namespaces), else the relay paces each
  direction to ``bandwidth_kbit``.

Loss comes from iptables in the namespaces (:mod:`simulations.netns`); TCP turns it into
retransmissions, which is what a lossy link does to libp2p. The harness's own HTTP traffic (API,
metrics) goes straight to the nodes, not through the relays, so sampling does not disturb links.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from simulations.links import Capabilities, Placement
from simulations.netns import API_PORT, NODE_PORT, Namespaces
from simulations.scenario import Network

__all__ = ["RelayLinks", "listening_ports"]

CHUNK = 64 * 1024
DIAL_TIMEOUT_S = 5.0
QUEUE_CHUNKS = 256  # per direction: a slow reader backs the relay up, as a full link would


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (Linux /proc), found through its socket inodes."""
    inodes: set[str] = set()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{name}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}", encoding="ascii") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass(eq=False)  # identity: each connection is its own entry in the set
class _Connection:
    source: int | None
    target: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class RelayLinks:
    """One relay per node, in the harness process; namespaces per node when ``namespaces``."""

    def __init__(self, network: Network, caps: Capabilities, *, namespaces: bool, seed: int = 0) -> None:
        self.network = network
        self.caps = caps
        self.use_namespaces = namespaces
        self.ns: Namespaces | None = None
        self.rng = random.Random(seed)
        self.host = "127.0.0.1"
        self.ports: dict[int, int] = {}
        self.targets: dict[int, tuple[str, int]] = {}
        self.groups: dict[int, int] | None = None
        self.connections: set[_Connection] = set()
        self.relayed_bytes = 0
        self.accepted = 0
        bandwidth = "none"
        if network.bandwidth_kbit:
            bandwidth = "tbf" if namespaces and caps.tbf else "relay"
        messages = list(caps.notes)
        if namespaces:
            messages.append("network namespaces: one per node, veth pairs to a bridge; delay and jitter per"
                            " directed link from the user-space relay; partitions cut links in the relay")
        else:
            messages.append("loopback with a user-space relay per node: delay and jitter apply per"
                            " destination (the relay cannot tell which node dialled); no partitions, no loss")
        self.description: dict[str, Any] = {
            "mode": "netns" if namespaces else "loopback",
            "delay": "relay" if network.delay_ms else "none",
            "jitter": "relay" if network.jitter_ms else "none",
            "loss": "iptables" if network.loss else "none",
            "bandwidth": bandwidth,
            "partitions": "relay" if network.partitions else "none",
            "per_link": namespaces,
            "delay_ms": network.delay_ms, "jitter_ms": network.jitter_ms, "loss_rate": network.loss,
            "bandwidth_kbit": network.bandwidth_kbit,
            "messages": messages,
        }

    # ------------------------------------------------------------------------ lifecycle

    async def setup(self, nursery: trio.Nursery, count: int) -> None:
        if self.use_namespaces:
            self.ns = Namespaces(count)
            try:
                await trio.to_thread.run_sync(self.ns.create)
                if self.caps.iptables:
                    await trio.to_thread.run_sync(self.ns.isolate)
                if self.network.bandwidth_kbit and self.caps.tbf:
                    await trio.to_thread.run_sync(self.ns.cap_bandwidth, self.network.bandwidth_kbit)
                if self.network.loss:
                    await trio.to_thread.run_sync(self.ns.drop_randomly, self.network.loss)
            except BaseException:
                self.ns.close()
                raise
            self.host = self.ns.hub_ip
        for index in range(count):
            listeners = await trio.open_tcp_listeners(0, host=self.host)
            self.ports[index] = listeners[0].socket.getsockname()[1]
            nursery.start_soon(partial(trio.serve_listeners, partial(self._handle, index), listeners))

    def placement(self, index: int) -> Placement:
        announce = (f"/ip4/{self.host}/tcp/{self.ports[index]}",)
        if self.ns is not None:
            ip = self.ns.ip(index)
            return Placement(listen=(f"/ip4/{ip}/tcp/{NODE_PORT}",), api=f"{ip}:{API_PORT}",
                             announce=announce, wrapper=self.ns.wrapper(index))
        return Placement(listen=("/ip4/127.0.0.1/tcp/0",), api="127.0.0.1:0", announce=announce)

    def bootstrap_addr(self, index: int, info: dict[str, Any]) -> str:
        return f"/ip4/{self.host}/tcp/{self.ports[index]}/p2p/{info['peer_id']}"

    def attach(self, index: int, info: dict[str, Any]) -> None:
        """Learn where node ``index`` really listens (its advertised address is the relay's)."""
        if self.ns is not None:
            self.route(index, self.ns.ip(index), NODE_PORT)
            return
        api_port = int(str(info["api_url"]).rsplit(":", 1)[1].split("/")[0])
        ports = listening_ports(int(info["pid"])) - {api_port}
        if len(ports) != 1:
            raise RuntimeError(
                f"node {index}: cannot tell its libp2p port among listening ports {sorted(ports)}"
            )
        self.route(index, "127.0.0.1", ports.pop())

    def route(self, index: int, host: str, port: int) -> None:
        """Relay ``index`` forwards to ``host:port`` from now on."""
        self.targets[index] = (host, port)

    def relay_address(self, index: int) -> tuple[str, int]:
        """Where others reach node ``index`` (through its relay)."""
        return self.host, self.ports[index]

    def close(self) -> None:
        self.description["relayed_bytes"] = self.relayed_bytes
        self.description["relayed_connections"] = self.accepted
        for connection in list(self.connections):
            connection.scope.cancel()
        if self.ns is not None:
            failures = self.ns.close()
            if failures:
                self.description["messages"].append("cleanup failures: " + "; ".join(failures))

    # ------------------------------------------------------------------------ partitions

    def _cut(self, source: int | None, target: int) -> bool:
        if self.groups is None or source is None:
            return False
        return self.groups.get(source) != self.groups.get(target)

    async def partition(self, groups: tuple[tuple[int, ...], ...]) -> None:
        self.groups = {node: g for g, members in enumerate(groups) for node in members}
        for connection in list(self.connections):
            if self._cut(connection.source, connection.target):
                connection.scope.cancel()

    async def heal(self) -> None:
        self.groups = None

    # ------------------------------------------------------------------------ relaying

    def _delay(self) -> float:
        spread = self.network.jitter_ms
        jitter = self.rng.uniform(-spread, spread) if spread else 0.0
        return max(0.0, self.network.delay_ms + jitter) / 1000.0

    async def _handle(self, target: int, downstream: trio.SocketStream) -> None:
        source: int | None = None
        if self.ns is not None:
            with contextlib.suppress(OSError, IndexError):
                source = self.ns.index_of(downstream.socket.getpeername()[0])
        address = self.targets.get(target)
        if address is None or self._cut(source, target):
            await downstream.aclose()
            return
        connection = _Connection(source, target)
        self.connections.add(connection)
        self.accepted += 1
        try:
            with connection.scope:
                with trio.move_on_after(DIAL_TIMEOUT_S) as dial:
                    upstream = await trio.open_tcp_stream(*address)
                if dial.cancelled_caught:
                    return
                async with upstream, downstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pipe, upstream, downstream, nursery.cancel_scope)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self.connections.discard(connection)
            with contextlib.suppress(Exception):
                await trio.aclose_forcefully(downstream)

    async def _pipe(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        """Copy one direction, holding each chunk for the link delay; closes both ends when done."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](QUEUE_CHUNKS)
        rate = self.network.bandwidth_kbit * 1000 / 8 if self.description["bandwidth"] == "relay" else 0.0

        async def reader() -> None:
            last = 0.0
            async with send:
                try:
                    while True:
                        data = await source.receive_some(CHUNK)
                        if not data:
                            return
                        last = max(last, trio.current_time() + self._delay())
                        await send.send((last, data))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return

        async def writer() -> None:
            free_at = 0.0
            async with receive:
                try:
                    async for release, data in receive:
                        await trio.sleep_until(max(release, free_at))
                        await sink.send_all(data)
                        self.relayed_bytes += len(data)
                        if rate:
                            free_at = max(trio.current_time(), free_at) + len(data) / rate
                    await sink.send_eof()  # the sender half-closed: pass it on, keep the other direction
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    scope.cancel()  # a reset on one side resets the whole connection

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)

    @property
    def connection_count(self) -> int:
        return len(self.connections)
