"""The ``veilnet`` command line: one module per command group, each added here.

The root group is the CLI's one error boundary (:class:`node.cli.errors.BoundaryGroup`): an
expected failure anywhere below is one ``error: <what>: <why> (<what to do>)`` line on stderr and
exit code 2; a traceback means a bug, and says so.

Nothing imports the CLI; it is the top of the dependency order (see ``node/__init__.py``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer

from node.cli.adversary import adversary_app
from node.cli.errors import BoundaryGroup
from node.cli.infer import register as register_infer
from node.cli.node import node_app
from node.cli.peers import register_peers
from node.cli.receipt import receipt_app
from node.cli.tee import tee_app
from node.cli.testnet import testnet_app
from simulations.cli import sim_app  # the only import of simulations/ from node/

app = typer.Typer(
    name="veilnet",
    help="Veilnet: a peer-to-peer network for confidential AI inference on attested TEEs.",
    no_args_is_help=True,
    add_completion=False,
    cls=BoundaryGroup,
    pretty_exceptions_enable=False,
)


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


app.add_typer(node_app, name="node")
app.add_typer(testnet_app, name="testnet")
app.add_typer(tee_app, name="tee")
app.add_typer(adversary_app, name="adversary")
app.add_typer(sim_app, name="sim")
app.add_typer(receipt_app, name="receipt")
register_peers(app)
register_infer(app)


def main() -> None:
    app()
