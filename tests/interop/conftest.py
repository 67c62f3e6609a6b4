"""Fixtures for the js-libp2p interop tests: the js dependencies, a real testnet, and js peers.

The independent peer is js-libp2p (tests/interop/peer.mjs, exact versions pinned in
package.json + package-lock.json), run with the machine's Node.js and driven over stdin/stdout
with JSON lines. Its dependencies are installed with ``npm ci`` on first use (bounded; skipped
while node_modules matches the lock file). A missing ``node`` or ``npm`` fails the tests with a
clear message: these tests are never skipped.

The testnet is three real node processes (tests.node.cluster) with node 1 serving the default
model, so it announces a model in its bundle and provides it in the DHT.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from node.config import NodeConfig, load_testnet_config
from tests.node.cluster import Cluster

INTEROP_DIR = Path(__file__).resolve().parent
NODE_MODULES = INTEROP_DIR / "node_modules"
INSTALL_STAMP = NODE_MODULES / ".veilnet-installed"
NPM_CI_TIMEOUT = 180.0
MIN_NODE_MAJOR = 20
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"  # node.runtime.loader.DEFAULT_MODEL (not imported: torch)
MODEL_NODE = 1  # the testnet node that serves DEFAULT_MODEL_NAME
REANNOUNCE_SECONDS = 4
CALL_TIMEOUT = 15.0

# Figures the tests measured, printed at the end of the run (connect time, gossip delay, ...).
FIGURES: dict[str, str] = {}


# --------------------------------------------------------------------------- js toolchain


@dataclass(frozen=True)
class JsToolchain:
    node: str
    version: str
    command: tuple[str, ...]  # how to run peer.mjs (cwd: INTEROP_DIR)


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((INTEROP_DIR / name).read_bytes())
    return digest.hexdigest()


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"`{tool}` is not on PATH. The js-libp2p interop tests need Node.js >= {MIN_NODE_MAJOR} "
            f"with npm (e.g. the Debian packages nodejs and npm); they are never skipped.",
            pytrace=False,
        )
    return path


def _install_js_dependencies(npm: str) -> None:
    """``npm ci`` into tests/interop/node_modules unless it already matches the lock file."""
    want = _lock_digest()
    if INSTALL_STAMP.is_file() and INSTALL_STAMP.read_text().strip() == want:
        return
    started = time.monotonic()
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=INTEROP_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`npm ci` in {INTEROP_DIR} did not finish within {NPM_CI_TIMEOUT:.0f} s", pytrace=False)
    if result.returncode != 0:
        pytest.fail(
            f"`npm ci` in {INTEROP_DIR} failed (exit {result.returncode}):\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    INSTALL_STAMP.write_text(want + "\n")
    FIGURES["npm ci"] = f"{time.monotonic() - started:.1f} s"


@pytest.fixture(scope="session")
def js_toolchain() -> JsToolchain:
    node = _require("node")
    npm = _require("npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    match = re.fullmatch(r"v(\d+)\.\d+\.\d+.*", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        pytest.fail(
            f"Node.js {version!r} is too old: the interop peer needs >= {MIN_NODE_MAJOR}", pytrace=False
        )
    _install_js_dependencies(npm)
    FIGURES["node"] = version
    # polyfill.mjs adds the two ES2024 built-ins js-libp2p 3 needs on Node 20; a no-op on newer Node.
    return JsToolchain(node=node, version=version, command=(node, "--import", "./polyfill.mjs", "peer.mjs"))


# ------------------------------------------------------------------------------ js peer


class JsPeerError(AssertionError):
    """The js peer answered a command with an error, died, or did not answer in time."""


@dataclass
class JsPeer:
    """One js-libp2p process. ``call`` sends a command and waits (bounded) for its reply."""

    name: str
    process: subprocess.Popen[str]
    stderr_path: Path
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    _replies: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    _events: list[dict[str, Any]] = field(default_factory=list)
    _events_lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = 0

    def start_reader(self) -> None:
        threading.Thread(target=self._read_stdout, name=f"js-{self.name}", daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printing to stdout; the protocol lines are all JSON
            if "event" in obj:
                with self._events_lock:
                    self._events.append(obj)
            else:
                self._replies.put(obj)

    def call(self, cmd: str, timeout: float = CALL_TIMEOUT, **args: Any) -> dict[str, Any]:
        """Run ``cmd``; the js side gets ``timeout_ms`` a little below our own deadline."""
        self._next_id += 1
        request_id = self._next_id
        request = {"id": request_id, "cmd": cmd, "timeout_ms": int(max(0.5, timeout - 1.0) * 1000), **args}
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise JsPeerError(f"js peer {self.name} is gone ({exc}); stderr:\n{self.stderr_tail()}") from None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JsPeerError(f"js peer {self.name}: no answer to {cmd} within {timeout:.0f} s")
            try:
                reply = self._replies.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.process.poll() is not None:
                    raise JsPeerError(
                        f"js peer {self.name} exited ({self.process.returncode}) during {cmd};"
                        f" stderr:\n{self.stderr_tail()}"
                    ) from None
                continue
            if reply.get("id") == request_id:
                return reply
            # a late answer to an earlier command that timed out on our side: drop it

    def ok(self, cmd: str, timeout: float = CALL_TIMEOUT, **args: Any) -> dict[str, Any]:
        """Like ``call`` but the command must succeed."""
        reply = self.call(cmd, timeout, **args)
        if not reply.get("ok"):
            raise JsPeerError(f"js peer {self.name}: {cmd} failed: {reply.get('error')}")
        return reply

    def messages(self, topic: str | None = None) -> list[dict[str, Any]]:
        with self._events_lock:
            return [
                e for e in self._events if e["event"] == "message" and (topic is None or e["topic"] == topic)
            ]

    def wait_messages(
        self, predicate: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.messages()
            if predicate(seen):
                return seen
            time.sleep(0.1)
        raise JsPeerError(f"js peer {self.name}: timed out after {timeout:.0f} s waiting for {what}")

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(JsPeerError):
                self.call("stop", timeout=5.0)
            try:
                self.process.wait(5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


JsPeerFactory = Callable[..., JsPeer]


def _spawn(toolchain: JsToolchain, log_dir: Path, name: str, **start: Any) -> JsPeer:
    stderr_path = log_dir / f"js-{name}.stderr.log"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            toolchain.command,
            cwd=INTEROP_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
            env={**os.environ, "NODE_OPTIONS": ""},
        )
    peer = JsPeer(name=name, process=process, stderr_path=stderr_path)
    peer.start_reader()
    try:
        started = peer.ok("start", timeout=30.0, **start)
    except BaseException:
        peer.close()
        raise
    peer.peer_id = started["peer_id"]
    peer.addrs = list(started["addrs"])
    return peer


@pytest.fixture
def spawn_js(js_toolchain: JsToolchain, tmp_path: Path) -> Iterator[JsPeerFactory]:
    """Start extra js peers for one test: ``spawn_js(name, psk_hex=..., seed_hex=...)``."""
    peers: list[JsPeer] = []

    def spawn(name: str, **start: Any) -> JsPeer:
        peer = _spawn(js_toolchain, tmp_path, name, **start)
        peers.append(peer)
        return peer

    try:
        yield spawn
    finally:
        for peer in peers:
            peer.close()


# ------------------------------------------------------------------------------ testnet


class InteropCluster(Cluster):
    """The shared test cluster, with one node serving the default model."""

    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        config = super()._overrides(index, config)
        return replace(config, models=(DEFAULT_MODEL_NAME,)) if index == MODEL_NODE else config

    @property
    def psk_hex(self) -> str:
        assert self.layout is not None
        return load_testnet_config(self.layout.testnet_path).psk.hex()


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteropCluster]:
    """Three honest Veilnet nodes (node i > 0 bootstrapped from node 0); registries complete."""
    cluster = InteropCluster(
        tmp_path_factory.mktemp("interop-testnet"), 3, reannounce_seconds=REANNOUNCE_SECONDS
    )
    try:
        cluster.start()
        cluster.wait_registries_complete(timeout=60)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def js_peer(
    js_toolchain: JsToolchain, testnet: InteropCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JsPeer]:
    """A well-behaved js peer holding the testnet key, subscribed to the attestation topic."""
    peer = _spawn(js_toolchain, tmp_path_factory.mktemp("js-peer"), "honest", psk_hex=testnet.psk_hex)
    try:
        peer.ok("subscribe", topic="veilnet/attest/1")
        yield peer
    finally:
        peer.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("js-libp2p interop figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
