"""The SSE writer of a live chat completion coalesces what arrived while it was writing.

No network: ``ChatEventStream`` is driven by a scripted ``run`` and an ASGI ``send`` that records
each body write. The first token must leave alone and at once; what piles up behind a slow write
leaves as one write, consecutive deltas merged into one chunk with the latest progress.
"""

from __future__ import annotations

import json
import math
from typing import Any

import trio

from node.api.chat_sse import ChatEventStream, _drain
from node.jobs.chat_stream import StreamDelta, StreamDone, StreamEvent, StreamFailed, StreamRestart
from node.jobs.errors import RouterError, RouterErrorCode
from protocol.jobs.payloads import GenerateResult


def _progress(generated: int, verified: int = 0) -> dict[str, Any]:
    return {"generated_tokens": generated, "verified_tokens": verified, "verification_rounds": 0,
            "verified": True, "attempt": 1}


def _chunks(body: bytes) -> list[dict[str, Any]]:
    lines = [line for line in body.decode().split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line[len("data: "):]) for line in lines if line != "data: [DONE]"]


async def _serve(run: Any, written: trio.Event, resume: trio.Event) -> list[bytes]:
    """The bodies ``ChatEventStream`` writes. The first write is slow: it sets ``written`` and
    returns only once ``resume`` is set."""
    bodies: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            written.set()
            await resume.wait()

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    response = ChatEventStream(run, completion_id="chatcmpl-test", model="m", created=0, include_usage=False)
    with trio.fail_after(10):
        await response({"type": "http"}, receive, send)
    return bodies


async def test_the_first_delta_leaves_alone_and_what_piled_up_behind_it_leaves_in_one_write():
    generation = GenerateResult(3, (1, 2, 3, 4, 5, 0), "abcde", "stop")
    first_written, queued = trio.Event(), trio.Event()

    async def run(out: trio.MemorySendChannel[StreamEvent]) -> None:
        async with out:
            out.send_nowait(StreamDelta("a", _progress(1)))
            out.send_nowait(StreamDelta("b", _progress(2)))  # waiting already, yet not merged into the first
            await first_written.wait()
            # all of these arrive while nothing is written: one body, deltas merged, order kept
            out.send_nowait(StreamDelta("c", _progress(3)))
            out.send_nowait(StreamDelta("", _progress(3, 3)))
            out.send_nowait(StreamDelta("d", _progress(4, 3)))
            out.send_nowait(StreamRestart(2, 1, "rejected", _progress(4, 3)))
            out.send_nowait(StreamDelta("e", _progress(5, 3)))
            out.send_nowait(StreamDone(generation, {"status": "ok"}, _progress(6, 6)))
            queued.set()

    bodies = await _serve(run, first_written, queued)
    first, *rest = (_chunks(b) for b in bodies)
    deltas = [c["choices"][0]["delta"] for c in first]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "a"}]
    assert first[1]["veilnet"]["generated_tokens"] == 1
    texts = [c["choices"][0]["delta"].get("content") for body in rest for c in body]
    assert "".join(t or "" for t in texts) == "bcde"
    merged = [c for body in rest for c in body]
    assert merged[0]["choices"][0]["delta"] == {"content": "bcd"}
    assert merged[0]["veilnet"]["verified_tokens"] == 3 and merged[0]["veilnet"]["generated_tokens"] == 4
    assert "restart" in merged[1]["veilnet"]
    assert merged[2]["choices"][0]["delta"] == {"content": "e"}
    assert merged[3]["choices"][0]["finish_reason"] == "stop"
    assert bodies[-1] == b"data: [DONE]\n\n"
    assert len(bodies) == 3  # the first token, the pile, [DONE]


async def test_drain_never_waits_and_stops_at_the_last_event():
    send, receive = trio.open_memory_channel[StreamEvent](math.inf)
    error = RouterError(RouterErrorCode.PRIMARY_FAILED, "gone")
    send.send_nowait(StreamDelta("y", _progress(2)))
    send.send_nowait(StreamFailed(error, None, _progress(2)))
    send.send_nowait(StreamDelta("after the end", _progress(3)))
    batch = _drain(StreamDelta("x", _progress(1)), receive)
    assert [type(e) for e in batch] == [StreamDelta, StreamFailed]
    assert isinstance(batch[0], StreamDelta) and batch[0].text == "xy"
    assert batch[0].progress["generated_tokens"] == 2
    assert receive.receive_nowait() == StreamDelta("after the end", _progress(3))  # left for nobody
    lone = StreamDelta("z", _progress(4))
    assert _drain(lone, receive) == [lone]  # nothing waiting: returns at once
