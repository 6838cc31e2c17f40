"""The hot commands without typer: ``medverify verify`` parsed from :data:`~verifier.cli._commands.FAST_PARAMS`.

A script that checks one file per call pays the interpreter's start-up and every import at every call, and typer
(click, rich's help formatting, and a pydantic adapter built for each parameter at each call) cost about as much as
the check itself. The parser here takes the plain forms click takes (options before, between or after the paths,
``--option value``, ``--option=value``, ``--``) and gives up on anything else (``--help``, an unknown option, a
missing, repeated or bad value): then it returns None and typer parses the same arguments, so that every error is
still reported in typer's words.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from verifier.cli._commands import FAST_PARAMS, Param

__all__ = ["parse", "run"]


class _GiveUp(Exception):
    """The arguments need typer (help, or an error to report)."""


def run(args: Sequence[str]) -> int | None:
    """Run ``args`` if they name a hot command in a form :func:`parse` takes; None if typer must run them."""
    command = args[0] if args else ""
    params = FAST_PARAMS.get(command)
    if params is None:
        return None
    values = parse(params, args[1:])
    if values is None:
        return None
    _import_pydicom_without_downloaders()
    from verifier.cli import _common
    from verifier.cli._verify import verify

    return _common.exit_status(lambda: verify(**values))  # type: ignore[arg-type]


def _import_pydicom_without_downloaders() -> None:
    """Import pydicom without the packages it imports only to download its own test files when they are installed
    (requests, with urllib3, charset_normalizer and http.client; tqdm): a fifth of a one-file check's start-up,
    for code that never runs here. While pydicom is imported they read as absent, so pydicom falls back to
    urllib in this process should anything ask it for a test file; afterwards they import as usual."""
    if "pydicom" in sys.modules:
        return
    hidden = [name for name in ("requests", "tqdm") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises ImportError
    try:
        import pydicom  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


def parse(params: Sequence[Param], args: Sequence[str]) -> dict[str, object] | None:
    """The keyword arguments that typer would pass for ``args``, or None where this parser leaves them to typer."""
    try:
        return _parse(params, list(args))
    except _GiveUp:
        return None


def _parse(params: Sequence[Param], args: list[str]) -> dict[str, object]:
    by_flag: dict[str, tuple[Param, bool]] = {}
    positional: Param | None = None
    for param in params:
        if not param.flags:
            positional = param
        by_flag.update({flag: (param, True) for flag in param.flags})
        by_flag.update({flag: (param, False) for flag in param.off_flags})
    given: dict[str, object] = {}
    lists: dict[str, list[object]] = {}
    loose: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            loose += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            loose.append(arg)
            continue
        flag, attached = arg, None
        if arg.startswith("--") and "=" in arg:
            flag, attached = arg.split("=", 1)
        if flag not in by_flag:
            raise _GiveUp  # --help, an unknown option, bundled short options (-fjson)
        param, on = by_flag[flag]
        if param.type == "bool":
            if attached is not None or param.name in given:
                raise _GiveUp
            given[param.name] = on
            continue
        if attached is None:
            if i >= len(args) or (args[i].startswith("-") and args[i] != "-"):
                raise _GiveUp  # a missing value (or one typer would read as a value: let it)
            attached = args[i]
            i += 1
        value = _convert(param, attached)
        if param.multiple:
            lists.setdefault(param.name, []).append(value)
        elif param.name in given:
            raise _GiveUp
        else:
            given[param.name] = value
    if positional is not None:
        if not loose:
            raise _GiveUp  # typer says which argument is missing
        lists[positional.name] = [_convert(positional, value) for value in loose]
    elif loose:
        raise _GiveUp
    given.update(lists)
    return {param.name: given.get(param.name, _default(param)) for param in params}


def _default(param: Param) -> object:
    # click gives a repeatable option that was not used an empty tuple, whatever its declared default
    return () if param.multiple and param.flags else param.default


def _convert(param: Param, value: str) -> object:
    if param.type == "str":
        return value
    if param.type == "path":
        if not value:
            raise _GiveUp
        return Path(value)
    if param.type == "int":
        if not (value.isascii() and value.isdigit()):
            raise _GiveUp
        number = int(value)
        if param.min is not None and number < param.min:
            raise _GiveUp
        return number
    raise _GiveUp  # a type this parser does not know
