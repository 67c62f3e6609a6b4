"""A local testnet: one shared testnet config and N node processes, supervised in the foreground.

Layout under the data dir::

    testnet.toml          shared: testnet id, PSK, simulated platform key, policy (mode 0600)
    node-<i>/node.toml    node i's config
    node-<i>/identity.key node i's Ed25519 key (0600), so peer ids survive restarts
    node-<i>/node.log     node i's log
    node-<i>/node-info.json  written by the running node: peer id, multiaddrs, API URL

Node 0 starts first; the others bootstrap from its multiaddr only and find the rest themselves.
Each node is its own OS process (py-libp2p costs real CPU per message; one process per node is
what keeps a 20-node testnet responsive on two cores). Children die with the supervisor
(PR_SET_PDEATHSIG on Linux) so no node outlives it.
"""

from __future__ import annotations

import compileall
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config import EvidenceMode, NodeConfig, TestnetConfig, load_testnet_config

__all__ = [
    "Interrupted",
    "NodeProcess",
    "RunningTestnet",
    "TestnetError",
    "TestnetLayout",
    "create_testnet",
    "node_command",
    "run_testnet",
    "shared_cores_env",
    "snapshot_code",
    "start_node_process",
    "wait_for_info",
]

TESTNET_FILE = "testnet.toml"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 6.0


class TestnetError(RuntimeError):
    """The testnet could not be created or started; the message says why."""

    __test__ = False


@dataclass(frozen=True)
class TestnetLayout:
    __test__ = False

    root: Path
    testnet_path: Path
    node_configs: tuple[Path, ...]


def create_testnet(
    root: Path,
    *,
    nodes: int,
    base_port: int = 0,
    api_port: int = 8700,
    listen_host: str = "127.0.0.1",
    testnet_id: str | None = None,
    reannounce_seconds: int = 60,
    bundle_lifetime_seconds: int = 300,
    epoch_seconds: int = 600,
    node_overrides: Callable[[int, NodeConfig], NodeConfig] | None = None,
    extra_measurements: Sequence[str] = (),
    code_root: Path | None = None,
) -> TestnetLayout:
    """Write (or refresh) the testnet config and one node config per node under ``root``.

    An existing ``testnet.toml`` keeps its PSK and platform key (so existing identities stay
    members); its policy is rewritten to allow this code's measurement (plus
    ``extra_measurements``). ``code_root`` is where the nodes' ``protocol`` and ``node`` packages
    live when they do not run from this checkout (see :func:`start_node_process`).
    """
    from node.attest.appraisal import testnet_policy_toml
    from node.attest.evidence_sources import measurement_of, platform_public_key

    if nodes < 1:
        raise TestnetError("a testnet needs at least one node")
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    testnet_path = root / TESTNET_FILE
    if testnet_path.exists():
        previous = load_testnet_config(testnet_path)
        testnet_id, psk, seed = previous.testnet_id, previous.psk, previous.platform_seed
    else:
        testnet_id = testnet_id or f"local-{secrets.token_hex(4)}"
        psk, seed = secrets.token_bytes(32), None
    seed = seed or secrets.token_bytes(32)
    policy_toml = testnet_policy_toml(
        list(dict.fromkeys([measurement_of(code_root), *extra_measurements])),
        platform_public_key=platform_public_key(seed),
        testnet_id=testnet_id,
        epoch_seconds=epoch_seconds,
    )
    testnet = TestnetConfig(
        testnet_id=testnet_id,
        psk=psk,
        policy_toml=policy_toml,
        platform_seed=seed,
        epoch_seconds=epoch_seconds,
    )
    testnet.save(testnet_path)
    configs: list[Path] = []
    for index in range(nodes):
        node_dir = root / f"node-{index}"
        port = base_port + index if base_port else 0
        config = NodeConfig(
            data_dir=node_dir,
            testnet_config=testnet_path,
            listen=(f"/ip4/{listen_host}/tcp/{port}",),
            api=f"127.0.0.1:{api_port + index if api_port else 0}",
            evidence=EvidenceMode.SIMULATED,
            reannounce_seconds=reannounce_seconds,
            bundle_lifetime_seconds=bundle_lifetime_seconds,
            log_file=node_dir / "node.log",
            label=f"node-{index}",
        )
        if node_overrides is not None:
            config = node_overrides(index, config)
        path = node_dir / "node.toml"
        config.save(path)
        configs.append(path)
    return TestnetLayout(root=root, testnet_path=testnet_path, node_configs=tuple(configs))


