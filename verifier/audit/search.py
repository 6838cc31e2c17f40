"""Searching the audit log: filters, newest first, counted pages (``medverify audit list``, ``GET /v1/audit``).

Reading only: nothing here writes the log. A filter value that names no verdict or action (``TAMPERD``) is an error
that lists the valid ones, never an empty answer that looks like "nothing happened"::

    query = AuditQuery(verdicts=normalise_verdicts(log, ["tampered"]), since=yesterday)
    page = search(log, query, limit=50)            # newest first
    page.total, page.first, page.last, page.next_cursor
    search(log, query, limit=50, cursor=page.next_cursor)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from verifier.audit import _db
from verifier.audit._schema import records
from verifier.audit.entry import AuditRecord, Channel, normalize_time
from verifier.audit.log import AuditLog, _glob_to_like, _row_record
from verifier.errors import InputError

__all__ = [
    "AuditPage",
    "AuditQuery",
    "decode_cursor",
    "known_values",
    "normalise_actions",
    "normalise_channels",
    "normalise_verdicts",
    "search",
]

#: Ids fetched per statement when a page is read by id (path patterns are matched in Python).
_IN_CHUNK = 500


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """Which records: every given filter must match (a tuple matches any of its values)."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    verdicts: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    #: A shell pattern (``*``, ``?``, ``[...]``) matched case-sensitively on the whole path.
    path_glob: str | None = None
    #: SOP Instance UID of the file.
    uid: str | None = None
    sha256: str | None = None

    def clauses(self) -> list[Any]:
        out: list[Any] = []
        if self.since is not None:
            out.append(records.c.recorded_at >= normalize_time(self.since))
        if self.until is not None:
            out.append(records.c.recorded_at < normalize_time(self.until))
        for column, values in (
            (records.c.verdict, self.verdicts),
            (records.c.action, self.actions),
            (records.c.channel, self.channels),
            (records.c.event, self.events),
        ):
            if values:
                out.append(column.in_(list(values)))
        if self.uid is not None:
            out.append(records.c.sop_instance_uid == self.uid)
        if self.sha256 is not None:
            out.append(records.c.file_sha256 == self.sha256.lower())
        if self.path_glob is not None:
            # A superset (SQLite's LIKE ignores ASCII case; [...] becomes one character); fnmatch decides.
            out.append(records.c.path.like(_glob_to_like(self.path_glob), escape="\\"))
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditPage:
    """One page of the records a query matched."""

    records: list[AuditRecord]
    #: How many records the query matched in all.
    total: int
    #: How many matching records come before this page (in its order).
    offset: int
    limit: int | None
    newest_first: bool
    #: Give it back as ``cursor`` for the next page; None on the last page.
    next_cursor: str | None

    @property
    def first(self) -> int:
        """1-based position of the page's first record among all matches (0 when the page is empty)."""
        return self.offset + 1 if self.records else 0

    @property
    def last(self) -> int:
        return self.offset + len(self.records)

    @property
    def page(self) -> int:
        return self.offset // self.limit + 1 if self.limit else 1

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.limit)) if self.limit else 1

    def describe(self) -> str:
        """``records 1-50 of 1234 matching, newest first (page 1 of 25)``, for people."""
        order = "newest first" if self.newest_first else "oldest first"
        if not self.total:
            return "no record matches"
        if not self.records:
            return f"no record on page {self.page}; {self.total} matching, {order}"
        return (
            f"records {self.first}-{self.last} of {self.total} matching, {order} (page {self.page} of {self.pages})"
        )


def known_values(log: AuditLog, column: str) -> list[str]:
    """The distinct values of ``column`` (``verdict``, ``action``, ``channel``, ``event``) in the log."""
    col = records.c[column]
    with _db.db_errors(log._url), log._engine.connect() as conn:
        values: list[str] = list(conn.execute(sa.select(col).where(col.is_not(None)).distinct()).scalars())
    return sorted(v for v in values if v)


def _normalise(given: Iterable[str], valid: Sequence[str], what: str, option: str) -> tuple[str, ...]:
    by_fold: dict[str, str] = {}
    for value in valid:
        by_fold.setdefault(value.casefold(), value)
    out: list[str] = []
    for raw in given:
        value = raw.strip()
        match = by_fold.get(value.casefold())
        if match is None:
            close = difflib.get_close_matches(value.upper(), [v.upper() for v in valid], n=1)
            hint = f"did you mean {by_fold[close[0].casefold()]}? " if close else ""
            raise InputError(f"{option} {value!r} is not a {what}; {hint}valid: {', '.join(valid)}")
        if match not in out:
            out.append(match)
    return tuple(out)


