"""Where the STOW-RS intake puts what it takes: a directory backend.

File names come from the SHA-256 of the bytes (``accepted/ab/abcdef....dcm``), never from a UID or a name the
sender chose, so no upload can pick or escape its path (STYLE.md rule 13). The same bytes stored twice are one
file. Quarantined uploads go to ``quarantine/`` under the same naming, for review.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import tempfile
from pathlib import Path

__all__ = ["InstanceStore", "StoreArea", "StoredFile"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class StoreArea(enum.StrEnum):
    ACCEPTED = "accepted"
    QUARANTINE = "quarantine"


@dataclasses.dataclass(frozen=True)
class StoredFile:
    path: Path
    #: False when the same bytes were already stored (a repeated upload).
    created: bool

    def undo(self) -> None:
        """Remove the file if this upload created it (used when its audit record cannot be written)."""
        if self.created:
            self.path.unlink(missing_ok=True)


class InstanceStore:
    """Accepted and quarantined instances under ``root``, named by their SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str, area: StoreArea) -> Path:
        if not _SHA256_HEX.fullmatch(sha256):
            raise ValueError("a stored file is named by a lowercase hex SHA-256")
        return self.root / area.value / sha256[:2] / f"{sha256}.dcm"

    def put(self, data: bytes, sha256: str, area: StoreArea) -> StoredFile:
        """Write ``data`` atomically (temporary file, fsync, rename); raises ``OSError`` when the disk refuses."""
        target = self.path_for(sha256, area)
        if target.is_file() and target.stat().st_size == len(data):
            return StoredFile(target, created=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o640)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredFile(target, created=True)
