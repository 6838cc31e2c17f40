"""verifier.scan and verifier.audit.scanstate on real files and a real audit database (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from provenance.keys import KeyStore
from provenance.trust import TrustPolicy
from verifier.audit import AuditLog
from verifier.audit._schema import records
from verifier.audit.scanstate import FileState, KnownFile, RecordedFile, ScanInProgressError, ScanStateStore
from verifier.checker import Checker, parse_checks
from verifier.errors import InputError
from verifier.policy import DEFAULT_POLICY
from verifier.result import FileResult
from verifier.scan import LocalExecutor, Scanner, ScanSummary, TrustSpec, WalkStats, check_batch, walk_archive

CHECKS = parse_checks(None)


def make_archive(root: Path, n: int) -> list[Path]:
    """``n`` re-UID'd copies of CT_small in two folders, named without a DICOM extension, plus junk."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = []
    for i in range(n):
        source.SOPInstanceUID = generate_uid()
        path = root / f"series{i % 2}" / f"im{i:03d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        source.save_as(path)
        out.append(path)
    (root / "notes.dcm").write_text("not DICOM, whatever the name says")
    return sorted(out)


@pytest.fixture
def trust(keystore: KeyStore) -> TrustPolicy:
    return keystore.trust_policy()


# ---------------------------------------------------------------------------------------------- walking


def test_walk_is_sorted_and_skips_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "arc"
    files = make_archive(root, 4)
    outside = tmp_path / "outside"
    make_archive(outside, 1)
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "series0" / "link_in").symlink_to(files[0])
    stats = WalkStats()
    found = [f.path for f in walk_archive(root, stats=stats)]
    assert found == sorted([*map(str, files), str(root / "notes.dcm")])
    assert stats.symlinks_skipped == 2


def test_followed_symlinks_stay_inside_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "arc"
    make_archive(root, 2)
    outside = tmp_path / "outside"
    make_archive(outside, 1)
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "series0" / "loop").symlink_to(root, target_is_directory=True)
    warnings: list[str] = []
    stats = WalkStats()
    found = [f.path for f in walk_archive(root, follow_symlinks=True, stats=stats, warn=warnings.append)]
    assert not any(str(outside) in p or "link_out" in p for p in found)
    assert len(found) == len(set(found)) == 3  # the loop is entered once at most
    assert any("out of the tree" in w for w in warnings)


def test_unreadable_directory_is_skipped_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "arc"
    make_archive(root, 4)
    locked = root / "series1"
    if os.geteuid() == 0:
        # root reads any directory: take one away from under the walk instead (a real OSError from scandir).
        shutil.rmtree(locked)
        locked.symlink_to(tmp_path / "missing", target_is_directory=True)
        kwargs = {"follow_symlinks": True}
    else:
        locked.chmod(0)
        kwargs = {}
    warnings: list[str] = []
    stats = WalkStats()
    try:
        found = list(walk_archive(root, stats=stats, warn=warnings.append, **kwargs))  # type: ignore[arg-type]
    finally:
        if locked.is_dir() and not locked.is_symlink():
            locked.chmod(0o755)
    assert [Path(f.path).parent.name for f in found if f.path.endswith(("im000", "im002"))] == ["series0"] * 2
    if os.geteuid() != 0:
        assert stats.unreadable_directories == 1
        assert any("unreadable directory" in w for w in warnings)


def test_scandir_error_is_a_warning_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "arc"
    make_archive(root, 4)
    real = os.scandir
    bad = str(root / "series1")

    def scandir(path: str) -> os._ScandirIterator[str]:  # type: ignore[name-defined]
        if path == bad:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    warnings: list[str] = []
    stats = WalkStats()
    found = list(walk_archive(root, stats=stats, warn=warnings.append))
    assert {Path(f.path).parent.name for f in found} == {"series0", "arc"}
    assert stats.unreadable_directories == 1
    assert warnings == [f"skipped unreadable directory {bad}: Permission denied"]


# ---------------------------------------------------------------------------------------------- trust spec


def test_trust_spec_round_trip_keeps_anchors_and_revocations(trust: TrustPolicy, keystore: KeyStore) -> None:
    ca = keystore.ca_certificate()
    revoking = TrustPolicy(anchors=trust.anchors, revoked_serials=[("CN=x", 7)], revoked_fingerprints=["AB:CD"])
    spec = pickle.loads(pickle.dumps(TrustSpec.from_policy(revoking)))
    rebuilt = spec.to_policy()
    assert ca in rebuilt.anchors and set(rebuilt.anchors) == set(trust.anchors)
    assert spec.revoked_serials == (("CN=x", 7),)
    assert spec.revoked_fingerprints == ("abcd",)
    assert spec.digest() != TrustSpec.from_policy(trust).digest()


