"""Finding the files of an archive: every regular file under a root, in sorted order, without reading any.

Symlinks are not followed unless asked (and never out of a root's tree then either: a link whose target lies outside
is skipped). Unreadable directories are skipped with a warning. No path is ever built from a UID inside a file.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["ScanFile", "WalkStats", "Warn", "walk_archive"]

Warn = Callable[[str], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScanFile:
    """A regular file found under ``root`` (both absolute), with the stat the scan state compares."""

    root: str
    path: str
    size: int
    mtime_ns: int


@dataclasses.dataclass(kw_only=True)
class WalkStats:
    """What walking the roots met besides files."""

    directories: int = 0
    unreadable_directories: int = 0
    symlinks_skipped: int = 0
    other_skipped: int = 0


def walk_archive(
    root: Path, *, follow_symlinks: bool = False, stats: WalkStats | None = None, warn: Warn | None = None
) -> Iterator[ScanFile]:
    """Every regular file under ``root`` in sorted order, without reading any.

    Symlinks are skipped unless ``follow_symlinks``; followed ones must resolve inside ``root`` (and a directory
    is entered once, so loops end). Directories that cannot be listed are skipped with a warning.
    """
    stats = stats if stats is not None else WalkStats()
    base = root.resolve()
    base_str = str(base)
    if base.is_file():
        st = base.stat()
        yield ScanFile(root=base_str, path=base_str, size=st.st_size, mtime_ns=st.st_mtime_ns)
        return
    seen: set[tuple[int, int]] = set()
    stack = [base_str]
    prefix = base_str.rstrip(os.sep) + os.sep
    while stack:
        directory = stack.pop()
        try:
            st_dir = os.stat(directory)
            if (st_dir.st_dev, st_dir.st_ino) in seen:
                continue
            seen.add((st_dir.st_dev, st_dir.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            stats.unreadable_directories += 1
            if warn is not None:
                warn(f"skipped unreadable directory {directory}: {exc.strerror or exc}")
            continue
        stats.directories += 1
        subdirs: list[str] = []
        for entry in entries:
            try:
                if entry.is_symlink():
                    if not follow_symlinks:
                        stats.symlinks_skipped += 1
                        continue
                    target = os.path.realpath(entry.path)
                    if target != base_str and not target.startswith(prefix):
                        stats.symlinks_skipped += 1
                        if warn is not None:
                            warn(f"skipped symlink out of the tree: {entry.path} -> {target}")
                        continue
                st = entry.stat(follow_symlinks=True)
            except OSError:
                stats.other_skipped += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                yield ScanFile(root=base_str, path=entry.path, size=st.st_size, mtime_ns=st.st_mtime_ns)
            else:
                stats.other_skipped += 1
        stack.extend(reversed(subdirs))
