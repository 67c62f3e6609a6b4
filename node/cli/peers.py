"""``veilnet peers``: a node's attested-peer registry, read through its HTTP API."""

from __future__ import annotations

import json

import typer

from node.console import print_peer_table

__all__ = ["DEFAULT_NODE_API", "register_peers"]

DEFAULT_NODE_API = "http://127.0.0.1:8700"


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


def register_peers(app: typer.Typer) -> None:
    app.command("peers")(peers)
