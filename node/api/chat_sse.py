"""Server-sent events for a live chat completion (``stream: true``), fed by ``Router.chat_stream``.

Each ``data:`` line is an OpenAI ``chat.completion.chunk``; every chunk also carries a ``veilnet``
object that OpenAI clients ignore (it lands in ``model_extra``)::

    {"generated_tokens": 12, "verified_tokens": 8, "verification_rounds": 1, "verified": true,
     "agreement": {"agreeing": 3, "of": 3}, "primary": "<peer id>"}

The last chunk has the ``finish_reason`` and adds ``"report"`` (the full verification report);
with ``stream_options: {"include_usage": true}`` a usage chunk (empty ``choices``) follows it. A
stream that fails ends with one ``{"error": {...}, "veilnet": {...}}`` event, whose error code is
the router's (``stream_rejected`` names ``rejected_at``, the first rejected token index), then
``[DONE]``. With ``veilnet: {"retry": true}`` a rejected stream is not ended but restarted once
with a fresh primary: one chunk with an empty delta and ``"restart": {"attempt": 2, "rejected_at":
…, "message": …}`` in its ``veilnet`` object tells the client to discard the content received so
far; the deltas after it are the new completion from its start (their ``veilnet.attempt`` is 2).

Natural coalescing: the writer takes every event that arrived while it was writing the last ones,
merges consecutive deltas into one chunk (their texts joined, the latest progress: progress only
grows) and sends all of it in one body write. Nothing waits to fill a batch, so the first token
leaves at once; later chunks grow only when the HTTP side is slower than the stream.

The response owns a nursery: the job runs beside the writer, and a client that disconnects
cancels the job with it (no task outlives the request).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from node.api.json_text import dumps
from node.jobs.chat_stream import StreamDelta, StreamDone, StreamEvent, StreamFailed, StreamRestart

__all__ = ["ChatEventStream"]

RunStream = Callable[[trio.MemorySendChannel[StreamEvent]], Awaitable[None]]


class ChatEventStream(Response):
    """An SSE response whose body is produced by ``run(out)`` while it is being sent."""

    media_type = "text/event-stream"

    def __init__(self, run: RunStream, *, completion_id: str, model: str, created: int,
                 include_usage: bool) -> None:
        super().__init__(content=None, media_type=self.media_type, headers={"Cache-Control": "no-cache"})
        # the body's length is unknown until the stream ends
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._run = run
        self._id = completion_id
        self._model = model
        self._created = created
        self._include_usage = include_usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        out, events = trio.open_memory_channel[StreamEvent](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run, out)  # the job starts while the headers are being written
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            first = True
            async with events:
                async for event in events:
                    batch = [event] if first else _drain(event, events)  # the first token goes alone
                    lines = [self._lines(item, first and i == 0) for i, item in enumerate(batch)]
                    body = "".join(line for group in lines for line in group)
                    await send({"type": "http.response.body", "body": body.encode(), "more_body": True})
                    first = False
                    if isinstance(batch[-1], (StreamDone, StreamFailed)):
                        break
            nursery.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    def _lines(self, event: StreamEvent, first: bool) -> list[str]:
        lines = []
        if first and not isinstance(event, StreamFailed):
            lines.append(self._chunk({"role": "assistant", "content": ""}, None, event.progress))
        if isinstance(event, StreamRestart):
            restart = {"attempt": event.attempt, "rejected_at": event.rejected_at, "message": event.message}
            lines.append(self._chunk({}, None, {**event.progress, "restart": restart}))
            return lines
        if isinstance(event, StreamDelta):
            if event.text or not first:
                lines.append(self._chunk({"content": event.text} if event.text else {}, None, event.progress))
            return lines
        if isinstance(event, StreamDone):
            generation = event.generation
            report = dict(event.report)
            report["sampling"] = "greedy"
            lines.append(self._chunk({}, generation.finish_reason, {**event.progress, "report": report}))
            if self._include_usage:
                usage = {
                    "prompt_tokens": generation.prompt_tokens, "completion_tokens": len(generation.tokens),
                    "total_tokens": generation.prompt_tokens + len(generation.tokens),
                }
                body = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                        "model": self._model, "choices": [], "usage": usage}
                lines.append(f"data: {dumps(body)}\n\n")
            return lines
        error = event.error
        kind = "server_error" if error.http_status >= 500 else "invalid_request_error"
        payload = {"message": error.message, "type": kind, "param": None, "code": error.code.value}
        veilnet: dict[str, Any] = {**event.progress, "report": error.report}
        if event.rejected_at is not None:
            veilnet["rejected_at"] = event.rejected_at
        lines.append(f"data: {dumps({'error': payload, 'veilnet': veilnet})}\n\n")
        return lines

    def _chunk(self, delta: dict[str, Any], finish: str | None, veilnet: dict[str, Any]) -> str:
        body = {
            "id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            "veilnet": veilnet,
        }
        return f"data: {dumps(body)}\n\n"


def _drain(first: StreamEvent, events: trio.MemoryReceiveChannel[StreamEvent]) -> list[StreamEvent]:
    """``first`` and every event already waiting behind it (never waiting for more), consecutive
    deltas merged into one; the batch ends at the stream's last event."""
    batch: list[StreamEvent] = [first]
    while not isinstance(batch[-1], (StreamDone, StreamFailed)):
        try:
            event = events.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        last = batch[-1]
        if isinstance(event, StreamDelta) and isinstance(last, StreamDelta):
            batch[-1] = StreamDelta(last.text + event.text, event.progress)
        else:
            batch.append(event)
    return batch
