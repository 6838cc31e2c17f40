"""The detector interface, its frozen config, the detection report, the registry and the factory.

Every detector maps a batch of ``patch_size`` x ``patch_size`` patches (normalised to [0, 1] at native
resolution) to two raw logits per patch: *synthetic* (the whole image was made by a generator) and *tamper* (this
patch holds a local edit). :meth:`Detector.detect` turns an image into patches (bounded in number), aggregates the
patch logits (mean for synthetic, max for tamper), and maps them through the calibration stored in the config;
the decision thresholds live in the config too, so preprocessing, calibration and threshold always travel with
the weights (ARCHITECTURE.md, Detectors).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from detectors.data.normalize import CT_HU_RANGE, DEFAULT_PERCENTILES
from detectors.data.reader import ImageData
from detectors.errors import DetectorsError
from detectors.models.frames import (
    FrameScores,
    FrameSet,
    PatchBatch,
    TrainingImage,
    frame_patches,
    grid_starts,
    image_group,
    modality_group,
    prepare_frames,
)

__all__ = [
    "DetectionReport",
    "Detector",
    "DetectorConfig",
    "DetectorInputError",
    "FrameScores",
    "FrameSet",
    "ModelError",
    "PatchBatch",
    "TrainingImage",
    "UnknownDetectorError",
    "create_detector",
    "detector_class",
    "frame_patches",
    "grid_starts",
    "image_group",
    "list_detectors",
    "modality_group",
    "platt",
    "prepare_frames",
    "register_detector",
]


class ModelError(DetectorsError):
    """A detector model, its config or its bundle is invalid."""


class UnknownDetectorError(ModelError):
    """No detector is registered under the requested name."""


class DetectorInputError(ModelError, ValueError):
    """The image or patches given to a detector cannot be scored."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """Everything that defines a detector besides its weights.

    ``calibration`` maps ``"synthetic"`` and ``"tamper"`` to Platt parameters ``(a, b)``: the calibrated
    probability of a raw image score ``s`` is ``sigmoid(a * s + b)``. ``threshold`` and ``tamper_threshold`` are
    calibrated probabilities chosen on held-out real images at ``target_fpr``.
    """

    arch: str
    arch_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tag: str = ""
    patch_size: int = 64
    #: Patches scored per frame at most (bounded cost for large images); content patches first.
    max_patches: int = 32
    #: Frames scored per multi-frame image at most (evenly spaced).
    max_frames: int = 4
    #: Inputs are rounded to this many bits after normalisation (the bit depth the application writes).
    quantize_bits: int = 12
    ct_range: tuple[float, float] = CT_HU_RANGE
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    calibration: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    threshold: float = 0.5
    tamper_threshold: float = 0.5
    target_fpr: float = 0.01
    training: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Per head, per modality group and form (``MR/native``): a raw-score offset subtracted before calibration,
    #: fitted where a group has enough real calibration views, so that one threshold means one false-positive
    #: rate in every such group (:func:`~detectors.models.training.calibrate_scores`).
    group_offsets: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)

    def offset(self, head: str, group: str | None) -> float:
        """The raw-score offset of ``head`` for images of ``group`` (0 where none was fitted)."""
        if not group:
            return 0.0
        return float(self.group_offsets.get(head, {}).get(group, 0.0))

    def __post_init__(self) -> None:
        if self.patch_size < 16 or self.patch_size % 8:
            raise ModelError(f"patch_size must be a multiple of 8 and >= 16, not {self.patch_size}")
        if self.max_patches < 1 or self.max_frames < 1:
            raise ModelError("max_patches and max_frames must be >= 1")
        if not 1 <= self.quantize_bits <= 16:
            raise ModelError("quantize_bits must be in [1, 16]")
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.tamper_threshold <= 1.0:
            raise ModelError("thresholds are calibrated probabilities in [0, 1]")
        if not 0.0 < self.target_fpr < 1.0:
            raise ModelError("target_fpr must be in (0, 1)")
        for key, value in self.calibration.items():
            if key not in ("synthetic", "tamper") or len(value) != 2 or not all(map(math.isfinite, value)):
                raise ModelError(f"bad calibration entry {key!r}: {value!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["arch_args"] = dict(self.arch_args)
        data["ct_range"] = list(self.ct_range)
        data["percentiles"] = list(self.percentiles)
        data["calibration"] = {k: list(v) for k, v in self.calibration.items()}
        data["training"] = dict(self.training)
        data["group_offsets"] = {head: dict(values) for head, values in self.group_offsets.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown detector config key(s): {', '.join(unknown)}")
        try:
            values = dict(data)
            if "ct_range" in values:
                values["ct_range"] = tuple(float(v) for v in values["ct_range"])
            if "percentiles" in values:
                values["percentiles"] = tuple(float(v) for v in values["percentiles"])
            if "calibration" in values:
                values["calibration"] = {str(k): (float(v[0]), float(v[1])) for k, v in values["calibration"].items()}
            for name in ("patch_size", "max_patches", "max_frames", "quantize_bits"):
                if name in values:
                    values[name] = int(values[name])
            for name in ("threshold", "tamper_threshold", "target_fpr"):
                if name in values:
                    values[name] = float(values[name])
            if "group_offsets" in values:
                values["group_offsets"] = {str(h): {str(g): float(v) for g, v in groups.items()}
                                           for h, groups in values["group_offsets"].items()}
            return cls(**values)
        except (TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"malformed detector config: {exc}") from exc


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class DetectionReport:
    """What a detector says about one image.

    ``synthetic_score`` and ``tamper_score`` are calibrated probabilities in [0, 1]; ``threshold`` and
    ``tamper_threshold`` are the model's decision thresholds for them (chosen at ``target_fpr`` on held-out real
    images). ``heatmap`` holds per-patch calibrated tamper probabilities of the frame with the most suspicious
    patch, on the grid of patch positions (NaN where no patch was scored); ``heatmap_frame`` is that frame's
    position among the scored frames. Models that score pixels (the segmentation member) also give
    ``pixel_patches``, the calibrated tamper probability of each pixel of that frame's scored patches (N, P, P), at
    ``pixel_origins``; ``pixel_map`` lays them out over the frame (NaN where no patch was scored) when it is first
    asked for, so that a report of a 4k radiograph does not build a 4k map nobody looks at. A report has no truth
    value: compare the scores with the thresholds.
    """

    synthetic_score: float
    tamper_score: float
    threshold: float
    tamper_threshold: float
    model_tag: str
    heatmap: npt.NDArray[np.float32]
    patch_size: int
    patch_positions: tuple[tuple[int, int], ...]
    frame_shape: tuple[int, int]
    heatmap_frame: int = 0
    frames_scored: int = 1
    patches_scored: int = 0
    pixel_patches: npt.NDArray[np.float32] | None = None
    pixel_origins: tuple[tuple[int, int], ...] = ()
    #: Models that map every tile (the one-class member's anomaly) give a calibrated map of ``cell`` x ``cell``
    #: pixel cells over the whole heatmap frame instead of per-patch values.
    cell_map: npt.NDArray[np.float32] | None = None
    cell: int = 0
    #: The modality group and form the image was scored as (``MR/native``), "" where unknown.
    group: str = ""

    def __bool__(self) -> bool:
        raise TypeError("a DetectionReport has no truth value; compare synthetic_score with threshold")

    @property
    def suspected_synthetic(self) -> bool:
        return self.synthetic_score >= self.threshold

    @property
    def suspected_tampered(self) -> bool:
        return self.tamper_score >= self.tamper_threshold

    @functools.cached_property
    def pixel_map(self) -> npt.NDArray[np.float32] | None:
        """Each pixel of the heatmap frame: the mean of ``pixel_patches`` covering it, or its cell of
        ``cell_map``; None without either."""
        if self.cell_map is not None:
            h, w = self.frame_shape
            full = np.repeat(np.repeat(self.cell_map, self.cell, axis=0), self.cell, axis=1)[:h, :w]
            if full.shape != (h, w):  # cells that do not cover the edge: the last one stretches
                full = np.pad(full, ((0, h - full.shape[0]), (0, w - full.shape[1])), mode="edge")
            return np.ascontiguousarray(full, dtype=np.float32)
        if self.pixel_patches is None:
            return None
        return _lay_out(self.frame_shape, self.patch_size, zip(self.pixel_origins, self.pixel_patches, strict=True))

    def pixel_heatmap(self) -> npt.NDArray[np.float32]:
        """The heatmap at the frame's pixel size: the ``pixel_map`` where the model scores pixels, else each pixel
        gets the mean score of the scored patches covering it (NaN where none is)."""
        if self.pixel_map is not None:
            return self.pixel_map
        rows, cols = self.heatmap.shape
        ys = sorted({y for y, _ in self.patch_positions})[:rows]
        xs = sorted({x for _, x in self.patch_positions})[:cols]
        scored = (((y, x), self.heatmap[i, j]) for i, y in enumerate(ys) for j, x in enumerate(xs)
                  if not np.isnan(self.heatmap[i, j]))
        return _lay_out(self.frame_shape, self.patch_size, scored)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the heatmap as its grid size only; write it with :func:`render_heatmap`)."""
        return {
            "synthetic_score": round(self.synthetic_score, 6),
            "tamper_score": round(self.tamper_score, 6),
            "threshold": round(self.threshold, 6),
            "tamper_threshold": round(self.tamper_threshold, 6),
            "model_tag": self.model_tag,
            "heatmap_grid": list(self.heatmap.shape),
            "patch_size": self.patch_size,
            "frames_scored": self.frames_scored,
            "patches_scored": self.patches_scored,
            **({"group": self.group} if self.group else {}),
        }


