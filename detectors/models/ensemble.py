"""``ensemble``: the members together, each scoring the image its own way, their raw scores weighted per head.

Members (``arch_args["members"]``) are patch models (the CNN, the classical spectrum model, the tamper
segmentation network) and image-level models (the one-class physics model, the supervised physics model; see
:mod:`detectors.models.oneclass`). An image is looked at in two passes:

1. the **dense pass**: the physics statistics of every tile of every frame and each tile's anomaly against its own
   frame (:class:`~detectors.models.base.FrameSet`), which costs a few milliseconds for a 512 x 512 frame and
   covers every pixel;
2. the patch members then score a bounded number of patches per frame, half of them where the dense pass points
   (the most anomalous tiles), the rest spread over the frame's content.

Each head's raw score is the weighted sum of the members' raw image scores (a member only counts on the heads it
has an opinion on, its ``HEADS``). ``weights`` is one list (the same for both heads) or one list per head
(``{"synthetic": [...], "tamper": [...]}``), normalised to sum 1; cross-fitted training fits them on
out-of-fold scores (stacking) and drops members that do not earn their run time. The heatmap comes from the
member with the largest tamper weight, shifted so that its hottest place carries the image's tamper score. The
image-level calibration, per-group offsets and thresholds live in the ensemble's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from detectors.models.base import (
    Detector,
    DetectorConfig,
    FitProgress,
    FrameScores,
    FrameSet,
    ModelError,
    PatchBatch,
    TrainingImage,
    detector_class,
    register_detector,
)

__all__ = ["EnsembleDetector"]

HEAD_NAMES: tuple[str, str] = ("synthetic", "tamper")


def _per_head(given: Any) -> dict[str, list[float]]:
    """``weights`` of an ensemble's arch_args as one list per head (one list given: the same for both)."""
    if isinstance(given, Mapping):
        return {head: [float(w) for w in values] for head, values in given.items()}
    return {"synthetic": [float(w) for w in given], "tamper": [float(w) for w in given]}


def _member_args(preset: str, name: str) -> dict[str, Any]:
    return dict(detector_class(name).PRESETS[preset].get("arch_args", {}))


def _shifted(scores: FrameScores, top: float, weight: float) -> FrameScores:
    """``scores``' maps rescaled by ``weight`` about their maximum, which becomes ``top``."""
    peak = scores.tamper
    if scores.tile_maps is not None:
        maps = [top + weight * (m - peak) for m in scores.tile_maps]
        return dataclasses.replace(scores, tamper=top, tile_maps=maps)
    frames = []
    for logits, positions, grid, shape, pixels in scores.patch_frames or []:
        frames.append((top + weight * (logits - peak), positions, grid, shape,
                       None if pixels is None else (top + weight * (pixels - peak)).astype(np.float32)))
    return dataclasses.replace(scores, tamper=top, patch_frames=frames)


