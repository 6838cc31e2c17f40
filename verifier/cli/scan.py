"""``medverify scan``: incremental, resumable scans of whole archives, on local processes or a Dask cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from verifier import setup
from verifier.checker import default_workers
from verifier.cli import _common, app
from verifier.cli._options import ChecksOption, DbOption, PolicyOption, TrustOption, check_format
from verifier.cli._results import FORMATS, print_result
from verifier.errors import InputError
from verifier.policy import Action
from verifier.scan import DaskExecutor, Executor, LocalExecutor, Scanner, ScanPlan, ScanSummary
from verifier.scan.scanner import CarriedFile

__all__ = ["scan"]


class _RateColumn(ProgressColumn):
    """Files per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("  -- files/s" if speed is None else f"{speed:7.1f} files/s", style="progress.data.speed")


@app.command(help="Scan archives for DICOM files and image exports (found by content) and check them; incremental and "
                  "resumable.")
def scan(
    paths: Annotated[list[Path], typer.Argument(help="Archive roots (directories), or single files.")],
    output_format: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="Output: text (files not accepted), json (one array) or jsonl (one line a file)."
        ),
    ] = "text",
    checks: ChecksOption = None,
    trust: TrustOption = None,
    no_audit: Annotated[
        bool, typer.Option("--no-audit", help="Write no audit records and no scan state (no --incremental).")
    ] = False,
    db: DbOption = None,
    workers: Annotated[
        int,
        typer.Option("--workers", "-j", min=0, help="Local worker processes, or Dask local workers (0: automatic)."),
    ] = 0,
    dask: Annotated[
        str | None,
        typer.Option("--dask", help="Check on a Dask cluster: scheduler address (tcp://host:port) or 'local'."),
    ] = None,
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental",
            help="Skip files unchanged (size, mtime) since their last check by the same checks, trust store, "
            "revocations, site policy and detector model; their last verdicts still count.",
        ),
    ] = False,
    rehash: Annotated[
        bool,
        typer.Option(
            "--rehash", help="With --incremental: read unchanged files and check them again if their SHA-256 differs."
        ),
    ] = False,
    new_only: Annotated[
        bool,
        typer.Option(
            "--new-only",
            help="Exit code and summary from the files checked now only, not those skipped as unchanged.",
        ),
    ] = False,
    follow_symlinks: Annotated[bool, typer.Option(help="Follow symlinks that stay inside the scanned tree.")] = False,
    policy_file: PolicyOption = None,
) -> int:
    """Scan archives. Exit code 0: nothing found; 1: a file is not accepted; 2: an error stopped a check.

    The exit code covers every file under the roots: those checked now and those an incremental scan skipped
    whose last verdict still stands (``--new-only``: those checked now only). Every checked file leaves one audit
    record (channel ``scan``) before its line is printed. A scan that was killed resumes when started again on the
    same root, and records no file twice.
    """
    check_format(output_format, FORMATS)
    settings = _common.settings()
    checker = setup.load_checker(
        settings, checks, trust=trust or (), policy_file=policy_file, notify=_common.note
    )
    state = None
    if not no_audit:
        from verifier.audit.scanstate import ScanStateStore

        state = ScanStateStore(setup.open_audit_log(settings, db=db))
    elif incremental:
        raise InputError("--incremental needs the audit database; it cannot be combined with --no-audit")

    err = _common.err_console
    scanner = Scanner(
        checker,
        state=state,
        follow_symlinks=follow_symlinks,
        warn=lambda message: err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False),
    )
    with err.status("finding DICOM files", spinner="dots") if err.is_terminal else _nothing():
        plan = scanner.plan(paths, incremental=incremental, rehash=rehash)
    _announce(plan)

    executor: Executor
    if dask is not None:
        executor = DaskExecutor(dask, workers=workers or 2)
    else:
        executor = LocalExecutor(workers or default_workers(plan.to_check))
    err.print(f"checking on {escape(executor.description)}", highlight=False)
    collected: list[dict[str, object]] = []
    try:
        with _progress(err.is_terminal) as progress:
            task = progress.add_task(f"scanning ({executor.description})", total=plan.to_check)
            for result in scanner.execute(plan, executor):
                if output_format == "jsonl":
                    sys.stdout.write(json.dumps(_line(result.to_dict())) + "\n")
                    sys.stdout.flush()
                elif output_format == "json":
                    collected.append(_line(result.to_dict()))
                elif result.verdict.action is not Action.ACCEPT or result.failed:
                    print_result(result)
                progress.advance(task)
    finally:
        executor.close()
    summary = scanner.finish(plan)
    carried = [] if new_only else summary.still_failing
    if output_format == "jsonl":
        for f in carried:
            sys.stdout.write(json.dumps(f.to_dict()) + "\n")
    elif output_format == "json":
        collected.extend(f.to_dict() for f in carried)
        sys.stdout.write(json.dumps(collected, indent=2) + "\n")
    elif carried:
        _print_carried(carried)
    _print_summary(summary, executor.description, new_only=new_only)
    return summary.exit_code(new_only=new_only)