def _lay_out(
    shape: tuple[int, int], patch: int, scored: Iterable[tuple[tuple[int, int], Any]]
) -> npt.NDArray[np.float32]:
    """A (H, W) map: each pixel the mean of the values (a scalar or a patch of values) of the scored patches at
    ``(y, x)`` that cover it; NaN where none does."""
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    for (y, x), values in scored:
        total[y : y + patch, x : x + patch] += values
        count[y : y + patch, x : x + patch] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


#: Called as ``progress(step, total, metrics)`` during training.
FitProgress = Callable[[int, int, Mapping[str, float]], None]

_REGISTRY: dict[str, type[Detector]] = {}
D = TypeVar("D", bound="type[Detector]")


def register_detector(name: str) -> Callable[[D], D]:
    """Class decorator: register a :class:`Detector` subclass under ``name``."""

    def decorate(cls: D) -> D:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"detector {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


#: Members whose module imports torch, registered when first asked for: a bundle without them (the shipped one)
#: scores images without importing torch, which is most of a command's start-up.
_LAZY_MODULES = {"cnn": "detectors.models.cnn", "segment": "detectors.models.segment"}


def list_detectors() -> list[str]:
    """The registered detector names (with those registered on first use), sorted."""
    return sorted(set(_REGISTRY) | set(_LAZY_MODULES))


