"""The quarantine review desk on real directories and a real SQLite audit log: sidecars keep every arrival, a
decision happens once under concurrent reviewers, and a decision that cannot be recorded changes nothing."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from verifier.api.storage import InstanceStore, StoreArea
from verifier.audit import AuditLog, Channel
from verifier.errors import AuditError, InputError
from verifier.intake.queue import QuarantineStore
from verifier.intake.sidecar import merge_sidecar
from verifier.review.desk import AlreadyDecided, Decision, NoSuchEntry, ReviewDesk, Reviewer

REVIEWER = Reviewer(label="token 0123456789abcdef (test)", channel=Channel.API, token_id="0123456789abcdef")


def _record(audit_id: int | None, **extra: Any) -> dict[str, Any]:
    return {"verdict": "DECLARED_SYNTHETIC", "audit_id": audit_id, "received": f"2026-01-0{audit_id or 1}T00:00:00Z",
            "origin": "gateway", "patient_id": "P1", **extra}  # fmt: skip


def test_sidecar_keeps_every_arrival_and_the_first_audit_id() -> None:
    merged = merge_sidecar(None, _record(3))
    merged = merge_sidecar(merged, _record(7, verdict="SUSPECTED_SYNTHETIC"))
    assert merged["audit_id"] == 3 and [a["audit_id"] for a in merged["arrivals"]] == [3, 7]
    assert merged["verdict"] == "SUSPECTED_SYNTHETIC" and merged["patient_id"] == "P1"
    # A version-1 sidecar (no arrivals) becomes the first arrival.
    old = {"verdict": "X", "audit_id": 1, "received": "2025-01-01T00:00:00Z"}
    assert [a["audit_id"] for a in merge_sidecar(old, _record(2))["arrivals"]] == [1, 2]
    # The Orthanc plugin writes an arrival before its record, then again with the id: one arrival, not two.
    before_record = merge_sidecar(merged, _record(None, origin="orthanc-rest"))
    two_phase = merge_sidecar(before_record, _record(9, origin="orthanc-rest"))
    assert [a["audit_id"] for a in two_phase["arrivals"]] == [3, 7, 9]


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[tuple[ReviewDesk, QuarantineStore, AuditLog, str]]:
    log = AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}")
    store = QuarantineStore(tmp_path / "quarantine")
    data = b"\x00" * 128 + b"DICM" + b"not really an image, but kept byte for byte"
    sha = hashlib.sha256(data).hexdigest()
    store.put(data, sha256=sha, record=_record(1))
    store.put(data, sha256=sha, record=_record(2))
    desk = ReviewDesk(audit_log=log, intake_quarantine=store.directory, gateway_spool=tmp_path / "spool",
                      stow_store=InstanceStore(tmp_path / "stow"))  # fmt: skip
    yield desk, store, log, sha
    log.close()


def test_concurrent_reviewers_release_once(desk: tuple[ReviewDesk, QuarantineStore, AuditLog, str]) -> None:
    review, store, log, sha = desk
    entry_id = f"intake-{sha}"
    assert [e.id for e in review.entries()] == [entry_id] and review.get(entry_id).summary()["arrivals"] == 2
    outcomes: list[object] = []
    start = threading.Barrier(8)

    def decide(i: int) -> None:
        start.wait()
        try:
            decision = Decision.RELEASE if i % 2 else Decision.REJECT
            outcomes.append(review.decide(entry_id, decision, reviewer=REVIEWER, comment=f"reviewer {i}"))
        except AlreadyDecided as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [o for o in outcomes if not isinstance(o, AlreadyDecided)]
    assert len(won) == 1 and len(outcomes) == 8
    records = [r.entry for r in log.query(event="review")]
    assert len(records) == 1 and records[0].api_token_id == REVIEWER.token_id
    assert records[0].details["review"]["arrivals"] == [1, 2]
    decided = review.get(entry_id)
    assert decided.state in ("released", "rejected") and decided.review is not None
    assert not list(store) and len(list((review.gateway_spool or Path()).glob("*.dcm"))) == (
        1 if decided.state == "released" else 0
    )
    with pytest.raises(AlreadyDecided, match="by token 0123456789abcdef"):
        review.decide(entry_id, Decision.REJECT, reviewer=REVIEWER, comment="again")


def test_a_decision_needs_a_comment_and_a_real_id(desk: tuple[ReviewDesk, QuarantineStore, AuditLog, str]) -> None:
    review, _store, _log, sha = desk
    with pytest.raises(InputError, match="comment"):
        review.decide(f"intake-{sha}", Decision.RELEASE, reviewer=REVIEWER, comment="   ")
    for bad in ("intake-../../etc/passwd", f"other-{sha}", f"intake-{sha.upper()}", f"intake-{sha}/x"):
        with pytest.raises(NoSuchEntry):
            review.get(bad)


def test_an_unrecorded_decision_changes_nothing(
    desk: tuple[ReviewDesk, QuarantineStore, AuditLog, str], tmp_path: Path
) -> None:
    """The audit database goes away (its file replaced by a directory): the release fails, and the instance stays
    in quarantine with nothing queued to the PACS."""
    review, store, log, sha = desk
    log.close()
    (tmp_path / "audit.db").unlink()
    (tmp_path / "audit.db").mkdir()
    with pytest.raises(AuditError):
        review.decide(f"intake-{sha}", Decision.RELEASE, reviewer=REVIEWER, comment="ok")
    assert [p.name for p in store] == [f"{sha}.dcm"]
    assert not list((tmp_path / "spool").glob("*")) or not list((tmp_path / "spool").glob("*.dcm"))
    assert not list((tmp_path / "spool").glob(".incoming-*"))
    shutil.rmtree(tmp_path / "audit.db")


def test_stow_quarantine_releases_into_the_accepted_store(tmp_path: Path) -> None:
    stow = InstanceStore(tmp_path / "stow")
    data = b"\x00" * 128 + b"DICM" + b"stow upload"
    sha = hashlib.sha256(data).hexdigest()
    stow.put(data, sha, StoreArea.QUARANTINE)
    with AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}") as log:
        review = ReviewDesk(audit_log=log, intake_quarantine=None, stow_store=stow)
        entry = review.get(f"stow-{sha}")
        assert entry.sidecar is None and entry.origin == "stow-rs"  # a file without a verdict file is still listed
        outcome = review.decide(entry.id, Decision.RELEASE, reviewer=REVIEWER, comment="false positive")
    assert outcome.destination == "the STOW-RS accepted store"
    assert stow.path_for(sha, StoreArea.ACCEPTED).read_bytes() == data
    assert not stow.path_for(sha, StoreArea.QUARANTINE).exists()


def test_the_list_pages_and_filters(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "quarantine")
    for i, verdict in enumerate(("TAMPERED", "DECLARED_SYNTHETIC", "DECLARED_SYNTHETIC")):
        data = b"\x00" * 128 + b"DICM" + bytes([i])
        store.put(data, sha256=hashlib.sha256(data).hexdigest(),
                  record=_record(i + 1, verdict=verdict, received=f"2026-01-0{i + 1}T00:00:00Z"))  # fmt: skip
    with AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}") as log:
        review = ReviewDesk(audit_log=log, intake_quarantine=store.directory)
        first = review.page(limit=2)
        assert first.total == 3 and [e.field("audit_id") for e in first.entries] == [3, 2]  # newest first
        assert [e.field("audit_id") for e in review.page(limit=2, offset=2).entries] == [1]
        assert review.page(verdict="TAMPERED").total == 1
        assert review.page(since="2026-01-02", until="2026-01-02").total == 1
        assert review.page(channel="gateway").total == 3 and review.page(channel="stow-rs").total == 0
