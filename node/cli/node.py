"""``veilnet node start``, ``veilnet testnet up|join`` and ``veilnet peers``.

``node start`` runs one peer in the foreground until SIGINT/SIGTERM, then stops within a few
seconds with exit code 0. Options on the command line override the config file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio
import typer

from node.config import (
    ConfigError,
    EvidenceMode,
    NodeConfig,
    TestEvidenceFault,
    TestnetConfig,
    load_node_config,
    load_testnet_config,
)

__all__ = ["node_app", "register_peers", "run_node", "testnet_app"]

log = logging.getLogger("veilnet.cli")

node_app = typer.Typer(help="Run a Veilnet peer.", no_args_is_help=True)
testnet_app = typer.Typer(help="Run or join a local test network.", no_args_is_help=True)

STOP_DEADLINE = 4.0  # seconds from a stop signal to forced cancellation (exit within 5 s)
DEFAULT_NODE_API = "http://127.0.0.1:8700"


# ---------------------------------------------------------------------------------- running


async def _serve(config: NodeConfig, testnet: TestnetConfig) -> None:
    from node.app import Node

    node = Node(config, testnet)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    node.stop()
                    scope.deadline = trio.current_time() + STOP_DEADLINE
                    return

            nursery.start_soon(watch_signals)
            try:
                await node.run()
            finally:
                nursery.cancel_scope.cancel()


def run_node(config: NodeConfig, testnet: TestnetConfig) -> int:
    """Run a node in this process until a stop signal; the process exit code."""
    from node.app import is_shutdown_race
    from node.logging_setup import configure_logging
    from node.net.host import IdentityFileError

    configure_logging(config.log_level, config.log_file)
    try:
        trio.run(_serve, config, testnet)
    except (ConfigError, IdentityFileError) as exc:
        log.error("%s", exc)
        return 2
    except BaseExceptionGroup as group:
        if is_shutdown_race(group):
            log.debug("ignored py-libp2p shutdown race: %r", group)
            return 0
        log.exception("node failed")
        return 1
    except RuntimeError as exc:
        if is_shutdown_race(exc):
            return 0
        log.exception("node failed")
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C before the signal receiver was installed
        return 0
    log.info("stopped")
    return 0


def _node_config(
    config_file: Path | None,
    data_dir: Path | None,
    listen: list[str] | None,
    bootstrap: list[str] | None,
    api: str | None,
    testnet_config: Path | None,
    **overrides: Any,
) -> NodeConfig:
    if config_file is not None:
        config = load_node_config(config_file)
    else:
        config = NodeConfig(data_dir=data_dir or Path.home() / ".veilnet")
    changes: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if listen:
        changes["listen"] = tuple(listen)
    if bootstrap:
        changes["bootstrap"] = tuple(dict.fromkeys([*config.bootstrap, *bootstrap]))
    if api is not None:
        changes["api"] = None if api == "off" else api
    if testnet_config is not None:
        changes["testnet_config"] = testnet_config
    return replace(config, **changes)


def _start(config: NodeConfig) -> None:
    if config.testnet_config is None:
        raise typer.BadParameter(
            "a testnet config is needed (--testnet-config FILE or testnet_config in the config)"
        )
    testnet = load_testnet_config(config.testnet_config)
    code = run_node(config, testnet)
    # Everything that matters is closed or flushed by now (connections, identity file, logs).
    # Interpreter teardown of a large heap took seconds on a loaded machine, which would break
    # the "stopped within 5 s" promise, so leave right away.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


ConfigOption = typer.Option(None, "--config", "-c", help="Node config TOML.", dir_okay=False)
DataDirOption = typer.Option(None, "--data-dir", help="Holds the identity key (0600) and node state.")
ListenOption = typer.Option(
    None, "--listen", help="Listen multiaddr (repeatable), e.g. /ip4/0.0.0.0/tcp/4001."
)
BootstrapOption = typer.Option(
    None, "--bootstrap", help="Bootstrap peer multiaddr with /p2p/<id> (repeatable)."
)
ApiOption = typer.Option(None, "--api", help="HTTP API HOST:PORT (default 127.0.0.1:8700; 'off' disables).")
TestnetOption = typer.Option(
    None, "--testnet-config", help="The testnet's shared config TOML.", dir_okay=False
)
ModelOption = typer.Option(None, "--model", help="Model id this node serves (repeatable; needs attestation).")
FaultOption = typer.Option(
    None,
    "--unsafe-test-evidence-fault",
    hidden=True,
    help="TEST ONLY: present bad simulated evidence (refused unless evidence is simulated).",
)


@node_app.command("start")
def start(
    config_file: Path | None = ConfigOption,
    data_dir: Path | None = DataDirOption,
    listen: list[str] | None = ListenOption,
    bootstrap: list[str] | None = BootstrapOption,
    api: str | None = ApiOption,
    testnet_config: Path | None = TestnetOption,
    model: list[str] | None = ModelOption,
    evidence: EvidenceMode | None = typer.Option(None, "--evidence", help="auto | simulated | none."),
    mdns: bool | None = typer.Option(None, "--mdns/--no-mdns", help="LAN discovery (off by default)."),
    log_level: str | None = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    log_file: Path | None = typer.Option(None, "--log-file", help="Log here instead of stderr."),
    fault: TestEvidenceFault | None = FaultOption,
) -> None:
    """Run one peer in the foreground until Ctrl-C or SIGTERM."""
    try:
        config = _node_config(
            config_file,
            data_dir,
            listen,
            bootstrap,
            api,
            testnet_config,
            models=tuple(model) if model else None,
            evidence=evidence,
            mdns=mdns,
            log_level=log_level,
            log_file=log_file,
            test_evidence_fault=fault,
        )
    except ConfigError as exc:
        _fail(exc)
    _start(config)


# ---------------------------------------------------------------------------------- testnet


@testnet_app.command("up")
def testnet_up(
    nodes: int = typer.Option(4, "--nodes", "-n", min=1, max=64, help="How many peers to run."),
    base_port: int = typer.Option(
        0, "--base-port", help="libp2p port of node 0; node i uses P+i (0: any free)."
    ),
    api_port: int = typer.Option(8700, "--api-port", help="Node 0's HTTP API port; node i uses PORT+i."),
    data_dir: Path = typer.Option(
        Path(".veilnet-testnet"), "--data-dir", help="Testnet config and node dirs."
    ),
    demo: bool = typer.Option(
        False, "--demo", help="Show node 0's attested peers, then send one example job and its report."
    ),
    listen_host: str = typer.Option("127.0.0.1", "--listen-host", help="IP the nodes listen on."),
    model: list[str] | None = typer.Option(
        None,
        "--model",
        help="Model every node serves (repeatable; default: all-MiniLM-L6-v2 and"
        " veilnet-tiny-random-lm; 'none' for no models).",
    ),
) -> None:
    """Create a testnet config and run N peers as separate processes until Ctrl-C or SIGTERM."""
    from node.testnet import TestnetError, create_testnet, run_testnet

    models = tuple(m for m in (model or ["all-MiniLM-L6-v2", "veilnet-tiny-random-lm"]) if m != "none")
    try:
        layout = create_testnet(
            data_dir,
            nodes=nodes,
            base_port=base_port,
            api_port=api_port,
            listen_host=listen_host,
            node_overrides=lambda _index, config: replace(config, models=models),
        )
        raise typer.Exit(run_testnet(layout, demo=demo))
    except (ConfigError, TestnetError) as exc:
        _fail(exc)


@testnet_app.command("join")
def testnet_join(
    bootstrap_addr: str = typer.Argument(..., help="Multiaddr of any member, ending in /p2p/<peer id>."),
    testnet_config: Path = typer.Option(
        ..., "--testnet-config", help="The testnet's config file (secret).", dir_okay=False
    ),
    config_file: Path | None = ConfigOption,
    data_dir: Path | None = DataDirOption,
    listen: list[str] | None = ListenOption,
    api: str | None = ApiOption,
    model: list[str] | None = ModelOption,
    evidence: EvidenceMode | None = typer.Option(None, "--evidence", help="auto | simulated | none."),
    log_level: str | None = typer.Option(None, "--log-level"),
) -> None:
    """Join an existing testnet through one of its members and run in the foreground."""
    try:
        config = _node_config(
            config_file,
            data_dir,
            listen,
            [bootstrap_addr],
            api,
            testnet_config,
            models=tuple(model) if model else None,
            evidence=evidence,
            log_level=log_level,
        )
    except ConfigError as exc:
        _fail(exc)
    _start(config)


# -------------------------------------------------------------------------------------- peers


def peers(
    api: str = typer.Option(DEFAULT_NODE_API, "--api", help="The node's HTTP API URL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    model: str | None = typer.Option(None, "--model", help="Only peers serving this model."),
) -> None:
    """Show the node's attested-peer registry."""
    import httpx

    try:
        response = httpx.get(
            f"{api.rstrip('/')}/veilnet/v1/peers", params={"model": model} if model else None, timeout=5.0
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot read {api}: {exc}", err=True)
        raise typer.Exit(1) from None
    data = response.json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    print_peer_table(data["peers"])


def print_peer_table(entries: list[dict[str, Any]], title: str = "Attested peers") -> None:
    import time

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} ({len(entries)})")
    for column in ("peer id", "TEE", "measurement", "models", "epoch", "expires in", "address"):
        table.add_column(column)
    now = time.time()
    for entry in entries:
        table.add_row(
            entry["peer_id"],
            entry["label"] or entry["kind"],
            entry["measurement"][:16] + "…",
            ", ".join(entry["models"]) or "-",
            str(entry["epoch"]),
            f"{max(0, int(entry['expires_at'] - now))} s",
            entry["addrs"][0] if entry["addrs"] else "-",
        )
    Console(file=sys.stdout, width=200).print(table)


def register_peers(app: typer.Typer) -> None:
    app.command("peers")(peers)
