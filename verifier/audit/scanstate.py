"""State of archive scans kept next to the audit log: scan runs, and what each scanned file looked like.

The audit records are the truth; ``scan_files`` is a cache of them that lets an incremental scan skip a file
without reading it (same size and mtime as when it was last recorded, and judged by the same checks, trust store,
site policy, watermark keys and detector model: :class:`verifier.judge.Judge`), and that gives the last verdict
and action of the files it skipped. A batch of results is recorded in two
steps: the audit records (one transaction through :meth:`AuditLog.append_many`, which alone touches the Merkle
log), then the file state. A crash between the two cannot lose a file or record one twice, because a scan always
resumes the unfinished run of its root, and resuming rebuilds "what this run has recorded" from the audit records
themselves (each scan record names its run in ``details.scan.run``) before anything else happens.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from verifier.audit import _db
from verifier.audit._orm import Base
from verifier.audit._schema import UTCDateTime, head, records
from verifier.audit.entry import AuditEntry, Channel, EventKind, utc_now
from verifier.audit.log import AuditLog
from verifier.errors import AuditError

__all__ = [
    "FileState",
    "KnownFile",
    "RecordedFile",
    "ScanInProgressError",
    "ScanRun",
    "ScanRunRow",
    "ScanStateStore",
    "ScannedFileRow",
]

_JSON = sa.JSON(none_as_null=True)


class ScanRunRow(Base):
    """One scan of one root. ``status`` is ``running`` until the scan finishes; a killed scan stays running."""

    __tablename__ = "scan_runs"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    root: Mapped[str] = mapped_column(sa.Text)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(sa.String(16))
    counts: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    host: Mapped[str | None] = mapped_column(sa.Text)
    pid: Mapped[int | None] = mapped_column(sa.Integer)
    #: The log's size when the run started: every record of this run has a larger id.
    start_record: Mapped[int] = mapped_column(sa.BigInteger)
    #: The parts of the :class:`~verifier.judge.Judge` this run checked with (migration 0005).
    judge: Mapped[dict[str, Any] | None] = mapped_column(_JSON)


class ScannedFileRow(Base):
    """The last recorded state of one file under a root."""

    __tablename__ = "scan_files"

    root: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    path: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    mtime_ns: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    last_record_id: Mapped[int] = mapped_column(sa.BigInteger)
    last_run_id: Mapped[int] = mapped_column(sa.Integer)
    #: Digest of what judged the file (:attr:`verifier.judge.Judge.digest`); None before migration 0005.
    judge: Mapped[str | None] = mapped_column(sa.String(64))
    verdict: Mapped[str | None] = mapped_column(sa.String(64))
    action: Mapped[str | None] = mapped_column(sa.String(32))


scan_runs: sa.Table = ScanRunRow.__table__  # type: ignore[assignment]
scan_files: sa.Table = ScannedFileRow.__table__  # type: ignore[assignment]

_STATE_COLUMNS = ("size", "mtime_ns", "sha256", "last_record_id", "last_run_id", "judge", "verdict", "action")
RUNNING = "running"
FINISHED = "finished"


class ScanInProgressError(AuditError):
    """Another live process is scanning the same root."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileState:
    """What a file looked like when it was checked (its stat, and the SHA-256 the check computed), what judged it
    (a :attr:`verifier.judge.Judge.digest`) and the verdict and action it got."""

    size: int
    mtime_ns: int
    sha256: str | None = None
    judge: str | None = None
    verdict: str | None = None
    action: str | None = None


class KnownFile(NamedTuple):
    """The recorded state of a file as :meth:`ScanStateStore.known_files` reads it back, with the audit record and
    the run that wrote it (a tuple: an archive has millions of them, read at the start of every scan)."""

    size: int
    mtime_ns: int
    sha256: str | None
    judge: str | None
    verdict: str | None
    action: str | None
    record_id: int
    run_id: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordedFile:
    """One checked file to record: its audit entry and its state."""

    path: str
    entry: AuditEntry
    state: FileState


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScanRun:
    """A run being worked on. ``done`` maps each path this run has already recorded to its record id."""

    id: int
    root: str
    resumed: bool
    done: Mapping[str, int]


