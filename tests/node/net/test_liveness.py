"""A liveness check that fails removes the entry it checked, not one verified afresh meanwhile."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import trio
import trio.testing

from node.metrics import Metrics
from node.net.host import build_host
from node.net.limits import LimitSettings
from node.net.liveness import Liveness
from node.net.registry import Registry
from protocol.identity import Identity
from tests.node.net.test_boundary import registry_entry

PEER = Identity.generate().peer_id


class Unreachable(Liveness):
    """A peer that never answers: the check fails once ``answer`` is set (the timeouts ran out)."""

    answer = trio.Event()

    async def is_alive(self, peer: bytes) -> bool:
        await self.answer.wait()
        return False


async def check_while(registry: Registry, meanwhile: Callable[[], None]) -> Liveness:
    host = build_host(Identity.generate(), os.urandom(32), ["/ip4/127.0.0.1/tcp/0"])
    liveness = Unreachable(host, registry, LimitSettings(), Metrics())
    liveness.answer = trio.Event()
    async with trio.open_nursery() as nursery:
        liveness._start_check(nursery, trio.CapacityLimiter(1), PEER, "periodic")
        await trio.testing.wait_all_tasks_blocked()
        meanwhile()
        liveness.answer.set()
    return liveness


async def test_a_check_that_began_before_a_heal_spares_the_entry_verified_after_it() -> None:
    registry = Registry()
    registry.upsert(registry_entry(PEER))  # verified_at 0.0: learnt before the partition

    def healed() -> None:  # the partition healed: liveness removed it, its bundle came back
        registry.remove(PEER, "earlier liveness check")
        registry.upsert(replace(registry_entry(PEER), verified_at=100.0))

    liveness = await check_while(registry, healed)
    assert registry.get(PEER) is not None
    assert liveness.removed.total() == 0


async def test_a_peer_that_stays_silent_is_removed() -> None:
    registry = Registry()
    registry.upsert(registry_entry(PEER))
    liveness = await check_while(registry, lambda: None)
    assert registry.get(PEER) is None
    assert liveness.removed.get(cause="liveness") == 1
