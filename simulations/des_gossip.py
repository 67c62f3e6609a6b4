"""Discrete-event model (simpy) of one attestation bundle spreading over the gossip mesh.

What it models, and why that much:

* the mesh: every node keeps ``degree`` mesh peers (gossipsub D; node/net/gossip.py uses D=6,
  D_low=4, D_high=12). The graph is built by each node linking to random peers until it has D,
  never past D_high — what GRAFT does in a steady state;
* a hop: a node that receives the bundle for the first time appraises it, then forwards it to
  its mesh peers except the one it came from (gossipsub validates before forwarding). Transport
  times are drawn from one-hop delays measured on a local run (:mod:`simulations.measure`) less
  the appraisal; the appraisal costs the CPU time per received bundle measured on that run;
* load: every node appraises every other node's bundle once per re-announce period, so its CPU
  is busy ρ = N·appraisal/R of the time; a bundle waits the M/D/1 queue's mean before its
  appraisal starts, and at ρ ≥ 1 the node cannot keep up at all (reported as saturated);
* duplicates: a node receiving a copy it already has counts a message and drops it;
* a node *has* the bundle once it has appraised it (what ``sim calibrate`` measures: ``verified_at``
  in the receiver's registry), so every node's time includes its own appraisal;
* a machine shared by many node processes (the local check): each node's appraisal runs at
  ``share`` of a core (processor sharing among the tasks runnable on the machine, see
  :mod:`simulations.scale`).

What it leaves out, on purpose: IHAVE/IWANT gossip to non-mesh peers (it repairs misses; in a
loss-free mesh every node is reached by flooding first) and flood-publishing to non-mesh peers.
Results are per announce; a node that re-announces every R seconds multiplies the per-node
message rate by N/R.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import simpy

__all__ = ["Propagation", "appraisal_wait", "build_mesh", "simulate_propagation"]


@dataclass(frozen=True)
class Propagation:
    nodes: int
    reached: int
    t50_s: float
    t95_s: float
    t100_s: float
    mean_s: float
    messages_per_node: float  # copies received per node for one announce

    def to_json(self) -> dict[str, float | int]:
        return {
            "nodes": self.nodes, "reached": self.reached, "t50_s": self.t50_s, "t95_s": self.t95_s,
            "t100_s": self.t100_s, "mean_s": self.mean_s, "messages_per_node": self.messages_per_node,
        }


def build_mesh(n: int, degree: int, degree_high: int, rng: random.Random) -> list[list[int]]:
    """Undirected mesh: each node links to random peers until it has ``degree`` (peers stop
    accepting at ``degree_high``)."""
    neighbours: list[set[int]] = [set() for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    for node in order:
        attempts = 0
        while len(neighbours[node]) < min(degree, n - 1) and attempts < 20 * degree:
            attempts += 1
            peer = rng.randrange(n)
            if peer == node or peer in neighbours[node] or len(neighbours[peer]) >= degree_high:
                continue
            neighbours[node].add(peer)
            neighbours[peer].add(node)
    return [sorted(s) for s in neighbours]


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def appraisal_wait(utilisation: float, appraisal_s: float) -> float:
    """Mean wait before a node gets to appraise a bundle, its CPU busy ``utilisation`` of the
    time with other bundles: the M/D/1 queue (Poisson arrivals, fixed service time)."""
    if utilisation >= 1.0:
        return math.inf
    return utilisation * appraisal_s / (2.0 * (1.0 - utilisation))


def simulate_propagation(
    n: int, hop_samples: Sequence[float], *, degree: int = 6, degree_high: int = 12,
    seed: int = 0, source: int | None = None, appraisal_s: float = 0.0, wait_s: float = 0.0,
) -> Propagation:
    """One announce from ``source`` (random by default): when each node has verified the bundle.

    ``hop_samples`` are transport times; a node has verified (and forwards) a bundle
    ``wait_s + appraisal_s`` after its first copy arrived (queue behind the other bundles it is
    appraising, then appraise).
    """
    if not hop_samples:
        raise ValueError("hop_samples is empty: calibrate first")
    rng = random.Random(seed)
    mesh = build_mesh(n, degree, degree_high, rng)
    env = simpy.Environment()
    received_at: list[float | None] = [None] * n  # when the node had verified the bundle
    arrived = [False] * n
    messages = [0]

    def deliver(node: int, sender: int) -> None:
        # A timeout with a callback, not a process per message: 10,000 nodes send ~70,000 copies.
        event = env.timeout(rng.choice(hop_samples))
        event.callbacks.append(lambda _event: arrive(node, sender))

    def arrive(node: int, sender: int) -> None:
        messages[0] += 1
        if arrived[node]:
            return
        arrived[node] = True
        if appraisal_s or wait_s:
            event = env.timeout(wait_s + appraisal_s)
            event.callbacks.append(lambda _event: forward(node, sender))
        else:
            forward(node, sender)

    def forward(node: int, sender: int) -> None:
        received_at[node] = env.now
        for peer in mesh[node]:
            if peer != sender:
                deliver(peer, node)

    start = rng.randrange(n) if source is None else source
    received_at[start] = 0.0
    arrived[start] = True
    for peer in mesh[start]:
        deliver(peer, start)
    env.run()
    times = sorted(t for i, t in enumerate(received_at) if t is not None and i != start)
    return Propagation(
        nodes=n, reached=len(times) + 1, t50_s=_percentile(times, 0.5), t95_s=_percentile(times, 0.95),
        t100_s=times[-1] if times else 0.0, mean_s=statistics.fmean(times) if times else 0.0,
        messages_per_node=messages[0] / n,
    )
