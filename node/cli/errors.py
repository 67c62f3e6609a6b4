"""The CLI's one error boundary: every expected failure becomes one line on stderr and exit code 2.

What must live here: the line format (``error: <what>: <why> (<what to do>)``), the list of
exception types that are *expected* (a person's input or machine is at fault: a config file, a
flag, a busy port, an unwritable directory), and the boundary itself. Everything else reaching
the boundary is a bug in Veilnet: it prints the traceback and a line saying so, with exit code 1.

The boundary is a group class, ``BoundaryGroup``, on the root ``veilnet`` command, so it covers
every subcommand whether it is run by ``veilnet`` or by typer's ``CliRunner`` in tests.
Commands raise :class:`CliError` (or a room's own error, mapped in :func:`describe`); they never
print errors or pick exit codes themselves. (typer vendors click as ``typer._click``: its
exception classes, not the ``click`` package's, are the ones raised here.)
"""

from __future__ import annotations

import errno
import sys
import traceback
from typing import Any

import typer
from typer._click import Context
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit

__all__ = ["EXIT_BUG", "EXIT_INTERRUPTED", "EXIT_USAGE", "BoundaryGroup", "CliError", "describe"]

EXIT_USAGE = 2  # the person's input or machine: fix it and run again (click uses 2 for usage too)
EXIT_BUG = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd program


class CliError(Exception):
    """An expected failure: ``what`` failed (a file, a flag, an address), ``why``, and the ``fix``."""

    def __init__(self, what: str, why: str, fix: str | None = None) -> None:
        super().__init__(f"{what}: {why}")
        self.what = what
        self.why = why
        self.fix = fix

    def line(self) -> str:
        return f"error: {self.what}: {self.why}" + (f" ({self.fix})" if self.fix else "")


_OS_FIXES = {
    errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions",
    errno.EROFS: "choose a writable location",
    errno.ENOSPC: "free some disk space",
    errno.EISDIR: "give a file, not a directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.ENOENT: "check the path",
    errno.EEXIST: "remove it or choose another path",
    errno.EADDRINUSE: "another program listens there: stop it or choose another port",
    errno.EADDRNOTAVAIL: "that address is not on this host: use 127.0.0.1 or 0.0.0.0",
}


def _os_line(exc: OSError) -> str:
    what = exc.filename if exc.filename is not None else "system call"
    why = exc.strerror or str(exc)
    fix = _OS_FIXES.get(exc.errno or 0)
    return f"error: {what}: {why}" + (f" ({fix})" if fix else "")


def _expected_types() -> tuple[type[BaseException], ...]:
    from node.config import ConfigError
    from node.datadir import DataDirError
    from node.keyfile import IdentityFileError
    from node.testnet import TestnetError

    return (ConfigError, DataDirError, IdentityFileError, TestnetError)


def describe(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None when ``exc`` is a bug.

    A group (trio's nurseries raise them) is expected when any leaf is: the leaf is the cause,
    the rest is cancellation that followed it.
    """
    if isinstance(exc, CliError):
        return exc.line()
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            line = describe(inner)
            if line is not None:
                return line
        return None
    if isinstance(exc, _expected_types()):
        return f"error: {exc}"
    if isinstance(exc, UnicodeDecodeError):
        return f"error: not UTF-8 text: {exc.reason} at byte {exc.start} (give a text file)"
    if isinstance(exc, OSError) and exc.errno is not None:
        return _os_line(exc)
    return None


def _usage_line(exc: UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx is not None else "veilnet"
    message = " ".join(exc.format_message().split())
    return f"error: {where}: {message} (see {where} --help)"


def fail(line: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(line, err=True)
    return typer.Exit(code)


class BoundaryGroup(TyperGroup):
    """The root group: runs the chosen subcommand and turns what it raises into a line and a code."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except (Exit, Abort, NoArgsIsHelpError):
            raise
        except UsageError as exc:
            raise fail(_usage_line(exc)) from None
        except ClickException as exc:
            raise fail(f"error: {' '.join(exc.format_message().split())}") from None
        except KeyboardInterrupt:
            raise fail("error: interrupted", EXIT_INTERRUPTED) from None
        except SystemExit:
            raise
        except BaseException as exc:
            line = describe(exc)
            if line is not None:
                raise fail(line) from None
            traceback.print_exception(exc, file=sys.stderr)
            raise fail(
                "error: this is a bug in Veilnet, not in your input; please report it with the"
                " traceback above",
                EXIT_BUG,
            ) from None
