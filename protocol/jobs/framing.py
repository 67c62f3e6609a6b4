"""Stream framing for the job and challenge protocols: a 4-byte big-endian length, then that many bytes.

Sans-IO: ``encode_frame`` prefixes one message, ``FrameDecoder`` splits whatever bytes arrive into
whole frames. The rule it keeps for hostile peers: the length is checked as soon as the header is
in, so nothing larger than ``max_frame`` is ever buffered. Errors are ``MessageError`` (reasons
``empty_frame``, ``frame_too_large``, ``truncated_frame``), like the messages the frames carry, so a
stream reader has one error to handle. Specified in ``docs/protocol/messages.md``, "Stream framing".
"""

from __future__ import annotations

import struct

from protocol.jobs.messages import MAX_FRAME, MessageError

__all__ = ["FRAME_HEADER_LEN", "MAX_FRAME", "FrameDecoder", "encode_frame"]

FRAME_HEADER_LEN = 4

_LEN = struct.Struct(">I")


def encode_frame(payload: bytes, max_frame: int = MAX_FRAME) -> bytes:
    """Prefix ``payload`` with its length. Empty and oversize frames are refused."""
    if not payload:
        raise MessageError("empty_frame", "frames carry at least one byte")
    if len(payload) > max_frame:
        raise MessageError("frame_too_large", f"{len(payload)} bytes exceeds {max_frame}")
    return _LEN.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental, sans-IO frame splitter: ``feed`` bytes as they arrive, get whole frames back.

    The length is checked as soon as the 4-byte header is in, so a hostile peer cannot make us
    buffer more than ``max_frame + 4`` bytes. After any error the decoder stays failed (the stream
    is out of sync and must be closed). Call ``close()`` at end of stream to detect truncation.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read, once known
        self._failed: MessageError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is pending (a clean place for the stream to end)."""
        return not self._buf and self._need is None and self._failed is None

    def feed(self, data: bytes) -> list[bytes]:
        if self._failed is not None:
            raise self._failed
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < FRAME_HEADER_LEN:
                    return frames
                (length,) = _LEN.unpack_from(self._buf)
                if length == 0:
                    self._fail(MessageError("empty_frame", "zero-length frame"))
                if length > self.max_frame:
                    self._fail(MessageError("frame_too_large", f"{length} bytes exceeds {self.max_frame}"))
                del self._buf[:FRAME_HEADER_LEN]
                self._need = length
            if len(self._buf) < self._need:
                return frames
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    def close(self) -> None:
        """Raise MessageError("truncated_frame") if the stream ended inside a frame."""
        if self._failed is not None:
            raise self._failed
        if self._buf or self._need is not None:
            self._fail(MessageError("truncated_frame", f"{len(self._buf)} bytes of an unfinished frame"))

    def _fail(self, error: MessageError) -> None:
        self._failed = error
        self._buf.clear()
        raise error