def normalise_verdicts(log: AuditLog, given: Iterable[str], option: str = "--verdict") -> tuple[str, ...]:
    """``given`` spelled as stored (case does not matter); :class:`InputError` naming the valid values for any
    that is neither a verdict medverify gives nor one found in this log (key events record ``created``, ...)."""
    from verifier.policy import VerdictStatus

    given = list(given)
    if not given:
        return ()
    valid = list(dict.fromkeys([*(v.value for v in VerdictStatus), *known_values(log, "verdict")]))
    return _normalise(given, valid, "verdict", option)


def normalise_actions(log: AuditLog, given: Iterable[str], option: str = "--action") -> tuple[str, ...]:
    """Like :func:`normalise_verdicts`, for actions (``accept``, ``flag``, ``quarantine``, ``reject``, ...)."""
    from verifier.policy import Action

    given = list(given)
    if not given:
        return ()
    valid = list(dict.fromkeys([*(a.value for a in Action), *known_values(log, "action")]))
    return _normalise(given, valid, "action", option)


def normalise_channels(given: Iterable[str], option: str = "--channel") -> tuple[str, ...]:
    return _normalise(given, [c.value for c in Channel], "channel", option)


def decode_cursor(cursor: str | None) -> int | None:
    """The record id a cursor continues from; :class:`InputError` for anything that is not one."""
    if cursor is None or cursor == "":
        return None
    if not cursor.isdigit() or len(cursor) > 19 or int(cursor) < 1:
        raise InputError(f"not a cursor from an earlier page: {cursor[:40]!r}")
    return int(cursor)


def search(
    log: AuditLog,
    query: AuditQuery,
    *,
    limit: int | None = 100,
    page: int = 1,
    cursor: str | None = None,
    newest_first: bool = True,
) -> AuditPage:
    """The page of records ``query`` matches: page ``page`` (1-based) of ``limit`` records, or the ``limit``
    records after ``cursor`` (from :attr:`AuditPage.next_cursor`); ``limit`` None: every match."""
    if limit is not None and limit < 1:
        raise InputError("the page size must be at least 1")
    if page < 1:
        raise InputError("the page number must be at least 1")
    after = decode_cursor(cursor)
    order = records.c.id.desc() if newest_first else records.c.id
    clauses = query.clauses()

    def beyond(record_id: int) -> Any:
        return records.c.id < record_id if newest_first else records.c.id > record_id

    with _db.db_errors(log._url), _db.read_transaction(log._engine) as conn:
        if query.path_glob is not None:
            pattern = query.path_glob
            ids = [
                row.id
                for row in conn.execution_options(yield_per=10_000).execute(
                    sa.select(records.c.id, records.c.path).where(*clauses).order_by(order)
                )
                if fnmatch.fnmatchcase(row.path or "", pattern)
            ]
            total = len(ids)
            if after is not None:
                offset = sum(1 for i in ids if not (i < after if newest_first else i > after))
            else:
                offset = (page - 1) * limit if limit else 0
            chosen = ids[offset : offset + limit] if limit else ids[offset:]
            rows: list[Any] = []
            for start in range(0, len(chosen), _IN_CHUNK):
                chunk = chosen[start : start + _IN_CHUNK]
                rows += conn.execute(sa.select(records).where(records.c.id.in_(chunk))).all()
            rows.sort(key=lambda r: -r.id if newest_first else r.id)
        else:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(records).where(*clauses)).scalar_one())
            stmt = sa.select(records).where(*clauses).order_by(order)
            if after is not None:
                offset = int(
                    conn.execute(
                        sa.select(sa.func.count()).select_from(records).where(*clauses, sa.not_(beyond(after)))
                    ).scalar_one()
                )
                stmt = stmt.where(beyond(after))
            else:
                offset = (page - 1) * limit if limit else 0
                stmt = stmt.offset(offset)
            if limit:
                stmt = stmt.limit(limit)
            rows = list(conn.execute(stmt).all())
    found = [_row_record(row) for row in rows]
    more = bool(found) and offset + len(found) < total
    return AuditPage(
        records=found,
        total=total,
        offset=offset,
        limit=limit,
        newest_first=newest_first,
        next_cursor=str(found[-1].id) if more else None,
    )
