"""Shared CLI plumbing: consoles, settings and the checks on option values that need no typer."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from verifier.errors import InputError, MedverifyError, application_errors
from verifier.settings import Settings

__all__ = ["check_format", "console", "err_console", "exit_status", "note", "settings"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def settings() -> Settings:
    """The settings, read afresh from the file and environment (cheap; keeps tests independent)."""
    return Settings.load()


def note(message: str) -> None:
    """Tell the user something on stderr (what first use created, a check that will not run ...)."""
    err_console.print(f"[yellow]note:[/] {escape(message)}", highlight=False)


def check_format(value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of the ``allowed`` ``--format`` values, else an :class:`InputError`."""
    if value not in allowed:
        raise InputError(f"--format must be one of {', '.join(allowed)}, not {value!r}")
    return value


def exit_status(command: Callable[[], int]) -> int:
    """Run ``command`` and return its exit code; the one place where errors become exit codes (ClamAV
    convention): a :class:`MedverifyError` (every package's errors are mapped to it) is printed and gives 2, an
    interrupt 130. Both the typer application and the fast path of a hot command run through it."""
    try:
        with application_errors():
            return command()
    except MedverifyError as exc:
        err_console.print(f"[bold red]error:[/] {exc.diagnostics()}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