def snapshot_code(target: Path) -> Path:
    """Copy this checkout's ``protocol`` and ``node`` packages under ``target`` and compile them.

    Nodes started with ``code_root=target`` run (and measure) exactly this copy, so their
    measurement cannot drift while the checkout is being edited, and a restarted node measures
    what it measured before. Used by the multi-node tests and benchmarks.

    The copy's bytecode is written here, once: the checkout's own is left behind (it may be stale),
    and without it every node process compiled all ~200 modules from source (~0.25 CPU-s each;
    ``PYTHONDONTWRITEBYTECODE``, common in containers and CI, stops any process from caching it).
    """
    repo = Path(__file__).resolve().parents[1]
    for package in ("protocol", "node"):
        shutil.copytree(
            repo / package, target / package, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
        )
        compileall.compile_dir(target / package, quiet=1, workers=1)
    return target


# ------------------------------------------------------------------------------ processes


def node_command(config_path: Path, *extra: str) -> list[str]:
    """The command line that runs one node from ``config_path``."""
    return [
        sys.executable,
        "-c",
        "from node.cli.main import main; main()",
        "node",
        "start",
        "--config",
        str(config_path),
        *extra,
    ]


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM when the supervisor dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        return


@dataclass
class NodeProcess:
    index: int
    config_path: Path
    process: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.config_path.parent

    @property
    def info_path(self) -> Path:
        return self.data_dir / "node-info.json"

    @property
    def multiaddr(self) -> str:
        addrs = self.info.get("addrs") or []
        if not addrs:
            raise TestnetError(f"node {self.index} listens on no address; see {self.data_dir / 'node.log'}")
        return str(addrs[0])

    @property
    def api_url(self) -> str:
        return str(self.info["api_url"])

    def alive(self) -> bool:
        return self.process.poll() is None