def test_check_batch_gives_one_result_per_path(tmp_path: Path, trust: TrustPolicy) -> None:
    files = make_archive(tmp_path, 2)
    results = check_batch([str(f) for f in files] + [str(tmp_path / "missing")], CHECKS, TrustSpec.from_policy(trust),
                          DEFAULT_POLICY)  # fmt: skip
    assert [r.verdict.status.value for r in results] == ["NO_EVIDENCE", "NO_EVIDENCE", "UNREADABLE"]
    pickle.loads(pickle.dumps(results))  # they travel back from Dask workers


# ---------------------------------------------------------------------------------------------- scans and state


def scan_once(
    root: Path, trust: TrustPolicy, log: AuditLog | None, *, incremental: bool = False, workers: int = 1
) -> tuple[list[FileResult], Scanner, ScanSummary]:
    scanner = Scanner(Checker(checks=CHECKS, trust=trust), state=ScanStateStore(log) if log else None, batch_size=3)
    plan = scanner.plan([root], incremental=incremental)
    results = list(scanner.execute(plan, LocalExecutor(workers)))
    return results, scanner, scanner.finish(plan)


def scan_records(url: str) -> list[tuple[int, str, int]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(records.c.id, records.c.path, records.c.details).order_by(records.c.id))
            return [(r.id, r.path, r.details["scan"]["run"]) for r in rows if "scan" in r.details]
    finally:
        engine.dispose()


def test_scan_records_every_dicom_file_once_and_incremental_skips_unchanged(
    tmp_path: Path, trust: TrustPolicy, audit_db_url: str
) -> None:
    root = tmp_path / "arc"
    files = make_archive(root, 7)
    with AuditLog.open(audit_db_url) as log:
        results, _, summary = scan_once(root, trust, log, workers=2)
        assert sorted(r.path for r in results) == [str(f) for f in files]  # found by content: notes.dcm is not
        assert all(r.audit_id is not None for r in results)
        assert summary.checked == 7 and summary.not_dicom == 1

        again, _, summary = scan_once(root, trust, log, incremental=True)
        assert again == [] and summary.skipped_unchanged == 7

        os.utime(files[3], ns=(1, 1))  # touched: re-hashed and re-checked
        with open(files[5], "ab") as fh:  # grown: the same
            fh.write(b"\0\0")
        changed, _, summary = scan_once(root, trust, log, incremental=True)
        assert sorted(r.path for r in changed) == [str(files[3]), str(files[5])]
        assert summary.skipped_unchanged == 5

        full, _, _ = scan_once(root, trust, log)  # not incremental: everything again
        assert len(full) == 7
        runs = ScanStateStore(log).runs(str(root.resolve()))
        assert [r.status for r in runs] == ["finished"] * 4
        assert runs[0].counts is not None and runs[0].counts["checked"] == 7
    recorded = scan_records(audit_db_url)
    assert len(recorded) == 7 + 0 + 2 + 7
    for run in {r for _, _, r in recorded}:
        paths = [p for _, p, r in recorded if r == run]
        assert len(paths) == len(set(paths))
    with AuditLog.open(audit_db_url) as log:
        assert log.verify(trusted=lambda _cert, _when: True).status.value == "valid"


def test_crash_between_record_and_state_resumes_without_duplicates(
    tmp_path: Path, trust: TrustPolicy, audit_db_url: str
) -> None:
    root = tmp_path / "arc"
    files = make_archive(root, 5)
    with AuditLog.open(audit_db_url) as log:
        store = ScanStateStore(log)
        run = store.begin_run(str(root.resolve()))
        # What a process killed after the records' commit and before the state's leaves behind:
        scanner = Scanner(Checker(checks=CHECKS, trust=trust))
        first = scanner.plan([root]).roots[0].to_check[:2]
        judge = scanner.judge.digest
        results = check_batch([f.path for f in first], CHECKS, TrustSpec.from_policy(trust),
                              DEFAULT_POLICY)  # fmt: skip
        from verifier.audit import Channel

        entries = [
            dataclasses.replace(
                r.audit_entry(channel=Channel.SCAN, event="scan"),
                details={
                    "scan": store.scan_details(run, FileState(size=f.size, mtime_ns=f.mtime_ns, judge=judge))
                },
            )
            for r, f in zip(results, first, strict=True)
        ]
        log.append_many(entries)
        # The run belongs to this (live) process: another process would be refused, this one resumes it.
        resumed, _, summary = scan_once(root, trust, log, incremental=True)
        assert summary.skipped_done == 2
        assert sorted(r.path for r in resumed) == [str(f) for f in files[2:]]
        # And the state of the two was rebuilt from their records: the next incremental scan skips all five.
        again, _, summary = scan_once(root, trust, log, incremental=True)
        assert again == [] and summary.skipped_unchanged == 5
    recorded = scan_records(audit_db_url)
    assert sorted(p for _, p, r in recorded if r == run.id) == [str(f) for f in files]


