"""``medverify train``: train the in-house generators on a corpus and write a verified checkpoint."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from verifier.cli import _common, app
from verifier.errors import InputError

if TYPE_CHECKING:
    from detectors.generators import TrainProgress

__all__ = ["DEFAULT_THREADS", "train_app"]

#: Default torch thread count: training shares small machines, so it never takes more than two cores unasked.
DEFAULT_THREADS = max(1, min(2, os.cpu_count() or 1))

train_app = typer.Typer(
    help="Train the in-house generators (vae, gan, diffusion, tamper) on a corpus; checkpoints are "
    "safetensors weights plus a JSON record with their SHA-256 digest.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train", help="Train the in-house generators on a corpus.")


def _format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in losses.items())


@train_app.command("generator")
def train_generator(
    name: Annotated[str, typer.Argument(help="Generator name: see `medverify train list`.")],
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus directory (with manifest.json).")],
    config: Annotated[str, typer.Option("--config", help="Preset: tiny, small (CPU, < 30 min) or large.")] = "small",
    steps: Annotated[int | None, typer.Option("--steps", min=0, help="Training steps (default: the preset's).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Checkpoint directory [default: checkpoints/NAME].")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights and of training.")] = 0,
    split: Annotated[str, typer.Option("--split", help="Corpus split to train on (train, val, test, all).")] = "train",
    max_frames: Annotated[int | None, typer.Option("--max-frames", min=1, help="Use at most N frames.")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Torch CPU threads.")] = DEFAULT_THREADS,
) -> None:
    """Train generator NAME on random patches of a corpus's normalised frames and save a checkpoint."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool
    import torch

    from detectors.errors import DetectorsError
    from detectors.generators import create_generator
    from detectors.generators.data import corpus_frames

    torch.set_num_threads(threads)
    if split not in ("train", "val", "test", "all"):
        raise InputError(f"--split must be train, val, test or all, not {split!r}")
    if not corpus.is_dir():
        raise InputError(f"--corpus {corpus}: not a directory")
    destination = out if out is not None else Path("checkpoints") / name
    try:
        generator = create_generator(name, config=config, seed=seed)
        frames, description = corpus_frames(
            corpus,
            split=None if split == "all" else split,  # type: ignore[arg-type]
            max_frames=max_frames,
        )
        total = generator.config.steps if steps is None else steps
        _common.console.print(
            f"training [bold]{escape(name)}[/] ({escape(config)}, {generator.parameter_count:,} parameters, "
            f"{generator.config.image_size}px patches) on {len(frames)} frames of {description['sources']} "
            f"sources for {total} steps, {threads} thread(s)",
            highlight=False,
        )
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=_common.console,
            transient=False,
        ) as progress:
            task = progress.add_task(name, total=total, stats="")
            next_line = [0.0]

            def report(p: TrainProgress) -> None:
                stats = f"{_format_losses(dict(p.losses))}  {p.steps_per_s:.2f} steps/s"
                progress.update(task, completed=p.step, stats=stats)
                if not _common.console.is_terminal and (p.step >= next_line[0] or p.step == p.total_steps):
                    next_line[0] = p.step + max(1, p.total_steps // 10)
                    progress.console.print(f"step {p.step}/{p.total_steps} {stats} eta {p.eta_s:.0f}s", highlight=False)

            every = max(1, min(50, total // 100 or 1))
            start = time.perf_counter()
            result = generator.fit(
                frames, steps=total, seed=seed, progress=report, progress_every=every, data_description=description
            )
        info = generator.save(destination)
    except DetectorsError as exc:
        raise InputError(exc.diagnostics()) from exc
    _common.console.print(
        f"saved {escape(str(destination))}: sha256 {info.digest}\n"
        f"{result.steps} steps in {time.perf_counter() - start:.0f}s, final {_format_losses(dict(result.metrics))}",
        highlight=False,
    )


@train_app.command("list")
def list_cmd() -> None:
    """List the registered generators, how they make paired fakes, and their presets."""
    from detectors.generators import PRESET_NAMES, generator_class, list_generators

    for name in list_generators():
        cls = generator_class(name)
        presets = ", ".join(
            f"{p} ({cls.config_class.preset(p).steps} steps)" for p in PRESET_NAMES if p in cls.config_class.PRESETS
        )
        _common.console.print(f"[bold]{name}[/]: {escape(cls.paired_method)}\n  presets: {presets}", highlight=False)
