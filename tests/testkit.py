"""Constants shared by tests. Import from here, never from ``conftest`` (several conftest modules exist, and
importing one by name picks whichever pytest loaded first)."""

from __future__ import annotations

#: Test-only key store passphrase; the secret-scanning tests check that it never reaches any output.
TEST_KEY_PASSPHRASE = "test-passphrase-Zq9v7XkP3m"


def require_tool(name: str) -> str:
    """The path of a real peer tool (dcmtk, dicom3tools, ...): skipped where absent, but a failure in CI."""
    import os
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (tests/run.sh installs it)")
        pytest.skip(f"{name} is not installed")
    return path
