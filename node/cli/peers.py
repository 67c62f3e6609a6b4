"""``veilnet peers``: a node's attested-peer registry, read through its HTTP API."""

from __future__ import annotations

import json

import typer

from node.cli.errors import CliError
from node.config import api_base_url
from node.console import print_peer_table

__all__ = ["DEFAULT_NODE_API", "call_api", "register_peers"]

DEFAULT_NODE_API = "http://127.0.0.1:8700"


def call_api(api: str) -> str:
    """The node API's base URL from ``--api`` (HOST:PORT or http://HOST:PORT), or a CliError."""
    from node.config import ConfigError

    try:
        return api_base_url(api)
    except ConfigError as exc:
        why = str(exc).removeprefix("api: ")
        raise CliError(f"--api {api}", why, "give HOST:PORT or http://HOST:PORT") from None


def peers(
    api: str = typer.Option(
        DEFAULT_NODE_API, "--api", help="The node's HTTP API: http://HOST:PORT or HOST:PORT."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    model: str | None = typer.Option(None, "--model", help="Only peers serving this model."),
) -> None:
    """Show the node's attested-peer registry."""
    import httpx

    base = call_api(api)
    try:
        params = {"model": model} if model else None
        response = httpx.get(f"{base}/veilnet/v1/peers", params=params, timeout=5.0)
        response.raise_for_status()
        data = response.json()
    except httpx.HTTPError as exc:
        why = f"cannot read the peers: {exc}"
        raise CliError(f"--api {base}", why, "is the node running? see its log") from None
    except ValueError:
        raise CliError(f"--api {base}", "the answer is not JSON", "is this a Veilnet node's API?") from None
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    print_peer_table(data["peers"])


def register_peers(app: typer.Typer) -> None:
    app.command("peers")(peers)
