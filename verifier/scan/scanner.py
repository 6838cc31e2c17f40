"""The scan itself: plan (walk the roots, start or resume a run per root, choose the files), execute on an
executor, record each result, finish (close the runs and sum up)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verifier.checker import Checker
from verifier.errors import InputError
from verifier.exports import is_export_file
from verifier.instance import is_dicom_file
from verifier.result import FileResult
from verifier.scan.executors import Executor
from verifier.scan.walk import ScanFile, WalkStats, Warn, walk_archive

if TYPE_CHECKING:
    from verifier.audit.scanstate import FileState, ScanRun, ScanStateStore

__all__ = ["ScanPlan", "ScanSummary", "Scanner"]


@dataclasses.dataclass(kw_only=True)
class _RootPlan:
    root: str
    run: ScanRun | None
    to_check: list[ScanFile]
    skipped_unchanged: int = 0
    skipped_done: int = 0
    not_dicom: int = 0
    counts: Counter[str] = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass(kw_only=True)
class ScanPlan:
    """What :meth:`Scanner.execute` will check, per root, and what it skips."""

    roots: list[_RootPlan]
    walk: WalkStats
    incremental: bool
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def to_check(self) -> int:
        return sum(len(r.to_check) for r in self.roots)

    @property
    def skipped_unchanged(self) -> int:
        return sum(r.skipped_unchanged for r in self.roots)

    @property
    def skipped_done(self) -> int:
        return sum(r.skipped_done for r in self.roots)

    @property
    def not_dicom(self) -> int:
        return sum(r.not_dicom for r in self.roots)

    @property
    def resumed_runs(self) -> list[int]:
        return [r.run.id for r in self.roots if r.run is not None and r.run.resumed]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScanSummary:
    """Counts of one scan invocation (files recorded by an earlier, resumed invocation are not counted)."""

    checked: int
    verdicts: dict[str, int]
    actions: dict[str, int]
    failed: int
    problems: int
    skipped_unchanged: int
    skipped_done: int
    not_dicom: int
    walk: WalkStats
    seconds: float
    run_ids: list[int]

    @property
    def files_per_second(self) -> float:
        return self.checked / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["files_per_second"] = round(self.files_per_second, 1)
        return out


class Scanner:
    """Plans, runs and records scans. Without a ``state`` store (``--no-audit``), nothing is recorded, nothing
    is skipped as unchanged and nothing resumes."""

    def __init__(
        self,
        checker: Checker,
        *,
        state: ScanStateStore | None = None,
        follow_symlinks: bool = False,
        batch_size: int = 128,
        flush_seconds: float = 0.5,
        warn: Warn | None = None,
    ) -> None:
        self.checker = checker
        self.state = state
        self.follow_symlinks = follow_symlinks
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.warn = warn

    def plan(self, roots: Iterable[Path], *, incremental: bool = False) -> ScanPlan:
        """Walk ``roots``, start (or resume) one run per root, and choose the files to check."""
        if incremental and self.state is None:
            raise InputError("--incremental needs the audit database (it cannot be combined with --no-audit)")
        unique: dict[str, Path] = {}
        for raw in roots:
            p = Path(raw)
            if not p.exists():
                raise InputError(f"{p}: no such file or directory")
            unique.setdefault(str(p.resolve()), p)
        walk = WalkStats()
        plans: list[_RootPlan] = []
        for root_str, root in unique.items():
            run = self.state.begin_run(root_str) if self.state is not None else None
            known: dict[str, FileState] = self.state.known_files(root_str) if incremental and self.state else {}
            done = run.done if run is not None else {}
            rp = _RootPlan(root=root_str, run=run, to_check=[])
            explicit_file = root.is_file()
            for f in walk_archive(root, follow_symlinks=self.follow_symlinks, stats=walk, warn=self.warn):
                if f.path in done:
                    rp.skipped_done += 1
                    continue
                last = known.get(f.path)
                if last is not None and last.size == f.size and last.mtime_ns == f.mtime_ns:
                    rp.skipped_unchanged += 1
                    continue
                # A file named as a root is always checked (UNREADABLE if it is not DICOM), like verify does.
                if not explicit_file and not is_dicom_file(Path(f.path)) and not is_export_file(Path(f.path)):
                    rp.not_dicom += 1
                    continue
                rp.to_check.append(f)
            plans.append(rp)
        return ScanPlan(roots=plans, walk=walk, incremental=incremental)

    def execute(self, plan: ScanPlan, executor: Executor) -> Iterator[FileResult]:
        """Check every planned file and yield its result once it is recorded (``audit_id`` set)."""
        files: dict[str, tuple[_RootPlan, ScanFile]] = {}
        for rp in plan.roots:
            for f in rp.to_check:
                files.setdefault(f.path, (rp, f))
        pending: list[FileResult] = []
        last_flush = time.monotonic()
        for result in executor.map(list(files), self.checker):
            pending.append(result)
            now = time.monotonic()
            if len(pending) >= self.batch_size or now - last_flush >= self.flush_seconds:
                yield from self._flush(pending, files)
                pending = []
                last_flush = now
        yield from self._flush(pending, files)

    def _flush(self, results: list[FileResult], files: dict[str, tuple[_RootPlan, ScanFile]]) -> Iterator[FileResult]:
        if not results:
            return
        if self.state is not None:
            from verifier.audit import Channel
            from verifier.audit.scanstate import FileState, RecordedFile

            by_run: dict[int, tuple[ScanRun, list[int], list[RecordedFile]]] = {}
            for i, r in enumerate(results):
                rp, f = files[r.path]
                if rp.run is None:  # pragma: no cover - plan() gives every root a run when there is a store
                    raise RuntimeError(f"no scan run for {rp.root}")
                state = FileState(size=f.size, mtime_ns=f.mtime_ns, sha256=r.file_sha256)
                # Recorded under the file's path (an image of a PDF names its page in details.export): a resumed run
                # finds the files it has done by the records' paths.
                entry = r.audit_entry(
                    channel=Channel.SCAN, event="scan", details={"scan": self.state.scan_details(rp.run, state)},
                    path=r.path,
                )
                slot = by_run.setdefault(rp.run.id, (rp.run, [], []))
                slot[1].append(i)
                slot[2].append(RecordedFile(path=f.path, entry=entry, state=state))
            ids: dict[int, int] = {}
            for run, indexes, items in by_run.values():
                for i, record_id in zip(indexes, self.state.record(run, items), strict=True):
                    ids[i] = record_id
            results = [r.with_audit_id(ids[i]) for i, r in enumerate(results)]
        for r in results:
            rp, _ = files[r.path]
            rp.counts[f"verdict:{r.verdict.status.value}"] += 1
            rp.counts[f"action:{r.verdict.action.value}"] += 1
            rp.counts["failed"] += r.failed
            rp.counts["problems"] += r.problem_found
            yield r

    def finish(self, plan: ScanPlan) -> ScanSummary:
        """Close the runs of ``plan`` (a run left open resumes next time) and sum up this invocation."""
        seconds = time.monotonic() - plan.started
        verdicts: Counter[str] = Counter()
        actions: Counter[str] = Counter()
        failed = problems = 0
        for rp in plan.roots:
            for key, n in rp.counts.items():
                if key.startswith("verdict:"):
                    verdicts[key.removeprefix("verdict:")] += n
                elif key.startswith("action:"):
                    actions[key.removeprefix("action:")] += n
            failed += rp.counts["failed"]
            problems += rp.counts["problems"]
            if self.state is not None and rp.run is not None:
                self.state.finish_run(
                    rp.run,
                    {
                        "checked": sum(n for k, n in rp.counts.items() if k.startswith("verdict:")),
                        "verdicts": _prefixed(rp.counts, "verdict:"),
                        "actions": _prefixed(rp.counts, "action:"),
                        "failed": rp.counts["failed"],
                        "problems": rp.counts["problems"],
                        "recorded_before_resume": rp.skipped_done,
                        "skipped_unchanged": rp.skipped_unchanged,
                        "not_dicom": rp.not_dicom,
                        "resumed": rp.run.resumed,
                    },
                )
        return ScanSummary(
            checked=sum(verdicts.values()),
            verdicts=dict(sorted(verdicts.items())),
            actions=dict(sorted(actions.items())),
            failed=failed,
            problems=problems,
            skipped_unchanged=plan.skipped_unchanged,
            skipped_done=plan.skipped_done,
            not_dicom=plan.not_dicom,
            walk=plan.walk,
            seconds=seconds,
            run_ids=[rp.run.id for rp in plan.roots if rp.run is not None],
        )


def _prefixed(counts: Counter[str], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): n for k, n in sorted(counts.items()) if k.startswith(prefix) and n}
