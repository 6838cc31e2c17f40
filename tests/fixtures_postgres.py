"""A real PostgreSQL server for the tests, started once per session on 127.0.0.1 and stopped at the end.

The server binaries are found on ``PATH``, in ``$MEDVERIFY_PG_BIN``, or in
``/usr/lib/postgresql/<version>/bin``.
Without them the PostgreSQL tests are skipped, except under CI (``CI`` set), where that is a failure.
PostgreSQL refuses to run as root, so as root the server runs as the existing unprivileged ``nobody`` account
(an account ``medverify-pg`` is created, once, only where ``nobody`` does not exist).

Also usable outside pytest (the benchmarks do):
``with running_postgres() as server: server.create_database()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "audit_db_url", "find_pg_bin", "postgres_server", "running_postgres"]

_SUPERUSER = "medverify"


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None``."""
    candidates = []
    if os.environ.get("MEDVERIFY_PG_BIN"):
        candidates.append(os.environ["MEDVERIFY_PG_BIN"])
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for directory in candidates:
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    return None


def _run_as() -> str | None:
    """The account to run the server as: ``None`` for this one, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("nobody", "medverify-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "medverify-pg"],
        check=True,
        capture_output=True,
    )
    return "medverify-pg"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def running_postgres(*, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a throw-away server; ``durable=False`` turns fsync off (fine for tests, not for figures)."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    account = _run_as()
    base = Path(tempfile.mkdtemp(prefix="medverify-pg-"))
    data = base / "data"
    if account is not None:
        entry = pwd.getpwnam(account)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    as_user: dict[str, object] = {}
    if account is not None:
        as_user = {"user": account, "group": pwd.getpwnam(account).pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "HOME": str(base)}
    port = _free_port()
    options = f"-h 127.0.0.1 -p {port} -k {base} -c max_connections=60"
    if not durable:
        options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    try:
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                _SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=base,
            env=env,
            **as_user,  # type: ignore[call-overload]
        )
        subprocess.run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(base / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            check=True,
            capture_output=True,
            cwd=base,
            env=env,
            **as_user,  # type: ignore[call-overload]
        )
    except subprocess.CalledProcessError as exc:
        log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"cannot start PostgreSQL: {exc.stderr.decode(errors='replace')}\n{log}") from exc
    try:
        yield PostgresServer(host="127.0.0.1", port=port, user=_SUPERUSER)
    finally:
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            cwd=base,
            env=env,
            **as_user,  # type: ignore[call-overload]
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (skipped without binaries, a failure under CI)."""
    if find_pg_bin() is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found; set MEDVERIFY_PG_BIN or install them"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so the PostgreSQL tests must run)")
        pytest.skip(message)
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty audit database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
