"""What ``medverify verify`` does, apart from parsing its options (typer's :func:`verifier.cli.signing.verify`, or
:mod:`verifier.cli._fast` for the plain forms): importing this module imports no typer."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from verifier import setup
from verifier.checker import default_workers
from verifier.cli import _common
from verifier.cli._results import FORMATS, exit_code, print_result
from verifier.instance import iter_input_files
from verifier.result import FileResult

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["verify"]


def verify(
    paths: Sequence[Path],
    *,
    output_format: str = "text",
    checks: str | None = None,
    trust: Sequence[Path] | None = None,
    follow_symlinks: bool = False,
    no_audit: bool = False,
    db: str | None = None,
    workers: int = 0,
    policy_file: Path | None = None,
    model: Path | None = None,
    heatmaps: Path | None = None,
) -> int:
    """Check ``paths``, print one result a file and return the exit code (see :func:`verifier.cli.signing.verify`)."""
    _common.check_format(output_format, FORMATS)
    settings = _common.settings()
    checker = setup.load_checker(
        settings, checks, trust=trust or (), policy_file=policy_file, model=model, heatmaps=heatmaps,
        notify=_common.note,
    )  # fmt: skip
    files = list(iter_input_files(paths, follow_symlinks=follow_symlinks, exports=True))
    log = None
    if not no_audit:
        from verifier.audit import Channel

        log = setup.open_audit_log(settings, db=db)
    results: list[FileResult] = []
    show_progress = output_format == "text" and len(files) > 20 and _common.err_console.is_terminal
    progress = _progress() if show_progress else None  # rich.progress is imported only to show one
    with progress or contextlib.nullcontext():
        task = progress.add_task("verifying", total=len(files)) if progress is not None else None
        n_workers = workers or default_workers(len(files))
        for result in checker.check_all(files, workers=n_workers):
            if log is not None:
                result = result.with_audit_id(log.append(result.audit_entry(channel=Channel.CLI)).id)
            results.append(result)
            if output_format == "jsonl":
                sys.stdout.write(json.dumps(result.to_dict()) + "\n")
                sys.stdout.flush()
            elif output_format == "text":
                print_result(result)
            if progress is not None and task is not None:
                progress.advance(task)
    if output_format == "json":
        sys.stdout.write(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    if output_format == "text" and len(results) > 1:
        found = sum(r.problem_found for r in results)
        failed = sum(r.failed for r in results)
        _common.err_console.print(
            f"{len(results)} image(s) checked: {found} not accepted, {failed} unreadable", highlight=False
        )
    return exit_code(results)


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_common.err_console,
        transient=True,
    )
