"""One node per data dir: an exclusive lock file that names the process holding it.

Two nodes on one data dir share a peer id (the identity key lives there), and the second one to
stop deletes the first one's ``node-info.json``. ``lock_data_dir`` takes an ``fcntl`` lock on
``<data dir>/node.lock`` for the life of the process (the kernel releases it when the process
ends, however it ends, so a crash leaves no stale lock) and writes the holder's pid into it, so
the refusal can say which process to stop.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_FILE", "DataDirError", "DataDirLock", "holder_of", "lock_data_dir"]

LOCK_FILE = "node.lock"


class DataDirError(RuntimeError):
    """The data dir cannot be used: not a directory, not writable, or locked by a running node."""


class DataDirLock:
    """A held lock; ``release()`` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder_of(data_dir: Path) -> int | None:
    """The pid of the running node that holds ``data_dir``'s lock, or None when it is free."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Create ``data_dir`` if needed, check it is a writable directory, and lock it for this process."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(f"data dir {data_dir}: is not a directory (choose another --data-dir)")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(
            f"data dir {data_dir}: cannot create it: {exc.strerror or exc} (choose another --data-dir)"
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {data_dir}: not writable (fix its permissions or choose another)")
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DataDirError(f"data dir {data_dir}: cannot create {LOCK_FILE}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        holder = f"process {pid}" if pid else "another process"
        raise DataDirError(
            f"data dir {data_dir}: in use by {holder}, a running node"
            f" (stop it first, or give this node its own --data-dir)"
        ) from None
    os.set_inheritable(fd, False)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return DataDirLock(path, fd)
