"""Private file plumbing: 0700 directories, 0600 files written atomically, JSON state files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provenance.errors import KeyStoreError

__all__ = ["ensure_private_dir", "exclusive_lock", "read_json", "write_json", "write_private_file"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; tighten an existing directory to 0700."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o777 != DIR_MODE:
            os.chmod(path, DIR_MODE)
    except OSError as exc:
        raise KeyStoreError(f"cannot create private directory {path}: {exc.strerror}") from exc


def write_private_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    The bytes go to a fresh temporary file in the same directory (``O_CREAT | O_EXCL``, so nothing else can
    have opened it first), are flushed to disk and then renamed into place. Unless ``replace`` is true an
    existing ``path`` is an error, never silently overwritten.
    """
    if not replace and path.exists():
        raise KeyStoreError(f"refusing to overwrite {path}")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            # link() fails if ``path`` appeared meanwhile; rename() would silently replace it.
            try:
                os.link(tmp, path)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                os.rename(tmp, path)  # a file system without hard links
            else:
                os.unlink(tmp)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from exc


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyStoreError(f"{path} is not valid JSON (line {exc.lineno})") from exc
    if not isinstance(value, dict):
        raise KeyStoreError(f"{path} does not hold a JSON object")
    return value


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``value`` as JSON (mode 0600)."""
    data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")
    write_private_file(path, data, replace=True)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created 0600) for the duration of the block."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
    except OSError as exc:
        raise KeyStoreError(f"cannot open lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