def start_node_process(
    index: int,
    config_path: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    code_root: Path | None = None,
    wrapper: Sequence[str] = (),
) -> NodeProcess:
    """Start a node in its own process (own session: Ctrl-C reaches the supervisor, not the node).

    ``code_root`` runs the ``protocol``/``node`` packages found there instead of this checkout's.
    ``wrapper`` prefixes the command line with a launcher that places the process and then execs
    it, e.g. ``ip netns exec NS`` (the simulation harness puts each node in its own namespace).
    """
    info_path = config_path.parent / "node-info.json"
    if info_path.exists():
        info_path.unlink()
    child_env = dict(os.environ if env is None else env)
    repo_root = str(code_root or Path(__file__).resolve().parents[1])
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, child_env.get("PYTHONPATH", "")]))
    stderr_path = config_path.parent / "stderr.log"
    with open(stderr_path, "ab") as stderr:
        process = subprocess.Popen(
            [*wrapper, *node_command(config_path, *extra_args)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=child_env,
            cwd=config_path.parent,  # not the caller's cwd: ``python -c`` puts it first on sys.path
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    return NodeProcess(index=index, config_path=config_path, process=process)


def wait_for_info(
    node: NodeProcess, timeout: float = START_TIMEOUT, *, checkpoint: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Block until the node wrote its info file (it is up), or raise TestnetError.

    ``checkpoint`` is called on every poll: it may raise to abandon the wait (Ctrl-C).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if checkpoint is not None:
            checkpoint()
        if not node.alive():
            last = _last_error_line(node.data_dir / "stderr.log")
            raise TestnetError(
                f"node {node.index} exited with code {node.process.returncode} while starting"
                + (f" ({last})" if last else "")
                + f"; see {node.data_dir / 'node.log'} and {node.data_dir / 'stderr.log'}"
            )
        try:
            node.info = json.loads(node.info_path.read_text(encoding="utf-8"))
            return node.info
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise TestnetError(f"node {node.index} did not come up within {timeout:.0f} s")


def _last_error_line(path: Path) -> str:
    """The node's own one-line ``error: ...`` from its stderr, if it printed one."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error: ")]
    return errors[-1][len("error: "):] if errors else ""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM arrived while the testnet was starting or running its demo.

    A BaseException, as KeyboardInterrupt is, so that a step's ``except Exception`` (a demo
    polling an API that is not up yet) cannot swallow it.
    """


def stop_processes(nodes: Sequence[NodeProcess], timeout: float = STOP_TIMEOUT) -> dict[int, int | None]:
    """SIGTERM every node, wait up to ``timeout``, SIGKILL what is left; returns exit codes by index."""
    for node in nodes:
        if node.alive():
            node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for node in nodes:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            node.process.wait(remaining)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
    return {node.index: node.process.returncode for node in nodes}


# ---------------------------------------------------------------------------------- running


@dataclass
class RunningTestnet:
    layout: TestnetLayout
    nodes: list[NodeProcess]

    def peers_of(self, index: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        import httpx

        response = httpx.get(f"{self.nodes[index].api_url}/veilnet/v1/peers", timeout=timeout)
        response.raise_for_status()
        peers: list[dict[str, Any]] = response.json()["peers"]
        return peers


def prepare_generated_models(models: Sequence[str], out: Any = None) -> None:
    """Write the embedded models that are generated on first use (SmolLM2's conversion takes about
    a minute) once, here, before the nodes start: otherwise every node would convert its own copy
    at the same time. A model already in the store costs nothing."""
    out = out or sys.stdout
    from node.runtime.errors import ModelRuntimeError
    from node.runtime.loader import default_models_dir
    from node.runtime.smollm2 import SMOLLM2_FILES, SMOLLM2_NAME, ensure_smollm2

    if SMOLLM2_NAME not in models:
        return
    target = default_models_dir() / SMOLLM2_NAME
    if all((target / name).is_file() for name in SMOLLM2_FILES):
        return
    print(f"Converting {SMOLLM2_NAME} once into {target} (about a minute)…", file=out, flush=True)
    started = time.monotonic()
    try:
        ensure_smollm2(target)
    except (OSError, ModelRuntimeError) as exc:
        raise TestnetError(f"cannot prepare {SMOLLM2_NAME}: {exc}") from None
    print(f"converted in {time.monotonic() - started:.0f} s", file=out, flush=True)


def run_testnet(
    layout: TestnetLayout, *, demo_steps: Sequence[Callable[[RunningTestnet], None]] = (), out: Any = None
) -> int:
    """Start every node, report how to use and join the testnet, and supervise until a signal.

    Returns the exit code: 0 when stopped by a signal with every node up, 1 when a node died
    after start-up, 130 when the signal came during start-up or the demo (which it cuts short:
    the handler raises :class:`Interrupted` out of any wait). A node that dies while starting
    raises :class:`TestnetError`. Nodes are always stopped with SIGTERM first, SIGKILL only
    after ``STOP_TIMEOUT``.
    """
    out = out or sys.stdout
    state = {"signal": 0, "interruptible": True}

    def on_signal(signum: int, _frame: Any) -> None:
        state["signal"] = signum
        if state["interruptible"]:
            state["interruptible"] = False  # a second Ctrl-C must not interrupt the clean-up
            raise Interrupted(signal.Signals(signum).name)

    def checkpoint() -> None:
        """Raise the handler's Interrupted again if it was lost: Python drops an exception
        raised inside an at-fork hook or a finaliser ("Exception ignored in ..."), and starting
        each node forks, so a Ctrl-C landing there would otherwise go unnoticed until every
        node had come up."""
        if state["signal"]:
            raise Interrupted(signal.Signals(state["signal"]).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    nodes: list[NodeProcess] = []
    died = False
    try:
        try:
            _start_all(layout, nodes, demo_steps, out, checkpoint)
        except Interrupted as exc:
            print(f"\n{exc}: stopping the testnet during start-up", file=out, flush=True)
            return 130
        state["interruptible"] = False
        if state["signal"]:
            return 130
        print("Press Ctrl-C to stop every node.", file=out, flush=True)
        while not state["signal"]:
            for node in nodes:
                if not node.alive() and node.info:
                    print(
                        f"node {node.index} exited with code {node.process.returncode}", file=out, flush=True
                    )
                    node.info = {}
                    died = True
            if not any(node.alive() for node in nodes):
                print("every node has exited: stopping", file=out, flush=True)
                return 1
            time.sleep(0.2)
        return 1 if died else 0
    finally:
        state["interruptible"] = False
        codes = stop_processes(nodes)
        bad = {index: code for index, code in codes.items() if code not in (0, None)}
        print(
            f"stopped {len(nodes)} nodes" + (f" (non-zero exits: {bad})" if bad else ""), file=out, flush=True
        )
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def shared_cores_env(nodes: int) -> dict[str, str]:
    """The environment for ``nodes`` node processes on this machine: the cores divided among them.

    Every node's torch would otherwise use every core, and N processes computing at once on the
    same cores mostly measure oversubscription (throughput fell as clients were added). An
    operator's own ``VEILNET_TORCH_THREADS`` wins.
    """
    env = dict(os.environ)
    if not env.get("VEILNET_TORCH_THREADS"):
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            cores = os.cpu_count() or 1
        env["VEILNET_TORCH_THREADS"] = str(max(1, cores // max(1, nodes)))
    return env


def _start_all(
    layout: TestnetLayout,
    nodes: list[NodeProcess],
    demo_steps: Sequence[Callable[[RunningTestnet], None]],
    out: Any,
    checkpoint: Callable[[], None],
) -> None:
    env = shared_cores_env(len(layout.node_configs))
    first = start_node_process(0, layout.node_configs[0], env=env)
    nodes.append(first)
    wait_for_info(first, checkpoint=checkpoint)
    bootstrap = ("--bootstrap", first.multiaddr)
    for index, config_path in enumerate(layout.node_configs[1:], start=1):
        checkpoint()
        nodes.append(start_node_process(index, config_path, bootstrap, env=env))
    for node in nodes[1:]:
        wait_for_info(node, checkpoint=checkpoint)
    run = RunningTestnet(layout, nodes)
    _print_summary(run, out)
    for node in measurement_mismatches(run):
        print(
            f"WARNING: node {node.index} measures {node.info.get('measurement')}, which the testnet"
            " policy does not allow (source files changed while the testnet started?);"
            " run `testnet up` again.",
            file=out,
            flush=True,
        )
    for step in demo_steps:
        checkpoint()
        step(run)


def measurement_mismatches(run: RunningTestnet) -> list[NodeProcess]:
    """Nodes whose own measurement is not in the testnet policy (their peers will refuse them)."""
    from node.attest.appraisal import load_policy

    policy = load_policy(load_testnet_config(run.layout.testnet_path))
    allowed = set(policy.section("simulated").get("measurements", []))
    return [node for node in run.nodes if node.info.get("measurement") not in allowed]


def _print_summary(run: RunningTestnet, out: Any) -> None:
    print(f"Veilnet testnet {run.layout.root} — {len(run.nodes)} nodes", file=out)
    for node in run.nodes:
        print(f"  node {node.index}: {node.multiaddr}  api {node.api_url}", file=out)
    print(
        "\nSIMULATED evidence — not secure. To join from another machine, copy "
        f"{run.layout.testnet_path} (it is secret) and run:\n"
        f"  veilnet testnet join {run.nodes[0].multiaddr} --testnet-config testnet.toml\n"
        f"(listen on a reachable address with --listen-host 0.0.0.0 when starting the testnet;\n"
        " on this machine add --api 127.0.0.1:0 --data-dir DIR: node 0 holds its API port).\n"
        f"Registry: veilnet peers --api {run.nodes[0].api_url}\n",
        file=out,
        flush=True,
    )