class _Members(Mapping[str, "Detector"]):
    """An ensemble's members by name, in order; a member is built when it is looked up."""

    def __init__(self, owner: EnsembleDetector, names: Sequence[str]) -> None:
        self._owner = owner
        self._names = list(names)

    def __getitem__(self, name: str) -> Detector:
        if name not in self._names:
            raise KeyError(name)
        return self._owner._member(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


@register_detector("ensemble")
class EnsembleDetector(Detector):
    """Weighted raw scores of members (``weights`` per member and head; default equal)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "patch_size": 32,
            "max_patches": 8,
            "arch_args": {
                "members": ["cnn", "classical", "segment"],
                "preset": "tiny",
                "weights": {"synthetic": [0.5, 0.5, 0.0], "tamper": [0.0, 0.0, 1.0]},
            },
        },
        "small": {
            "patch_size": 64,
            "max_patches": 16,
            "arch_args": {
                "members": ["oneclass", "physics", "classical", "cnn", "segment"],
                "preset": "small",
                "guide": True,
                "weights": {"synthetic": [0.2, 0.2, 0.2, 0.4, 0.0], "tamper": [0.5, 0.0, 0.0, 0.0, 0.5]},
            },
        },
    }

    def __init__(self, config: DetectorConfig, *, seed: int = 0) -> None:
        super().__init__(config, seed=seed)
        args = dict(config.arch_args)
        names = [str(m) for m in args.get("members", ["cnn", "classical"])]
        if not names or "ensemble" in names:
            raise ModelError("an ensemble needs members other than itself")
        preset = str(args.get("preset", "small"))
        #: Whether patch members look first where the dense pass points (bundles made before it: no).
        self.guide = bool(args.get("guide", False))
        self._seed = seed
        self._member_args = {name: dict(args.get(name, _member_args(preset, name))) for name in names}
        self._built: dict[str, Detector] = {}
        #: Weights of members not built yet (a loaded bundle's members that weigh nothing on either head).
        self._dormant: dict[str, dict[str, npt.NDArray[Any]]] = {}
        #: The members by name, in order; built on first use, so that a member stacking gave no weight (and the
        #: imports it needs: timm for the CNN) costs nothing when a bundle is only used to score.
        self.members: Mapping[str, Detector] = _Members(self, names)
        per_head = _per_head(args.get("weights", [1.0] * len(names)))
        #: (2, members): the weight of each member on the synthetic (row 0) and tamper (row 1) raw score.
        self.weights = np.zeros((2, len(names)), dtype=np.float32)
        for row, head in enumerate(HEAD_NAMES):
            weights = per_head.get(head, [])
            if len(weights) != len(names) or min(weights) < 0:
                raise ModelError(f"ensemble weights ({head}) must be one non-negative number per member")
            for col, name in enumerate(names):
                if head in detector_class(name).HEADS:
                    self.weights[row, col] = weights[col]
            if self.weights[row].sum() <= 0:
                raise ModelError(f"no member of the ensemble has weight on the {head} head")
            self.weights[row] /= self.weights[row].sum()
        for name in names:  # build the weighted members now: errors in their arguments surface at construction
            if self._weighs(name):
                self._member(name)

    def _weighs(self, name: str) -> bool:
        """Whether member ``name`` has weight on either head (only those score)."""
        return bool(self.weights[:, list(self.members).index(name)].any())

    def _member(self, name: str) -> Detector:
        """Member ``name``, built (and given its dormant weights) on first use."""
        member = self._built.get(name)
        if member is None:
            index = list(self.members).index(name)
            member_config = dataclasses.replace(
                self.config, arch=name, arch_args=self._member_args[name], calibration={}, training={}, tag="",
                group_offsets={},
            )
            member = detector_class(name)(member_config, seed=self._seed + index)
            if name in self._dormant:
                member.load_state_arrays(self._dormant.pop(name))
            self._built[name] = member
        return member

    # ------------------------------------------------------------------ members and weights

    def head_members(self, head: str) -> list[str]:
        """The members with an opinion on ``head`` (those :meth:`set_weights` weighs)."""
        return [name for name in self.members if head in detector_class(name).HEADS]

    def synthetic_members(self) -> list[str]:
        return self.head_members("synthetic")

    def member_scores(self, images: Sequence[Any], groups: Sequence[str] | None = None) -> npt.NDArray[np.float64]:
        """(N, members, 2): each member's raw (synthetic, tamper) score of each image, in member order (0 where a
        member has no opinion on a head). The ensemble's raw score of a head is the weighted sum of its column,
        so weights fitted on these act on the ensemble exactly."""
        out = np.zeros((len(images), len(self.members), 2))
        for i, image in enumerate(images):
            frames = FrameSet.of(image, self.config, group=None if groups is None else groups[i])
            self._dense_pass(frames)
            for j, member in enumerate(self.members.values()):
                scores = member.score_frames(frames)
                out[i, j] = (scores.synthetic if "synthetic" in member.HEADS else 0.0,
                             scores.tamper if "tamper" in member.HEADS else 0.0)
        return out

    def member_synthetic_scores(self, images: Sequence[Any]) -> npt.NDArray[np.float64]:
        """(N, len(:meth:`synthetic_members`)): each such member's raw synthetic score."""
        columns = [list(self.members).index(name) for name in self.synthetic_members()]
        return self.member_scores(images)[:, columns, 0]

    def set_weights(self, head: str, weights: Sequence[float]) -> None:
        """New weights of ``head``, one per :meth:`head_members` (normalised to sum 1); recorded in the config's
        ``arch_args`` so that a bundle keeps them."""
        names = self.head_members(head)
        values = [float(w) for w in weights]
        if len(values) != len(names) or min(values) < 0 or sum(values) <= 0:
            raise ModelError(f"{head} weights must be one non-negative number per member, not all zero")
        row = np.zeros(len(self.members), dtype=np.float32)
        for name, value in zip(names, values, strict=True):
            row[list(self.members).index(name)] = value
        self.weights[HEAD_NAMES.index(head)] = row / row.sum()
        args = dict(self.config.arch_args)
        per_head = _per_head(args.get("weights", [1.0] * len(self.members)))
        per_head[head] = [float(w) for w in self.weights[HEAD_NAMES.index(head)]]
        args["weights"] = per_head
        self.with_config(arch_args=args)

    def set_synthetic_weights(self, weights: Sequence[float]) -> None:
        self.set_weights("synthetic", weights)

    def with_config(self, **changes: Any) -> None:
        super().with_config(**changes)
        # Member arch_args are recorded so that a bundle rebuilds the same members.
        args = dict(self.config.arch_args)
        for name, member in self._built.items():
            self._member_args[name] = dict(member.config.arch_args)
        for name in self.members:
            args[name] = dict(self._member_args[name])
        self.config = dataclasses.replace(self.config, arch_args=args)

    # ------------------------------------------------------------------ scoring

    def _dense_pass(self, frames: FrameSet) -> None:
        """The tile anomaly of every frame, when the patch members are guided by it or a member reads it."""
        if self.guide:
            for index in range(len(frames.frames)):
                frames.tile_anomaly(index)

    def score_frames(self, frames: FrameSet) -> FrameScores:
        self._dense_pass(frames)
        synthetic, tamper = 0.0, 0.0
        heat: tuple[float, FrameScores] | None = None
        for col, name in enumerate(self.members):
            w_syn, w_tam = float(self.weights[0, col]), float(self.weights[1, col])
            if w_syn == 0 and w_tam == 0:
                continue
            scores = self._member(name).score_frames(frames)
            synthetic += w_syn * scores.synthetic
            tamper += w_tam * scores.tamper
            if w_tam > 0 and (heat is None or w_tam > heat[0]):
                heat = (w_tam, scores)
        if heat is None:  # pragma: no cover - the constructor requires a tamper weight
            raise ModelError("no member has weight on the tamper head")
        shown = _shifted(heat[1], tamper, heat[0])
        return dataclasses.replace(shown, synthetic=synthetic, tamper=tamper)

    def patch_logits(self, patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.patch_outputs(patches)[0]

    def patch_outputs(
        self, patches: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """Weighted patch logits of the patch members (what training streams look at)."""
        out = np.zeros((len(patches), 2), dtype=np.float32)
        for col, name in enumerate(self.members):
            if detector_class(name).IMAGE_LEVEL or not self.weights[:, col].any():
                continue
            logits, _ = self._member(name).patch_outputs(patches)
            out += self.weights[:, col] * logits
        return out, None

    # ------------------------------------------------------------------ training

    def fit(
        self,
        batches: Iterator[PatchBatch],
        *,
        steps: int,
        seed: int = 0,
        progress: FitProgress | None = None,
        images: Sequence[TrainingImage] | None = None,
    ) -> dict[str, float]:
        """Train the patch members on ``batches`` and the image-level members on ``images``."""
        metrics: dict[str, float] = {}
        for name, member in self.members.items():

            def report(step: int, total: int, values: Mapping[str, float], name: str = name) -> None:
                if progress is not None:
                    progress(step, total, {f"{name}.{k}": v for k, v in values.items()})

            if member.IMAGE_LEVEL:
                if images is None:
                    raise ModelError(f"member {name} learns from whole images; none were given")
                result = member.fit_images(images, seed=seed, progress=report)
            else:
                result = member.fit(batches, steps=steps, seed=seed, progress=report)
            for key, value in result.items():
                metrics[f"{name}.{key}"] = value
        self.with_config()
        return metrics

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {}
        for name in self.members:
            out.update(self._dormant[name] if name in self._dormant else self._member(name).state_arrays())
        return out

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load every member's weights; a member without weight on either head keeps them aside, unbuilt, until
        something asks for it (:meth:`member_scores`, training, saving)."""
        for name in self.members:
            own = {k: v for k, v in arrays.items() if k.startswith(f"{name}.")}
            if name in self._built or self._weighs(name):
                self._member(name).load_state_arrays(own)
            else:
                self._dormant[name] = own
        known = tuple(f"{name}." for name in self.members)
        extra = [k for k in arrays if not k.startswith(known)]
        if extra:
            raise ModelError(f"unexpected arrays in ensemble weights: {', '.join(sorted(extra)[:5])}")
