"""The typer application behind ``medverify``: the root group, lazy registration of command modules, and typer's
usage errors as exit codes (every other error becomes one in :func:`verifier.cli._common.exit_status`)."""

from __future__ import annotations

from collections.abc import Sequence

import click
import typer

from verifier.cli import _common
from verifier.cli._commands import COMMANDS, ROOT_HELP, module_of

__all__ = ["app", "run"]

app = typer.Typer(
    name="medverify",
    help=ROOT_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        _common.console.print(f"medverify {version('medverify')}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    # A callback keeps ``app`` a command group even when only one command module is imported (see _register).
    """Tell whether medical images are genuine: signatures, watermarks, detectors, tamper-evident audit."""


def _register(command: str | None = None) -> None:
    """Import the command modules, which register their commands on ``app``: only the module of ``command`` when
    it names one (some modules pull in SQLAlchemy or torch), else all of them."""
    modules = tuple(dict.fromkeys(c.module for c in COMMANDS))
    wanted = module_of(command or "")
    if wanted is not None:
        modules = (wanted,)
    for optional in modules:
        try:
            __import__(f"verifier.cli.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"verifier.cli.{optional}":
                raise


def _command_of(args: Sequence[str]) -> str | None:
    for arg in args:
        if not arg.startswith("-"):
            return arg
        return None
    return None


def run(args: Sequence[str]) -> int:
    """Run the CLI with ``args`` and return the exit code instead of exiting."""
    args = list(args)
    _register(_command_of(args))
    return _common.exit_status(lambda: _invoke(args))


def _invoke(args: list[str]) -> int:
    """The typer application on ``args``; its usage errors and aborts become exit code 2."""
    try:
        result = app(args=args, prog_name="medverify", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as exc:
        return int(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        _common.err_console.print("aborted")
        return 2
    except (click.ClickException, typer.TyperException) as exc:
        # typer 0.29 vendors click: its usage errors are typer.TyperException subclasses with show().
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:  # pragma: no cover
            _common.err_console.print(f"error: {exc}")
        return 2
    return int(result) if isinstance(result, int) else 0
