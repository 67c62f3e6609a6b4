"""What every served model looks like to the executor, whatever architecture sits behind it."""

from __future__ import annotations

from abc import ABC
from enum import StrEnum
from pathlib import Path


class Task(StrEnum):
    """The job kinds a model can serve; the task picks the comparator used in the vote."""

    EMBEDDINGS = "embeddings"
    CHAT = "chat"


class ModelRuntime(ABC):
    """A loaded model. Compute methods are synchronous and meant for worker threads.

    ``model_id`` is protocol's content identity of the model directory (the value providers
    announce in the DHT and jobs name), ``name`` is a human label for logs and ``GET /v1/models``.
    Every compute method is thread-safe: calls on one runtime are serialised by an internal lock
    (one call already uses every core), calls on different runtimes may overlap.
    """

    model_id: str
    name: str
    path: Path
    task: Task

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}(name={self.name!r}, task={self.task.value}, model_id={self.model_id!r})"
