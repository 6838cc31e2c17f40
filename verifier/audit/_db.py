"""Engines, transactions and migrations for the audit database (plumbing for :mod:`verifier.audit.log`)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import make_url

from verifier.errors import AuditError, DatabaseUnavailableError

__all__ = ["MIGRATIONS_DIR", "current_revision", "db_errors", "head_revision", "make_engine", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: pg_advisory_xact_lock key taken while migrating, so concurrent first uses do not race ("mvaudit" in ASCII).
_MIGRATION_LOCK = 0x6D76617564697400
#: How long a writer waits for the SQLite write lock before the database counts as unavailable.
SQLITE_BUSY_TIMEOUT_MS = 120_000
_BEGIN_OPTION = "medverify_sqlite_begin"


def redact(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<invalid URL>"


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``: SQLite (WAL, synchronous=NORMAL, writers serialised) or PostgreSQL."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise AuditError(f"not a database URL: {redact(url)}") from error
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            private_sqlite_file(Path(database).expanduser())
        engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        try:
            return sa.create_engine(parsed, connect_args={"connect_timeout": 10}, pool_pre_ping=True)
        except ModuleNotFoundError as error:
            raise AuditError(
                f"the PostgreSQL driver is not installed ({error.name}); pip install psycopg"
            ) from error
    raise AuditError(f"unsupported audit database backend {backend!r}; use sqlite or postgresql+psycopg")


def private_sqlite_file(path: Path) -> None:
    """Make sure the SQLite database at ``path`` is readable by its owner only: a new file is created 0600 (SQLite
    gives its -wal and -shm files the same mode) in a new folder made 0700; an existing file of ours that others
    may read (medverify created ``audit.db`` 0644 before) is tightened to 0600, with its -wal and -shm files. The
    log holds file paths, UIDs, peers and token ids. An existing folder is left as it is: it may be /tmp."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        for member in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            try:
                st = member.stat()
            except FileNotFoundError:
                continue
            if st.st_uid == os.getuid() and st.st_mode & 0o077:
                os.chmod(member, 0o600)
    except OSError as error:
        raise DatabaseUnavailableError(f"cannot create audit database {path}: {error.strerror}") from error


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the sqlite3 module so that ``begin`` below decides the BEGIN mode.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    # WAL + NORMAL: commits stay atomic; a power cut may lose the last commits but never corrupts the file.
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    # Writers take the write lock at BEGIN (IMMEDIATE) so the head row read and the append are serialised;
    # readers use a deferred BEGIN, which gives them a WAL snapshot without blocking writers.
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
    connection.exec_driver_sql(f"BEGIN {mode}")


@contextlib.contextmanager
def db_errors(url: str) -> Iterator[None]:
    """Turn SQLAlchemy and driver errors into :class:`AuditError` / :class:`DatabaseUnavailableError`."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError) as error:
        raise DatabaseUnavailableError(
            f"audit database {redact(url)} is unavailable: {_first_line(error.orig or error)}"
        ) from error
    except exc.SQLAlchemyError as error:
        orig = getattr(error, "orig", None) or error
        raise AuditError(f"audit database {redact(url)} failed: {_first_line(orig)}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextlib.contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that may write; on SQLite it holds the database write lock from the start."""
    with engine.begin() as conn:
        yield conn


@contextlib.contextmanager
def read_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A read-only transaction on one consistent snapshot."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(**{_BEGIN_OPTION: "DEFERRED"})
        else:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def _alembic_config(connection: sa.Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this medverify knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise AuditError("the audit migrations are missing from this installation")
    return head


def _file_head() -> str | None:
    """The head revision read from the migration files (the one revision no other names as its parent), or None
    when that is not clear-cut; cheap, unlike alembic's import, which costs more than checking a file."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision = re.search(r'^revision = "([^"]+)"$', text, re.MULTILINE)
        parent = re.search(r'^down_revision = "([^"]+)"$', text, re.MULTILINE)
        if revision is None:
            return None
        revisions.add(revision.group(1))
        if parent is not None:
            parents.add(parent.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def is_at_head(engine: sa.Engine) -> bool:
    """Whether the database is already at the newest migration, checked without importing alembic (the common
    case of every command that opens the log); False when unsure, and the caller asks alembic."""
    head = _file_head()
    if head is None:
        return False
    try:
        with engine.connect() as conn:
            rows: list[str] = list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    except exc.DBAPIError:  # no table yet: a new database
        return False
    return rows == [head]


def current_revision(engine: sa.Engine) -> str | None:
    """The schema revision of the database, ``None`` when it has never been migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> str | None:
    """Migrate the database to ``revision`` (creating it if new); safe when processes race to do it."""
    from alembic import command

    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE serialises concurrent first uses
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(_alembic_config(conn), revision)
    return current_revision(engine)
