"""The spool's group directory fsync (issue #24): concurrent commits share fsyncs, each returns only when durable.

Real files, real threads; the durability itself (fsync reaching the disk) is what the gateway's SIGKILL test
checks with a real process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import pytest

from verifier.intake.queue import DirectorySync, Spool


def test_concurrent_commits_share_directory_fsyncs(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    payloads = [os.urandom(2000) for _ in range(64)]
    start = threading.Barrier(16)
    done: list[Path] = []
    lock = threading.Lock()

    def worker(chunk: list[bytes]) -> None:
        start.wait()
        for data in chunk:
            path = spool.put(data, sha256=hashlib.sha256(data).hexdigest())
            with lock:
                done.append(path)

    threads = [threading.Thread(target=worker, args=(payloads[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(p.read_bytes() for p in done) == sorted(payloads)
    assert sorted(done) == spool.pending()
    sync = spool._dir_sync
    assert sync.callers == 64
    assert 1 <= sync.fsyncs <= 64
    print(f"\n64 commits from 16 threads: {sync.fsyncs} directory fsyncs")


def test_a_failed_directory_fsync_raises_in_the_caller(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    sync = DirectorySync(directory)
    sync.sync()
    shutil.rmtree(directory)
    with pytest.raises(OSError):
        sync.sync()
    directory.mkdir()
    sync.sync()  # a later caller is not handed the old failure
    assert sync.fsyncs == 3


def test_changing_the_number_of_workers_strands_no_queued_instance(tmp_path: Path) -> None:
    from verifier.intake.workers import prepare_shared_state, worker_spool

    root, quarantine = tmp_path / "spool", tmp_path / "quarantine"
    one = Spool(root)
    queued = [one.put(os.urandom(100), sha256=f"{i:064x}") for i in range(2)]
    third = Spool(worker_spool(root, 3))
    queued.append(third.put(os.urandom(100), sha256=f"{9:064x}"))
    (worker_spool(root, 3) / ".incoming-x.tmp").write_bytes(b"half")  # a crash left it staged
    quarantine.mkdir()
    (quarantine / ".incoming-y.tmp").write_bytes(b"half")
    names = sorted(p.name for p in queued)

    assert prepare_shared_state(root, quarantine, 2) == 3  # one process -> two workers; worker 3 is gone
    assert [p.name for p in Spool(worker_spool(root, 1)).pending()] == names
    assert not one.pending() and not third.pending()
    assert not list(worker_spool(root, 3).glob(".incoming-*")) and not list(quarantine.glob(".incoming-*"))

    assert prepare_shared_state(root, quarantine, 1) == 3  # and back to one process
    assert [p.name for p in Spool(root).pending()] == names
