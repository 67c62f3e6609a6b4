"""What every served model looks like to the executor, whatever architecture sits behind it."""

from __future__ import annotations

from abc import ABC
from enum import StrEnum
from pathlib import Path

from protocol.numerics import EngineIdentity

__all__ = ["Capability", "EngineIdentity", "ModelRuntime", "Task"]


class Task(StrEnum):
    """The job kinds a model can serve; the task picks the comparator used in the vote."""

    EMBEDDINGS = "embeddings"
    CHAT = "chat"


class Capability(StrEnum):
    """What a backend can do. A chat backend without SCORE may be a primary, never a verifier."""

    GENERATE = "generate"  # greedy completion of a prompt
    STREAM = "stream"  # tokens handed over as they are generated
    SCORE = "score"  # teacher-forced ranks and logit gaps of claimed tokens
    EMBED = "embed"  # sentence embeddings


class ModelRuntime(ABC):
    """A loaded model. Compute methods are synchronous and meant for worker threads.

    ``model_id`` is protocol's content identity of the model directory (the value providers
    announce in the DHT and jobs name), ``name`` is a human label for logs and ``GET /v1/models``.
    Every compute method is thread-safe: calls on one runtime are serialised by an internal lock
    (one call already uses every core), calls on different runtimes may overlap.
    ``capabilities`` says what the backend can do and ``engine`` what computes it (attested in the
    bundle next to the model id: it decides the numerics class, protocol.numerics).
    """

    model_id: str
    name: str
    path: Path
    task: Task
    capabilities: frozenset[Capability]
    engine: EngineIdentity
    # True: computes on this process's cores (calls share the node's compute limiter); False: an
    # external engine that batches concurrent requests itself.
    in_process: bool = True

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}(name={self.name!r}, task={self.task.value}, model_id={self.model_id!r})"
