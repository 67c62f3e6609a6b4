"""Live chat streams: the plaintext of each secretstream chunk a primary sends while it generates.

A live chat job (``JobRequest.live``) is answered before its commitment by a secretstream sealed
to the job's session (``protocol.sealing.StreamSealer``): the first ``StreamChunk`` carries the
opening, every following MESSAGE chunk one ``LiveChunk`` (the token ids generated since the last
chunk and the text they complete), and a FINAL chunk with an empty plaintext ends it. Token ids
are what the verifiers re-score; the text is what the user sees. Sans-IO: encode and decode only.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.codec import CodecError, Limits, decode, encode
from protocol.errors import ProtocolError

__all__ = ["MAX_LIVE_TOKENS", "LiveChunk", "LiveChunkError", "decode_live_chunk"]

MAX_LIVE_TOKENS = 4096  # one chunk never holds more tokens than a whole completion may
MAX_LIVE_TEXT = 64 << 10
_LIMITS = Limits(max_size=128 << 10, max_depth=3, max_str=MAX_LIVE_TEXT, max_bin=0, max_array=MAX_LIVE_TOKENS,
                 max_map=2)


class LiveChunkError(ProtocolError):
    """A live chunk that is not a map of ``tokens`` (token ids) and ``text``."""


@dataclass(frozen=True)
class LiveChunk:
    """Tokens generated since the previous chunk, and the text they complete (may be empty)."""

    tokens: tuple[int, ...]
    text: str

    def __post_init__(self) -> None:
        if not self.tokens or len(self.tokens) > MAX_LIVE_TOKENS:
            raise LiveChunkError("bad_tokens", f"a chunk holds 1..{MAX_LIVE_TOKENS} tokens")
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 1 << 31 for t in self.tokens):
            raise LiveChunkError("bad_tokens", "token ids are integers in [0, 2**31)")
        if not isinstance(self.text, str) or len(self.text) > MAX_LIVE_TEXT:
            raise LiveChunkError("bad_text", f"text is a string of at most {MAX_LIVE_TEXT} characters")

    def to_bytes(self) -> bytes:
        return encode({"tokens": list(self.tokens), "text": self.text})


def decode_live_chunk(data: bytes) -> LiveChunk:
    """Parse one chunk's plaintext (untrusted: size, shape and types are checked)."""
    try:
        raw = decode(data, _LIMITS)
    except CodecError as exc:
        raise LiveChunkError("bad_encoding", str(exc)) from None
    if not isinstance(raw, dict) or set(raw) != {"tokens", "text"} or not isinstance(raw["tokens"], list):
        raise LiveChunkError("bad_shape", "expected {tokens: [int], text: str}")
    return LiveChunk(tuple(raw["tokens"]), raw["text"])
