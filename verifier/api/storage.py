"""Where the STOW-RS intake puts what it takes: a directory backend.

File names come from the SHA-256 of the bytes (``accepted/ab/abcdef....dcm``), never from a UID or a name the
sender chose, so no upload can pick or escape its path (ARCHITECTURE.md, "Boundaries"). The same bytes stored twice
are one file. Quarantined uploads go to ``quarantine/`` under the same naming, for review.

A file is written in two steps around its audit record: :meth:`InstanceStore.stage` writes the bytes to a hidden
temporary file next to the target and fsyncs it (a full disk fails here, before any record), the caller writes
the record, then :meth:`StagedFile.commit` renames it into place (atomic) and fsyncs the directory. So a process
killed at any moment never leaves a visible file that the audit log does not account for, nor a partial one; what
it may leave is a ``.incoming-*`` temporary, which :meth:`InstanceStore.remove_stale` deletes at start-up.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import tempfile
from pathlib import Path

__all__ = ["InstanceStore", "StagedFile", "StoreArea"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TMP_PREFIX = ".incoming-"


class StoreArea(enum.StrEnum):
    ACCEPTED = "accepted"
    QUARANTINE = "quarantine"


@dataclasses.dataclass(frozen=True)
class StagedFile:
    """Bytes written and fsynced beside their final name, not yet visible there."""

    path: Path
    #: The temporary file; None when the same bytes were already stored (a repeated upload).
    temporary: Path | None

    @property
    def created(self) -> bool:
        return self.temporary is not None

    def commit(self) -> None:
        """Rename the file into place and make the rename durable; raises ``OSError``."""
        if self.temporary is None:
            return
        os.replace(self.temporary, self.path)
        _fsync_dir(self.path.parent)

    def discard(self) -> None:
        """Drop the temporary (used when the audit record cannot be written)."""
        if self.temporary is not None:
            self.temporary.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceStore:
    """Accepted and quarantined instances under ``root``, named by their SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str, area: StoreArea) -> Path:
        if not _SHA256_HEX.fullmatch(sha256):
            raise ValueError("a stored file is named by a lowercase hex SHA-256")
        return self.root / area.value / sha256[:2] / f"{sha256}.dcm"

    def stage(self, data: bytes, sha256: str, area: StoreArea) -> StagedFile:
        """Write ``data`` to a temporary beside its target and fsync it; raises ``OSError`` when the disk refuses.

        Nothing partial is left behind on failure.
        """
        target = self.path_for(sha256, area)
        if target.is_file() and target.stat().st_size == len(data):
            return StagedFile(target, None)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_TMP_PREFIX, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o640)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StagedFile(target, Path(tmp))

    def put(self, data: bytes, sha256: str, area: StoreArea) -> StagedFile:
        """Stage and commit at once (no record in between)."""
        staged = self.stage(data, sha256, area)
        try:
            staged.commit()
        except BaseException:
            staged.discard()
            raise
        return staged

    def remove_stale(self) -> int:
        """Delete temporaries left by a process killed between staging and commit; returns how many.

        Call it only while no other process writes to this store (at start-up).
        """
        removed = 0
        for area in StoreArea:
            for tmp in (self.root / area.value).glob(f"*/{_TMP_PREFIX}*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed
