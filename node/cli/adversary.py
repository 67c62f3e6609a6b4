"""``veilnet adversary``: run the project's hostile peer against a node on this machine.

For testing your own testnet only: every attack refuses targets outside 127.0.0.0/8, and each is
bounded in count and duration. The attacker needs the testnet's pre-shared key and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

adversary_app = typer.Typer(
    help="A hostile peer (PSK only) that attacks a node on 127.0.0.1, for testing.", no_args_is_help=True
)


@adversary_app.command("list")
def list_attacks() -> None:
    """List the attacks: name, layer, what it does."""
    from node.adversary.attacks import ATTACKS

    for item in ATTACKS.values():
        typer.echo(f"{item.name:26} {item.layer:11} {item.summary}")


@adversary_app.command("run")
def run(
    target: str = typer.Option(..., "--target", help="The node's /ip4/127.0.0.1/tcp/PORT/p2p/ID address."),
    attack: list[str] = typer.Option(..., "--attack", help="An attack name (repeatable; see `list`)."),
    testnet_config: Path | None = typer.Option(None, "--testnet-config", help="testnet.toml (for its PSK)."),
    psk_file: Path | None = typer.Option(None, "--psk-file", help="A file holding the PSK as 64 hex digits."),
    duration: float = typer.Option(10.0, "--duration", min=0.5, max=600.0, help="Seconds per attack."),
    scale: float = typer.Option(1.0, "--scale", min=0.001, max=4.0, help="Multiplies every attack's counts."),
) -> None:
    """Run attacks one after another; print one JSON outcome per line."""
    import logging

    import trio

    # py-libp2p logs every stream the target refuses; the outcome lines say what happened.
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)

    from node.adversary.attacks import ATTACKS, Context, run_attack
    from node.adversary.wire import Target

    unknown = [name for name in attack if name not in ATTACKS]
    if unknown:
        raise typer.BadParameter(f"unknown attack(s) {unknown}; see `veilnet adversary list`")
    if (testnet_config is None) == (psk_file is None):
        raise typer.BadParameter("give exactly one of --testnet-config and --psk-file")
    if testnet_config is not None:
        from node.config import load_testnet_config

        psk = load_testnet_config(testnet_config).psk
    else:
        assert psk_file is not None
        from node.cli.errors import CliError

        try:
            psk = bytes.fromhex(psk_file.read_text(encoding="utf-8").strip())
        except (ValueError, UnicodeDecodeError):
            psk = b""
        if len(psk) != 32:
            raise CliError(f"--psk-file {psk_file}", "does not hold a PSK", "it must hold 64 hex digits")
    try:
        parsed = Target.parse(target)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def main() -> None:
        for name in attack:
            outcome = await run_attack(name, Context(parsed, psk, duration=duration, scale=scale))
            typer.echo(json.dumps(outcome.to_dict()), nl=True)

    trio.run(main)
