"""Debug timeline of one job: monotonic timestamps of its stages in every process it crosses.

Issue 12 asks where the wall time of a job goes, which no single process's profile can say (the
API node waits while the executor computes, and both wait on each other's event loops). With
``VEILNET_JOB_TIMELINE=<file>`` in a node's environment, each stage a job passes appends one line
``<job id hex> <stage> <monotonic ns> <pid> <loop turns>`` to that file. ``CLOCK_MONOTONIC`` is one clock for
every process of a machine, so the lines of the API node, the executors and the benchmark client
merge into one timeline (``bench/bench_timeline.py`` does that and prints per-stage medians).

``loop turns`` counts the trio event loop's passes in that process so far (``count_loop_turns``):
the turns between two stages of one process are the scheduling rounds the job waited through, a
figure that, unlike the time, does not depend on how loaded the machine is.

Off (the default) a mark costs one global lookup. On, a mark is one ``write`` of a short line to a
file opened in append mode (atomic per line for small writes, so processes do not interleave).

The job a task works on is kept in a context variable (``enter``): code that only sees a
batch (the embedding batcher) or runs in a worker thread (``trio.to_thread`` copies the context)
marks the job it serves without being handed its id.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Iterable

import trio

__all__ = [
    "ENV", "configure", "count_loop_turns", "current_job", "enabled", "enter", "mark", "mark_many",
    "start_request",
]

ENV = "VEILNET_JOB_TIMELINE"

_fd: int | None = None
_turns = 0  # event-loop passes in this process since count_loop_turns (0 when not counted)
_path = os.environ.get(ENV) or None
_current: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("veilnet_timeline_job", default=None)
# Stages reached before the job has an id (the HTTP request): kept until ``enter`` names the job.
_early: contextvars.ContextVar[list[tuple[str, int, int]] | None] = contextvars.ContextVar(
    "veilnet_timeline_early", default=None
)


def enabled() -> bool:
    return _path is not None


def _write(text: str) -> None:
    global _fd
    if _fd is None:
        assert _path is not None
        _fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(_fd, text.encode())


def mark(stage: str, job_id: bytes | None = None, *, peer: bytes | None = None, kind: str = "") -> None:
    """Record that ``job_id`` (default: the job of this context) reached ``stage`` now; ``kind``
    refines the stage (``stage.kind``, joined only when the timeline is on: marks sit on the job
    path); ``peer`` names the executor a stage belongs to (a k > 1 job has one attempt per
    executor). Before a request has a job (``start_request`` … ``enter``) the stage is held and
    written by ``enter``."""
    if _path is None:
        return
    now = time.monotonic_ns()
    if kind:
        stage = f"{stage}.{kind}"
    if peer is not None:
        stage = f"{stage}:{peer[-4:].hex()}"
    job = job_id if job_id is not None else _current.get()
    if job is None:
        early = _early.get()
        if early is not None:
            early.append((stage, now, _turns))
        return
    _write(f"{job.hex()} {stage} {now} {os.getpid()} {_turns}\n")


def mark_many(stage: str, job_ids: Iterable[bytes | None]) -> None:
    """One stage reached by several jobs at once (a batch)."""
    if _path is None:
        return
    now, pid = time.monotonic_ns(), os.getpid()
    lines = "".join(f"{job.hex()} {stage} {now} {pid} {_turns}\n" for job in job_ids if job is not None)
    if lines:
        _write(lines)


def current_job() -> bytes | None:
    """The job this context works on (None when there is none or the timeline is off)."""
    return _current.get() if _path is not None else None


def start_request() -> None:
    """This task begins a request whose job id comes later: hold its stages until ``enter``.

    Only for a task that serves one request (a trio task runs in its own copy of the context, so
    nothing leaks to other tasks)."""
    if _path is not None:
        _early.set([])
        _current.set(None)


def enter(job_id: bytes) -> None:
    """This task (and the tasks and threads it starts) now works on ``job_id``; held stages are
    written under it. Only for a task that serves one job."""
    if _path is None:
        return
    _current.set(job_id)
    early = _early.get()
    if early:
        pid = os.getpid()
        _write("".join(f"{job_id.hex()} {stage} {ns} {pid} {turns}\n" for stage, ns, turns in early))
    _early.set(None)


def configure(path: str | None) -> None:
    """Turn the timeline on (a file path) or off (None) in this process; tests use it."""
    global _path, _fd
    if _fd is not None:
        os.close(_fd)
        _fd = None
    _path = path or None


class _TurnCounter(trio.abc.Instrument):
    def before_io_wait(self, timeout: float) -> None:
        global _turns
        _turns += 1


def count_loop_turns() -> None:
    """Count this trio run's event-loop passes in the marks (call inside ``trio.run``; once)."""
    if _path is not None:
        trio.lowlevel.add_instrument(_TurnCounter())
