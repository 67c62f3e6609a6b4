"""``veilnet testnet up|join``: run a local test network, or join one, in the foreground.

The orchestration itself is a library (:mod:`node.testnet`, :mod:`node.demo`); this module only
turns options into calls.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from node.cli.node import (
    ApiOption,
    ConfigOption,
    DataDirOption,
    ListenOption,
    ModelOption,
    _fail,
    _node_config,
    _start,
)
from node.config import ConfigError, EvidenceMode

__all__ = ["testnet_app"]

testnet_app = typer.Typer(help="Run or join a local test network.", no_args_is_help=True)


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
    from node.demo import DEMO_STEPS
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
        raise typer.Exit(run_testnet(layout, demo_steps=DEMO_STEPS if demo else ()))
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
