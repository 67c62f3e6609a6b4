"""The start-up heap is frozen out of the collector's full passes (node.heap)."""

from __future__ import annotations

import gc

from node.heap import freeze_long_lived


class Held:
    """A long-lived object of the kind a loaded model is made of (gc-tracked)."""


def test_objects_alive_at_start_up_leave_every_later_full_pass() -> None:
    before = Held()
    try:
        frozen = freeze_long_lived("test")
        after = Held()
        assert frozen == gc.get_freeze_count() > 0
        gc.collect()
        walked = {id(obj) for obj in gc.get_objects(generation=2)}
        assert id(before) not in walked  # frozen: a full pass no longer walks it
        assert id(after) in walked  # allocated since: still collected as usual
    finally:
        gc.unfreeze()