def _line(d: dict[str, object]) -> dict[str, object]:
    """A JSONL line: the checker's result, null-safe where a report has not run (watermark, detectors)."""
    d["checked"] = True
    d.setdefault("watermark", None)
    d.setdefault("synthetic_score", None)
    d.setdefault("tamper_score", None)
    return d


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


def _announce(plan: ScanPlan) -> None:
    err = _common.err_console
    for run_id in plan.resumed_runs:
        err.print(f"resuming unfinished scan run #{run_id}", highlight=False)
    parts = [f"{plan.to_check} file(s) to check"]
    if plan.rejudged:
        why = ", ".join(plan.judge_changes) or "what judges them"
        parts[0] += f" ({plan.rejudged} unchanged, checked again: {why} changed)"
    if plan.content_changed:
        parts[0] += f" ({plan.content_changed} with the same size and mtime but new content)"
    if plan.skipped_done:
        parts.append(f"{plan.skipped_done} already recorded by the resumed run")
    if plan.incremental:
        parts.append(f"{plan.skipped_unchanged} unchanged since the last scan (skipped)")
    err.print(", ".join(parts), highlight=False)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=_common.err_console,
        disable=not enabled,
        transient=True,
    )


def _print_carried(carried: list[CarriedFile]) -> None:
    """The files an incremental scan did not check whose last verdict still fails."""
    console = _common.console
    console.print(f"still not accepted, unchanged since their last check ({len(carried)}):", highlight=False)
    for f in carried:
        record = f" (audit record {f.audit_id})" if f.audit_id is not None else ""
        console.print(
            f"{f.verdict or '?':<19} {f.action or '?':<10} {escape(f.path)}{record}", highlight=False, soft_wrap=True
        )


def _print_summary(summary: ScanSummary, where: str, *, new_only: bool = False) -> None:
    table = Table(title="scan summary", show_header=True, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("files", justify="right")
    for verdict, n in summary.verdicts.items():
        table.add_row(f"verdict {verdict}", str(n))
    for action, n in summary.actions.items():
        table.add_row(f"action {action}", str(n))
    table.add_row("checked", str(summary.checked), end_section=True)
    table.add_row("skipped: unchanged", str(summary.skipped_unchanged))
    table.add_row("skipped: recorded by the resumed run", str(summary.skipped_done))
    table.add_row("skipped: not DICOM", str(summary.not_dicom))
    table.add_row("skipped: symlinks", str(summary.walk.symlinks_skipped))
    table.add_row("skipped: unreadable directories", str(summary.walk.unreadable_directories))
    extra: list[tuple[str, str]] = []
    if summary.rejudged:
        changed = ", ".join(summary.judge_changes)
        extra.append(("unchanged, checked again", f"{summary.rejudged} ({escape(changed)} changed)"))
    if summary.content_changed:
        extra.append(("checked again: new content", str(summary.content_changed)))
    if summary.skipped_unchanged or summary.skipped_done:
        extra += [(f"not checked: verdict {v}", str(n)) for v, n in summary.carried_verdicts.items()]
        scope = "--new-only: checked now" if new_only else "checked + not checked"
        extra.append((f"not accepted ({scope})", str(summary.problems if new_only else summary.current_problems)))
        extra.append((f"unreadable ({scope})", str(summary.failed if new_only else summary.current_failed)))
    if summary.gone:
        extra.append(("gone since the last scan", str(summary.gone)))
    table.add_row("unreadable files", str(summary.failed), end_section=not extra)
    for i, (label, value) in enumerate(extra):
        table.add_row(label, value, end_section=i == len(extra) - 1)
    table.add_row("time", f"{summary.seconds:.1f} s")
    table.add_row("rate", f"{summary.files_per_second:.1f} files/s")
    table.add_row("on", escape(where))
    if summary.run_ids:
        table.add_row("scan runs", ", ".join(f"#{i}" for i in summary.run_ids))
    _common.err_console.print(table)
