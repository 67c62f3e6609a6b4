"""The one error shape of ``protocol/``: a short machine-readable ``reason`` and a human ``detail``.

Every sans-IO decoder promises "returns a value or raises this room's error, never anything
else"; each room (codec, messages, payloads, sealing, bundles, consensus, replay) keeps its own
error class so callers catch exactly what they expect, and all of them derive from
``ProtocolError`` so they share one constructor and one message format (``"reason: detail"``).
It subclasses ``ValueError`` because every one of them means "these bytes or values are not
acceptable".
"""

from __future__ import annotations

__all__ = ["ProtocolError"]


class ProtocolError(ValueError):
    """Base of the rooms' errors; ``reason`` is a short machine-readable code, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
