"""Constants shared by tests. Import from here, never from ``conftest`` (several conftest modules exist, and
importing one by name picks whichever pytest loaded first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

#: Debian's Chromium: the browser the Playwright tests drive (never a downloaded one).
CHROMIUM = "/usr/bin/chromium"


def sync_playwright_or_skip() -> Any:
    """Playwright's ``sync_playwright``, or skip (fail in CI) without Playwright or Debian's Chromium."""
    import os

    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("playwright is required in CI")
        pytest.skip("playwright is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is required in CI")
        pytest.skip("chromium is not installed")
    return sync_playwright


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


#: dciodvfy's own dictionary in Debian 12's dicom3tools (snapshot 2022-06-18) predates Synthetic Data
#: (0008,001C), a standard attribute since then (pydicom's dictionary knows it, keyword SyntheticData): the one error
#: that version reports for every file medverify generates. Any other error still fails.
DCIODVFY_UNKNOWN_SYNTHETIC_DATA = (
    "Error - Attribute with an even group number is not a recognized standard attribute - (0x0008,0x001c)"
)


def dciodvfy_errors(path: Path) -> list[str]:
    """The errors dciodvfy reports for ``path``, less its dictionary's gap for Synthetic Data (0008,001C)."""
    import subprocess

    from pydicom.datadict import keyword_for_tag

    done = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    if keyword_for_tag(0x0008001C) == "SyntheticData":
        errors = [e for e in errors if not e.startswith(DCIODVFY_UNKNOWN_SYNTHETIC_DATA)]
    return errors
