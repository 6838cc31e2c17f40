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


def _imported_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """The heavy packages a fresh interpreter has imported after running ``code``."""
    probe = (
        f"{code}\nimport sys, json\n"
        "heavy = ('typer', 'click', 'rich', 'pydicom', 'sqlalchemy', 'alembic', 'cryptography', 'cv2', 'torch')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
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
