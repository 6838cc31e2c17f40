"""Archive scans: find the DICOM files under roots, check them on local processes or a Dask cluster, record them.

A scan has three steps, usable from the CLI and from other programs alike::

    scanner = Scanner(checker, state=ScanStateStore(log))
    plan = scanner.plan([Path("/archive")], incremental=True)
    for result in scanner.execute(plan, LocalExecutor(workers=2)):
        ...  # recorded already: result.audit_id is set
    summary = scanner.finish(plan)

- Files are found by content (the ``DICM`` magic after the preamble), not by name. Symlinks are not followed
  unless asked (and never out of a root's tree then either: a link whose target lies outside is skipped).
  Unreadable directories are skipped with a warning. No path is ever built from a UID inside a file.
- With ``incremental``, a file whose size and mtime equal those recorded at its last scan is skipped unread.
- A scan resumes the unfinished run of the same root (after a crash or a kill) and skips what that run recorded,
  so every file ends up with exactly one record in the run (see :mod:`verifier.audit.scanstate`).
- Workers, local or on Dask, only check files; the driver alone writes the audit database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provenance.trust import TrustPolicy
from provenance.watermark import WatermarkKey
from verifier.checker import Check, Checker
from verifier.detection import DetectorSetup
from verifier.errors import InputError
from verifier.instance import is_dicom_file
from verifier.policy import Policy
from verifier.result import FileResult

if TYPE_CHECKING:
    from verifier.audit.scanstate import FileState, ScanRun, ScanStateStore

__all__ = [
    "DaskExecutor",
    "Executor",
    "LocalExecutor",
    "ScanFile",
    "ScanPlan",
    "ScanSummary",
    "Scanner",
    "TrustSpec",
    "WalkStats",
    "check_batch",
    "walk_archive",
]

Warn = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- finding files


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


# ------------------------------------------------------------------------------------ the trust policy, portable


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrustSpec:
    """A trust policy as plain, picklable data (anchor certificates in PEM and the revocation lists), for
    workers on other machines: they rebuild the :class:`TrustPolicy` and never see a key store."""

    anchors_pem: tuple[bytes, ...]
    revoked_serials: tuple[tuple[str, int], ...] = ()
    revoked_fingerprints: tuple[str, ...] = ()
    unsafe_trust_everything: bool = False

    @classmethod
    def from_policy(cls, policy: TrustPolicy) -> TrustSpec:
        # TrustPolicy exposes no accessor for its revocation lists yet; read them where it keeps them.
        serials: Iterable[tuple[str, int]] = policy.revoked_serials
        fingerprints: Iterable[str] = policy.revoked_fingerprints
        return cls(
            anchors_pem=tuple(a.public_bytes(serialization.Encoding.PEM) for a in policy.anchors),
            revoked_serials=tuple(sorted((str(i), int(s)) for i, s in serials)),
            revoked_fingerprints=tuple(sorted(str(f) for f in fingerprints)),
            unsafe_trust_everything=policy.trusts_everything,
        )

    def to_policy(self) -> TrustPolicy:
        if self.unsafe_trust_everything:
            return TrustPolicy.unsafe_trust_everything()
        return TrustPolicy(
            anchors=[x509.load_pem_x509_certificate(pem) for pem in self.anchors_pem],
            revoked_serials=self.revoked_serials,
            revoked_fingerprints=self.revoked_fingerprints,
        )

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (*self.anchors_pem, repr(self.revoked_serials).encode(), repr(self.revoked_fingerprints).encode()):
            h.update(len(part).to_bytes(8, "big") + part)
        h.update(b"1" if self.unsafe_trust_everything else b"0")
        return h.hexdigest()


_WORKER_POLICIES: dict[str, TrustPolicy] = {}


def check_batch(
    paths: Sequence[str],
    checks: frozenset[Check],
    trust: TrustSpec,
    site_policy: Policy,
    watermark_keys: Sequence[WatermarkKey] = (),
    detector: DetectorSetup | None = None,
) -> list[FileResult]:
    """Check ``paths`` where this runs (a Dask worker): one result per path, never an exception per file.

    The worker's :class:`~verifier.checker.Checker` is rebuilt from the parts that travel (the trust policy as
    plain data, rebuilt once per worker and trust policy)."""
    key = trust.digest()
    policy = _WORKER_POLICIES.get(key)
    if policy is None:
        policy = _WORKER_POLICIES[key] = trust.to_policy()
    checker = Checker(
        checks=checks, trust=policy, site_policy=site_policy, watermark_keys=tuple(watermark_keys), detector=detector
    )
    return [checker.check(p) for p in paths]


# ------------------------------------------------------------------------------------------------- executors


class Executor(Protocol):
    """Runs the checks of a scan. Results may come in any order; each path gives exactly one."""

    description: str

    def map(self, paths: Sequence[str], checker: Checker) -> Iterator[FileResult]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Forked local worker processes (:meth:`verifier.checker.Checker.check_all`); ``workers=1`` checks
    in-process."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise InputError("--workers must be at least 1")
        self.workers = workers
        self.description = f"{workers} local process{'es' if workers > 1 else ''}"

    def map(self, paths: Sequence[str], checker: Checker) -> Iterator[FileResult]:
        return checker.check_all([Path(p) for p in paths], workers=self.workers)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Batches of files sent to a Dask distributed cluster at ``address``, or to a new local cluster (``local``:
    processes, ``workers`` of them with one thread each, no dashboard). The workers must see the files at the
    same paths (a shared file system) and have medverify installed."""

    def __init__(self, address: str, *, workers: int = 2, batch_size: int = 32) -> None:
        try:
            # Untyped library: used through Any.
            distributed: Any = importlib.import_module("distributed")
        except ModuleNotFoundError:
            raise InputError("--dask needs Dask distributed: pip install 'medverify[dask]'") from None
        self.batch_size = batch_size
        self._cluster: Any = None
        try:
            if address == "local":
                # No dashboard; the scheduler's HTTP server (health, metrics) would still take port 8787 and warn
                # when anything else holds it: an ephemeral loopback port instead.
                self._cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1",
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
                self._client: Any = distributed.Client(self._cluster)
            else:
                # Timeout: Dask's distributed.comm.timeouts.connect setting.
                self._client = distributed.Client(address)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise InputError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
        n = len(self._client.scheduler_info().get("workers", {}))
        self.description = f"Dask cluster {self._client.scheduler.address} ({n} worker{'s' if n != 1 else ''})"

    def map(self, paths: Sequence[str], checker: Checker) -> Iterator[FileResult]:
        distributed: Any = importlib.import_module("distributed")
        watermark_keys = checker.watermark_keys
        if watermark_keys and self._cluster is None and not self._client.scheduler.address.startswith("tls://"):
            # Watermark keys are secrets: they may travel only to a local cluster or over TLS.
            raise InputError(
                "the watermark check sends the secret watermark keys to the Dask workers: use --dask local or a "
                "tls:// scheduler address, or leave watermark out of --checks"
            )
        spec = TrustSpec.from_policy(checker.trust)
        [spec_future] = self._client.scatter([spec], broadcast=True)
        keys_future = None
        if watermark_keys:
            [keys_future] = self._client.scatter([tuple(watermark_keys)], broadcast=True)
        batches = [list(paths[i : i + self.batch_size]) for i in range(0, len(paths), self.batch_size)]
        limit = max(4, 4 * max(1, len(self._client.scheduler_info().get("workers", {}))))
        pending = iter(batches)
        queue = distributed.as_completed()

        def submit_next() -> bool:
            batch = next(pending, None)
            if batch is None:
                return False
            queue.add(
                self._client.submit(
                    check_batch, batch, checker.checks, spec_future, checker.site_policy, keys_future or (),
                    checker.detector, pure=False,
                )
            )
            return True

        for _ in range(limit):
            if not submit_next():
                break
        for future in queue:
            results: list[FileResult] = future.result()
            future.release()
            submit_next()
            yield from results

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()


# ------------------------------------------------------------------------------------------------- the scan


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
                if not explicit_file and not is_dicom_file(Path(f.path)):
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
                state = FileState(size=f.size, mtime_ns=f.mtime_ns, sha256=r.sha256)
                entry = r.audit_entry(
                    channel=Channel.SCAN, event="scan", details={"scan": self.state.scan_details(rp.run, state)}
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
