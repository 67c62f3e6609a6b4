"""Keep the garbage collector's full passes off the node's start-up heap.

A node that has loaded a model holds ~500,000 long-lived Python objects (torch, transformers,
py-libp2p, the tokenizer). CPython's cyclic collector walks all of them in every generation-2
pass, and a pass runs whenever a quarter as many new objects have survived: a gossip flood or one
DHT message carrying a 40,000-address peer record allocates that much in seconds. Each pass cost
0.3 s of CPU in one synchronous step of the trio loop (1.1–1.5 s of frozen loop on a loaded
two-core machine), which is what the adversary bench measured as the worst stalls of
``gossip-flood`` and ``dht-huge-sender-record`` (the rest of both attacks' work is milliseconds).

:func:`freeze_long_lived` collects once and then moves every surviving object into the
collector's permanent generation (``gc.freeze``), so later passes walk only what was allocated
since. Objects frozen this way are still freed by reference counting; only cycles among them
are never collected, which start-up state (modules, models, services) does not produce as
garbage. ``veilnet node start`` calls it once the node is built (before it listens) and again
once its models are loaded (before it announces them): one pass each, while nobody is waiting
on the node, instead of a pass over the whole heap every few seconds under attack.
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["freeze_long_lived"]

log = logging.getLogger("veilnet.heap")


def freeze_long_lived(reason: str) -> int:
    """Collect, then freeze what survives; returns the number of objects now frozen in all."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d start-up objects (%s) in %.2f s", frozen, reason, time.perf_counter() - started)
    return frozen