def detector_class(name: str) -> type[Detector]:
    if name not in _REGISTRY and name in _LAZY_MODULES:
        import importlib

        importlib.import_module(_LAZY_MODULES[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDetectorError(
            f"unknown detector {name!r}; registered: {', '.join(list_detectors()) or 'none'}"
        ) from None


def create_detector(name: str, *, preset: str = "small", seed: int = 0, **overrides: Any) -> Detector:
    """Build detector ``name`` from a preset (``tiny`` for tests, ``small`` for the shipped bundle).

    ``overrides`` replace config fields; ``arch_args`` overrides are merged into the preset's.
    """
    cls = detector_class(name)
    if preset not in cls.PRESETS:
        raise ModelError(f"detector {name} has no preset {preset!r}; choose {', '.join(cls.PRESETS)}")
    values: dict[str, Any] = {"arch": name, **cls.PRESETS[preset]}
    arch_args = {**dict(values.pop("arch_args", {})), **dict(overrides.pop("arch_args", {}))}
    values.update(overrides)
    config = DetectorConfig(arch_args=arch_args, **values)
    return cls(config, seed=seed)


def platt(params: tuple[float, float] | None, raw: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Calibrated probabilities ``sigmoid(a * raw + b)``; without parameters the plain sigmoid."""
    a, b = params if params is not None else (1.0, 0.0)
    z = np.clip(a * np.asarray(raw, dtype=np.float64) + b, -30.0, 30.0)  # so that a probability stays < 1
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)





class Detector(abc.ABC):
    """A patch-level real/synthetic/tampered model with image-level calibrated scores."""

    name: ClassVar[str] = ""
    #: Whether the model scores whole frames (:meth:`score_frames`, trained by :meth:`fit_images`) rather than
    #: patches (:meth:`patch_logits`, trained by :meth:`fit`).
    IMAGE_LEVEL: ClassVar[bool] = False
    #: The heads this model has an opinion on; an ensemble gives a member no weight on the others.
    HEADS: ClassVar[tuple[str, ...]] = ("synthetic", "tamper")
    #: Config values per preset name (``arch`` is added by the factory).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}, "small": {}}

    def __init__(self, config: DetectorConfig, *, seed: int = 0) -> None:
        if config.arch != self.name:
            raise ModelError(f"config is for {config.arch!r}, not {self.name!r}")
        self.config = config
        self.seed = seed

    # ------------------------------------------------------------------ to implement

    @abc.abstractmethod
    def patch_logits(self, patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Raw logits (N, 2) — synthetic, tamper — of patches (N, P, P) in [0, 1]. When scoring, ``patches`` are
        those of one frame (:meth:`raw_scores`), so a model may measure a patch against the rest of its frame."""

    def patch_outputs(
        self, patches: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """:meth:`patch_logits`, and the tamper logit of each pixel (N, P, P) where the model scores pixels
        (None here: override both in one pass where it does)."""
        return self.patch_logits(patches), None

    @abc.abstractmethod
    def fit(
        self,
        batches: Iterator[PatchBatch],
        *,
        steps: int,
        seed: int = 0,
        progress: FitProgress | None = None,
    ) -> dict[str, float]:
        """Train on ``steps`` batches drawn from ``batches``; returns final metrics."""

    @abc.abstractmethod
    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Every learned array, by a stable name (saved as safetensors)."""

    @abc.abstractmethod
    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load arrays written by :meth:`state_arrays`; raise :class:`ModelError` if they do not fit."""

    @property
    def parameter_count(self) -> int:
        return int(sum(a.size for a in self.state_arrays().values()))

    def with_config(self, **changes: Any) -> None:
        """Replace config fields (calibration, thresholds, tag, training record) after training."""
        self.config = dataclasses.replace(self.config, **changes)

    # ------------------------------------------------------------------ scoring

    def fit_images(
        self, images: Sequence[TrainingImage], *, seed: int = 0, progress: FitProgress | None = None
    ) -> dict[str, float]:
        """Train on whole images (members with :attr:`IMAGE_LEVEL`); patch members learn from :meth:`fit`."""
        raise ModelError(f"{self.name} learns from patches (fit), not whole images")

    # ------------------------------------------------------------------ scoring

    def score_frames(self, frames: FrameSet) -> FrameScores:
        """Raw scores of one image's prepared frames. Patch members (this default): the patches of each frame
        (where the dense pass points first, when it ran), the mean synthetic logit over all of them and the
        largest tamper logit; image-level members override it."""
        syn: list[npt.NDArray[np.float32]] = []
        best = (-math.inf, 0)
        per_frame: list[tuple[npt.NDArray[np.float32], list[tuple[int, int]], tuple[list[int], list[int]],
                              tuple[int, int], npt.NDArray[np.float32] | None]] = []
        for index, frame in enumerate(frames.frames):
            patches, positions, grid = frame_patches(frame, self.config.patch_size, self.config.max_patches,
                                                     frames.priority(index))
            logits, pixels = self.patch_outputs(patches)
            if logits.shape != (len(patches), 2) or not np.isfinite(logits).all():
                raise ModelError(f"{self.name} returned bad logits of shape {logits.shape}")
            if pixels is not None and (pixels.shape != patches.shape or not np.isfinite(pixels).all()):
                raise ModelError(f"{self.name} returned bad pixel logits of shape {pixels.shape}")
            syn.append(logits[:, 0])
            top = float(logits[:, 1].max())
            if top > best[0]:
                best = (top, index)
            per_frame.append((logits[:, 1], positions, grid, (max(frame.shape[0], self.config.patch_size),
                                                              max(frame.shape[1], self.config.patch_size)), pixels))
        syn_all = np.concatenate(syn)
        return FrameScores(synthetic=float(syn_all.mean()), tamper=best[0], best_frame=best[1],
                           patch_frames=per_frame, patches=int(syn_all.size))

    def raw_scores(
        self, image: ImageData | npt.ArrayLike, *, group: str | None = None
    ) -> tuple[float, float, dict[str, Any]]:
        """Image-level raw scores (synthetic, tamper), after the group's offsets, and what the heatmap needs."""
        frames = FrameSet.of(image, self.config, group=group)
        scores = self.score_frames(frames)
        return (scores.synthetic - self.config.offset("synthetic", frames.group),
                scores.tamper - self.config.offset("tamper", frames.group),
                {"scores": scores, "frames": frames})

    def detect(self, image: ImageData | npt.ArrayLike, *, group: str | None = None) -> DetectionReport:
        """Score one image (an :class:`ImageData` in physical units, or normalised frames in [0, 1]); ``group``
        (``MR/native``) tells the modality group of an array, which an :class:`ImageData` carries."""
        syn_raw, tamper_raw, info = self.raw_scores(image, group=group)
        return self._report(syn_raw, tamper_raw, info["scores"], info["frames"])

    def _report(self, syn_raw: float, tamper_raw: float, scores: FrameScores, frames: FrameSet) -> DetectionReport:
        cal = self.config.calibration
        tamper_offset = self.config.offset("tamper", frames.group)
        best = scores.best_frame
        frame = frames.frames[best]
        common: dict[str, Any] = {
            "synthetic_score": float(platt(cal.get("synthetic"), syn_raw)),
            "tamper_score": float(platt(cal.get("tamper"), tamper_raw)),
            "threshold": self.config.threshold,
            "tamper_threshold": self.config.tamper_threshold,
            "model_tag": self.config.tag or self.name,
            "patch_size": self.config.patch_size,
            "heatmap_frame": best,
            "frames_scored": len(frames.frames),
            "group": frames.group,
        }
        if scores.patch_frames is None:
            shape = (max(frame.shape[0], 1), max(frame.shape[1], 1))
            cells, cell = (frames.cell_map(best, scores.tile_maps[best]) if scores.tile_maps is not None
                           else (np.full((1, 1), tamper_raw + tamper_offset, np.float32), max(shape)))
            calibrated = platt(cal.get("tamper"), cells - tamper_offset).astype(np.float32)
            return DetectionReport(**common, heatmap=calibrated, patch_positions=(), frame_shape=shape,
                                   patches_scored=scores.patches, cell_map=calibrated, cell=cell)
        tamper_logits, positions, (all_ys, all_xs), shape, pixels = scores.patch_frames[best]
        heat = np.full((len(all_ys), len(all_xs)), np.nan, dtype=np.float32)
        probs = platt(cal.get("tamper"), tamper_logits - tamper_offset)
        for (y, x), value in zip(positions, probs, strict=True):
            heat[all_ys.index(y), all_xs.index(x)] = value
        pixel_patches = None if pixels is None else platt(cal.get("tamper"), pixels - tamper_offset).astype(
            np.float32)
        grid_positions = tuple((y, x) for y in all_ys for x in all_xs)
        return DetectionReport(
            **common,
            heatmap=heat,
            patch_positions=grid_positions,
            frame_shape=shape,
            patches_scored=scores.patches,
            pixel_patches=pixel_patches,
            pixel_origins=tuple(positions) if pixels is not None else (),
        )
