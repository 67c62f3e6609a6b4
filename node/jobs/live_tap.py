"""The client's end of a live primary's stream: opens its sealed chunks in order as they arrive.

``node.jobs.chat_stream`` plugs a ``LiveTap`` into the primary phase (``phase.LiveSink``); the
tap checks the secretstream (order, FINAL tag), decodes each chunk and posts what happened to the
coordinator's inbox as ``TapTokens`` / ``TapEnded`` / ``TapBroken``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from protocol.jobs.live import LiveChunk, LiveChunkError, decode_live_chunk
from protocol.jobs.messages import StreamChunk
from protocol.sealing import Envelope, JobSession, SealingError, StreamOpener

__all__ = ["LiveTap", "TapBroken", "TapEnded", "TapTokens"]


@dataclass(frozen=True)
class TapTokens:
    """Tokens the owner of the stream sent, opened and decoded."""

    peer: bytes
    chunk: LiveChunk


@dataclass(frozen=True)
class TapEnded:
    """The owner's FINAL chunk arrived: its stream is complete."""

    peer: bytes


@dataclass(frozen=True)
class TapBroken:
    """The owner's stream broke after it sent tokens: ``why`` says how."""

    peer: bytes
    why: str


class LiveTap:
    """Opens one live primary's sealed chunks in order (``phase.LiveSink``).

    The first peer that streams owns the stream; a peer that fails before it sent a token may be
    replaced (the flow tries the next one), one that fails after cannot: the user already has its
    text. Secretstream order and the FINAL tag are checked by ``StreamOpener``.
    """

    def __init__(self, inbox: trio.MemorySendChannel[Any]) -> None:
        self._inbox = inbox
        self.owner: bytes | None = None
        self._opener: StreamOpener | None = None
        self._finished = False
        self.tokens = 0

    def on_chunk(self, peer: bytes, session: JobSession, chunk: StreamChunk) -> str | None:
        if self.owner is None:
            self.owner = peer
        elif peer != self.owner:
            return "another primary already streams this job"
        try:
            if self._opener is None:
                if chunk.opening_nonce is None:
                    raise LiveChunkError("no_opening", "the first chunk of a live stream is its opening")
                self._opener = StreamOpener.start(session, Envelope(chunk.opening_nonce, chunk.data))
                return None
            if chunk.opening_nonce is not None:
                raise LiveChunkError("second_opening", "a second opening inside a live stream")
            if self._finished:
                raise LiveChunkError("after_final", "a chunk after the FINAL one")
            plaintext = self._opener.pull(chunk.data)
            if self._opener.finished:
                if plaintext:
                    raise LiveChunkError("bad_final", "the FINAL chunk must be empty")
                self._finished = True
                self._inbox.send_nowait(TapEnded(peer))
                return None
            tokens = decode_live_chunk(plaintext)
        except (SealingError, LiveChunkError) as exc:
            why = str(exc)
            self._inbox.send_nowait(TapBroken(peer, f"the primary's stream is broken: {why}"))
            return why
        self.tokens += len(tokens.tokens)
        self._inbox.send_nowait(TapTokens(peer, tokens))
        return None

    def on_failure(self, peer: bytes, why: str) -> None:
        if peer != self.owner:
            return
        if self.tokens == 0 and not self._finished:
            self.owner, self._opener = None, None  # nothing reached the user: a replacement may stream
            return
        self._inbox.send_nowait(TapBroken(peer, why))

    def complete(self, peer: bytes) -> bool:
        return peer == self.owner and self._finished
