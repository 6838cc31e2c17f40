"""``oneclass`` and ``physics``: image-level members on the physics statistics of :mod:`detectors.models.physics`.

``oneclass`` is fitted on **real images only**. Per modality group and form (``MR/native``, ``XR/8bit``, …; see
:func:`~detectors.models.base.modality_group`) it models the real images' feature vectors
(:func:`~detectors.models.physics.image_features`: noise level, spectrum and correlation of the finest-scale
residual, its dependence on the grey level, histogram occupancy, block grids) in two ways, and adds the two
distances, each standardised on the group's real training images:

- a Gaussian with a shrunk covariance (Ledoit-Wolf): the log of the Mahalanobis distance, any departure;
- a one-sided *smoothness* distance (:data:`SMOOTHNESS`): how far the image's finest-scale residual is less
  white than real ones of its group (a smaller share of detail at the finest scale, more correlation between
  neighbouring residuals, more pixels equal to their local median), in robust units of the real spread. This
  is the physics prior: an acquisition leaves independent noise in every pixel, and a generator has to invent
  it, which its smooth decoder, denoiser or up-sampler does poorly.

It never sees a fake, so no generator is "seen" or "unseen" to it. A group with fewer than
``min_group`` real training images falls back to its form's pooled model, then to the model of everything.
Its tamper score is the largest :func:`~detectors.models.physics.tile_anomaly` of the image (the tile whose
noise departs most from the rest of its own frame), and that anomaly, tile by tile, is its heatmap.

``physics`` reads the same features but is supervised: a logistic regression, or with ``booster`` (the ``small``
preset) boosted trees (:mod:`detectors.models.boosting`), of fake against real views (the families it was trained
on), as a second opinion that stacking weighs against the others. With ``two_sided``
(the ``small`` preset) it reads each feature as its *departure* from the real images of the image's own group,
in either direction: the absolute robust z-score against the group's real training images (median and spread,
with the same fall-back to the form's and then everyone's as the one-class member). A regression on signed
features learns the direction of the families it saw ("smoother than real"), and a generator that departs the
other way (a GAN's excess fine-scale energy) then scores as *more* real than real: left out of training, the GAN
family scored AUC 0.25. On departures it learns which features move, not which way; with the classical member's
synthetic head reading departures too, the same family left out scores 0.91 (``benchmarks/bench_detection.py``,
in the model card).

Both are image-level members: they score a whole frame at once (:meth:`Detector.score_frames`), not patches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from detectors.models.augment import jpeg, resize
from detectors.models.base import (
    Detector,
    DetectorConfig,
    FitProgress,
    FrameScores,
    FrameSet,
    ModelError,
    PatchBatch,
    TrainingImage,
    register_detector,
)
from detectors.models.boosting import DEFAULTS as BOOSTER
from detectors.models.boosting import Forest, fit_forest
from detectors.models.physics import IMAGE_FEATURES

__all__ = ["OneClassDetector", "PhysicsDetector"]

_N = len(IMAGE_FEATURES)
#: The features of the one-sided smoothness distance, with the sign of the direction a generated image departs
#: in (-1: lower than real images, +1: higher).
SMOOTHNESS: dict[str, int] = {
    "fine_share_q10": -1, "fine_share_q50": -1, "fine_share_q90": -1,
    "corr_x_q10": 1, "corr_x_q50": 1, "corr_y_q10": 1, "corr_y_q50": 1,
    "corr_2_q50": 1, "corr_2_q90": 1, "flat_q50": 1,
}
_SMOOTH_INDEX = np.array([IMAGE_FEATURES.index(name) for name in SMOOTHNESS])
_SMOOTH_SIGN = np.array(list(SMOOTHNESS.values()), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class _GroupModel:
    """The real images of one group: Gaussian (mean, precision), robust centre and spread of every feature, and
    the median and spread of the two distances (to standardise them)."""

    mean: npt.NDArray[np.float64]
    precision: npt.NDArray[np.float64]
    centre: npt.NDArray[np.float64]
    spread: npt.NDArray[np.float64]
    norms: npt.NDArray[np.float64]  # (median, spread) of the log Mahalanobis, then of the smoothness distance

    def distances(self, x: npt.NDArray[np.float64]) -> tuple[float, float]:
        """(log Mahalanobis distance per feature, smoothness distance) of one feature vector."""
        d = x - self.mean
        maha = 0.5 * float(np.log(max(float(d @ self.precision @ d), 1e-9) / _N))
        z = (x[_SMOOTH_INDEX] - self.centre[_SMOOTH_INDEX]) / self.spread[_SMOOTH_INDEX]
        smooth = float(np.sqrt(np.mean(np.maximum(0.0, z * _SMOOTH_SIGN) ** 2)))
        return maha, smooth

    def score(self, x: npt.NDArray[np.float64]) -> float:
        maha, smooth = self.distances(x)
        n = self.norms
        return float((maha - n[0]) / n[1] + (smooth - n[2]) / n[3])

    def arrays(self, prefix: str) -> dict[str, npt.NDArray[np.float64]]:
        return {f"{prefix}.{k}": getattr(self, k) for k in ("mean", "precision", "centre", "spread", "norms")}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> _GroupModel:
        try:
            values = {k: np.asarray(arrays[f"{prefix}.{k}"], np.float64)
                      for k in ("mean", "precision", "centre", "spread", "norms")}
        except KeyError as exc:
            raise ModelError(f"oneclass weights lack {exc}") from None
        model = cls(**values)
        if model.mean.shape != (_N,) or model.precision.shape != (_N, _N) or model.norms.shape != (4,):
            raise ModelError("oneclass weights do not fit the feature set")
        return model

    @classmethod
    def fit(cls, vectors: npt.NDArray[np.float64]) -> _GroupModel:
        from sklearn.covariance import LedoitWolf

        estimator = LedoitWolf().fit(vectors)
        centre, spread = _robust_centre(vectors)
        model = cls(estimator.location_.astype(np.float64), estimator.precision_.astype(np.float64), centre, spread,
                    np.array([0.0, 1.0, 0.0, 1.0]))
        raw = np.array([model.distances(v) for v in vectors])
        med = np.median(raw, axis=0)
        mad = 1.4826 * np.median(np.abs(raw - med), axis=0) + 1e-3
        return dataclasses.replace(model, norms=np.array([med[0], mad[0], med[1], mad[1]]))


def _robust_centre(vectors: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Median and spread (1.4826 MAD, floored) of each feature over ``vectors`` (N, F)."""
    centre = np.median(vectors, axis=0)
    return centre, 1.4826 * np.median(np.abs(vectors - centre), axis=0) + 1e-3


