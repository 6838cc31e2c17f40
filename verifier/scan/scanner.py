"""The scan itself: plan (walk the roots, start or resume a run per root, choose the files), execute on an
executor, record each result, finish (close the runs and sum up)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verifier.checker import Checker
from verifier.errors import InputError
from verifier.exports import is_export_file
from verifier.instance import is_dicom_file
from verifier.judge import Judge
from verifier.policy import Action
from verifier.result import FileResult
from verifier.scan.executors import Executor
from verifier.scan.walk import ScanFile, WalkStats, Warn, walk_archive

if TYPE_CHECKING:
    from verifier.audit.scanstate import KnownFile, ScanRun, ScanStateStore

__all__ = ["CarriedFile", "ScanPlan", "ScanSummary", "Scanner"]

#: Verdicts of a check that could not be done (the file could not be read): exit code 2, not 1.
_FAILED_VERDICTS = frozenset({"UNREADABLE", "MALFORMED"})
_ACCEPT = Action.ACCEPT.value


@dataclasses.dataclass(frozen=True, kw_only=True)
class CarriedFile:
    """A file this scan did not check (unchanged, judged by the same checks, trust and policy) whose last verdict
    is still not "accept": it still fails, and the scan's summary and exit code say so."""

    path: str
    verdict: str | None
    action: str | None
    #: The audit record that gave the verdict.
    audit_id: int | None

    @property
    def failed(self) -> bool:
        return self.verdict in _FAILED_VERDICTS

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "verdict": self.verdict,
            "action": self.action,
            "audit_id": self.audit_id,
            "checked": False,
        }


@dataclasses.dataclass(kw_only=True)
class _RootPlan:
    root: str
    run: ScanRun | None
    to_check: list[ScanFile]
    skipped_unchanged: int = 0
    skipped_done: int = 0
    not_dicom: int = 0
    #: Unchanged files checked again because what judged them changed, and the changes named (in words).
    rejudged: int = 0
    judge_changes: Counter[str] = dataclasses.field(default_factory=Counter)
    #: Files of the same size and mtime whose content digest differs from the recorded one (``rehash``).
    content_changed: int = 0
    #: Files recorded under this root by an earlier scan that are no longer there.
    gone: int = 0
    counts: Counter[str] = dataclasses.field(default_factory=Counter)
    #: The last (verdict, action) of the files not checked now (unchanged, or recorded by the resumed run).
    carried: Counter[tuple[str | None, str | None]] = dataclasses.field(default_factory=Counter)
    carried_failing: list[CarriedFile] = dataclasses.field(default_factory=list)

    def carry(self, path: str, last: KnownFile) -> None:
        verdict, action = last.verdict, last.action
        self.carried[verdict, action] += 1
        if (action is not None and action != _ACCEPT) or verdict in _FAILED_VERDICTS:
            self.carried_failing.append(CarriedFile(path=path, verdict=verdict, action=action, audit_id=last.record_id))

    def carried_counts(self) -> Counter[str]:
        """``verdict:X`` and ``action:Y`` counts of the files not checked now."""
        out: Counter[str] = Counter()
        for (verdict, action), n in self.carried.items():
            out[f"verdict:{verdict or 'unknown'}"] += n
            out[f"action:{action or 'unknown'}"] += n
        return out


