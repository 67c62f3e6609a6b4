"""Where the nodes of a live run sit, and what is between them.

A link layer decides, per node, the addresses it listens on and advertises, the API address the
harness reaches it on, and the command prefix that places its process (a network namespace, or
nothing); then it shapes and cuts the links between nodes while the run goes on.

* :class:`Direct`: loopback, nothing in between. Used when the scenario asks for no network
  conditions.
* :class:`RelayLinks` (``simulations/relay.py``): every node advertises the address of a user-space
  relay that holds each chunk for ``delay ± jitter`` (and paces it to the bandwidth), so nodes
  speak real libp2p over real sockets with emulated links. On loopback the relay cannot tell
  which node dialled, so the delay is per destination and partitions are refused; in network
  namespaces (root) it sees each node's own address and shapes and cuts each directed link.

:func:`detect` measures what the machine offers; :func:`simulations.link_choice.choose_links`
picks a layer for a scenario and says what it picked; the choice is recorded in ``results.json``
under ``links`` so a reader knows what a figure was measured with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

__all__ = ["Capabilities", "Direct", "LinkLayer", "LinkUnavailable", "Placement", "detect"]


class LinkUnavailable(RuntimeError):
    """The scenario needs a link feature this machine cannot provide; the message says which."""


@dataclass(frozen=True)
class Placement:
    """Where node i lives: its listen and announce multiaddrs, its API bind address, its command prefix."""

    listen: tuple[str, ...]
    api: str
    announce: tuple[str, ...] = ()
    wrapper: tuple[str, ...] = ()


class LinkLayer(Protocol):
    description: dict[str, Any]

    async def setup(self, nursery: trio.Nursery, count: int) -> None: ...

    def placement(self, index: int) -> Placement: ...

    def bootstrap_addr(self, index: int, info: dict[str, Any]) -> str: ...

    def attach(self, index: int, info: dict[str, Any]) -> None: ...

    async def partition(self, groups: tuple[tuple[int, ...], ...]) -> None: ...

    async def heal(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Capabilities:
    """What this machine can do for link emulation (measured, not assumed)."""

    root: bool
    netns: bool
    netem: bool
    tbf: bool
    iptables: bool
    notes: tuple[str, ...] = field(default_factory=tuple)


def _quiet(*command: str) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect() -> Capabilities:
    """Probe on a scratch namespace with a scratch veth: netns, netem, tbf, iptables."""
    notes: list[str] = []
    root = sys.platform.startswith("linux") and os.geteuid() == 0
    if not root:
        return Capabilities(False, False, False, False, False, ("not root: loopback only",))
    if shutil.which("ip") is None:
        return Capabilities(True, False, False, False, False, ("iproute2 (ip) not installed",))
    probe = f"vnprobe{os.getpid() % 100000}"
    netns = netem = tbf = False
    try:
        netns = _quiet("ip", "netns", "add", probe)
        if netns:
            netns = _quiet("ip", "-n", probe, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        if netns:
            netem = _quiet("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "pa", "root", "netem",
                           "delay", "1ms")
            tbf = _quiet("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "pb", "root", "tbf",
                         "rate", "1mbit", "burst", "32kbit", "latency", "50ms")
    finally:
        _quiet("ip", "netns", "del", probe)
    iptables = shutil.which("iptables") is not None and _quiet("iptables", "-V")
    if not netem:
        notes.append("tc netem is not available in this kernel: delay and jitter come from a user-space"
                     " relay")
    if not iptables:
        notes.append("iptables is not installed: random loss is unavailable")
    return Capabilities(True, netns, netem, tbf, iptables, tuple(notes))


class Direct:
    """Loopback, no shaping: every node on 127.0.0.1 with OS-chosen ports."""

    def __init__(self, reason: str) -> None:
        self.description: dict[str, Any] = {
            "mode": "loopback", "delay": "none", "jitter": "none", "loss": "none", "bandwidth": "none",
            "partitions": "none", "messages": [reason],
        }

    async def setup(self, nursery: trio.Nursery, count: int) -> None:
        return None

    def placement(self, index: int) -> Placement:
        return Placement(listen=("/ip4/127.0.0.1/tcp/0",), api="127.0.0.1:0")

    def bootstrap_addr(self, index: int, info: dict[str, Any]) -> str:
        return str(info["addrs"][0])

    def attach(self, index: int, info: dict[str, Any]) -> None:
        return None

    async def partition(self, groups: tuple[tuple[int, ...], ...]) -> None:
        raise LinkUnavailable("partitions need the emulated network")

    async def heal(self) -> None:
        return None

    def close(self) -> None:
        return None
