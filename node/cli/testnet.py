"""``veilnet testnet up|join``: run a local test network, or join one, in the foreground.

The orchestration itself is a library (:mod:`node.testnet`, :mod:`node.demo`); this module only
turns options into calls.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from node.cli.errors import CliError
from node.cli.node import (
    ApiOption,
    ConfigOption,
    DataDirOption,
    ListenOption,
    ModelOption,
    _node_config,
    _start,
)
from node.cli.preflight import bind_test, check_models
from node.config import EvidenceMode

__all__ = ["testnet_app"]

testnet_app = typer.Typer(help="Run or join a local test network.", no_args_is_help=True)


@testnet_app.command("up")
def testnet_up(
    nodes: int = typer.Option(4, "--nodes", "-n", min=1, max=64, help="How many peers to run."),
    base_port: int = typer.Option(
        0, "--base-port", min=0, max=65535, help="libp2p port of node 0; node i uses P+i (0: any free)."
    ),
    api_port: int = typer.Option(
        8700, "--api-port", min=0, max=65535, help="Node 0's HTTP API port; node i uses PORT+i (0: any free)."
    ),
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
        " SmolLM2-135M-Instruct; veilnet-tiny-random-lm is a fast random chat model for tests;"
        " 'none' for no models).",
    ),
) -> None:
    """Create a testnet config and run N peers as separate processes until Ctrl-C or SIGTERM.

    Exit codes: 0 after Ctrl-C once every node is up, 2 when a check or a node's start fails,
    130 when Ctrl-C arrives during start-up or the demo.
    """
    from node.demo import DEMO_STEPS
    from node.testnet import create_testnet, prepare_generated_models, run_testnet

    models = tuple(m for m in (model or ["all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"]) if m != "none")
    _check_testnet_up(data_dir, nodes, base_port, api_port, listen_host, models)
    prepare_generated_models(models)
    layout = create_testnet(
        data_dir,
        nodes=nodes,
        base_port=base_port,
        api_port=api_port,
        listen_host=listen_host,
        node_overrides=lambda _index, config: replace(config, models=models),
    )
    raise typer.Exit(run_testnet(layout, demo_steps=DEMO_STEPS if demo else ()))


def _check_testnet_up(
    data_dir: Path, nodes: int, base_port: int, api_port: int, listen_host: str, models: tuple[str, ...]
) -> None:
    """Everything ``testnet up`` can check before it writes a file or starts a process."""
    import ipaddress

    from node.datadir import holder_of

    try:
        ipaddress.ip_address(listen_host)
    except ValueError:
        why = f"{listen_host!r} is not an IP address"
        raise CliError("--listen-host", why, "use 127.0.0.1 or 0.0.0.0") from None
    for flag, port in (("--base-port", base_port), ("--api-port", api_port)):
        if port and port + nodes - 1 > 65535:
            raise CliError(flag, f"{nodes} nodes from port {port} pass 65535", "choose a lower port")
    if data_dir.exists() and not data_dir.is_dir():
        raise CliError(f"--data-dir {data_dir}", "is not a directory", "choose another --data-dir")
    for index in range(nodes):
        pid = holder_of(data_dir / f"node-{index}")
        if pid is not None:
            raise CliError(
                f"--data-dir {data_dir}", f"node-{index} is running already (process {pid})",
                "stop that testnet first, or choose another --data-dir",
            )
    check_models(models, EvidenceMode.SIMULATED)
    for index in range(nodes):
        if base_port:
            bind_test(listen_host, base_port + index, f"--base-port {base_port} (node {index})")
        if api_port:
            bind_test("127.0.0.1", api_port + index, f"--api-port {api_port} (node {index})")


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
    _start(config)
