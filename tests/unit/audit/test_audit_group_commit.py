"""Group commit (issue #24): concurrent appends share transactions, each caller still waits for its own commit.

Real threads against a real log on both backends: every record is there once, in each thread's order, with its
own receipt; fewer transactions than records; the log verifies. A database that refuses the batch gives every
caller the error and leaves nothing half-written.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from audit_testkit import KeySigner, make_entry

from verifier.audit import AuditLog, AuditReceipt, AuditStatus
from verifier.audit.group import GroupCommit
from verifier.errors import AuditError

THREADS = 16
EACH = 25


def _run_threads(group: GroupCommit) -> dict[int, list[AuditReceipt]]:
    start = threading.Barrier(THREADS)
    receipts: dict[int, list[AuditReceipt]] = {}

    def worker(t: int) -> None:
        start.wait()
        receipts[t] = [group.append(make_entry(t * EACH + k, details={"t": t, "k": k})) for k in range(EACH)]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return receipts


def test_concurrent_appends_share_transactions_and_keep_one_valid_log(audit_log: AuditLog, signer: KeySigner) -> None:
    group = GroupCommit(audit_log, max_wait=0.005, more_coming=lambda: True)
    try:
        receipts = _run_threads(group)
    finally:
        group.close()
    ids = sorted(r.id for rs in receipts.values() for r in rs)
    assert ids == list(range(1, THREADS * EACH + 1))  # every record once, no gap
    assert group.stats.records == THREADS * EACH
    assert group.stats.transactions < THREADS * EACH, "no two records ever shared a transaction"
    assert group.stats.largest > 1
    for t, rs in receipts.items():  # each thread's records in the order it appended them, each receipt its own
        stored = [audit_log.get(r.id) for r in rs]
        assert [s.entry.details for s in stored] == [{"t": t, "k": k} for k in range(EACH)]
        assert [s.leaf_hash for s in stored] == [r.leaf_hash for r in rs]
    result = audit_log.verify(trusted=[signer.certificate])
    assert result.status is AuditStatus.VALID, result.reason
    assert result.checkpoints_checked == THREADS * EACH // 5  # checkpoints inside batches are written too


def test_one_caller_alone_is_committed_at_once(audit_log: AuditLog) -> None:
    group = GroupCommit(audit_log, max_wait=5.0)  # nothing else coming: the long wait never applies
    try:
        receipt = group.append(make_entry(1))
    finally:
        group.close()
    assert receipt.id == 1 and audit_log.size() == 1
    with pytest.raises(AuditError, match="closed"):
        group.append(make_entry(2))


def test_a_refused_batch_fails_every_caller_and_writes_nothing(audit_log: AuditLog, audit_db_url: str) -> None:
    audit_log.append(make_entry(0))
    engine = sa.create_engine(audit_db_url)  # break the schema behind the log's back: every append now fails
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_records RENAME TO audit_records_gone"))
    engine.dispose()
    group = GroupCommit(audit_log, max_wait=0.01, more_coming=lambda: True)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            group.append(make_entry(i))
        except AuditError as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(1, 9)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        group.close()
    assert not any(t.is_alive() for t in threads), "a caller was left waiting"
    assert len(errors) == 8
    assert audit_log.size() == 1  # the head row did not move: nothing half-written
