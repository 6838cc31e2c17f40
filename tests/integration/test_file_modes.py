"""The audit database, the keys and the spool are readable by their owner only: files 0600, folders 0700, whatever
the umask. ``audit.db`` was created 0644 before; an existing one is tightened when it is opened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from testkit import run_cli

from verifier.audit import AuditLog
from verifier.intake.queue import QuarantineStore, Spool


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: what is not made private on purpose ends up 0644 / 0755
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_database_keys_and_spool_are_private(
    cli_home: Path, loose_umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not cli_home.exists()
    code, out, err = run_cli(capsys, "verify", get_testdata_file("CT_small.dcm"), "--checks", "signature")
    assert code == 0, out + err
    assert mode(cli_home) == 0o700
    db = cli_home / "audit.db"
    members = [db, *(p for p in (cli_home / "audit.db-wal", cli_home / "audit.db-shm") if p.exists())]
    assert len(members) >= 2  # WAL mode: SQLite gives its -wal (and -shm) files the database's mode
    assert {str(p): mode(p) for p in members} == {str(p): 0o600 for p in members}

    keys = cli_home / "keys"
    key_files = [p for p in keys.rglob("*") if p.is_file()]
    key_dirs = [keys, *(p for p in keys.rglob("*") if p.is_dir())]
    assert key_files and {str(p): mode(p) for p in key_files} == {str(p): 0o600 for p in key_files}
    assert {str(p): mode(p) for p in key_dirs} == {str(p): 0o700 for p in key_dirs}

    spool = Spool(cli_home / "spool")
    queued = spool.put(b"DICM", sha256="ab" * 32)
    failed = spool.fail(queued, "refused by the PACS")
    quarantine = QuarantineStore(cli_home / "quarantine")
    staged = quarantine.stage(b"DICM")
    private = [queued.parent, failed.parent, quarantine.directory]
    assert {str(p): mode(p) for p in private} == {str(p): 0o700 for p in private}
    files = [failed, failed.with_suffix(".json"), staged]
    assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path, loose_umask: None) -> None:
    db = tmp_path / "old" / "audit.db"
    url = f"sqlite:///{db}"
    with AuditLog.open(url) as log:
        assert log.size() == 0
    assert mode(db.parent) == 0o700 and mode(db) == 0o600
    os.chmod(db, 0o644)  # what medverify made before
    with AuditLog.open(url) as log:
        assert log.size() == 0
    assert mode(db) == 0o600
    # A folder that existed already is not medverify's to change (it may be /tmp).
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    with AuditLog.open(f"sqlite:///{shared / 'audit.db'}"):
        pass
    assert mode(shared) == 0o755 and mode(shared / "audit.db") == 0o600
