"""Network namespaces for a live run: one per node, joined by veth pairs to one bridge.

Layout (``<run>`` is the harness's pid, so two runs never share names and ``sim clean`` can tell
a live run's names from leftovers)::

    root namespace:  bridge  vsb<run>  10.213.<k>.254/24   (the harness, its relays, its HTTP client)
    namespace vsn<run>-<i>:  eth0 (veth)  10.213.<k>.<i+1>/24   node i: libp2p on :4001, API on :8700

Only addresses inside these namespaces and the bridge are used; the subnet is checked to be free
on this machine first. Delay and jitter are not the kernel's here (tc netem is absent on these
machines, see simulations/README.md); they come from the relay. This module adds bandwidth caps
(tbf on both ends of a node's veth) and random loss (an iptables ``statistic`` rule in the
node's namespace) when asked, and removes everything it created in :meth:`Namespaces.close`,
which runs on normal exit, on Ctrl-C and on errors; :func:`clean_leftovers` removes what a killed
harness left behind (names start with ``vsn``/``vsb``/``vsv`` and the harness's pid; a live
harness's names are kept).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["NAME_PREFIXES", "NamespaceError", "Namespaces", "clean_leftovers"]

NAME_PREFIXES = ("vsn", "vsb", "vsv")
NODE_PORT = 4001
API_PORT = 8700


class NamespaceError(RuntimeError):
    """An ``ip``/``tc``/``iptables`` command failed; the message has the command and its stderr."""


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise NamespaceError(f"{' '.join(command)}: {result.stderr.strip() or result.returncode}")
    return result


def _free_subnet() -> int:
    """The first 10.213.k.0/24 (k in 0..250) that no interface or route on this machine uses."""
    used = _run("ip", "-o", "addr", "show").stdout + _run("ip", "route", "show").stdout
    for k in range(251):
        if f"10.213.{k}." not in used:
            return k
    raise NamespaceError("no free 10.213.k.0/24 subnet for the emulated network")


@dataclass
class Namespaces:
    count: int
    tag: str = field(default_factory=lambda: str(os.getpid()))  # the owner: `sim clean` spares live ones
    subnet: int = -1
    created: list[str] = field(default_factory=list)  # namespaces, in creation order
    links: list[str] = field(default_factory=list)  # root-side interfaces (bridge, veth ends)

    @property
    def bridge(self) -> str:
        return f"vsb{self.tag}"

    @property
    def hub_ip(self) -> str:
        return f"10.213.{self.subnet}.254"

    def name(self, index: int) -> str:
        return f"vsn{self.tag}-{index}"

    def ip(self, index: int) -> str:
        return f"10.213.{self.subnet}.{index + 1}"

    def index_of(self, address: str) -> int | None:
        """The node owning ``address`` (a relay uses this to tell who dialled), or None."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        network = ipaddress.ip_network(f"10.213.{self.subnet}.0/24")
        if ip not in network:
            return None
        index = int(ip) - int(network.network_address) - 1
        return index if 0 <= index < self.count else None

    def wrapper(self, index: int) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name(index))

    def create(self) -> None:
        if self.count > 250:
            raise NamespaceError("at most 250 nodes fit in one emulated subnet")
        self.subnet = _free_subnet()
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        _run("ip", "addr", "add", f"{self.hub_ip}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for index in range(self.count):
            ns = self.name(index)
            _run("ip", "netns", "add", ns)
            self.created.append(ns)
            outside = f"vsv{self.tag}-{index}"
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.links.append(outside)
            _run("ip", "link", "set", outside, "master", self.bridge)
            _run("ip", "link", "set", outside, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip(index)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def cap_bandwidth(self, kbit: int) -> None:
        """A token bucket on both ends of every node's veth (each direction capped at ``kbit``)."""
        burst = max(32, kbit // 8)  # kbit: about 1/8 s worth, and at least one jumbo frame
        for index in range(self.count):
            spec = ("tbf", "rate", f"{kbit}kbit", "burst", f"{burst}kbit", "latency", "200ms")
            _run("ip", "netns", "exec", self.name(index), "tc", "qdisc", "add", "dev", "eth0", "root", *spec)
            _run("tc", "qdisc", "add", "dev", f"vsv{self.tag}-{index}", "root", *spec)

    def isolate(self) -> None:
        """Nodes accept libp2p connections only from the relays (the bridge address), so no link
        bypasses the emulation even if a node learnt another node's namespace address."""
        for index in range(self.count):
            _run("ip", "netns", "exec", self.name(index), "iptables", "-A", "INPUT", "-p", "tcp", "--dport",
                 str(NODE_PORT), "!", "-s", self.hub_ip, "-j", "DROP")

    def drop_randomly(self, probability: float) -> None:
        """Lose ``probability`` of the packets of every node-to-node direction (not the API's).

        A relayed direction A → B crosses two segments (A → relay in A's namespace, relay → B in
        B's), each dropping with q, so q = 1 - sqrt(1 - p) gives p end to end. The statistic
        match is per packet; TCP retransmits, which is what a lossy link does to libp2p.
        """
        q = 1.0 - math.sqrt(1.0 - probability)
        for index in range(self.count):
            for chain, peer, port in (("INPUT", "-s", "--dport"), ("OUTPUT", "-d", "--sport")):
                _run("ip", "netns", "exec", self.name(index), "iptables", "-A", chain, peer, self.hub_ip,
                     "-p", "tcp", "!", port, str(API_PORT), "-m", "statistic", "--mode", "random",
                     "--probability", f"{q:.6f}", "-j", "DROP")

    def close(self) -> list[str]:
        """Remove every namespace and interface this object created; returns what failed (if anything)."""
        failures: list[str] = []
        for ns in reversed(self.created):
            result = _run("ip", "netns", "del", ns, check=False)
            if result.returncode != 0:
                failures.append(f"{ns}: {result.stderr.strip()}")
        self.created.clear()
        for link in reversed(self.links):
            # veth ends vanish with their namespace; the bridge stays until deleted.
            _run("ip", "link", "del", link, check=False)
        self.links.clear()
        return failures


def _names(output: str) -> list[str]:
    return [line.split()[0].split("@")[0].rstrip(":") for line in output.splitlines() if line.strip()]


def _owner_alive(name: str) -> bool:
    """Names carry the pid of the harness that made them; a live one is still using them."""
    match = re.match(r"vs[nbv](\d+)", name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_leftovers(prefixes: Sequence[str] = NAME_PREFIXES) -> list[str]:
    """Delete namespaces and interfaces whose harness is gone; returns one line per action."""
    lines: list[str] = []
    if os.geteuid() != 0:
        return ["not root: a harness without root creates no namespaces, nothing to clean"]
    namespaces = _names(_run("ip", "netns", "list", check=False).stdout)
    for ns in namespaces:
        if ns.startswith("vsn") and _owner_alive(ns):
            lines.append(f"kept namespace {ns}: its harness is still running")
        elif ns.startswith("vsn"):
            result = _run("ip", "netns", "del", ns, check=False)
            lines.append(f"removed namespace {ns}" if result.returncode == 0 else
                         f"could not remove namespace {ns}: {result.stderr.strip()}")
    links = _run("ip", "-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        if name.startswith(tuple(p for p in prefixes if p != "vsn")) and _owner_alive(name):
            lines.append(f"kept interface {name}: its harness is still running")
        elif name.startswith(tuple(p for p in prefixes if p != "vsn")):
            result = _run("ip", "link", "del", name, check=False)
            lines.append(f"removed interface {name}" if result.returncode == 0 else
                         f"could not remove interface {name}: {result.stderr.strip()}")
    return lines or ["nothing to clean"]
