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
- With ``incremental``, a file whose size and mtime equal those recorded at its last scan, and which was judged by
  the same checks, trust store and revocations, site policy, watermark keys and detector model
  (:class:`verifier.judge.Judge`), is skipped unread; its last verdict still counts in the summary and the exit
  code (:meth:`ScanSummary.exit_code`).
- A scan resumes the unfinished run of the same root (after a crash or a kill) and skips what that run recorded,
  so every file ends up with exactly one record in the run (see :mod:`verifier.audit.scanstate`).
- Workers, local or on Dask, only check files; the driver alone writes the audit database.
"""

from verifier.scan.executors import DaskExecutor, Executor, LocalExecutor, TrustSpec, check_batch
from verifier.scan.scanner import Scanner, ScanPlan, ScanSummary
from verifier.scan.walk import ScanFile, WalkStats, walk_archive

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
