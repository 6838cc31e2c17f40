"""``medverify corpus``: build corpora of real images (split by patient) for the generators and detectors."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from detectors.data import DEFAULT_FRACTIONS, BuildReport, build_corpus, build_sample_corpus
from verifier.cli import _common, app
from verifier.errors import InputError

__all__ = ["corpus_app", "default_sample_dir"]

corpus_app = typer.Typer(
    help=(
        "Corpora of real images for the generators and detectors: content-addressed copies plus a manifest, "
        "split into train/val/test by patient (else study, else file), so no image leaks between splits."
    ),
    no_args_is_help=True,
)
app.add_typer(corpus_app, name="corpus", help="Build corpora of real images (DICOM, NIfTI, PNG) split by patient.")


class Mode(enum.StrEnum):
    COPY = "copy"
    LINK = "link"
    SYMLINK = "symlink"


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


def default_sample_dir() -> Path:
    """Where ``corpus sample`` writes without ``--out``: ``<cache_dir>/corpora/sample``."""
    return _common.settings().cache_dir / "corpora" / "sample"


def _parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise InputError(f"--fractions {text!r}: expected three numbers such as 0.7,0.15,0.15") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise InputError(f"--fractions {text!r}: expected three non-negative numbers summing to 1")
    return parts


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_common.err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def _report(report: BuildReport, output: OutputFormat) -> None:
    corpus = report.corpus
    rows = corpus.summary()
    if output is OutputFormat.JSON:
        _common.console.print_json(json.dumps({
            "corpus": str(corpus.root),
            "scanned": report.scanned,
            "added": report.added,
            "skipped": report.skipped,
            "images": len(corpus.entries),
            "summary": [{"modality": m, "split": s, "images": i, "frames": f} for m, s, i, f in rows],
        }))
        return
    table = Table(title=f"corpus {corpus.root}", box=box.SIMPLE_HEAD)
    table.add_column("modality")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("frames", justify="right")
    for modality, split, images, frames in rows:
        table.add_row(modality, split, str(images), str(frames))
    table.add_row("[bold]all", "", f"[bold]{sum(r[2] for r in rows)}", f"[bold]{sum(r[3] for r in rows)}")
    _common.console.print(table)
    skipped = ", ".join(f"{count} {reason}" for reason, count in report.skipped.items()) or "none"
    _common.console.print(f"scanned {report.scanned} files, added {report.added}, skipped: {skipped}",
                          highlight=False)


@corpus_app.command("build")
def build_command(
    from_paths: Annotated[list[Path], typer.Option("--from", help="File or folder to index (repeatable).")],
    out: Annotated[Path, typer.Option("--out", help="Corpus directory (created, or extended if it exists).")],
    mode: Annotated[Mode, typer.Option(help="Copy the files, hard-link them, or symlink them.")] = Mode.COPY,
    seed: Annotated[int, typer.Option(help="Seed of the split by source.")] = 0,
    fractions: Annotated[str, typer.Option(help="train,val,test fractions of sources.")] = ",".join(
        str(f) for f in DEFAULT_FRACTIONS
    ),
    modality: Annotated[
        str | None, typer.Option(help="Modality of NIfTI/PNG/JPEG files, which carry none (default OT).")
    ] = None,
    slice_step: Annotated[int, typer.Option(min=1, help="NIfTI: every k-th axial slice with content.")] = 1,
    max_frames: Annotated[
        int | None, typer.Option(min=1, help="DICOM multi-frame: at most this many frames, evenly spaced.")
    ] = None,
    min_size: Annotated[int, typer.Option(min=1, help="Skip images smaller than this (pixels, either side).")] = 64,
    with_samples: Annotated[bool, typer.Option(
        "--with-samples", help="Also add the images that ship in installed packages (as `corpus sample`).")] = False,
    output: Annotated[OutputFormat, typer.Option("--format", help="Summary as a table or JSON.")] = (
        OutputFormat.TABLE
    ),
) -> None:
    """Index real images (DICOM trees found by content, NIfTI, PNG, JPEG) into a corpus with a manifest.

    Images are grouped by patient and study (a manifest.csv beside them, DICOM PatientID and StudyInstanceUID)
    and whole groups go to one split. The shipped detector's corpus:
    `medverify corpus build --from ../shared/corpora/real --with-samples --fractions 0.6,0.2,0.2 --mode symlink
    --out CORPUS`."""
    for path in from_paths:
        if not path.exists():
            raise InputError(f"--from {path}: no such file or directory")
    _check_out(out)
    split_fractions = _parse_fractions(fractions)
    if with_samples:
        with _progress("package images") as update:
            build_sample_corpus(out, mode=mode.value, seed=seed, fractions=split_fractions, progress=update)
    with _progress("indexing") as update:
        report = build_corpus(
            from_paths,
            out,
            mode=mode.value,
            seed=seed,
            fractions=split_fractions,
            min_size=min_size,
            modality=modality,
            slice_step=slice_step,
            max_frames=max_frames,
            progress=update,
        )
    _report(report, output)


@corpus_app.command("sample")
def sample_command(
    out: Annotated[
        Path | None, typer.Option("--out", help="Corpus directory (default: <cache_dir>/corpora/sample).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split by source.")] = 0,
    output: Annotated[OutputFormat, typer.Option("--format", help="Summary as a table or JSON.")] = (
        OutputFormat.TABLE
    ),
) -> None:
    """Build the sample corpus from images that ship in installed packages; nothing is downloaded."""
    target = out if out is not None else default_sample_dir()
    _check_out(target)
    with _progress("sample corpus") as update:
        report = build_sample_corpus(target, seed=seed, progress=update)
    _report(report, output)