def _group_rows(groups: Sequence[str], min_group: int) -> dict[str, npt.NDArray[np.int64]]:
    """The rows of each model name a group's images fall to: ``all``, each form (``native``, ``8bit``) and each
    group (``MR/native``), leaving out names (but ``all``) with fewer than ``min_group`` rows."""
    names = ["all", *sorted({g.split("/", 1)[1] for g in groups if "/" in g}), *sorted(set(groups))]
    out: dict[str, npt.NDArray[np.int64]] = {}
    for name in names:
        if name == "all":
            rows = np.arange(len(groups))
        elif "/" in name:
            rows = np.array([i for i, g in enumerate(groups) if g == name], dtype=np.int64)
        else:
            rows = np.array([i for i, g in enumerate(groups) if g.endswith("/" + name)], dtype=np.int64)
        if name == "all" or len(rows) >= min_group:
            out[name] = rows
    return out


def _fallback(models: Mapping[str, Any], group: str) -> Any:
    """The model of ``group``, else of its form, else of everything (None if there is none)."""
    form = group.split("/", 1)[1] if "/" in group else ""
    for name in (group, form, "all"):
        if name in models:
            return models[name]
    return None


def _image_vector(frames: FrameSet) -> npt.NDArray[np.float64]:
    """The mean feature vector over an image's frames."""
    return np.asarray(np.mean([frames.image_features(i) for i in range(len(frames.frames))], axis=0), np.float64)


def _tamper_map(frames: FrameSet) -> FrameScores:
    """The largest tile anomaly of each frame, and each frame's anomaly map."""
    best, maps = -np.inf, []
    best_frame = 0
    for i in range(len(frames.frames)):
        anomaly = frames.tile_anomaly(i)
        maps.append(anomaly)
        top = float(anomaly.max()) if anomaly.size else 0.0
        if top > best:
            best, best_frame = top, i
    return FrameScores(synthetic=0.0, tamper=float(best), best_frame=best_frame, tile_maps=maps,
                       patches=_tiles_scored(frames))