def test_a_live_scan_of_the_same_root_is_refused(tmp_path: Path, audit_db_url: str) -> None:
    root = tmp_path / "arc"
    root.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with AuditLog.open(audit_db_url) as log:
            store = ScanStateStore(log)
            run = store.begin_run(str(root))
            engine = sa.create_engine(audit_db_url)
            with engine.begin() as conn:
                conn.execute(
                    sa.text("UPDATE scan_runs SET pid = :pid WHERE id = :id"), {"pid": holder.pid, "id": run.id}
                )
            engine.dispose()
            with pytest.raises(ScanInProgressError, match="still running"):
                store.begin_run(str(root))
            holder.kill()
            holder.wait()
            assert store.begin_run(str(root)).resumed  # its owner is dead: taken over
    finally:
        holder.kill()
        holder.wait()


def test_record_writes_state_that_known_files_returns(tmp_path: Path, audit_db_url: str) -> None:
    from verifier.audit import AuditEntry, Channel

    with AuditLog.open(audit_db_url) as log:
        store = ScanStateStore(log)
        run = store.begin_run("/arc")
        state = FileState(size=10, mtime_ns=20, sha256="0" * 64)
        entry = AuditEntry(
            event="scan", channel=Channel.SCAN, path="/arc/a", details={"scan": store.scan_details(run, state)}
        )
        with pytest.raises(ValueError, match=r"lacks details\.scan"):
            store.record(run, [RecordedFile(path="/arc/a", entry=dataclasses.replace(entry, details={}), state=state)])
        [record_id] = store.record(run, [RecordedFile(path="/arc/a", entry=entry, state=state)])
        assert store.known_files("/arc") == {
            "/arc/a": KnownFile(10, 20, "0" * 64, None, None, None, record_id=record_id, run_id=run.id)
        }
        assert store.known_files("/other") == {}
        bigger = dataclasses.replace(state, size=11)
        entry = dataclasses.replace(entry, details={"scan": store.scan_details(run, bigger)})
        [again] = store.record(run, [RecordedFile(path="/arc/a", entry=entry, state=bigger)])
        assert again == record_id + 1 and store.known_files("/arc")["/arc/a"].size == 11
        assert log.get(record_id).entry.details["scan"] == {"run": run.id, "root": "/arc", "size": 10, "mtime_ns": 20}


def test_incremental_without_a_database_is_refused(tmp_path: Path, trust: TrustPolicy) -> None:
    with pytest.raises(InputError, match="audit database"):
        Scanner(Checker(checks=CHECKS, trust=trust)).plan([tmp_path], incremental=True)
    with pytest.raises(InputError, match="no such file"):
        Scanner(Checker(checks=CHECKS, trust=trust)).plan([tmp_path / "missing"])


def test_no_audit_scan_records_nothing(tmp_path: Path, trust: TrustPolicy) -> None:
    make_archive(tmp_path / "arc", 3)
    results, _, summary = scan_once(tmp_path / "arc", trust, None)
    assert len(results) == 3 and all(r.audit_id is None for r in results)
    assert summary.run_ids == []


def test_scan_records_say_what_verify_records_say(tmp_path: Path, trust: TrustPolicy) -> None:
    """A scan's record is built in one step for speed (details given to audit_entry); it must equal the verify
    record of the same result plus details.scan."""
    from verifier.audit import Channel

    files = make_archive(tmp_path, 1)
    [result] = check_batch([str(files[0])], CHECKS, TrustSpec.from_policy(trust), DEFAULT_POLICY)
    scan = {"run": 1, "root": str(tmp_path), "size": 1, "mtime_ns": 2}
    fast = result.audit_entry(channel=Channel.SCAN, event="scan", details={"scan": scan})
    reference = result.audit_entry(channel=Channel.SCAN, event="scan")
    expected = dataclasses.replace(reference, when=fast.when, details={**reference.details, "scan": scan})
    assert fast == expected
