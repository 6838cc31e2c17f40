"""``medverify train``: train the in-house generators (and the detectors) on a corpus; write verified checkpoints."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
#: The families of fakes a detector learns from by default (detectors.models.recipe.Recipe's; not imported here,
#: so that the CLI starts without torch).
FAMILIES = ("vae", "gan", "sr", "diffusion", "inject", "remove", "copymove")

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
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue training this checkpoint (its config; --config ignored).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", metavar="FIELD=VALUE", help="Override a preset field (repeatable).")
    ] = None,
    whole: Annotated[
        float, typer.Option("--whole", min=0.0, max=1.0,
                            help="Share of training crops that are whole frames shrunk to the patch size (anatomy "
                                 "layout for unconditional samples); the rest are native-resolution crops.")
    ] = 0.0,
) -> None:
    """Train generator NAME on random patches of a corpus's normalised frames and save a checkpoint."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool
    import torch

    from detectors.generators import PatchSampler
    from detectors.generators.data import corpus_frames

    torch.set_num_threads(threads)
    if split not in ("train", "val", "test", "all"):
        raise InputError(f"--split must be train, val, test or all, not {split!r}")
    if not corpus.is_dir():
        raise InputError(f"--corpus {corpus}: not a directory")
    target = _torch_device(device)
    destination = out if out is not None else Path("checkpoints") / name
    generator, config = _generator(name, config=config, seed=seed, resume=resume, overrides=overrides or [])
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
    start = time.perf_counter()
    with _bar() as progress:
        result = generator.fit(
            PatchSampler(frames, generator.config.image_size, whole_fraction=whole),
            steps=total,
            seed=seed,
            progress=_progress_report(progress, progress.add_task(name, total=total, stats="")),
            progress_every=max(1, min(50, total // 100 or 1)),
            data_description=description,
            device=target,
            time_limit_s=None if minutes is None else minutes * 60,
        )
    info = generator.save(destination, sampling_only=sampling_only)
    _common.console.print(
        f"saved {escape(str(destination))}: sha256 {info.digest}\n"
        f"{result.steps} steps in {time.perf_counter() - start:.0f}s, final {_format_losses(dict(result.metrics))}",
        highlight=False,
    )


def _torch_device(device: str) -> Any:
    """The ``--device`` as a torch device that is there to train on."""
    import torch

    try:
        target = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"--device {device!r}: {exc}") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here")
    return target


def _generator(name: str, *, config: str, seed: int, resume: Path | None, overrides: list[str]) -> tuple[Any, str]:
    """The generator to train (a preset with ``--set`` overrides, or a checkpoint to resume) and how it was made."""
    from detectors.generators import create_generator
    from detectors.generators.config import parse_overrides

    if resume is None:
        return create_generator(name, config=config, seed=seed, **parse_overrides(overrides)), config
    if overrides:
        raise InputError("--set changes a preset; a resumed checkpoint keeps its config")
    return create_generator(name, checkpoint=resume), f"resumed {resume}"


def _progress_report(progress: Progress, task: Any) -> Callable[[TrainProgress], None]:
    """Show a generator's training progress on the bar (off a terminal, :class:`_Progress` logs it as lines)."""

    def report(p: TrainProgress) -> None:
        stats = f"{_format_losses(dict(p.losses))}  {p.steps_per_s:.2f} steps/s, eta {p.eta_s:.0f}s"
        progress.update(task, completed=p.step, stats=stats)

    return report


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
    out: Annotated[Path, typer.Option("--out", help="Bundle directory.")] = Path("checkpoints/detector"),
    generators: Annotated[str, typer.Option(
        "--generators", help="Families of fakes to learn from (comma-separated; synthetic and tamper name their "
        "groups).")] = ",".join(FAMILIES),
    generator_checkpoints: Annotated[Path | None, typer.Option(
        "--generator-checkpoints", help="Folder of generator checkpoints (default: the shipped ones).")] = None,
    preset: Annotated[str, typer.Option("--preset", help="tiny (tests) or small (the shipped bundle).")] = "small",
    arch: Annotated[str, typer.Option("--arch", help="Detector (see the model card): ensemble or one member.")]
    = "ensemble",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps of the patch networks.")] = 400,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Patches per step (half real).")] = 32,
    view_size: Annotated[int, typer.Option("--view-size", min=32, help="Side of the crops taken from frames.")] = 256,
    cross_fit: Annotated[int, typer.Option(
        "--cross-fit", min=0, help="Calibrate on out-of-fold scores of K folds of whole patients and train the "
        "final model on all of them (K+1 trainings); 0: fit on three quarters, calibrate on the rest.")] = 3,
    fixed_weights: Annotated[bool, typer.Option(
        "--fixed-weights", help="With --cross-fit: keep the preset's member weights instead of stacking.")] = False,
    min_member_gain: Annotated[float, typer.Option(
        "--min-member-gain", min=0.0, max=1.0, help="With --cross-fit: drop (and never run) a member that adds "
        "less than this to a head's stacked out-of-fold AUC (0 keeps every member with a positive weight).")] = 0.005,
    target_fpr: Annotated[float, typer.Option("--target-fpr", help="False-positive rate of the thresholds.")] = 0.01,
    sampling: Annotated[str, typer.Option(
        "--sampling", help="Training draws a fake's view uniformly ('view') or a source first ('source').")] = "view",
    seed: Annotated[int, typer.Option("--seed", help="Seed of views, weights, batches.")] = 0,
    lossy: Annotated[float, typer.Option(
        "--lossy", min=0.0, max=1.0, help="Share of native real views that also get a lossy-stored (JPEG 2000) "
        "real twin.")] = 0.15,
    scarce_floor: Annotated[int, typer.Option(
        "--scarce-floor", min=0, help="A modality group with fewer real views than this gets 4 more real crops of "
        "each frame, without fakes (0: none).")] = 0,
    threshold_confidence: Annotated[float, typer.Option(
        "--threshold-confidence", min=0.0, max=0.999, help="0: a threshold lets --target-fpr of the calibration's "
        "real views through; above 0, it holds --target-fpr in that share of resamples of whole patients.")] = 0.9,
    members: Annotated[str, typer.Option(
        "--members", help="With --arch ensemble: its candidate members, comma-separated (default: the preset's: "
        "oneclass, physics, classical, cnn, segment).")] = "",
    threads: Annotated[int, typer.Option("--threads", min=1, help="Torch CPU threads.")] = DEFAULT_THREADS,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Folder that keeps the views and fakes made (default: the cache folder's views/).")] = None,
) -> None:
    """Make real/fake views of the corpus's train split with the in-house generators (aligned fakes of every
    family, native and 8-bit forms), train the detector and calibrate its thresholds on patients it did not see;
    write a bundle. The val and test splits stay untouched for `medverify evaluate`."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from detectors.models import save_bundle
    from detectors.models.recipe import Recipe, train_bundle, training_views

    torch.set_num_threads(threads)
    recipe = _recipe(Recipe, generators=generators, preset=preset, arch=arch, steps=steps, batch_size=batch_size,
                     view_size=view_size,
                     cross_fit=cross_fit, stack=not fixed_weights, min_member_gain=min_member_gain,
                     target_fpr=target_fpr, sampling=sampling, seed=seed, lossy=lossy, scarce_floor=scarce_floor,
                     threshold_confidence=threshold_confidence,
                     members=tuple(m.strip() for m in members.split(",") if m.strip()))
    if not corpus.is_dir():
        raise InputError(f"--corpus {corpus}: not a directory")
    start = time.perf_counter()
    with _detector_errors(), _bar() as progress:
        task = progress.add_task("fakes", total=None, stats="")
        views, description = training_views(
            corpus, recipe, checkpoints=generator_checkpoints, cache=cache or _common.settings().cache_dir / "views",
            progress=lambda done, total, family: progress.update(task, completed=done, total=total, stats=family))
        reals = sum(v.is_real for v in views)
        progress.console.print(f"views of the train split: {reals} real / {len(views) - reals} fake of "
                               f"{description['sources']} patients; {time.perf_counter() - start:.0f}s",
                               highlight=False)
        stage = progress.add_task("fit", total=recipe.steps, stats="")
        detector, record = train_bundle(
            views, recipe, data=description,
            progress=lambda step, total, metrics: progress.update(
                stage, completed=step, total=total, stats=" ".join(f"{k} {v:.3f}" for k, v in metrics.items())),
            on_stage=lambda name: progress.update(stage, description=name, completed=0))
        info = save_bundle(detector, out)
    _common.console.print(f"saved {escape(str(out))}: {detector.config.tag} (sha256 {info['digest']})\n"
                          f"{_calibration_summary(detector, record)}; {time.perf_counter() - start:.0f}s in all",
                          highlight=False)


def _recipe(cls: Any, *, generators: str, **values: Any) -> Any:
    """A :class:`~detectors.models.recipe.Recipe` from the options, refusing what it cannot take."""
    from detectors.models.fakes import FAMILIES as KNOWN
    from detectors.models.fakes import SYNTHETIC_FAMILIES, TAMPER_FAMILIES
    from detectors.models.training import SAMPLING

    # "synthetic" and "tamper" name their whole groups of families.
    groups = {"synthetic": SYNTHETIC_FAMILIES, "tamper": TAMPER_FAMILIES}
    named = [f.strip() for f in generators.split(",") if f.strip()]
    families = tuple(dict.fromkeys(g for f in named for g in groups.get(f, (f,))))
    unknown = [f for f in families if f not in KNOWN]
    if not families or unknown:
        raise InputError(f"--generators: unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                         f"choose from {', '.join(KNOWN)} (or synthetic, tamper for their groups)")
    if values["cross_fit"] == 1:
        raise InputError("--cross-fit needs at least 2 folds (0 turns it off)")
    if not 0 < values["target_fpr"] < 1:
        raise InputError("--target-fpr must be between 0 and 1")
    from detectors.models import list_detectors

    unknown_members = [m for m in values.get("members", ()) if m not in list_detectors() or m == "ensemble"]
    if unknown_members:
        raise InputError(f"--members: unknown member {', '.join(unknown_members)}; choose from "
                         f"{', '.join(d for d in list_detectors() if d != 'ensemble')}")
    if values["sampling"] not in SAMPLING:
        raise InputError(f"--sampling must be one of {', '.join(SAMPLING)}, not {values['sampling']!r}")
    return cls(families=families, **values)


@contextlib.contextmanager
def _detector_errors() -> Iterator[None]:
    """The detectors package's errors (and bad arguments it refuses) as the CLI's input errors."""
    from detectors.errors import DetectorsError

    try:
        yield
    except (DetectorsError, ValueError) as exc:
        raise InputError(exc.diagnostics() if isinstance(exc, DetectorsError) else str(exc)) from exc


def _calibration_summary(detector: Any, record: Mapping[str, Any]) -> str:
    """One paragraph on how the bundle was calibrated: separations, stacking, thresholds."""
    cfg = detector.config
    calibrated = record["calibration"]
    folds = calibrated.get("cross_fit", {}).get("folds")
    where = f"out-of-fold scores ({folds} folds)" if folds else "other patients"
    parts = [f"calibrated on {calibrated['real']} real / {calibrated['synthetic']} synthetic / "
             f"{calibrated['tampered']} tampered views, {where}: "
             + ", ".join(f"{head} AUC {value}" for head, value in calibrated["auc"].items())]
    for head, stacked in (calibrated.get("stacking") or {}).items():
        weights = stacked.get("weights") or {}
        parts.append(f"{head} weights: " + ", ".join(
            f"{name} {weights.get(name, 0.0):.2f} (alone {value})" for name, value in stacked["member_auc"].items()))
        parts += [f"{name} dropped ({why})" for name, why in (stacked.get("dropped") or {}).items()]
    if calibrated["disabled"]:
        parts.append(f"below AUC {calibrated['min_auc']}, never flags: {', '.join(calibrated['disabled'])}")
    offsets = {h: g for h, g in (calibrated.get("group_offsets") or {}).items() if g}
    if offsets:
        parts.append("group offsets: " + "; ".join(f"{h} " + ", ".join(f"{g} {v:+.3f}" for g, v in groups.items())
                                                   for h, groups in offsets.items()))
    parts.append(f"threshold {cfg.threshold:.4f}, tamper threshold {cfg.tamper_threshold:.4f} "
                 f"(target FPR {cfg.target_fpr:.0%})")
    return "; ".join(parts)


class _Progress(Progress):
    """Rich's bars on a terminal; into a log file (no terminal), a plain line per task every 30 seconds and at
    its end, so that a long run in the background shows where it is."""

    EVERY_S = 30.0

    def __init__(self, *columns: Any, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs, disable=not kwargs["console"].is_terminal)
        self._printed: dict[Any, tuple[float, float]] = {}

    def update(self, task_id: Any, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        if not self.disable:
            return
        task = self._tasks[task_id]
        now, (last, done) = time.monotonic(), self._printed.get(task_id, (0.0, -1.0))
        finished = task.total is not None and task.completed >= task.total and done != task.completed
        if finished or now - last >= self.EVERY_S:
            self._printed[task_id] = (now, task.completed)
            total = "?" if task.total is None else f"{task.total:g}"
            self.console.print(f"{task.description} {task.completed:g}/{total} {task.fields.get('stats', '')}",
                               highlight=False)


def _bar() -> Progress:
    return _Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
        console=_common.console,
        transient=False,
    )