def _tiles_scored(frames: FrameSet) -> int:
    return sum(len(frames.tiles(i).positions) for i in range(len(frames.frames)))


@register_detector("oneclass")
class OneClassDetector(Detector):
    """Gaussian models of real images' physics features per modality group; distance as the synthetic score."""

    IMAGE_LEVEL: ClassVar[bool] = True
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"patch_size": 32, "max_patches": 8, "arch_args": {"min_group": 4}},
        "small": {"patch_size": 64, "max_patches": 32, "arch_args": {"min_group": 30}},
    }

    def __init__(self, config: DetectorConfig, *, seed: int = 0) -> None:
        super().__init__(config, seed=seed)
        self.min_group = int(config.arch_args.get("min_group", 30))
        #: Per model name ("all", "native", "8bit", "MR/native", …).
        self.models: dict[str, _GroupModel] = {}

    def _model_for(self, group: str) -> _GroupModel | None:
        model: _GroupModel | None = _fallback(self.models, group)
        return model

    def score_frames(self, frames: FrameSet) -> FrameScores:
        scores = _tamper_map(frames)
        model = self._model_for(frames.group)
        if model is not None:
            scores.synthetic = model.score(_image_vector(frames))
        return scores

    def patch_logits(self, patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        raise ModelError("oneclass scores whole frames, not patches")

    def fit(self, batches: Iterator[PatchBatch], *, steps: int, seed: int = 0,
            progress: FitProgress | None = None) -> dict[str, float]:
        raise ModelError("oneclass is fitted on images: fit_images")

    def fit_images(self, images: Sequence[TrainingImage], *, seed: int = 0,
                   progress: FitProgress | None = None) -> dict[str, float]:
        """Fit the group models on the real images among ``images`` (the fakes are not looked at)."""
        reals = [im for im in images if im.label == 0]
        if len(reals) < 4:
            raise ModelError("the one-class member needs at least four real training images")
        vectors = np.stack([_image_vector(FrameSet.of(im.pixels, self.config, group=im.group)) for im in reals])
        groups = [im.group for im in reals]
        self.models = {}
        metrics: dict[str, float] = {"real_images": float(len(reals))}
        for name, rows in _group_rows(groups, self.min_group).items():
            self.models[name] = _GroupModel.fit(vectors[rows])
            metrics[f"n[{name}]"] = float(len(rows))
        if progress is not None:
            progress(1, 1, metrics)
        self.with_config(arch_args={**dict(self.config.arch_args), "groups": sorted(self.models)})
        return metrics

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {}
        for name, model in self.models.items():
            out.update(model.arrays(f"oneclass.{name}"))
        return out

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        names = [str(n) for n in self.config.arch_args.get("groups", [])]
        self.models = {name: _GroupModel.from_arrays(arrays, f"oneclass.{name}") for name in names}


@register_detector("physics")
class PhysicsDetector(Detector):
    """A logistic regression of fake against real on the physics features (signed, or with ``two_sided`` their
    departures from the real images of the image's group)."""

    IMAGE_LEVEL: ClassVar[bool] = True
    HEADS: ClassVar[tuple[str, ...]] = ("synthetic",)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"patch_size": 32, "max_patches": 8, "arch_args": {"C": 1.0, "two_sided": True, "min_group": 4}},
        "small": {"patch_size": 64, "max_patches": 32,
                  "arch_args": {"C": 0.03, "two_sided": True, "min_group": 30, "booster": dict(BOOSTER),
                                "reference_folds": 5}},
    }
    #: Departures are clipped here (robust z units): one wild feature must not decide alone.
    CLIP: ClassVar[float] = 20.0

    def __init__(self, config: DetectorConfig, *, seed: int = 0) -> None:
        super().__init__(config, seed=seed)
        self.two_sided = bool(config.arch_args.get("two_sided", False))
        self.min_group = int(config.arch_args.get("min_group", 30))
        self.mean = np.zeros(_N)
        self.scale = np.ones(_N)
        self.coef = np.zeros(_N)
        self.intercept = 0.0
        #: ``two_sided``: (centre, spread) of the real training images' features per group, form and ``all``.
        self.reference: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = {}
        booster = config.arch_args.get("booster")
        #: Settings of boosted trees (:mod:`detectors.models.boosting`) in place of the regression, or None.
        self.booster: dict[str, float] | None = dict(booster) if booster else None
        self.forest: Forest | None = None

    def _inputs(self, vector: npt.NDArray[np.float64], group: str) -> npt.NDArray[np.float64]:
        """What the regression reads of one image's feature vector: the vector, or its clipped absolute
        departure from its group's real images."""
        return self._departure(vector, group, self.reference) if self.two_sided else vector

    def _departure(self, vector: npt.NDArray[np.float64], group: str,
                   references: Mapping[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]],
                   ) -> npt.NDArray[np.float64]:
        """The clipped absolute robust z-score of ``vector`` against its group's entry of ``references``."""
        reference = _fallback(references, group)
        if reference is None:
            raise ModelError("the physics member has no reference of real images")
        centre, spread = reference
        return np.asarray(np.minimum(np.abs((vector - centre) / spread), self.CLIP), np.float64)

    def score_frames(self, frames: FrameSet) -> FrameScores:
        z = (self._inputs(_image_vector(frames), frames.group) - self.mean) / self.scale
        if self.forest is not None:
            synthetic = float(self.forest.decision(z[None, :])[0])
        else:
            synthetic = float(z @ self.coef + self.intercept)
        return FrameScores(synthetic=synthetic, tamper=0.0, best_frame=0, patches=_tiles_scored(frames))

    def patch_logits(self, patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        raise ModelError("physics scores whole frames, not patches")

    def fit(self, batches: Iterator[PatchBatch], *, steps: int, seed: int = 0,
            progress: FitProgress | None = None) -> dict[str, float]:
        raise ModelError("physics is fitted on images: fit_images")

    def fit_images(self, images: Sequence[TrainingImage], *, seed: int = 0,
                   progress: FitProgress | None = None) -> dict[str, float]:
        """Fit on the real and synthetic images among ``images`` (balanced classes); with ``two_sided`` the
        references are the real ones among them. With ``reference_folds`` K > 1 (and sources on the images),
        each training image reads its departures from a reference *without its own source's fold*: a real image
        measured against a reference that contains it sits closer to it than any new real image will, and the
        fitted model would then take ordinary real spread for a fake's departure."""
        from sklearn.linear_model import LogisticRegression

        chosen = [im for im in images if im.label in (0, 1)]
        labels = np.array([im.label for im in chosen])
        if len(np.unique(labels)) < 2:
            raise ModelError("the physics member needs real and synthetic training images")
        vectors = np.stack([_image_vector(FrameSet.of(im.pixels, self.config, group=im.group)) for im in chosen])
        groups = [im.group for im in chosen]
        sources = [im.source for im in chosen]
        real_rows = np.flatnonzero(labels == 0)  # the clean real images: the references are theirs alone
        twins = self._laundered_twins(chosen, seed)
        if twins:
            rows = [i for i, _ in twins]
            vectors = np.vstack([vectors, [_image_vector(FrameSet.of(px, self.config, group=groups[i]))
                                           for i, px in twins]])
            groups, sources = groups + [groups[i] for i in rows], sources + [sources[i] for i in rows]
            labels = np.concatenate([labels, labels[rows]])
        if self.two_sided:
            self.reference = self._references(vectors, groups, real_rows)
            self.with_config(arch_args={**dict(self.config.arch_args), "groups": sorted(self.reference)})
            x = self._fold_inputs(vectors, groups, real_rows, sources, seed)
        else:
            x = vectors
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-6
        z = (x - self.mean) / self.scale
        if self.booster is not None:
            self.forest = fit_forest(z, labels, seed=seed, **self.booster)
            predicted = self.forest.decision(z) > 0
            metrics = {"images": float(len(chosen)), "train_acc": float((predicted == labels.astype(bool)).mean()),
                       "trees": float(self.forest.trees)}
        else:
            model = LogisticRegression(C=float(self.config.arch_args.get("C", 0.3)), max_iter=3000,
                                       class_weight="balanced", random_state=seed)
            model.fit(z, labels)
            self.coef = model.coef_[0].astype(np.float64)
            self.intercept = float(model.intercept_[0])
            metrics = {"images": float(len(chosen)), "train_acc": float(model.score(z, labels))}
        if progress is not None:
            progress(1, 1, metrics)
        return metrics

    def _laundered_twins(self, images: Sequence[TrainingImage], seed: int) -> list[tuple[int, npt.NDArray[np.float32]]]:
        """With ``twins`` (a share), a laundered copy of that share of ``images``, with its image's label: JPEG at
        quality 60-95 (two in three) or a 0.5-0.95x resize. Real images get re-encoded and resized on their way to
        an analyst, and the departures a lossy codec leaves must not read as a generator's: a real image re-encoded
        at quality 75 was flagged 2.8 % of the time by a member trained on clean images only."""
        share = float(self.config.arch_args.get("twins", 0.0))
        if share <= 0:
            return []
        rng = np.random.default_rng(seed + 7919)
        out = []
        for index in np.flatnonzero(rng.random(len(images)) < share):
            pixels = np.asarray(images[int(index)].pixels, np.float32)
            if rng.random() < 2 / 3:
                pixels = jpeg(pixels, int(rng.integers(60, 96)))
            else:
                pixels = resize(pixels, float(rng.uniform(0.5, 0.95)))[0]
            out.append((int(index), pixels))
        return out

    def _references(self, vectors: npt.NDArray[np.float64], groups: Sequence[str],
                    rows: npt.NDArray[np.int64]) -> dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
        """The (centre, spread) of ``vectors[rows]`` (real images) per group, form and ``all``."""
        chosen = [groups[i] for i in rows]
        return {name: _robust_centre(vectors[rows[sub]]) for name, sub in _group_rows(chosen, self.min_group).items()}

    def _fold_inputs(self, vectors: npt.NDArray[np.float64], groups: Sequence[str], real_rows: npt.NDArray[np.int64],
                     sources: Sequence[str], seed: int) -> npt.NDArray[np.float64]:
        """Each training image's departures, from a reference without its source's fold (see :meth:`fit_images`)."""
        folds = int(self.config.arch_args.get("reference_folds", 0))
        if folds < 2 or not all(sources):
            return np.stack([self._inputs(v, g) for v, g in zip(vectors, groups, strict=True)])
        names = sorted(set(sources))
        order = np.random.default_rng(seed).permutation(len(names))
        fold_of = {name: int(order[i]) % folds for i, name in enumerate(names)}
        fold = np.array([fold_of[s] for s in sources])
        out = np.zeros_like(vectors)
        for k in range(folds):
            kept = real_rows[fold[real_rows] != k]
            reference = self._references(vectors, groups, kept) if len(kept) else self.reference
            for i in map(int, np.flatnonzero(fold == k)):
                out[i] = self._departure(vectors[i], groups[i], reference)
        return out

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        out = {"physics.mean": self.mean, "physics.scale": self.scale, "physics.coef": self.coef,
               "physics.intercept": np.array([self.intercept])}
        if self.forest is not None:
            out.update(self.forest.arrays("physics.trees"))
        for name, (centre, spread) in self.reference.items():
            out[f"physics.reference.{name}.centre"] = centre
            out[f"physics.reference.{name}.spread"] = spread
        return out

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        try:
            mean, scale = np.asarray(arrays["physics.mean"]), np.asarray(arrays["physics.scale"])
            coef, intercept = np.asarray(arrays["physics.coef"]), np.asarray(arrays["physics.intercept"])
            reference = {str(name): (np.asarray(arrays[f"physics.reference.{name}.centre"], np.float64),
                                     np.asarray(arrays[f"physics.reference.{name}.spread"], np.float64))
                         for name in (self.config.arch_args.get("groups", []) if self.two_sided else [])}
        except KeyError as exc:
            raise ModelError(f"physics weights lack {exc}") from None
        if mean.shape != (_N,) or coef.shape != (_N,) or not (scale > 0).all():
            raise ModelError("physics weights do not fit the feature set")
        if self.two_sided and ("all" not in reference or any(
                c.shape != (_N,) or s.shape != (_N,) or not (s > 0).all() for c, s in reference.values())):
            raise ModelError("physics weights lack a fitting reference of real images")
        forest = Forest.from_arrays(arrays, "physics.trees", _N) if self.booster is not None else None
        self.mean, self.scale, self.coef, self.intercept = mean, scale, coef, float(intercept[0])
        self.reference = reference
        self.forest = forest
