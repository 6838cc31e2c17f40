"""``classical``: frequency-spectrum and noise-residual features with two scikit-learn logistic regressions.

A second, independent opinion beside the CNN, and fast (numpy FFTs on batches of patches). Per patch:

- noise residuals: a Laplacian and the first differences; their log standard deviation, mean absolute value,
  kurtosis and the fraction of exact zeros (quantisation and smoothing leave traces there);
- the relative radial power spectrum (Hann window, log of the share of each of ``bins`` radial bands);
- periodic peaks that up-sampling layers leave: the power on the Nyquist row/column and at a quarter of the
  sampling rate, relative to their neighbourhood, and a checkerboard energy;
- grey-level mean and spread;
- with ``self_reference`` (the ``small`` preset): all of the above once more, as the change from the patch to its
  own down-and-up-sampled copy (2x area down, bilinear up). Removing the finest scale takes real acquisition
  noise away but leaves a generator's already smooth output nearly as it was; measured as a difference within the
  same patch, this depends less on the patch's content and source than the plain features do
  (``benchmarks/bench_detection.py``).

The two heads (synthetic, tamper) are standardised logistic regressions; with ``booster`` (the ``small`` preset)
the synthetic head is boosted trees on its two-sided departures (:mod:`detectors.models.boosting`). Only
coefficients and the trees' arrays are stored (safetensors), and prediction is plain numpy, so no pickle is ever
read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from detectors.models.base import Detector, DetectorConfig, FitProgress, ModelError, PatchBatch, register_detector
from detectors.models.boosting import Forest, fit_forest

__all__ = ["ClassicalDetector", "down_up", "model_features", "patch_features"]

_EPS = 1e-6
#: Departures from the real patches are clipped here (robust z units).
_CLIP = 20.0


def _radial_index(p: int, bins: int) -> npt.NDArray[np.int64]:
    fy = np.fft.fftfreq(p)[:, None]
    fx = np.fft.rfftfreq(p)[None, :]
    r = np.sqrt(fy**2 + fx**2) / 0.5  # 1.0 at the Nyquist frequency on the axes
    return np.minimum((r * bins).astype(np.int64), bins)  # bin ``bins`` collects the corners beyond Nyquist


def patch_features(patches: npt.NDArray[np.float32], bins: int = 12) -> npt.NDArray[np.float64]:
    """Features (N, F) of patches (N, P, P) in [0, 1]."""
    x = np.asarray(patches, dtype=np.float64)
    n, p, _ = x.shape
    mean = x.mean(axis=(1, 2))
    std = x.std(axis=(1, 2))
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    dx = np.diff(x, axis=2)
    dy = np.diff(x, axis=1)
    feats: list[npt.NDArray[np.float64]] = [mean, np.log(std + _EPS)]
    for r in (lap, dx, dy):
        flat = r.reshape(n, -1)
        s = flat.std(axis=1)
        centred = flat - flat.mean(axis=1, keepdims=True)
        squared = centred * centred  # not centred**4: numpy's float power was three quarters of the features' time
        kurt = (squared * squared).mean(axis=1) / (s**4 + _EPS)
        feats += [
            np.log(s + _EPS),
            np.log(np.abs(flat).mean(axis=1) + _EPS),
            np.log(kurt + 1.0),
            (np.abs(flat) < 1e-7).mean(axis=1),
            np.log(s + _EPS) - np.log(std + _EPS),
        ]
    window = np.outer(np.hanning(p), np.hanning(p))
    spec = np.abs(np.fft.rfft2((x - mean[:, None, None]) * window)) ** 2
    total = spec.reshape(n, -1).sum(axis=1) + _EPS
    index = _radial_index(p, bins)
    for b in range(bins + 1):
        sel = index == b
        feats.append(np.log(spec[:, sel].sum(axis=1) / total + 1e-12))
    half, quarter = p // 2, p // 4
    neighbours = spec[:, half - 3 : half - 1, :].mean(axis=(1, 2)) + _EPS
    feats.append(np.log(spec[:, half, :].mean(axis=1) / neighbours + _EPS))
    feats.append(np.log(spec[:, :, -1].mean(axis=1) / (spec[:, :, -3:-1].mean(axis=(1, 2)) + _EPS) + _EPS))
    feats.append(np.log(spec[:, quarter, :].mean(axis=1) / (spec[:, quarter - 2, :].mean(axis=1) + _EPS) + _EPS))
    feats.append(np.log(spec[:, :, quarter].mean(axis=1) / (spec[:, :, quarter - 2].mean(axis=1) + _EPS) + _EPS))
    sign = np.where((np.add.outer(np.arange(p), np.arange(p)) % 2) == 0, 1.0, -1.0)
    checker = ((x - mean[:, None, None]) * sign).mean(axis=(1, 2))
    feats.append(np.log(np.abs(checker) + _EPS) - np.log(std + _EPS))
    out = np.stack(feats, axis=1)
    return np.nan_to_num(out, nan=0.0, posinf=30.0, neginf=-30.0)


def down_up(patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Each patch (N, P, P) down-sampled 2x (area) and up-sampled back (bilinear): its finest scale removed."""
    import cv2

    out = np.empty(np.shape(patches), dtype=np.float32)
    for i, patch in enumerate(np.asarray(patches, dtype=np.float32)):
        h, w = patch.shape
        small = cv2.resize(patch, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


def model_features(patches: npt.NDArray[np.float32], bins: int, self_reference: bool) -> npt.NDArray[np.float64]:
    """:func:`patch_features`, and with ``self_reference`` also their change under :func:`down_up`."""
    plain = patch_features(patches, bins)
    if not self_reference:
        return plain
    return np.concatenate([plain, plain - patch_features(down_up(patches), bins)], axis=1)


@register_detector("classical")
class ClassicalDetector(Detector):
    """Spectrum and residual features, standardised, two logistic regressions (synthetic, tamper)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"patch_size": 32, "max_patches": 8,
                 "arch_args": {"bins": 8, "C": 1.0, "fit_patches": 512, "two_sided": True}},
        "small": {"patch_size": 64, "max_patches": 32,
                  "arch_args": {"bins": 12, "C": 0.5, "fit_patches": 12000, "self_reference": True,
                                 "two_sided": True, "booster": {"trees": 150, "depth": 3, "rate": 0.1,
                                                                "subsample": 0.3, "min_leaf": 50}}},
    }

    def __init__(self, config: DetectorConfig, *, seed: int = 0) -> None:
        super().__init__(config, seed=seed)
        self.bins = int(config.arch_args.get("bins", 12))
        #: Absent from bundles made before it existed: those keep the plain features.
        self.self_reference = bool(config.arch_args.get("self_reference", False))
        blank = np.zeros((1, config.patch_size, config.patch_size), np.float32)
        n_features = model_features(blank, self.bins, self.self_reference).shape[1]
        self.mean = np.zeros(n_features)
        self.scale = np.ones(n_features)
        #: The synthetic head reads departures from the real patches, in either direction (see the physics
        #: member's ``two_sided``); absent from older bundles, which keep the signed features.
        self.two_sided = bool(config.arch_args.get("two_sided", False))
        self.reference = (np.zeros(n_features), np.ones(n_features))  # real patches' median and spread
        self.syn_mean = np.zeros(n_features)
        self.syn_scale = np.ones(n_features)
        self.coef = np.zeros((2, n_features))
        self.intercept = np.zeros(2)
        booster = config.arch_args.get("booster")
        #: With ``two_sided``: boosted trees (:mod:`detectors.models.boosting`) for the synthetic head, or None.
        self.booster: dict[str, float] | None = dict(booster) if booster and self.two_sided else None
        self.forest: Forest | None = None
        self._n_features = n_features

    def _departures(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``two_sided``: each feature's clipped absolute departure from the real training patches."""
        return np.minimum(np.abs((x - self.reference[0]) / self.reference[1]), _CLIP)

    def patch_logits(self, patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        x = model_features(patches, self.bins, self.self_reference)
        z = (x - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        if self.two_sided:
            d = (self._departures(x) - self.syn_mean) / self.syn_scale
            logits[:, 0] = self.forest.decision(d) if self.forest is not None else d @ self.coef[0] + self.intercept[0]
        return np.asarray(logits, dtype=np.float32)

    def fit(
        self,
        batches: Iterator[PatchBatch],
        *,
        steps: int,
        seed: int = 0,
        progress: FitProgress | None = None,
    ) -> dict[str, float]:
        """Draw about ``fit_patches`` patches from ``batches`` (``steps`` is ignored) and fit both heads."""
        from sklearn.linear_model import LogisticRegression

        wanted = int(self.config.arch_args.get("fit_patches", 12000))
        feats, syn, tam = [], [], []
        count = 0
        while count < wanted:
            batch = next(batches)
            feats.append(model_features(batch.patches, self.bins, self.self_reference))
            syn.append(batch.synthetic)
            tam.append(batch.tamper)
            count += len(batch.patches)
        x = np.concatenate(feats)
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-6
        z = (x - self.mean) / self.scale
        heads = [z, z]
        synthetic, tampered = np.concatenate(syn), np.concatenate(tam)
        if self.two_sided:
            real = x[(synthetic == 0) & (tampered == 0)]
            real = real if len(real) else x
            centre = np.median(real, axis=0)
            self.reference = (centre, 1.4826 * np.median(np.abs(real - centre), axis=0) + 1e-3)
            d = self._departures(x)
            self.syn_mean, self.syn_scale = d.mean(axis=0), d.std(axis=0) + 1e-6
            heads[0] = (d - self.syn_mean) / self.syn_scale
        metrics: dict[str, float] = {"patches": float(len(z))}
        c = float(self.config.arch_args.get("C", 0.5))
        for head, labels in enumerate((synthetic, tampered)):
            name = ("syn", "tamper")[head]
            z = heads[head]
            if head == 0 and self.booster is not None and len(np.unique(labels)) == 2:
                self.forest = fit_forest(z, labels, seed=seed, **self.booster)
                metrics[f"{name}_acc"] = float(((self.forest.decision(z) > 0) == labels.astype(bool)).mean())
                continue
            if len(np.unique(labels)) < 2:
                self.coef[head] = 0.0
                self.intercept[head] = -4.0 if labels.max() == 0 else 4.0
                metrics[f"{name}_acc"] = 1.0
                continue
            model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
            model.fit(z, labels)
            self.coef[head] = model.coef_[0]
            self.intercept[head] = model.intercept_[0]
            metrics[f"{name}_acc"] = float(model.score(z, labels))
        if progress is not None:
            progress(1, 1, metrics)
        return metrics

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "classical.mean": self.mean.astype(np.float64),
            "classical.scale": self.scale.astype(np.float64),
            "classical.coef": self.coef.astype(np.float64),
            "classical.intercept": self.intercept.astype(np.float64),
            **({"classical.reference_centre": self.reference[0], "classical.reference_spread": self.reference[1],
                "classical.syn_mean": self.syn_mean, "classical.syn_scale": self.syn_scale}
               if self.two_sided else {}),
            **(self.forest.arrays("classical.trees") if self.forest is not None else {}),
        }

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        try:
            mean = np.asarray(arrays["classical.mean"], np.float64)
            scale = np.asarray(arrays["classical.scale"], np.float64)
            coef = np.asarray(arrays["classical.coef"], np.float64)
            intercept = np.asarray(arrays["classical.intercept"], np.float64)
            two = [np.asarray(arrays[f"classical.{k}"], np.float64) for k in
                   ("reference_centre", "reference_spread", "syn_mean", "syn_scale")] if self.two_sided else []
        except KeyError as exc:
            raise ModelError(f"classical weights lack {exc}") from None
        if mean.shape != self.mean.shape or coef.shape != self.coef.shape or intercept.shape != (2,):
            raise ModelError("classical weights do not fit the config (patch size / bins)")
        if not (scale > 0).all():
            raise ModelError("classical weights have a non-positive scale")
        if two and (any(a.shape != mean.shape for a in two) or not ((two[1] > 0).all() and (two[3] > 0).all())):
            raise ModelError("classical weights lack a fitting reference of real patches")
        forest = Forest.from_arrays(arrays, "classical.trees", self._n_features) if self.booster is not None else None
        self.mean, self.scale, self.coef, self.intercept = mean, scale, coef, intercept
        self.forest = forest
        if two:
            self.reference, self.syn_mean, self.syn_scale = (two[0], two[1]), two[2], two[3]
