"""Typed errors of the model runtime, so the executor can map each one to a wire error code."""

from __future__ import annotations


class ModelRuntimeError(Exception):
    """Base class. ``reason`` is a stable machine-readable code (it may appear in job errors)."""

    reason = "runtime_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)
        self.detail = detail


class ModelNotFound(ModelRuntimeError):
    """The name is not an embedded model and the path is not a model directory."""

    reason = "model_not_found"


class UnsupportedModel(ModelRuntimeError):
    """The directory exists but cannot be served (no safetensors, unknown architecture, wrong task)."""

    reason = "unsupported_model"


class InvalidInput(ModelRuntimeError):
    """The request cannot be computed as given (too long, bad token ids, empty prompt)."""

    reason = "invalid_input"


class Busy(ModelRuntimeError):
    """The queue is full; the caller should try another executor (backpressure, not failure)."""

    reason = "busy"


class BatcherClosed(ModelRuntimeError):
    """The batcher is not running (not started yet, or its nursery is shutting down)."""

    reason = "batcher_closed"
