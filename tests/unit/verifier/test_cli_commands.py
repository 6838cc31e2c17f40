"""verifier.cli: the command table behind ``medverify --help`` says what the command modules register, and the
fast paths import only what they use (start-up speed itself is measured by benchmarks/bench_startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydicom.data import get_testdata_file

from verifier.cli._commands import COMMANDS, root_help

REPO = Path(__file__).resolve().parents[3]


HEAVY = ("typer", "click", "rich", "pydicom", "sqlalchemy", "alembic", "cryptography", "cv2", "torch")


def _imported_after(
    code: str, env: dict[str, str] | None = None, heavy: tuple[str, ...] = HEAVY, then: str = ""
) -> list[str]:
    """The ``heavy`` modules a fresh interpreter has imported after running ``code`` (which must then run ``then``
    without error)."""
    probe = (
        f"{code}\nimport sys, json\n"
        f"heavy = {heavy!r}\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
        f"{then}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    result: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_table_lists_every_command_with_its_own_help() -> None:
    from verifier.cli._app import _register, app

    _register()
    registered = {c.name or c.callback.__name__: c.help for c in app.registered_commands}  # type: ignore[union-attr]
    for group in app.registered_groups:
        info = group.typer_instance.info if group.typer_instance else None
        help_text = group.help if isinstance(group.help, str) else info.help if info else None
        registered[group.name] = help_text  # type: ignore[index]
    assert {c.name: c.help for c in COMMANDS} == registered


def test_help_lists_every_command_without_importing_typer_or_a_command() -> None:
    text = root_help(width=100)
    assert all(f"  {c.name} " in text for c in COMMANDS)
    assert _imported_after("from verifier.cli import main\nmain(['--help'])") == []
    assert _imported_after("from verifier.cli import main\nmain([])") == []


def test_a_signature_only_verify_imports_no_torch_alembic_or_opencv(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "MEDVERIFY_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    env.pop("MEDVERIFY_KEY_PASSPHRASE", None)
    sample = str(get_testdata_file("CT_small.dcm"))
    code = f"from verifier.cli import main\nmain(['verify', {sample!r}, '--checks', 'signature'])"
    _imported_after(code, env)  # first use: the key store and the audit database are created (with alembic)
    modules = _imported_after(code, env)
    assert "pydicom" in modules and "sqlalchemy" in modules  # it did check the file and write the record
    assert not {"torch", "alembic", "cv2"} & set(modules), modules


def test_a_plain_verify_runs_without_typer_pydantic_or_the_orm(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "MEDVERIFY_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    env.pop("MEDVERIFY_KEY_PASSPHRASE", None)
    sample = str(get_testdata_file("CT_small.dcm"))
    code = (
        "from verifier.cli import main\n"
        f"assert main(['verify', {sample!r}, '--checks', 'signature', '--format', 'jsonl']) == 0"
    )  # CT_small is unsigned: NO_EVIDENCE, which the default policy accepts
    probe = ("typer", "click", "pydantic", "sqlalchemy", "sqlalchemy.orm", "rich.progress", "pydicom", "requests")
    probe += ("tqdm",)
    _imported_after(code, env, probe)  # first use: keys and the audit database are created
    # pydicom's downloaders were only hidden while it was imported: they still import afterwards
    assert _imported_after(code, env, probe, then="import requests, tqdm") == ["pydicom", "sqlalchemy"]
    # --help (and any form the fast parser leaves alone) still goes through typer
    help_code = "from verifier.cli import main\nmain(['verify', '--help'])"
    assert "typer" in _imported_after(help_code, env, probe)


def _typer_params(args: list[str]) -> dict[str, object]:
    """The keyword arguments typer passes to ``verify`` for ``args``."""
    from verifier.cli._app import _register, app

    _register("verify")
    import typer.main

    group = typer.main.get_command(app)
    command = group.commands["verify"]  # type: ignore[attr-defined]
    with command.make_context("verify", list(args)) as ctx:
        return dict(ctx.params)


def test_the_fast_parameter_table_is_what_typer_makes_of_verify() -> None:
    import inspect

    import typer.main

    from verifier.cli._app import _register, app
    from verifier.cli._commands import FAST_PARAMS, Param
    from verifier.cli._verify import verify

    _register("verify")
    command = typer.main.get_command(app).commands["verify"]  # type: ignore[attr-defined]
    types = {str: "str", int: "int", bool: "bool", Path: "path"}
    derived = []
    for p in command.params:
        annotation = p.type_descriptor.annotation
        multiple = getattr(annotation, "__origin__", None) is list
        leaf = annotation.__args__[0] if multiple else annotation
        is_argument = type(p).__name__ == "TyperArgument"
        derived.append(
            Param(
                p.name,
                () if is_argument else tuple(p.opts),
                types[leaf],
                multiple=multiple,
                default=p.default,
                off_flags=tuple(p.secondary_opts),
                min=p.min,
            )
        )
    assert tuple(derived) == FAST_PARAMS["verify"]
    assert list(inspect.signature(verify).parameters) == [p.name for p in FAST_PARAMS["verify"]]


def test_the_fast_parser_reads_plain_forms_as_typer_does() -> None:
    from verifier.cli._commands import FAST_PARAMS
    from verifier.cli._fast import parse

    params = FAST_PARAMS["verify"]
    for args in (
        ["a.dcm"],
        ["a.dcm", "b.dcm", "--checks", "signature"],
        ["--checks=signature,watermark", "a.dcm", "-f", "jsonl", "--no-audit"],
        ["-j", "3", "a.dcm", "--trust", "x.pem", "--trust=y.pem", "--follow-symlinks", "--db", "sqlite:///x.db"],
        ["a.dcm", "--no-follow-symlinks", "--policy", "p.toml", "--model", "m", "--heatmaps", "h", "--", "-b.dcm"],
        ["-", "--workers", "0"],
    ):
        assert parse(params, args) == _typer_params(args), args


def test_the_fast_parser_leaves_help_and_errors_to_typer() -> None:
    from verifier.cli import main
    from verifier.cli._commands import FAST_PARAMS
    from verifier.cli._fast import parse

    params = FAST_PARAMS["verify"]
    for args in (
        ["--help"],
        ["a.dcm", "--help"],
        [],
        ["--checks", "signature"],
        ["a.dcm", "-j", "-1"],
        ["a.dcm", "-j", "two"],
        ["a.dcm", "--format"],
        ["a.dcm", "-fjson"],
        ["a.dcm", "--frobnicate"],
        ["a.dcm", "--no-audit=yes"],
        ["a.dcm", "--checks", "signature", "--checks", "watermark"],
    ):
        assert parse(params, args) is None, args
    assert main(["verify", "a.dcm", "-j", "-1"]) == 2  # typer's usage error, not a crash
