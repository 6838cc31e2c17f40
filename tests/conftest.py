"""Shared fixtures. Keep this small: fixtures used by one test module belong in that module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provenance.keys import KeyStore

pytest_plugins = ["fixtures_postgres"]  # PostgreSQL server + audit_db_url (sqlite, postgresql)

#: Test-only key store passphrase; the secret-scanning tests check that it never reaches any output.
TEST_KEY_PASSPHRASE = "test-passphrase-Zq9v7XkP3m"


@pytest.fixture(scope="session")
def keystore_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised key store (local CA + default generator key), made once per session; never modify."""
    directory = tmp_path_factory.mktemp("keystore-template") / "keys"
    KeyStore(directory, lambda: TEST_KEY_PASSPHRASE.encode()).init()
    return directory


@pytest.fixture
def keystore_dir(keystore_template: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`keystore_template` (modes preserved) that a test may change."""
    destination = tmp_path / "keys"
    shutil.copytree(keystore_template, destination)
    return destination


@pytest.fixture
def keystore(keystore_dir: Path) -> KeyStore:
    """A :class:`KeyStore` over :func:`keystore_dir`, opened with :data:`TEST_KEY_PASSPHRASE`."""
    return KeyStore(keystore_dir, lambda: TEST_KEY_PASSPHRASE.encode())


@pytest.fixture
def key_passphrase() -> str:
    """The passphrase of :func:`keystore_template` and its copies."""
    return TEST_KEY_PASSPHRASE
