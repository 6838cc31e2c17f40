"""Searching the log (:mod:`verifier.audit.search`) on each backend: newest first, counted pages, cursors that
neither skip nor repeat a record, path patterns matched exactly, filter values checked."""

from __future__ import annotations

import pytest

from verifier.audit import AuditEntry, AuditLog, Channel
from verifier.audit.search import AuditQuery, normalise_actions, normalise_verdicts, search
from verifier.errors import InputError


def fill(log: AuditLog) -> None:
    log.append_many(
        AuditEntry(
            event="scan" if i % 2 else "verify",
            channel=Channel.SCAN if i % 2 else Channel.CLI,
            path=f"/arc/{'CT' if i % 3 else 'ct'}/{i}.dcm",
            verdict="TAMPERED" if i % 4 == 0 else "NO_EVIDENCE",
            action="reject" if i % 4 == 0 else "accept",
            sop_instance_uid=f"1.2.{i}",
        )
        for i in range(1, 24)
    )


def test_pages_and_cursors_cover_every_match_once_newest_first(audit_log: AuditLog) -> None:
    fill(audit_log)
    query = AuditQuery(actions=("accept",), channels=("scan",))
    first = search(audit_log, query, limit=4)
    expected = [i for i in range(23, 0, -1) if i % 2 and i % 4]
    assert first.total == len(expected) and [r.id for r in first.records] == expected[:4]
    assert (first.first, first.last, first.page, first.pages) == (1, 4, 1, 3)
    seen, cursor = [r.id for r in first.records], first.next_cursor
    while cursor is not None:
        page = search(audit_log, query, limit=4, cursor=cursor)
        assert page.offset == len(seen) and page.total == first.total
        seen += [r.id for r in page.records]
        cursor = page.next_cursor
    assert seen == expected
    assert [r.id for r in search(audit_log, query, limit=4, page=3).records] == expected[8:]
    oldest = search(audit_log, query, limit=None, newest_first=False)
    assert [r.id for r in oldest.records] == expected[::-1] and oldest.next_cursor is None


def test_path_patterns_are_case_sensitive_whole_path_matches(audit_log: AuditLog) -> None:
    fill(audit_log)  # SQLite's LIKE ignores case: the pattern must not
    page = search(audit_log, AuditQuery(path_glob="/arc/ct/*"), limit=2)
    lower = [i for i in range(23, 0, -1) if i % 3 == 0]
    assert page.total == len(lower) and [r.id for r in page.records] == lower[:2]
    rest = search(audit_log, AuditQuery(path_glob="/arc/ct/*"), limit=2, cursor=page.next_cursor)
    assert [r.id for r in rest.records] == lower[2:4] and rest.offset == 2
    assert search(audit_log, AuditQuery(path_glob="/arc/[cC][tT]/1?.dcm", uid="1.2.12"), limit=5).total == 1
    assert search(audit_log, AuditQuery(path_glob="arc/*"), limit=5).total == 0


def test_filter_values_are_checked(audit_log: AuditLog) -> None:
    fill(audit_log)
    assert normalise_verdicts(audit_log, ["tampered", "TAMPERED", "no_evidence"]) == ("TAMPERED", "NO_EVIDENCE")
    assert normalise_actions(audit_log, ["Reject"]) == ("reject",)
    with pytest.raises(InputError, match=r"did you mean TAMPERED\? valid: AUTHENTIC"):
        normalise_verdicts(audit_log, ["TAMPERD"])
    with pytest.raises(InputError, match="accept, flag, quarantine, reject"):
        normalise_actions(audit_log, ["rejected"])
    with pytest.raises(InputError, match="not a cursor"):
        search(audit_log, AuditQuery(), cursor="1 OR 1=1")
    assert search(audit_log, AuditQuery(verdicts=("TAMPERED",)), limit=100).total == 5
