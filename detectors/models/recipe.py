"""How the shipped detector bundle is made, in one place: views of a corpus, training, calibration.

:class:`Recipe` holds every choice (families of fakes, view size, forms, training steps, folds, seed), with the
defaults the shipped bundle was made with. :func:`training_views` and :func:`evaluation_views` build the views of
the corpus's train split and of its val and test splits (patients the bundle never saw), and :func:`train_bundle`
trains and calibrates an ensemble on training views, cross-fitted by default. ``medverify train detector``,
``medverify evaluate`` and ``benchmarks/bench_detection.py`` all go through these functions, so a site that
retrains on its own archive gets the shipped procedure::

    medverify corpus build --from /archive --out corpus
    medverify train detector --corpus corpus --out bundle
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from detectors.models.base import Detector
from detectors.models.views import View, build_views, lossy_twins, scarce_group_reals, select, split_calibration

__all__ = ["Recipe", "evaluation_views", "train_bundle", "training_views"]

#: ``progress(done, total, what)`` while fakes are made.
ViewProgress = Callable[[int, int, str], None]
#: ``progress(step, total, metrics)`` while members train.
FitProgress = Callable[[int, int, Mapping[str, float]], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """Everything that makes a bundle besides the corpus and the generator checkpoints."""

    #: The shipped bundle's families, in this order (the order keys the views cache). ``inpaint`` (every pixel
    #: re-made by the learned inpainter) is left out: the shipped checkpoints have no trained inpainter yet.
    families: tuple[str, ...] = ("vae", "gan", "sr", "diffusion", "inject", "remove", "copymove")
    #: Side of the native-resolution crops taken from frames.
    view_size: int = 256
    #: Views per frame at most: training, and evaluation (denser, to rest the FPR on more views).
    per_frame: int = 1
    eval_per_frame: int = 2
    #: Share of native real views that also get an 8-bit export twin (and their fakes likewise).
    exports: float = 0.3
    #: Share of native real training views that also get a lossy-stored (JPEG 2000) real twin.
    lossy: float = 0.15
    #: A modality group (``CT/native``) with fewer real training views than this gets ``scarce_per_frame`` more
    #: real crops of each of its frames, without fakes (0: none, as in the shipped bundle; 60, with ``lossy``
    #: 0.5, was tried: see the model card's notes).
    scarce_floor: int = 0
    scarce_per_frame: int = 4
    #: Unconditional samples per real view, for the generators that sample.
    unpaired: float = 0.1
    #: DDIM steps of SDEdit (speed on a CPU).
    ddim_steps: int = 4
    preset: str = "small"
    arch: str = "ensemble"
    steps: int = 400
    batch_size: int = 32
    #: Folds of whole patients for out-of-fold calibration (0: fit on three quarters, calibrate on the rest).
    cross_fit: int = 3
    stack: bool = True
    min_member_gain: float = 0.005
    augment: float = 0.5
    sampling: str = "view"
    target_fpr: float = 0.01
    #: 0: each threshold lets ``target_fpr`` of the calibration's real views through; above 0, it holds the
    #: target in that share of resamples of whole patients (see ``threshold_at_fpr_by_source``).
    threshold_confidence: float = 0.9
    #: The ensemble's candidate members (empty: the preset's); stacking weighs them as ever. The shipped bundle
    #: was made with ``oneclass, physics, classical``: the members that earned weight when all five competed.
    members: tuple[str, ...] = ()
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["families"] = list(self.families)
        data["members"] = list(self.members)
        return data


def training_views(
    corpus: str | os.PathLike[str],
    recipe: Recipe,
    *,
    checkpoints: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: ViewProgress | None = None,
) -> tuple[list[View], dict[str, Any]]:
    """Views of the corpus's train split and their fakes, plus the lossy-stored real twins and more real crops of
    the scarce modality groups."""
    views, description = build_views(
        corpus, families=recipe.families, splits=("train",), view_size=recipe.view_size,
        max_per_frame=recipe.per_frame, seed=recipe.seed, unpaired_fraction=recipe.unpaired,
        diffusion_steps=recipe.ddim_steps, progress=progress, checkpoints=checkpoints, exports=recipe.exports,
        cache=cache,
    )
    twins = lossy_twins(views, fraction=recipe.lossy, seed=recipe.seed) if recipe.lossy > 0 else []
    extra = scarce_group_reals(corpus, views, floor=recipe.scarce_floor, view_size=recipe.view_size,
                               per_frame=recipe.scarce_per_frame, seed=recipe.seed,
                               exports=recipe.exports) if recipe.scarce_floor > 0 else []
    groups = sorted({v.group for v in extra})
    description = {**description, "lossy_real_views": len(twins), "scarce_group_views": len(extra),
                   "scarce_groups": groups}
    return [*views, *twins, *extra], description


def evaluation_views(
    corpus: str | os.PathLike[str],
    recipe: Recipe,
    *,
    checkpoints: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: ViewProgress | None = None,
    lossy: float = 0.15,
) -> tuple[list[View], dict[str, Any]]:
    """Views of the corpus's val and test splits (patients no bundle of this recipe trained on), denser than the
    training views, with lossy-stored real twins (``lossy`` of the native real views) to measure that they
    are not flagged. The recipe's seed draws the crops: these splits hold other patients than the training
    views, so the same seed draws nothing twice."""
    views, description = build_views(
        corpus, families=recipe.families, splits=("val", "test"), view_size=recipe.view_size,
        max_per_frame=recipe.eval_per_frame, seed=recipe.seed, unpaired_fraction=recipe.unpaired,
        diffusion_steps=recipe.ddim_steps, progress=progress, checkpoints=checkpoints, exports=recipe.exports,
        cache=cache,
    )
    twins = lossy_twins(views, fraction=lossy, seed=recipe.seed) if lossy > 0 else []
    description = {**description, "lossy_real_views": len(twins)}
    return [*views, *twins], description


def train_bundle(
    views: Sequence[View],
    recipe: Recipe,
    *,
    families: Sequence[str] | None = None,
    progress: FitProgress | None = None,
    on_stage: Callable[[str], None] | None = None,
    data: Mapping[str, Any] | None = None,
    arch_args: Mapping[str, Any] | None = None,
) -> tuple[Detector, dict[str, Any]]:
    """An ensemble trained on ``views`` (only ``families`` of their fakes, default all) and calibrated as the
    recipe says: cross-fitted on out-of-fold scores of whole patients, members stacked and dropped by the
    min-gain rule; or fitted on three quarters of the patients and calibrated on the rest. ``arch_args``
    replace the preset's (an ensemble's members and weights: those of a shipped bundle, to retrain it
    without a family)."""
    from detectors.models.base import create_detector
    from detectors.models.training import cross_fit_detector, train_detector

    chosen = select(views, families=families) if families is not None else list(views)

    chosen_args = dict(arch_args or {})
    if recipe.members and "members" not in chosen_args:  # equal weights to start; stacking refits them
        chosen_args |= {"members": list(recipe.members),
                        "weights": {"synthetic": [1.0] * len(recipe.members), "tamper": [1.0] * len(recipe.members)}}

    def make() -> Detector:
        return create_detector(recipe.arch, preset=recipe.preset, seed=recipe.seed, target_fpr=recipe.target_fpr,
                               arch_args=chosen_args)

    record_data = {**dict(data or {}), "recipe": recipe.to_dict(),
                   **({"families": list(families)} if families is not None else {}),
                   **({"arch_args": dict(arch_args)} if arch_args else {})}
    if recipe.cross_fit:
        return cross_fit_detector(
            make, chosen, folds=recipe.cross_fit, steps=recipe.steps, batch_size=recipe.batch_size,
            seed=recipe.seed, augment=recipe.augment, progress=progress, on_stage=on_stage, data=record_data,
            stack=recipe.stack, min_member_gain=recipe.min_member_gain, sampling=recipe.sampling,
            confidence=recipe.threshold_confidence)
    fit, calib = split_calibration(chosen, seed=recipe.seed)
    detector = make()
    record = train_detector(detector, fit, calib, steps=recipe.steps, batch_size=recipe.batch_size,
                            seed=recipe.seed, augment=recipe.augment, progress=progress, data=record_data,
                            sampling=recipe.sampling, confidence=recipe.threshold_confidence)
    return detector, record
