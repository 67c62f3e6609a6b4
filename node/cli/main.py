"""The ``veilnet`` command line. Each command group lives in its own module and registers here."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

import typer

app = typer.Typer(
    name="veilnet",
    help="Veilnet: a peer-to-peer network for confidential AI inference on attested TEEs.",
    no_args_is_help=True,
    add_completion=False,
)

# (module, attribute, group name or None for top-level commands registered by the module itself)
_GROUPS: list[tuple[str, str, str | None]] = [
    ("node.cli.tee", "tee_app", "tee"),
    ("node.cli.node", "node_app", "node"),
    ("node.cli.node", "testnet_app", "testnet"),
    ("node.cli.node", "register_peers", None),
    ("node.cli.infer", "register", None),
    ("node.cli.adversary", "adversary_app", "adversary"),
]


def _version_callback(value: bool) -> None:
    if value:
        try:
            typer.echo(f"veilnet {version('veilnet')}")
        except PackageNotFoundError:
            typer.echo("veilnet (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    _version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Veilnet: a peer-to-peer network for confidential AI inference on attested TEEs."""


def _register() -> None:
    for module_name, attribute, group in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # group not built yet
            raise
        sub = getattr(module, attribute)
        if group is None:
            sub(app)
        else:
            app.add_typer(sub, name=group)


_register()


def main() -> None:
    app()
