"""Live chat streams in one process (memory pipes instead of libp2p): the retry of a rejected stream.

A ``wrong-stream`` primary lies from token 2 on; with ``retry`` the verifiers' rejection does not
end the stream but restarts it once with a fresh primary, and the caller is told to discard what
it received. The multi-node version of this test is in ``test_live_stream``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

from node.jobs.chat_stream import StreamDelta, StreamDone, StreamEvent, StreamFailed, StreamRestart
from node.jobs.faults import LIVE_FAULT_FROM, Fault
from node.jobs.router import Router
from tests.node.jobs.harness import MemoryNetwork, add_member, make_router, models, names_for

pytestmark = pytest.mark.timeout(240)
__all__ = ["models"]

MESSAGES = [{"role": "user", "content": "Stream me something about attestation."}]
MAX_TOKENS = 24
ATTEMPTS = 60  # requests until the liar is drawn as the first primary (about 1 in 5 each)


async def _stream(router: Router, model: str, **options: Any) -> list[StreamEvent]:
    out, events = trio.open_memory_channel[StreamEvent](math.inf)
    with trio.fail_after(60):
        await router.chat_stream(model, MESSAGES, out, max_tokens=MAX_TOKENS, replicas=3, **options)
        return [event async for event in events]


async def test_a_rejected_stream_is_retried_once_from_the_start_with_a_fresh_primary(models):
    _, chat, _ = models
    direct = chat.generate(MESSAGES, MAX_TOKENS)  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery, names=names_for([chat]))
        liar = add_member(net, {chat.model_id: chat}, fault=Fault.WRONG_STREAM)
        for _ in range(4):
            add_member(net, {chat.model_id: chat})
        router = make_router(net)
        await nursery.start(router.run)
        for _ in range(ATTEMPTS):
            events = await _stream(router, chat.model_id, retry=True)
            if events[0].progress.get("primary") == liar.identity.peer_id_text:
                break
        else:
            raise AssertionError(f"the liar was never drawn as primary in {ATTEMPTS} requests")
        restarts = [i for i, e in enumerate(events) if isinstance(e, StreamRestart)]
        assert len(restarts) == 1
        restart = events[restarts[0]]
        assert isinstance(restart, StreamRestart)
        assert restart.attempt == 2 and restart.rejected_at == LIVE_FAULT_FROM
        before, after = events[: restarts[0]], events[restarts[0] + 1 :]
        assert all(e.progress["attempt"] == 1 for e in before)
        assert all(e.progress["attempt"] == 2 for e in after)
        liar_id = liar.identity.peer_id_text
        assert all(e.progress["primary"] != liar_id for e in after if "primary" in e.progress)
        done = after[-1]
        assert isinstance(done, StreamDone)
        # the second attempt's deltas alone are the completion, from its first token
        text = "".join(e.text for e in after if isinstance(e, StreamDelta))
        assert text == direct.text and done.generation.tokens == direct.tokens
        report = done.report
        assert report["status"] == "ok"
        first, second = report["stream"]["attempts"]
        assert first["primary"] == liar.identity.peer_id_text and first["status"] == "stream_rejected"
        assert first["rejected_at"] == LIVE_FAULT_FROM
        assert second["status"] == "ok" and second["verified_tokens"] == len(direct.tokens)
        assert {"peer_id": liar.identity.peer_id_text, "offence": "wrong_output"} in [
            {k: p[k] for k in ("peer_id", "offence")} for p in report["penalties"]
        ]
        assert [p["op"] for p in report["phases"] if p["op"] == "generate"] == ["generate", "generate"]
        primaries = [e["peer_id"] for e in report["executors"] if e["role"] == "primary"]
        assert primaries[0] == liar.identity.peer_id_text and len(set(primaries)) == 2
        nursery.cancel_scope.cancel()


async def test_without_retry_a_rejected_stream_ends_with_the_typed_error(models):
    _, chat, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery, names=names_for([chat]))
        liar = add_member(net, {chat.model_id: chat}, fault=Fault.WRONG_STREAM)
        for _ in range(4):
            add_member(net, {chat.model_id: chat})
        router = make_router(net)
        await nursery.start(router.run)
        for _ in range(ATTEMPTS):
            events = await _stream(router, chat.model_id)
            if events[0].progress.get("primary") == liar.identity.peer_id_text:
                break
        else:
            raise AssertionError(f"the liar was never drawn as primary in {ATTEMPTS} requests")
        assert not any(isinstance(e, StreamRestart) for e in events)
        failed = events[-1]
        assert isinstance(failed, StreamFailed) and failed.rejected_at == LIVE_FAULT_FROM
        assert failed.error.code.value == "stream_rejected"
        assert [a["status"] for a in failed.error.report["stream"]["attempts"]] == ["stream_rejected"]
        nursery.cancel_scope.cancel()


async def test_the_rounds_of_one_stream_go_to_the_same_verifiers_which_extend_their_kv_caches(models):
    from node.runtime import load_runtime

    _, chat, _ = models
    direct = chat.generate(MESSAGES, 48)  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery, names=names_for([chat]))
        runtimes = [load_runtime("veilnet-tiny-random-lm") for _ in range(5)]  # one KV cache each
        for runtime in runtimes:
            add_member(net, {runtime.model_id: runtime})
        router = make_router(net)
        await nursery.start(router.run)
        out, events = trio.open_memory_channel[StreamEvent](math.inf)
        with trio.fail_after(60):
            await router.chat_stream(chat.model_id, MESSAGES, out, max_tokens=48, replicas=3)
            received = [event async for event in events]
        done = received[-1]
        assert isinstance(done, StreamDone) and done.generation.tokens == direct.tokens
        rounds = done.report["stream"]["verification_rounds"]
        assert rounds >= 2  # at least one round while streaming (more when rounds are quick) and the last
        hits = sorted(runtime.prefix_cache.hits for runtime in runtimes)  # type: ignore[attr-defined]
        # two verifiers saw every round and extended their cache in all but the first; the
        # primary and the two others scored nothing
        assert hits == [0, 0, 0, rounds - 1, rounds - 1]
        nursery.cancel_scope.cancel()


async def test_a_slow_primary_is_verified_every_interval_not_only_every_chunk(models):
    """A primary slower than VERIFY_CHUNK_TOKENS per VERIFY_INTERVAL_S: tokens arrive more often
    than the interval, and a round starts VERIFY_INTERVAL_S after the first unverified token
    anyway (each new token does not push it back), long before VERIFY_CHUNK_TOKENS are unverified."""
    import time

    from node.jobs.chat_stream import VERIFY_CHUNK_TOKENS, VERIFY_INTERVAL_S
    from node.runtime import load_runtime

    _, chat, _ = models
    tokens = 20
    direct = chat.generate(MESSAGES, tokens)  # type: ignore[attr-defined]
    pause = VERIFY_INTERVAL_S / 2  # the primary's pace: two tokens per interval, 16 take 8 intervals

    def paced(runtime: Any) -> Any:
        generate = runtime.generate

        def slow_generate(messages: Any, max_tokens: int, on_token: Any = None) -> Any:
            def slow_on_token(token: int, text: str) -> None:
                time.sleep(pause)  # in the model's worker thread, never on the event loop
                if on_token is not None:
                    on_token(token, text)

            return generate(messages, max_tokens, on_token=slow_on_token)

        runtime.generate = slow_generate
        return runtime

    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery, names=names_for([chat]))
        for _ in range(3):  # own runtimes: a generation holds its runtime's lock throughout
            runtime = paced(load_runtime("veilnet-tiny-random-lm"))
            add_member(net, {runtime.model_id: runtime})
        router = make_router(net)
        await nursery.start(router.run)
        out, events = trio.open_memory_channel[StreamEvent](math.inf)
        with trio.fail_after(60):
            await router.chat_stream(chat.model_id, MESSAGES, out, max_tokens=tokens, replicas=3)
            received = [event async for event in events]
        done = received[-1]
        assert isinstance(done, StreamDone) and done.generation.tokens == direct.tokens
        rounds = [p["tokens"] for p in done.report["phases"] if p["op"] == "score"]
        assert rounds[0] < VERIFY_CHUNK_TOKENS and rounds[-1] == len(direct.tokens)
        assert rounds == sorted(set(rounds))
        nursery.cancel_scope.cancel()