class ScanStateStore:
    """Scan runs and file state in the audit database of ``log`` (workers never use this; the driver does)."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._engine: sa.Engine = log._engine
        self._url: str = log._url

    # -- runs ------------------------------------------------------------------------------------------------

    def begin_run(self, root: str, judge: Mapping[str, str] | None = None) -> ScanRun:
        """Resume the unfinished run of ``root``, or start a new one; ``judge``: the parts of the
        :class:`~verifier.judge.Judge` it checks with (kept with the run, so that a later scan can say what changed).

        Raises :class:`ScanInProgressError` when the unfinished run belongs to a live process on this host.
        """
        host, pid = socket.gethostname(), os.getpid()
        with _db.db_errors(self._url), _db.write_transaction(self._engine) as conn:
            # Lock the head row like an append does: concurrent starts of the same root are serialised.
            tree_size = int(conn.execute(sa.select(head.c.tree_size).where(head.c.id == 1).with_for_update()).one()[0])
            row = conn.execute(
                sa.select(scan_runs)
                .where(scan_runs.c.root == root, scan_runs.c.status == RUNNING)
                .order_by(scan_runs.c.id.desc())
                .limit(1)
            ).first()
            if row is None:
                run_id = conn.execute(
                    sa.insert(scan_runs).values(
                        root=root, started_at=utc_now(), status=RUNNING, host=host, pid=pid, start_record=tree_size,
                        judge=dict(judge) if judge is not None else None,
                    )
                ).inserted_primary_key
                if run_id is None:  # pragma: no cover - every backend returns the key
                    raise AuditError("the database returned no id for the new scan run")
                return ScanRun(id=int(run_id[0]), root=root, resumed=False, done={})
            if row.host == host and row.pid is not None and row.pid != pid and _alive(row.pid):
                raise ScanInProgressError(
                    f"scan run #{row.id} of {root} is still running (process {row.pid} on {host}); "
                    "wait for it to finish"
                )
            values: dict[str, Any] = {"host": host, "pid": pid}
            if judge is not None:
                values["judge"] = dict(judge)
            conn.execute(sa.update(scan_runs).where(scan_runs.c.id == row.id).values(**values))
            done = self._reconcile(conn, row.id, root, row.start_record)
        return ScanRun(id=row.id, root=root, resumed=True, done=done)

    def _reconcile(self, conn: sa.Connection, run_id: int, root: str, start_record: int) -> dict[str, int]:
        """The files run ``run_id`` has recorded, from the audit records; file state missing for any is written."""
        done: dict[str, int] = {}
        states: list[dict[str, Any]] = []
        stmt = (
            sa.select(
                records.c.id,
                records.c.path,
                records.c.file_sha256,
                records.c.details,
                records.c.verdict,
                records.c.action,
            )
            .where(records.c.id > start_record, records.c.event == EventKind.SCAN.value)
            .where(records.c.channel == Channel.SCAN.value)
            .order_by(records.c.id)
        )
        for rec in conn.execute(stmt):
            scan = (rec.details or {}).get("scan") if isinstance(rec.details, dict) else None
            if not isinstance(scan, dict) or scan.get("run") != run_id or rec.path is None:
                continue
            done[rec.path] = rec.id
            if isinstance(scan.get("size"), int) and isinstance(scan.get("mtime_ns"), int):
                states.append(
                    _state_row(
                        root,
                        rec.path,
                        FileState(
                            size=scan["size"],
                            mtime_ns=scan["mtime_ns"],
                            sha256=rec.file_sha256,
                            judge=scan.get("judge") if isinstance(scan.get("judge"), str) else None,
                            verdict=rec.verdict,
                            action=rec.action,
                        ),
                        rec.id,
                        run_id,
                    )
                )
        if states:
            known = {
                r.path: r.last_record_id
                for r in conn.execute(
                    sa.select(scan_files.c.path, scan_files.c.last_record_id).where(
                        scan_files.c.root == root, scan_files.c.last_run_id == run_id
                    )
                )
            }
            missing = [s for s in states if known.get(s["path"]) != s["last_record_id"]]
            if missing:
                self._upsert(conn, missing)
        return done

    def finish_run(self, run: ScanRun, counts: Mapping[str, Any]) -> None:
        """Mark ``run`` finished with its ``counts``; the next scan of its root starts a new run."""
        with _db.db_errors(self._url), _db.write_transaction(self._engine) as conn:
            conn.execute(
                sa.update(scan_runs)
                .where(scan_runs.c.id == run.id)
                .values(status=FINISHED, finished_at=utc_now(), counts=dict(counts))
            )

    def runs(self, root: str | None = None) -> list[ScanRunRow]:
        """Scan runs (of ``root``), oldest first, as detached rows."""
        stmt = sa.select(scan_runs).order_by(scan_runs.c.id)
        if root is not None:
            stmt = stmt.where(scan_runs.c.root == root)
        with _db.db_errors(self._url), self._engine.connect() as conn:
            return [ScanRunRow(**row._mapping) for row in conn.execute(stmt)]

    # -- files -----------------------------------------------------------------------------------------------

    def known_files(self, root: str) -> dict[str, KnownFile]:
        """The last recorded state of every file under ``root``."""
        stmt = sa.select(
            scan_files.c.path,
            scan_files.c.size,
            scan_files.c.mtime_ns,
            scan_files.c.sha256,
            scan_files.c.judge,
            scan_files.c.verdict,
            scan_files.c.action,
            scan_files.c.last_record_id,
            scan_files.c.last_run_id,
        ).where(scan_files.c.root == root)
        with _db.db_errors(self._url), _db.read_transaction(self._engine) as conn:
            return {r[0]: KnownFile._make(r[1:]) for r in conn.execution_options(yield_per=10_000).execute(stmt)}

    def run_judges(self, run_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The judge parts each of ``run_ids`` recorded (runs from before migration 0005 have none)."""
        wanted = sorted(set(run_ids))
        out: dict[int, dict[str, Any]] = {}
        with _db.db_errors(self._url), self._engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                stmt = sa.select(scan_runs.c.id, scan_runs.c.judge).where(scan_runs.c.id.in_(chunk))
                for row in conn.execute(stmt):
                    if isinstance(row.judge, dict):
                        out[row.id] = row.judge
        return out

    @staticmethod
    def scan_details(run: ScanRun, state: FileState) -> dict[str, Any]:
        """The ``details.scan`` object every scan record carries: from it :meth:`begin_run` rebuilds the state
        of a file whose record was committed by a process that died before it wrote the state."""
        details: dict[str, Any] = {"run": run.id, "root": run.root, "size": state.size, "mtime_ns": state.mtime_ns}
        if state.judge is not None:
            details["judge"] = state.judge
        return details

    def record(self, run: ScanRun, files: Sequence[RecordedFile]) -> list[int]:
        """Append the audit records of ``files`` (one transaction), then their state; returns the record ids.

        Each entry must carry ``details.scan`` as :meth:`scan_details` makes it (built with the entry, so that
        the entry is validated once: this is the hot path of a scan).
        """
        if not files:
            return []
        for f in files:
            if f.entry.details.get("scan") != self.scan_details(run, f.state):
                raise ValueError(f"the audit entry of {f.path} lacks details.scan of run {run.id}")
        receipts = self._log.append_many([f.entry for f in files])
        # One state row a file: the images of one PDF are one record each but one file (the last record's row; the
        # scanner gives them all the state of the file's worst image).
        by_path = {f.path: _state_row(run.root, f.path, f.state, r.id, run.id)
                   for f, r in zip(files, receipts, strict=True)}
        with _db.db_errors(self._url), _db.write_transaction(self._engine) as conn:
            self._upsert(conn, list(by_path.values()))
        return [r.id for r in receipts]

    def _upsert(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if self._engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(scan_files)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(scan_files)
        stmt = stmt.on_conflict_do_update(
            index_elements=[scan_files.c.root, scan_files.c.path],
            set_={name: stmt.excluded[name] for name in _STATE_COLUMNS},
        )
        conn.execute(stmt, rows)


def _state_row(root: str, path: str, state: FileState, record_id: int, run_id: int) -> dict[str, Any]:
    return {
        "root": root,
        "path": path,
        "size": state.size,
        "mtime_ns": state.mtime_ns,
        "sha256": state.sha256,
        "last_record_id": record_id,
        "last_run_id": run_id,
        "judge": state.judge,
        "verdict": state.verdict,
        "action": state.action,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) still answers; it does not scan any more.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True
