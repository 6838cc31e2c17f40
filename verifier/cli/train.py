"""``medverify train``: train the in-house generators (and the detectors) on a corpus; write verified checkpoints."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
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
    device: Annotated[str, typer.Option("--device", help="Torch device to train on (cpu, cuda, cuda:1).")] = "cpu",
    minutes: Annotated[
        float | None, typer.Option("--minutes", min=0.01, help="Stop after this much training time.")
    ] = None,
    sampling_only: Annotated[
        bool, typer.Option("--sampling-only", help="Save only the weights sampling uses (e.g. EMA): half the size.")
    ] = False,
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
    try:
        target = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"--device {device!r}: {exc}") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here")
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
            f"sources for {total} steps{f' or {minutes:g} min' if minutes else ''}, {threads} thread(s) on {target}",
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
                frames,
                steps=total,
                seed=seed,
                progress=report,
                progress_every=every,
                data_description=description,
                device=target,
                time_limit_s=None if minutes is None else minutes * 60,
            )
        info = generator.save(destination, sampling_only=sampling_only)
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


@train_app.command("detector")
def train_detector_cmd(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus directory (with manifest.json).")],
    generators: Annotated[
        str, typer.Option("--generators", help="Generator families that make the fakes (comma-separated).")
    ] = "vae,gan,diffusion,tamper",
    arch: Annotated[str, typer.Option("--arch", help="Detector: ensemble, cnn, classical or segment.")] = "ensemble",
    preset: Annotated[str, typer.Option("--preset", help="tiny (tests) or small (the shipped bundle).")] = "small",
    steps: Annotated[int, typer.Option("--steps", min=1,
                                       help="Training steps of the CNN and segmentation members.")] = 1200,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Patches per step (half real).")] = 32,
    view_size: Annotated[int, typer.Option("--view-size", min=32, help="Side of the crops taken from frames.")] = 128,
    out: Annotated[Path, typer.Option("--out", help="Bundle directory.")] = Path("checkpoints/detector"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of views, weights, batches.")] = 0,
    target_fpr: Annotated[float, typer.Option("--target-fpr", help="False-positive rate of the threshold.")] = 0.01,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Torch CPU threads.")] = DEFAULT_THREADS,
    cross_fit: Annotated[int, typer.Option(
        "--cross-fit", min=0,
        help="Calibrate on out-of-fold scores of K folds of whole sources and train the final model on all of "
        "them (K+1 trainings); 0: train on three quarters of the sources, calibrate on the other quarter.")] = 0,
    fixed_weights: Annotated[bool, typer.Option(
        "--fixed-weights",
        help="With --cross-fit: keep the preset's ensemble weights instead of fitting the synthetic head's on "
        "the out-of-fold scores of its members.")] = False,
    min_member_gain: Annotated[float | None, typer.Option(
        "--min-member-gain", min=0.0, max=1.0,
        help="With --cross-fit: drop (and never run) an ensemble member that adds less than this to the stacked "
        "out-of-fold AUC of the synthetic head (default 0.005; 0 keeps every member with a positive weight).")] = None,
    sampling: Annotated[str, typer.Option(
        "--sampling",
        help="How training draws a fake of a family: 'view' (a view uniformly: a source with many frames weighs "
        "more) or 'source' (a source image uniformly, then one of its views: every source weighs the same).")]
    = "view",
) -> None:
    """Build real/fake views with the in-house generators from the corpus's train split, train a detector on
    three quarters of its sources, calibrate it and choose its thresholds on the other quarter (whole sources
    held out), and write a bundle. With --cross-fit K, the detector is trained on every source instead and
    calibrated on out-of-fold scores: each source's views scored by one of K models that did not see it. The val
    and test splits stay untouched for `medverify evaluate`."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from detectors.errors import DetectorsError
    from detectors.models import create_detector, save_bundle
    from detectors.models.training import (
        DEFAULT_MIN_MEMBER_GAIN,
        SAMPLING,
        cross_fit_detector,
        train_detector,
    )
    from detectors.models.views import View, build_views, split_calibration

    torch.set_num_threads(threads)
    families = [f.strip() for f in generators.split(",") if f.strip()]
    if not corpus.is_dir():
        raise InputError(f"--corpus {corpus}: not a directory")
    if not 0 < target_fpr < 1:
        raise InputError("--target-fpr must be between 0 and 1")
    if cross_fit == 1:
        raise InputError("--cross-fit needs at least 2 folds (0 turns it off)")
    if sampling not in SAMPLING:
        raise InputError(f"--sampling must be one of {', '.join(SAMPLING)}, not {sampling!r}")
    start = time.perf_counter()
    try:
        detector = create_detector(arch, preset=preset, seed=seed, target_fpr=target_fpr)
        with _bar() as progress:
            task = progress.add_task("fakes", total=None, stats="")

            def on_view(done: int, total: int, family: str) -> None:
                progress.update(task, completed=done, total=total, stats=family)

            views, description = build_views(
                corpus, families=families, splits=("train",), view_size=view_size, seed=seed, progress=on_view
            )
        if cross_fit:
            fit, calib = list(views), list[View]()
            _common.console.print(
                f"views of the train split: {sum(v.is_real for v in fit)} real / "
                f"{len(fit) - sum(v.is_real for v in fit)} fake, in {cross_fit} folds of whole sources for "
                f"out-of-fold calibration; {time.perf_counter() - start:.0f}s",
                highlight=False,
            )
        else:
            fit, calib = split_calibration(views, seed=seed)
            _common.console.print(
                f"views of the train split: {sum(v.is_real for v in fit)} real / "
                f"{len(fit) - sum(v.is_real for v in fit)} fake for fitting, {sum(v.is_real for v in calib)} real / "
                f"{len(calib) - sum(v.is_real for v in calib)} fake of other sources for calibration; "
                f"{time.perf_counter() - start:.0f}s",
                highlight=False,
            )
        _common.console.print(
            f"training [bold]{escape(arch)}[/] ({escape(preset)}, {detector.parameter_count:,} parameters, "
            f"{detector.config.patch_size}px patches) for {steps} steps, batch {batch_size}, {threads} thread(s)",
            highlight=False,
        )
        with _bar() as progress:
            task = progress.add_task("fit", total=steps, stats="")
            stage = [""]
            next_line = [0]
            fit_start = [time.perf_counter()]
            member = [""]

            def report(step: int, total: int, metrics: Mapping[str, float]) -> None:
                stats = " ".join(f"{k} {v:.3f}" for k, v in metrics.items())
                progress.update(task, completed=step, total=total, stats=stats)
                # An ensemble trains its members one after the other: rate and eta start again with each.
                name = next(iter(metrics), "").partition(".")[0]
                if name != member[0]:  # timed from this member's first step on
                    member[0], next_line[0], fit_start[0] = name, step + max(1, total // 10), time.perf_counter()
                    if not _common.console.is_terminal:
                        progress.console.print(f"{stage[0]}step {step}/{total} {stats}", highlight=False)
                elif not _common.console.is_terminal and (step >= next_line[0] or step == total):
                    next_line[0] = step + max(1, total // 10)
                    elapsed, done = time.perf_counter() - fit_start[0], step - 1
                    eta = elapsed / max(done, 1) * (total - step)
                    progress.console.print(f"{stage[0]}step {step}/{total} {stats} "
                                           f"{done / max(elapsed, 1e-9):.2f} steps/s eta {eta:.0f}s", highlight=False)

            def on_stage(name: str) -> None:
                stage[0], member[0] = f"{name}: ", ""
                progress.update(task, description=name, completed=0)

            if cross_fit:
                detector, record = cross_fit_detector(
                    lambda: create_detector(arch, preset=preset, seed=seed, target_fpr=target_fpr), fit,
                    folds=cross_fit, steps=steps, batch_size=batch_size, seed=seed, progress=report,
                    on_stage=on_stage, data=description, stack=not fixed_weights,
                    min_member_gain=DEFAULT_MIN_MEMBER_GAIN if min_member_gain is None else min_member_gain,
                    sampling=sampling)
            else:
                record = train_detector(
                    detector, fit, calib, steps=steps, batch_size=batch_size, seed=seed, progress=report,
                    data=description, sampling=sampling)
        info = save_bundle(detector, out)
    except (DetectorsError, ValueError) as exc:
        message = exc.diagnostics() if isinstance(exc, DetectorsError) else str(exc)
        raise InputError(message) from exc
    cfg = detector.config
    calibrated = record["calibration"]
    where = (f"out-of-fold scores ({cross_fit} folds)" if cross_fit else "other sources")
    gate = ", ".join(f"{head} AUC {value}" for head, value in calibrated["auc"].items())
    off = f"; below AUC {calibrated['min_auc']}, never flags: {', '.join(calibrated['disabled'])}" \
        if calibrated["disabled"] else ""
    stacked = calibrated.get("stacking")
    if stacked:
        weights = stacked["weights"] or {}
        where += "; synthetic weights fitted on them: " + ", ".join(
            f"{name} {weights.get(name, 0.0):.2f} (alone AUC {value})" for name, value in stacked["member_auc"].items())
        for name, why in (stacked.get("dropped") or {}).items():
            where += f"; {name} dropped, not run: {why}"
    _common.console.print(
        f"saved {escape(str(out))}: {cfg.tag} (sha256 {info['digest']})\n"
        f"calibrated on {calibrated['real']} real / {calibrated['synthetic']} synthetic / "
        f"{calibrated['tampered']} tampered views, {where}: {gate}{off}; threshold {cfg.threshold:.4f}, "
        f"tamper threshold {cfg.tamper_threshold:.4f} (target FPR {cfg.target_fpr:.0%}); "
        f"{time.perf_counter() - start:.0f}s in all",
        highlight=False,
    )


def _bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
        console=_common.console,
        transient=False,
    )