@dataclasses.dataclass(kw_only=True)
class ScanPlan:
    """What :meth:`Scanner.execute` will check, per root, and what it skips."""

    roots: list[_RootPlan]
    walk: WalkStats
    incremental: bool
    judge: Judge
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
    def rejudged(self) -> int:
        return sum(r.rejudged for r in self.roots)

    @property
    def judge_changes(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for r in self.roots:
            total.update(r.judge_changes)
        return dict(sorted(total.items()))

    @property
    def content_changed(self) -> int:
        return sum(r.content_changed for r in self.roots)

    @property
    def carried_failing(self) -> list[CarriedFile]:
        return [f for r in self.roots for f in r.carried_failing]

    @property
    def resumed_runs(self) -> list[int]:
        return [r.run.id for r in self.roots if r.run is not None and r.run.resumed]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScanSummary:
    """Counts of one scan invocation: the files it checked (``verdicts``, ``actions``, ``failed``, ``problems``)
    and the files it did not check but whose last recorded verdict still stands (``carried_*``: unchanged files
    of an incremental scan, files recorded by the resumed run). :meth:`exit_code` covers both."""

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
    carried_verdicts: dict[str, int] = dataclasses.field(default_factory=dict)
    carried_actions: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Files not checked now whose last verdict is not "accept" (or could not be read).
    still_failing: list[CarriedFile] = dataclasses.field(default_factory=list)
    rejudged: int = 0
    judge_changes: dict[str, int] = dataclasses.field(default_factory=dict)
    content_changed: int = 0
    gone: int = 0
    judge: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def files_per_second(self) -> float:
        return self.checked / self.seconds if self.seconds > 0 else 0.0

    @property
    def current_problems(self) -> int:
        """Files whose current verdict the policy does not simply accept, checked now or earlier."""
        return self.problems + sum(1 for f in self.still_failing if not f.failed)

    @property
    def current_failed(self) -> int:
        """Files that could not be read, checked now or earlier."""
        return self.failed + sum(1 for f in self.still_failing if f.failed)

    def exit_code(self, *, new_only: bool = False) -> int:
        """1 if a file is not accepted, else 2 if a file could not be read, else 0: over every file under the
        roots that has a current verdict, or (``new_only``) only over the files checked by this invocation."""
        problems = self.problems if new_only else self.current_problems
        failed = self.failed if new_only else self.current_failed
        return 1 if problems else 2 if failed else 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["files_per_second"] = round(self.files_per_second, 1)
        out["current_problems"] = self.current_problems
        out["current_failed"] = self.current_failed
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
        #: What judges every file of this scanner's scans; kept with each file's state.
        self.judge = Judge.of(checker)

    def plan(self, roots: Iterable[Path], *, incremental: bool = False, rehash: bool = False) -> ScanPlan:
        """Walk ``roots``, start (or resume) one run per root, and choose the files to check.

        With ``incremental``, a file is skipped when its size and mtime are those recorded at its last check and
        it was judged by the same checks, trust store and revocations, site policy, watermark keys and detector
        model (:class:`~verifier.judge.Judge`); with ``rehash`` too, its content is read and its SHA-256 must
        equal the recorded one (a file rewritten with its old size and mtime is checked again). A skipped file's
        last verdict is carried into the summary.
        """
        if (incremental or rehash) and self.state is None:
            raise InputError("--incremental needs the audit database (it cannot be combined with --no-audit)")
        if rehash and not incremental:
            raise InputError("--rehash applies to --incremental scans")
        unique: dict[str, Path] = {}
        for raw in roots:
            p = Path(raw)
            if not p.exists():
                raise InputError(f"{p}: no such file or directory")
            unique.setdefault(str(p.resolve()), p)
        walk = WalkStats()
        plans: list[_RootPlan] = []
        digest = self.judge.digest
        for root_str, root in unique.items():
            run = self.state.begin_run(root_str, self.judge.to_dict()) if self.state is not None else None
            done = run.done if run is not None else {}
            known: dict[str, KnownFile] = (
                self.state.known_files(root_str) if self.state is not None and (incremental or done) else {}
            )
            earlier: dict[int, Judge | None] = {}
            rp = _RootPlan(root=root_str, run=run, to_check=[])
            explicit_file = root.is_file()
            walked: set[str] = set()
            for f in walk_archive(root, follow_symlinks=self.follow_symlinks, stats=walk, warn=self.warn):
                walked.add(f.path)
                last = known.get(f.path)
                if f.path in done:
                    rp.skipped_done += 1
                    if last is not None:
                        rp.carry(f.path, last)
                    continue
                if not incremental:
                    last = None
                if last is not None and last.size == f.size and last.mtime_ns == f.mtime_ns:
                    if last.judge != digest:
                        rp.rejudged += 1
                        if last.run_id not in earlier:
                            earlier.update(self._judges_of([last.run_id], known))
                        rp.judge_changes.update(self.judge.changes(earlier.get(last.run_id)))
                    elif rehash and _sha256_of(f.path) != last.sha256:
                        rp.content_changed += 1
                    else:
                        rp.skipped_unchanged += 1
                        rp.carry(f.path, last)
                        continue
                # A file named as a root is always checked (UNREADABLE if it is not DICOM), like verify does.
                if not explicit_file and not is_dicom_file(Path(f.path)) and not is_export_file(Path(f.path)):
                    rp.not_dicom += 1
                    continue
                rp.to_check.append(f)
            if incremental:
                rp.gone = sum(1 for path in known if path not in walked)
            plans.append(rp)
        return ScanPlan(roots=plans, walk=walk, incremental=incremental, judge=self.judge)

    def _judges_of(self, run_ids: list[int], known: dict[str, KnownFile]) -> dict[int, Judge | None]:
        """The judges of earlier runs, all of those ``known`` names fetched at once (on the first need)."""
        if self.state is None:  # pragma: no cover - plan() reads no state without a store
            return {}
        wanted = set(run_ids) | {s.run_id for s in known.values()}
        found = self.state.run_judges(wanted)
        return {run_id: Judge.from_dict(found.get(run_id)) for run_id in wanted}

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
            # A file with several images (a PDF) is remembered by its worst image, so that an incremental scan
            # that skips it carries the verdict that fails.
            worst: dict[str, FileResult] = {}
            for r in results:
                if r.path not in worst or r.verdict.action.severity > worst[r.path].verdict.action.severity:
                    worst[r.path] = r
            for i, r in enumerate(results):
                rp, f = files[r.path]
                if rp.run is None:  # pragma: no cover - plan() gives every root a run when there is a store
                    raise RuntimeError(f"no scan run for {rp.root}")
                judged = worst[r.path].verdict
                state = FileState(
                    size=f.size,
                    mtime_ns=f.mtime_ns,
                    sha256=r.file_sha256,
                    judge=self.judge.digest,
                    verdict=judged.status.value,
                    action=judged.action.value,
                )
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
        carried: Counter[str] = Counter()
        failed = problems = 0
        for rp in plan.roots:
            carried.update(rp.carried_counts())
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
                        "rejudged": rp.rejudged,
                        "judge_changes": dict(rp.judge_changes),
                        "content_changed": rp.content_changed,
                        "gone": rp.gone,
                        "carried_verdicts": _prefixed(rp.carried_counts(), "verdict:"),
                        "carried_actions": _prefixed(rp.carried_counts(), "action:"),
                        "still_failing": len(rp.carried_failing),
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
            carried_verdicts=_prefixed(carried, "verdict:"),
            carried_actions=_prefixed(carried, "action:"),
            still_failing=plan.carried_failing,
            rejudged=plan.rejudged,
            judge_changes=plan.judge_changes,
            content_changed=plan.content_changed,
            gone=sum(rp.gone for rp in plan.roots),
            judge=plan.judge.to_dict(),
        )


def _prefixed(counts: Counter[str], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): n for k, n in sorted(counts.items()) if k.startswith(prefix) and n}


def _sha256_of(path: str) -> str | None:
    """The SHA-256 of a file's content, or None when it cannot be read (it is then checked, and says why)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
