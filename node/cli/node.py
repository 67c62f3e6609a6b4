"""``veilnet node start``: run one peer in the foreground (also used by ``testnet join``).

``node start`` runs one peer in the foreground until SIGINT/SIGTERM, then stops within a few
seconds with exit code 0. Options on the command line override the config file.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio
import typer

from node.cli.errors import EXIT_BUG, EXIT_USAGE, CliError, describe
from node.cli.preflight import preflight
from node.config import (
    EvidenceMode,
    NodeConfig,
    TestEvidenceFault,
    TestnetConfig,
    load_node_config,
)

__all__ = ["node_app", "run_node"]

log = logging.getLogger("veilnet.cli")

node_app = typer.Typer(help="Run a Veilnet peer.", no_args_is_help=True)

STOP_DEADLINE = 4.0  # seconds from a stop signal to forced cancellation (exit within 5 s)


# ---------------------------------------------------------------------------------- running


async def _serve(config: NodeConfig, testnet: TestnetConfig) -> None:
    from node.heap import freeze_long_lived
    from node.peer import build_peer

    peer = build_peer(config, testnet)
    node = peer.node
    # Everything imported and built, nothing listening yet: the pause of a full collection lands
    # on no one (node.heap). A node serving models freezes again once they are loaded.
    freeze_long_lived("node built")
    peer.jobs.models_loaded = lambda: freeze_long_lived("models loaded")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    node.stop()
                    scope.deadline = trio.current_time() + STOP_DEADLINE
                    return

            async def announce_up() -> None:
                await node.started.wait()
                info = node.info()
                addrs = info.get("addrs") or []
                if not addrs:
                    raise CliError(
                        "--listen", f"the node listens on none of {list(config.listen)}",
                        "see the log for the libp2p error; choose another address or port",
                    )
                api = info.get("api_url") or "off"
                print(f"up: {info['peer_id']} on {' '.join(map(str, addrs))}; API {api}", flush=True)

            nursery.start_soon(watch_signals)
            nursery.start_soon(announce_up)
            try:
                await node.run()
            finally:
                nursery.cancel_scope.cancel()


def run_node(config: NodeConfig, testnet: TestnetConfig) -> int:
    """Run a node in this process until a stop signal; the process exit code.

    Expected failures while starting (a port taken since the pre-flight check, an unreadable
    identity key) are one line on stderr and exit code 2, as the CLI boundary would print them;
    anything else is logged with its traceback as a bug (exit code 1).
    """
    from node.app import is_shutdown_race
    from node.logging_setup import configure_logging

    configure_logging(config.log_level, config.log_file)
    try:
        trio.run(_serve, config, testnet)
    except KeyboardInterrupt:  # a second Ctrl-C before the signal receiver was installed
        return 0
    except BaseException as exc:
        if is_shutdown_race(exc):
            log.debug("ignored py-libp2p shutdown race: %r", exc)
            return 0
        line = describe(exc)
        if line is not None:
            log.error("%s", line)
            if config.log_file is not None:
                print(line, file=sys.stderr, flush=True)
            return EXIT_USAGE
        log.exception("node failed")
        print("error: this is a bug in Veilnet; please report it with the traceback in the log",
              file=sys.stderr, flush=True)
        return EXIT_BUG
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
    """Check everything the node needs, then run it in this process and leave with its code."""
    testnet, lock = preflight(config)
    code = run_node(config, testnet)
    lock.release()
    # Everything that matters is closed or flushed by now (connections, identity file, logs).
    # Interpreter teardown of a large heap took seconds on a loaded machine, which would break
    # the "stopped within 5 s" promise, so leave right away.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
    """Run one peer in the foreground until Ctrl-C or SIGTERM (prints "up: ..." once it is)."""
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
    _start(config)


@node_app.command("config-template")
def config_template(
    out: Path | None = typer.Option(None, "--out", "-o", help="Write node.toml here (default: print it)."),
    data_dir: str = typer.Option("veilnet-data", "--data-dir", help="The data_dir value to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
) -> None:
    """Write a commented node.toml: every key, its default and what it means (docs/CONFIG.md)."""
    from node.config_template import node_config_template

    text = node_config_template(data_dir)
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.is_dir():
        raise CliError(f"--out {out}", "is a directory", "give a file path such as node.toml")
    if out.exists() and not force:
        raise CliError(f"--out {out}", "exists already", "pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}; edit it, then: veilnet node start --config {out}")
