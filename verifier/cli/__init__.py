"""The ``medverify`` command.

Subcommands live one module per concept (``keys``, ``sign``, ``verify``, ``audit`` ...), listed with their help in
:mod:`verifier.cli._commands`. A command's module is imported, and registers its commands on :data:`app`, only when
one of its commands runs; ``medverify --help`` is printed from that table without importing typer at all, because
start-up time matters for a tool that scripts run once per file; for the same reason ``verify`` parses its plain
forms without typer (:mod:`verifier.cli._fast`). Exit codes follow the ClamAV convention: 0 nothing found, 1
something found, 2 an error stopped the work (:class:`~verifier.errors.MedverifyError`, the root every package's
errors are mapped to by :func:`~verifier.errors.application_errors`, becomes 2 in one place,
:func:`verifier.cli._common.exit_status`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from verifier.cli._commands import root_help

if TYPE_CHECKING:
    import typer

    app: typer.Typer

__all__ = ["app", "app_main", "main"]


def __getattr__(name: str) -> Any:
    # ``app`` (the typer application the command modules register on) is built on first use, not on import.
    if name == "app":
        from verifier.cli._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` and return the exit code instead of exiting."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in ([], ["--help"]):
        sys.stdout.write(root_help())
        return 0
    if args == ["--version"]:
        from importlib.metadata import version

        sys.stdout.write(f"medverify {version('medverify')}\n")
        return 0
    from verifier.cli._fast import run as run_fast

    code = run_fast(args)  # a hot command (verify) in a plain form: no typer
    if code is not None:
        return code
    from verifier.cli._app import run

    return run(args)


def app_main() -> None:
    """Console-script entry point."""
    sys.exit(main())
