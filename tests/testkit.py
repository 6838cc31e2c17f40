"""Constants shared by tests. Import from here, never from ``conftest`` (several conftest modules exist, and
importing one by name picks whichever pytest loaded first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

#: Test-only key store passphrase; the secret-scanning tests check that it never reaches any output.
TEST_KEY_PASSPHRASE = "test-passphrase-Zq9v7XkP3m"


def require_tool(name: str) -> str:
    """The path of a real peer tool (dcmtk, dicom3tools, ...): skipped where absent, but a failure in CI."""
    import os
    import shutil

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (tests/run.sh installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run ``medverify`` through ``verifier.cli.main`` and return (exit code, stdout, stderr)."""
    from verifier.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def jsonl(out: str) -> list[dict[str, Any]]:
    """The JSON objects of a ``--format jsonl`` output."""
    import json

    return [json.loads(line) for line in out.splitlines() if line.strip()]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (servers in tests listen on loopback only)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
