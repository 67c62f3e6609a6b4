"""A hostile peer for testing Veilnet nodes: it holds the testnet's pre-shared key and nothing else.

No attested bundle, no platform key: only what anyone who joined a testnet once could keep. Each
attack in :mod:`node.adversary.attacks` is a small function with a bounded count and duration that
speaks one protocol (or the layers under the protocols) wrongly, and reports what it did and what
the target answered. :mod:`node.adversary.observe` watches the target nodes meanwhile (alive,
event-loop stall, memory, honest embeddings latency).

Only tests, the simulation harness, ``make bench`` and the ``veilnet adversary`` command import this
package; the node never does. Every attack refuses targets outside 127.0.0.0/8.
"""

from __future__ import annotations

__all__: list[str] = []
