"""Training, calibration and threshold selection of a detector on views (see :mod:`detectors.models.views`).

- :class:`PatchStream` draws balanced batches: half real, half fake patches, every fake patch beside the real
  patch at the same place of its aligned real view (the same laundering applied to both), so the model learns the
  generator's traces rather than content; unpaired samples are matched with a random real patch. Laundering
  (resize, blur, noise, 8-bit windowed export, JPEG) is applied with probability ``augment`` per pair.
- :func:`calibrate` fits Platt scaling of the image-level raw scores on held-out views and picks the thresholds:
  the lowest calibrated probability that at most ``target_fpr`` of the held-out real views reach.
- :func:`train_detector` does both and records what it trained on; :func:`cross_fit_detector` instead trains on
  every source and calibrates on out-of-fold scores (each view scored by a model that did not see its source).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.models.augment import launder
from detectors.models.base import Detector, ModelError, PatchBatch, TrainingImage, platt
from detectors.models.views import View

__all__ = [
    "SAMPLING",
    "PatchStream",
    "calibrate",
    "calibrate_scores",
    "cross_fit_detector",
    "head_separation",
    "stack_weights",
    "threshold_at_fpr",
    "threshold_at_fpr_by_source",
    "train_detector",
]

#: A patch of a tampered view counts as tampered when it holds at least this share of the edit (or 24 pixels).
TAMPER_SHARE = 0.3
#: A head whose calibrated score separates the held-out views worse than this (ROC AUC) gets threshold 1.0: its
#: score is still reported, but it can never flag a file (a weak head at a 1 % FPR threshold chosen on a few
#: sources does not keep that FPR on other sources).
MIN_CALIBRATION_AUC = 0.8

#: How :class:`PatchStream` picks the view of a draw, once the family is chosen. ``view`` (the default, and what
#: bundles trained before the choice existed did; their record has no ``sampling``): a view uniformly, so a source
#: with many frames weighs more (in the sample corpus one multi-frame ultrasound file gives 40 of the train
#: split's 100 real views). ``source``: a source image uniformly, then one of its views. Measured on the sample
#: corpus (``benchmarks/bench_detection.py --sampling``), ``source`` left the all-family bundle's AUCs within noise
#: and lowered its threshold; its leave-one-generator-out models did worse on two of three held-out families, but
#: by less than a second seed moves those figures. Not shown better, so not the default.
SAMPLING = ("view", "source")


def _pad(image: npt.NDArray[np.float32], p: int) -> npt.NDArray[np.float32]:
    h, w = image.shape
    if h >= p and w >= p:
        return image
    return np.pad(image, ((0, max(0, p - h)), (0, max(0, p - w))), mode="symmetric")


def _by_source(views: Sequence[View], *, partner: bool = False) -> list[list[View]]:
    """``views`` grouped by their source (their real partner's with ``partner``), in source order."""
    groups: dict[str, list[View]] = {}
    for view in views:
        key = view.partner.source_id if partner and view.partner is not None else view.source_id
        groups.setdefault(key, []).append(view)
    return [groups[k] for k in sorted(groups)]


class PatchStream:
    """An endless, seeded iterator of :class:`PatchBatch` drawn from views: per pair, a family uniformly, one of
    its fakes (see :data:`SAMPLING`) and its real partner (for an unpaired sample, a real view drawn the same
    way)."""

    def __init__(
        self,
        views: Sequence[View],
        *,
        patch_size: int,
        batch_size: int = 32,
        seed: int = 0,
        quantize_bits: int = 12,
        augment: float = 0.5,
        sampling: str = "view",
    ) -> None:
        if sampling not in SAMPLING:
            raise ModelError(f"sampling must be one of {', '.join(SAMPLING)}, not {sampling!r}")
        self.reals = [v for v in views if v.is_real]
        fakes = [v for v in views if not v.is_real]
        if not self.reals or not fakes:
            raise ModelError("training needs real views and fake views")
        self.families: dict[str, list[View]] = {}
        for view in fakes:
            self.families.setdefault(view.family, []).append(view)
        self.names = sorted(self.families)
        self.sampling = sampling
        # Drawing by source: each family's paired fakes grouped by the source of their real partner, its unpaired
        # samples apart (drawn as often as by view, since they belong to no source), and the real views by source.
        self._paired: dict[str, list[list[View]]] = {}
        self._unpaired: dict[str, list[View]] = {}
        self._real_sources: list[list[View]] = []
        if sampling == "source":
            for family, members in self.families.items():
                self._paired[family] = _by_source([v for v in members if v.partner is not None], partner=True)
                self._unpaired[family] = [v for v in members if v.partner is None]
            self._real_sources = _by_source(self.reals)
        self.p = patch_size
        self.batch_size = max(2, batch_size)
        self.rng = np.random.default_rng(seed)
        self.levels = float(2**quantize_bits - 1)
        self.augment = augment

    def __iter__(self) -> PatchStream:
        return self

    def _crop(
        self, image: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_] | None, rng: np.random.Generator
    ) -> tuple[int, int]:
        h, w = image.shape
        if mask is not None and mask.any() and rng.random() < 0.8:
            ys, xs = np.nonzero(mask)
            k = int(rng.integers(len(ys)))
            y = int(np.clip(ys[k] - rng.integers(0, self.p), 0, max(0, h - self.p)))
            x = int(np.clip(xs[k] - rng.integers(0, self.p), 0, max(0, w - self.p)))
            return y, x
        return int(rng.integers(0, max(1, h - self.p + 1))), int(rng.integers(0, max(1, w - self.p + 1)))

    def _finish(self, image: npt.NDArray[np.float32], flip: int, *, quantize: bool = True) -> npt.NDArray[np.float32]:
        patch = np.asarray(image, dtype=np.float32)
        if quantize:
            patch = np.asarray(np.round(np.clip(patch, 0.0, 1.0) * self.levels) / self.levels, dtype=np.float32)
        if flip & 1:
            patch = patch[:, ::-1]
        if flip & 2:
            patch = patch[::-1]
        if flip & 4:
            patch = patch.T
        return np.ascontiguousarray(patch, dtype=np.float32)

    def _draw_fake(self, family: str, rng: np.random.Generator) -> View:
        members = self.families[family]
        if self.sampling == "view":
            return members[int(rng.integers(len(members)))]
        paired, unpaired = self._paired[family], self._unpaired[family]
        if unpaired and (not paired or rng.random() < len(unpaired) / len(members)):
            return unpaired[int(rng.integers(len(unpaired)))]
        source = paired[int(rng.integers(len(paired)))]
        return source[int(rng.integers(len(source)))]

    def _draw_real(self, rng: np.random.Generator) -> View:
        if self.sampling == "view":
            return self.reals[int(rng.integers(len(self.reals)))]
        source = self._real_sources[int(rng.integers(len(self._real_sources)))]
        return source[int(rng.integers(len(source)))]

    def __next__(self) -> PatchBatch:
        rng = self.rng
        patches, syn, tam, masks = [], [], [], []
        empty = np.zeros((self.p, self.p), np.float32)
        for _ in range(self.batch_size // 2):
            family = self.names[int(rng.integers(len(self.names)))]
            fake = self._draw_fake(family, rng)
            real = fake.partner if fake.partner is not None else self._draw_real(rng)
            seed = int(rng.integers(2**63))
            fake_img, mask = fake.pixels, fake.mask
            real_img = real.pixels
            if rng.random() < self.augment:
                fake_img, mask = launder(fake_img, mask, np.random.default_rng(seed))
                real_img, _ = launder(real_img, None, np.random.default_rng(seed))
            fake_img, real_img = _pad(fake_img, self.p), _pad(real_img, self.p)
            mask_p = None if mask is None else _pad(mask.astype(np.float32), self.p) > 0.5
            y, x = self._crop(fake_img, mask_p, rng)
            flip = int(rng.integers(8))
            fp = fake_img[y : y + self.p, x : x + self.p]
            if fake.partner is None or real_img.shape != fake_img.shape:
                ry, rx = self._crop(real_img, None, rng)
            else:
                ry, rx = y, x
            rp = real_img[ry : ry + self.p, rx : rx + self.p]
            tampered = 0.0
            if fake.is_tamper and mask_p is not None:
                inside = float(mask_p[y : y + self.p, x : x + self.p].sum())
                tampered = 1.0 if inside >= min(24.0, TAMPER_SHARE * float(mask_p.sum())) and inside > 0 else 0.0
            patches += [self._finish(fp, flip), self._finish(rp, flip)]
            syn += [1.0 if fake.is_synthetic else 0.0, 0.0]
            tam += [tampered, 0.0]
            edited = empty
            if fake.is_tamper and mask_p is not None:
                edited = self._finish(mask_p[y : y + self.p, x : x + self.p].astype(np.float32), flip, quantize=False)
            masks += [edited, empty]
        return PatchBatch(np.stack(patches), np.asarray(syn, np.float32), np.asarray(tam, np.float32),
                          np.stack(masks))


def threshold_at_fpr(real_scores: npt.ArrayLike, target_fpr: float) -> float:
    """The lowest threshold ``t`` such that at most ``target_fpr`` of ``real_scores`` are ``>= t``."""
    scores = np.sort(np.asarray(real_scores, dtype=np.float64))[::-1]
    if scores.size == 0:
        raise ModelError("no real images to choose a threshold on")
    allowed = math.floor(target_fpr * scores.size)
    if allowed >= scores.size:
        return 0.0
    return float(min(1.0, np.nextafter(scores[allowed], np.inf)))


def threshold_at_fpr_by_source(
    real_scores: npt.ArrayLike, sources: Sequence[str], target_fpr: float, *, confidence: float,
    resamples: int = 2000, seed: int = 0,
) -> float:
    """The lowest threshold ``t`` at which, in ``confidence`` of bootstrap resamples of whole sources (patients),
    at most ``target_fpr`` of the real views reach ``t``.

    :func:`threshold_at_fpr` meets the target on the calibration views themselves; but views of one patient are
    alike, so a few patients make the tail, and a new set of patients meets another tail. Resampling patients
    measures how much the rate at a threshold moves with the patients drawn, and this threshold keeps it under
    the target in ``confidence`` of them (0.9: nine draws in ten)."""
    scores = np.asarray(real_scores, dtype=np.float64)
    if scores.size == 0:
        raise ModelError("no real images to choose a threshold on")
    if len(sources) != scores.size:
        raise ModelError("one source per real score is needed")
    names, index = np.unique(np.asarray(sources), return_inverse=True)
    views_per = np.bincount(index, minlength=len(names)).astype(np.float64)
    # Candidate thresholds, highest first: just above each distinct score (flagging the scores above it).
    distinct = np.unique(scores)[::-1]
    candidates = np.array([min(1.0, float(np.nextafter(u, np.inf))) for u in distinct])
    # exceed[s, j]: views of source s at or above candidate j (a cumulative count down the sorted scores).
    order = np.searchsorted(-distinct, -scores, side="left")  # position of each score among the distinct ones
    exceed = np.zeros((len(names), len(distinct) + 1))
    np.add.at(exceed, (index, order + 1), 1.0)
    exceed = np.cumsum(exceed, axis=1)[:, :-1]  # candidate j flags the scores strictly above distinct[j]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(resamples, len(names)))
    weights = np.zeros((resamples, len(names)))
    np.add.at(weights, (np.repeat(np.arange(resamples), len(names)), draws.ravel()), 1.0)
    rates = (weights @ exceed) / (weights @ views_per)[:, None]  # (resamples, candidates)
    upper = np.quantile(rates, confidence, axis=0)
    ok = np.flatnonzero(upper <= target_fpr)
    # The rate grows as the threshold falls: the last candidate still within the target, from the top.
    within = ok[ok == np.arange(len(ok))]
    if within.size == 0:  # pragma: no cover - the highest candidate flags nothing
        return 1.0
    return float(candidates[within[-1]])


def _platt_fit(raw: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=100.0, class_weight="balanced", max_iter=1000)
    model.fit(raw[:, None], labels)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def raw_view_scores(detector: Detector, views: Sequence[View]) -> npt.NDArray[np.float64]:
    """Image-level raw scores (N, 2) of views: mean synthetic logit, max tamper logit."""
    out = np.zeros((len(views), 2))
    for i, view in enumerate(views):
        syn, tam, _ = detector.raw_scores(view.pixels, group=view.group)
        out[i] = (syn, tam)
    return out


def _classes(
    views: Sequence[View],
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Masks of the real, synthetic and tampered views among ``views``."""
    return (np.array([v.is_real for v in views], dtype=bool), np.array([v.is_synthetic for v in views], dtype=bool),
            np.array([v.is_tamper for v in views], dtype=bool))


def _rounded(aucs: Mapping[str, float | None]) -> dict[str, float | None]:
    return {name: None if value is None else round(value, 4) for name, value in aucs.items()}


def head_separation(raw: npt.NDArray[np.float64], views: Sequence[View]) -> dict[str, float | None]:
    """ROC AUC of each head's raw view scores (:func:`raw_view_scores`): real views against synthetic ones for
    ``synthetic``, against tampered ones for ``tamper`` (None where a class is empty). :func:`calibrate` gives a
    head below :data:`MIN_CALIBRATION_AUC` threshold 1.0."""
    from detectors.models.evaluation import auc

    real, synthetic, tampered = _classes(views)
    return {"synthetic": auc(raw[real, 0], raw[synthetic, 0]), "tamper": auc(raw[real, 1], raw[tampered, 1])}


def calibrate(
    detector: Detector, views: Sequence[View], *, target_fpr: float | None = None, confidence: float = 0.0
) -> dict[str, Any]:
    """Fit Platt scaling and thresholds on held-out ``views``; updates the detector's config and reports."""
    return calibrate_scores(detector, raw_view_scores(detector, views), views, target_fpr=target_fpr,
                            confidence=confidence)


#: A modality group gets its own raw-score offset when it has at least this many real calibration views, of at
#: least :data:`GROUP_MIN_SOURCES` patient groups; the others share the pooled calibration.
GROUP_MIN_VIEWS = 20
GROUP_MIN_SOURCES = 4
#: The quantile of a group's real raw scores that its offset aligns with the pooled real scores' (the tail is
#: what a threshold at a low false-positive rate sees).
GROUP_QUANTILE = 0.9


def group_offsets(raw: npt.NDArray[np.float64], views: Sequence[View]) -> dict[str, dict[str, float]]:
    """Per head and modality group (``MR/native``), the offset that moves the group's
    :data:`GROUP_QUANTILE` of real raw scores onto the pooled one; only groups with enough real views and
    sources (:data:`GROUP_MIN_VIEWS`, :data:`GROUP_MIN_SOURCES`) get one."""
    real = np.array([v.is_real for v in views], dtype=bool)
    groups = np.array([v.group for v in views])
    out: dict[str, dict[str, float]] = {}
    for column, head in ((0, "synthetic"), (1, "tamper")):
        pooled = float(np.quantile(raw[real, column], GROUP_QUANTILE))
        offsets: dict[str, float] = {}
        for group in sorted(set(groups[real])):
            chosen = real & (groups == group)
            sources = {v.source_id for v, c in zip(views, chosen, strict=True) if c}
            if chosen.sum() >= GROUP_MIN_VIEWS and len(sources) >= GROUP_MIN_SOURCES:
                offsets[group] = round(float(np.quantile(raw[chosen, column], GROUP_QUANTILE)) - pooled, 6)
        out[head] = offsets
    return out


def calibrate_scores(
    detector: Detector, raw: npt.NDArray[np.float64], views: Sequence[View], *, target_fpr: float | None = None,
    by_group: bool = True, confidence: float = 0.0,
) -> dict[str, Any]:
    """:func:`calibrate` from raw scores already computed (:func:`raw_view_scores`, one row per view of
    ``views``): those of the detector itself on held-out views, or out-of-fold ones (:func:`cross_fit_detector`).

    With ``by_group``, each modality group with enough real views first gets an offset (:func:`group_offsets`),
    subtracted from its raw scores before Platt scaling and thresholds; the detector subtracts it when scoring.
    With ``confidence`` > 0 each threshold holds the target in that share of resamples of whole patients
    (:func:`threshold_at_fpr_by_source`) instead of on these views alone."""
    fpr = detector.config.target_fpr if target_fpr is None else target_fpr
    if raw.shape != (len(views), 2):
        raise ModelError(f"calibration needs one pair of raw scores per view, got {raw.shape} for {len(views)}")
    real, synthetic, tampered = _classes(views)
    if not real.any():
        raise ModelError("calibration needs held-out real views")
    offsets = group_offsets(raw, views) if by_group else {}
    raw = raw.copy()
    for column, head in ((0, "synthetic"), (1, "tamper")):
        shift = offsets.get(head, {})
        raw[:, column] -= np.array([shift.get(v.group, 0.0) for v in views])
    calibration: dict[str, tuple[float, float]] = {}
    for name, column, positive in (("synthetic", 0, synthetic), ("tamper", 1, tampered)):
        if positive.any():
            sel = real | positive
            calibration[name] = _platt_fit(raw[sel, column], positive[sel].astype(np.float64))
        else:
            calibration[name] = (1.0, 0.0)
    thresholds: dict[str, float] = {}
    separation = head_separation(raw, views)
    disabled: list[str] = []
    for name, column in (("synthetic", 0), ("tamper", 1)):
        value = separation[name]
        probabilities = platt(calibration[name], raw[real, column])
        if confidence > 0:
            sources = [v.source_id for v in views if v.is_real]
            thresholds[name] = threshold_at_fpr_by_source(probabilities, sources, fpr, confidence=confidence)
        else:
            thresholds[name] = threshold_at_fpr(probabilities, fpr)
        if value is None or value < MIN_CALIBRATION_AUC:
            thresholds[name] = 1.0
            disabled.append(name)
    detector.with_config(calibration=calibration, threshold=thresholds["synthetic"],
                         tamper_threshold=thresholds["tamper"], target_fpr=fpr, group_offsets=offsets)
    return {
        "auc": _rounded(separation),
        "disabled": disabled,
        "min_auc": MIN_CALIBRATION_AUC,
        "views": len(views),
        "real": int(real.sum()),
        "synthetic": int(synthetic.sum()),
        "tampered": int(tampered.sum()),
        "sources": len({v.source_id for v in views if v.is_real}),
        "method": "platt",
        "group_offsets": offsets,
        "threshold_rule": (f"lowest calibrated probability reached by at most {fpr:.2%} of the held-out real views"
                           + (f" in {confidence:.0%} of resamples of whole patients" if confidence > 0 else "")),
    }


def _fit(
    detector: Detector,
    views: Sequence[View],
    *,
    steps: int,
    batch_size: int,
    seed: int,
    augment: float,
    progress: Callable[[int, int, Mapping[str, float]], None] | None,
    sampling: str = "view",
) -> tuple[dict[str, float], float]:
    stream = PatchStream(views, patch_size=detector.config.patch_size, batch_size=batch_size, seed=seed,
                         quantize_bits=detector.config.quantize_bits, augment=augment, sampling=sampling)
    start = time.perf_counter()
    from detectors.models.ensemble import EnsembleDetector

    if isinstance(detector, EnsembleDetector):
        metrics = detector.fit(stream, steps=steps, seed=seed, progress=progress, images=training_images(views))
    elif detector.IMAGE_LEVEL:
        metrics = detector.fit_images(training_images(views), seed=seed, progress=progress)
    else:
        metrics = detector.fit(stream, steps=steps, seed=seed, progress=progress)
    return metrics, time.perf_counter() - start


def training_images(views: Sequence[View]) -> list[TrainingImage]:
    """The views as whole training images for image-level members (label 0 real, 1 synthetic, 2 tampered)."""
    return [TrainingImage(pixels=v.pixels, label=0 if v.is_real else (2 if v.is_tamper else 1), group=v.group,
                          mask=v.mask, source=v.source_id) for v in views]


def _record(
    fit_views: Sequence[View], *, seed: int, steps: int, batch_size: int, augment: float, fit_s: float,
    metrics: Mapping[str, float], calibration: dict[str, Any], data: Mapping[str, Any] | None, sampling: str,
) -> dict[str, Any]:
    families: dict[str, int] = {}
    for view in fit_views:
        families[view.family] = families.get(view.family, 0) + 1
    return {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "augment": augment,
        "sampling": sampling,
        "fit_seconds": round(fit_s, 1),
        "metrics": {k: round(float(v), 5) for k, v in metrics.items()},
        "fit_views": families,
        "fit_sources": len({v.source_id for v in fit_views if v.is_real}),
        "calibration": calibration,
        "data": dict(data or {}),
    }


def train_detector(
    detector: Detector,
    fit_views: Sequence[View],
    calib_views: Sequence[View],
    *,
    steps: int,
    batch_size: int = 32,
    seed: int = 0,
    augment: float = 0.5,
    progress: Callable[[int, int, Mapping[str, float]], None] | None = None,
    data: Mapping[str, Any] | None = None,
    sampling: str = "view",
    confidence: float = 0.0,
) -> dict[str, Any]:
    """Train on ``fit_views`` (drawn as ``sampling`` says, see :data:`SAMPLING`), calibrate on ``calib_views``
    (other sources; ``confidence``: see :func:`calibrate_scores`), record it all in the config."""
    fit_sources = {v.source_id for v in fit_views if v.is_real}
    calib_sources = {v.source_id for v in calib_views if v.is_real}
    if fit_sources & calib_sources:
        raise ModelError("a source is in both the training and the calibration views")
    metrics, fit_s = _fit(detector, fit_views, steps=steps, batch_size=batch_size, seed=seed, augment=augment,
                          progress=progress, sampling=sampling)
    calibration = calibrate(detector, calib_views, confidence=confidence)
    record = _record(fit_views, seed=seed, steps=steps, batch_size=batch_size, augment=augment, fit_s=fit_s,
                     metrics=metrics, calibration=calibration, data=data, sampling=sampling)
    detector.with_config(training=record)
    return record


#: What ``medverify train detector --cross-fit`` asks of an ensemble member: at least this much stacked
#: out-of-fold AUC for the time it costs on every file (:func:`stack_weights`).
DEFAULT_MIN_MEMBER_GAIN = 0.005


def stack_weights(
    members: npt.NDArray[np.float64], views: Sequence[View], names: Sequence[str], *, min_gain: float = 0.0,
    head: str = "synthetic",
) -> tuple[list[float] | None, dict[str, Any]]:
    """Non-negative ``head`` weights of ensemble members from their out-of-fold raw scores ``members``
    (N, M): a logistic regression of synthetic (or, for the tamper head, tampered) against real views on the M
    columns; a member whose coefficient
    is not positive (it lowers the separation once the others are known) is dropped and the rest refitted.

    Every member costs run time on every file, so one must also earn it: while dropping a member keeps the
    stacked out-of-fold AUC within ``min_gain`` of what it is with it, the member adding least is dropped (0: keep
    every member with a positive weight). Returns the weights (normalised to sum 1; None when no member keeps a
    positive weight) and a record with each member's own out-of-fold AUC and, for each drop, why."""
    from sklearn.linear_model import LogisticRegression

    from detectors.models.evaluation import auc

    real, synthetic, tampered = _classes(views)
    if head == "tamper":
        synthetic = tampered
    record: dict[str, Any] = {
        "method": "logistic regression on out-of-fold member scores, non-negative",
        "member_auc": _rounded({name: auc(members[real, j], members[synthetic, j]) for j, name in enumerate(names)}),
        "min_gain": min_gain,
        "dropped": {},
    }
    sel = real | synthetic

    def fit(keep: list[int], *, note: bool = False) -> npt.NDArray[np.float64] | None:
        """Positive coefficients of ``keep`` (dropping non-positive ones in turn), or None when none stays."""
        while keep:
            model = LogisticRegression(C=100.0, class_weight="balanced", max_iter=1000)
            model.fit(members[sel][:, keep], synthetic[sel].astype(np.float64))
            coef = model.coef_[0]
            if (coef > 0).all():
                weights = np.zeros(len(names))
                weights[keep] = coef / coef.sum()
                return weights
            worst = keep[int(np.argmin(coef))]
            if note:
                record["dropped"][names[worst]] = "coefficient not positive"
            keep = [j for j in keep if j != worst]
        return None

    def stacked_auc(weights: npt.NDArray[np.float64]) -> float:
        score = members @ weights
        value = auc(score[real], score[synthetic])
        return 0.0 if value is None else value

    weights = fit(list(range(len(names))), note=True) if real.any() and synthetic.any() else None
    while weights is not None and min_gain > 0 and np.count_nonzero(weights) > 1:
        full = stacked_auc(weights)
        trials = {int(j): fit([int(k) for k in np.flatnonzero(weights) if k != j]) for j in np.flatnonzero(weights)}
        scored = {j: stacked_auc(w) for j, w in trials.items() if w is not None}
        if not scored:
            break
        j = max(scored, key=lambda k: scored[k])
        if scored[j] < full - min_gain:
            break
        record["dropped"][names[j]] = (f"adds {full - scored[j]:.4f} to the stacked out-of-fold AUC "
                                       f"({full:.4f} with it), under min_gain {min_gain}")
        weights = trials[j]
    record["weights"] = None if weights is None else dict(zip(names, map(float, weights), strict=True))
    return (None if weights is None else [float(w) for w in weights]), record


def cross_fit_detector(
    make: Callable[[], Detector],
    views: Sequence[View],
    *,
    folds: int,
    steps: int,
    batch_size: int = 32,
    seed: int = 0,
    augment: float = 0.5,
    progress: Callable[[int, int, Mapping[str, float]], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    data: Mapping[str, Any] | None = None,
    stack: bool = True,
    min_member_gain: float = 0.0,
    sampling: str = "view",
    confidence: float = 0.0,
) -> tuple[Detector, dict[str, Any]]:
    """Train a detector on *all* ``views`` and calibrate it on out-of-fold scores, as scikit-learn's
    ``CalibratedClassifierCV(ensemble=False)`` does: the sources are split into ``folds``
    (:func:`~detectors.models.views.source_folds`); for each fold a fresh detector from ``make`` is trained on the
    other folds and scores the fold's views, so that every view gets a raw score from a model that never saw its
    source. Platt scaling, thresholds and the :data:`MIN_CALIBRATION_AUC` gate are then fitted on all those scores
    (every source instead of a held-out quarter), and the final detector is trained on every source.

    With ``stack`` (the default), an ensemble's weights of both heads are fitted on the same out-of-fold scores
    (:func:`stack_weights`: stacking), replacing its preset's; a member that adds less than ``min_member_gain`` to
    their out-of-fold AUC is dropped and not run.

    Costs ``folds + 1`` trainings. The out-of-fold models saw ``(folds - 1) / folds`` of the sources, the final
    one all of them: its scores on new images may be a little more confident than the ones it was calibrated on.
    """
    from detectors.models.ensemble import EnsembleDetector
    from detectors.models.views import source_folds

    parts = source_folds(views, folds, seed=seed)
    position = {id(v): i for i, v in enumerate(views)}
    raw = np.full((len(views), 2), np.nan)
    members: npt.NDArray[np.float64] | None = None
    per_fold: list[dict[str, Any]] = []
    for k, held in enumerate(parts):
        if on_stage is not None:
            on_stage(f"fold {k + 1}/{folds}")
        held_ids = {id(v) for v in held}
        train = [v for v in views if id(v) not in held_ids]
        model = make()
        _, fold_s = _fit(model, train, steps=steps, batch_size=batch_size, seed=seed, augment=augment,
                         progress=progress, sampling=sampling)
        if stack and isinstance(model, EnsembleDetector):
            by_member = model.member_scores([v.pixels for v in held], [v.group for v in held])
            if members is None:
                members = np.full((len(views), *by_member.shape[1:]), np.nan)
            for view, row in zip(held, by_member, strict=True):
                members[position[id(view)]] = row
            scores = np.einsum("nmh,hm->nh", by_member, model.weights.astype(np.float64))
        else:
            scores = raw_view_scores(model, held)
        for view, row in zip(held, scores, strict=True):
            raw[position[id(view)]] = row
        separation = head_separation(scores, held)
        per_fold.append({
            "sources": len({v.source_id for v in held if v.is_real}),
            "views": len(held),
            "fit_seconds": round(fold_s, 1),
            "auc": _rounded(separation),
        })
    if on_stage is not None:
        on_stage("final")
    detector = make()
    metrics, fit_s = _fit(detector, views, steps=steps, batch_size=batch_size, seed=seed, augment=augment,
                          progress=progress, sampling=sampling)
    stacking: dict[str, Any] | None = None
    if members is not None and isinstance(detector, EnsembleDetector):
        stacking = {}
        for column, head in ((0, "synthetic"), (1, "tamper")):
            names = detector.head_members(head)
            if len(names) < 2:
                continue
            cols = [list(detector.members).index(name) for name in names]
            weights, stacking[head] = stack_weights(members[:, cols, column], views, names,
                                                    min_gain=min_member_gain, head=head)
            if weights is not None:
                detector.set_weights(head, weights)
                raw[:, column] = members[:, cols, column] @ (np.asarray(weights) / np.sum(weights))
    calibration = calibrate_scores(detector, raw, views, confidence=confidence)
    calibration["cross_fit"] = {"folds": folds, "per_fold": per_fold}
    if stacking is not None:
        calibration["stacking"] = stacking
    calibration["threshold_rule"] = calibration["threshold_rule"].replace(
        "held-out real views", "real views, each scored by a model that did not see its source")
    record = _record(views, seed=seed, steps=steps, batch_size=batch_size, augment=augment, fit_s=fit_s,
                     metrics=metrics, calibration=calibration, data=data, sampling=sampling)
    detector.with_config(training=record)
    return detector, record
