"""``ensemble``: the CNN, the classical model and the tamper segmentation together; patch logits averaged with
weights.

``weights`` is one list (the same for both heads) or one list per head (``{"synthetic": [...], "tamper":
[...]}``); a member only counts on the heads it has an opinion on (its ``HEADS``: the segmentation member has
none on the synthetic head). Each head's weights are normalised to sum 1. The members share the ensemble's patch
size and preprocessing. The image-level calibration and thresholds of the ensemble (in its config) are fitted on
held-out data after all members are trained.
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
    ModelError,
    PatchBatch,
    detector_class,
    register_detector,
)

__all__ = ["EnsembleDetector"]


def _per_head(given: Any) -> dict[str, list[float]]:
    """``weights`` of an ensemble's arch_args as one list per head (one list given: the same for both)."""
    if isinstance(given, Mapping):
        return {head: [float(w) for w in values] for head, values in given.items()}
    return {"synthetic": [float(w) for w in given], "tamper": [float(w) for w in given]}


def _member_args(preset: str, name: str) -> dict[str, Any]:
    return dict(detector_class(name).PRESETS[preset].get("arch_args", {}))


@register_detector("ensemble")
class EnsembleDetector(Detector):
    """Weighted mean of member logits (``weights`` per member; default equal)."""

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
            "max_patches": 32,
            "arch_args": {
                "members": ["cnn", "classical", "segment"],
                "preset": "small",
                "weights": {"synthetic": [0.6, 0.4, 0.0], "tamper": [0.0, 0.0, 1.0]},
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
        self.members: dict[str, Detector] = {}
        for i, name in enumerate(names):
            member_args = dict(args.get(name, _member_args(preset, name)))
            member_config = dataclasses.replace(
                config, arch=name, arch_args=member_args, calibration={}, training={}, tag=""
            )
            self.members[name] = detector_class(name)(member_config, seed=seed + i)
        per_head = _per_head(args.get("weights", [1.0] * len(names)))
        #: (2, members): the weight of each member on the synthetic (row 0) and tamper (row 1) logit.
        self.weights = np.zeros((2, len(names)), dtype=np.float32)
        for row, head in enumerate(("synthetic", "tamper")):
            weights = per_head.get(head, [])
            if len(weights) != len(names) or min(weights) < 0:
                raise ModelError(f"ensemble weights ({head}) must be one non-negative number per member")
            for col, member in enumerate(self.members.values()):
                if head in member.HEADS:
                    self.weights[row, col] = weights[col]
            if self.weights[row].sum() <= 0:
                raise ModelError(f"no member of the ensemble has weight on the {head} head")
            self.weights[row] /= self.weights[row].sum()

    def synthetic_members(self) -> list[str]:
        """The members with an opinion on the synthetic head (those :meth:`set_synthetic_weights` weighs)."""
        return [name for name, member in self.members.items() if "synthetic" in member.HEADS]

    def member_synthetic_scores(self, images: Sequence[Any]) -> npt.NDArray[np.float64]:
        """(N, len(:meth:`synthetic_members`)): each such member's image-level raw synthetic score. The ensemble's
        own raw synthetic score is their weighted sum (a mean of weighted patch logits), so weights fitted on
        these columns act on the ensemble exactly."""
        names = self.synthetic_members()
        out = np.zeros((len(images), len(names)))
        for i, image in enumerate(images):
            for j, name in enumerate(names):
                out[i, j] = self.members[name].raw_scores(image)[0]
        return out

    def set_synthetic_weights(self, weights: Sequence[float]) -> None:
        """New synthetic-head weights, one per :meth:`synthetic_members` (normalised to sum 1); recorded in the
        config's ``arch_args`` so that a bundle keeps them."""
        names = self.synthetic_members()
        values = [float(w) for w in weights]
        if len(values) != len(names) or min(values) < 0 or sum(values) <= 0:
            raise ModelError("synthetic weights must be one non-negative number per member, not all zero")
        row = np.zeros(len(self.members), dtype=np.float32)
        for name, value in zip(names, values, strict=True):
            row[list(self.members).index(name)] = value
        self.weights[0] = row / row.sum()
        args = dict(self.config.arch_args)
        per_head = _per_head(args.get("weights", [1.0] * len(self.members)))
        per_head["synthetic"] = [float(w) for w in self.weights[0]]
        args["weights"] = per_head
        self.with_config(arch_args=args)

    def with_config(self, **changes: Any) -> None:
        super().with_config(**changes)
        # Member arch_args are recorded so that a bundle rebuilds the same members.
        args = dict(self.config.arch_args)
        for name, member in self.members.items():
            args[name] = dict(member.config.arch_args)
        self.config = dataclasses.replace(self.config, arch_args=args)

    def patch_logits(self, patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.patch_outputs(patches)[0]

    def patch_outputs(
        self, patches: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """Weighted logits, and weighted tamper pixel logits when a member with tamper weight scores pixels (the
        others count with their patch's tamper logit on every pixel of it)."""
        out = np.zeros((len(patches), 2), dtype=np.float32)
        parts: list[tuple[float, npt.NDArray[np.float32], npt.NDArray[np.float32] | None]] = []
        for col, member in enumerate(self.members.values()):
            if not self.weights[:, col].any():
                continue
            logits, pixels = member.patch_outputs(patches)
            out += self.weights[:, col] * logits
            if self.weights[1, col] > 0:
                parts.append((float(self.weights[1, col]), logits[:, 1], pixels))
        if all(pixels is None for _, _, pixels in parts):
            return out, None
        dense = np.zeros(np.shape(patches), dtype=np.float32)
        for weight, tamper, pixels in parts:
            dense += weight * (pixels if pixels is not None else tamper[:, None, None])
        return out, dense

    def fit(
        self,
        batches: Iterator[PatchBatch],
        *,
        steps: int,
        seed: int = 0,
        progress: FitProgress | None = None,
    ) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, member in self.members.items():

            def report(step: int, total: int, values: Mapping[str, float], name: str = name) -> None:
                if progress is not None:
                    progress(step, total, {f"{name}.{k}": v for k, v in values.items()})

            for key, value in member.fit(batches, steps=steps, seed=seed, progress=report).items():
                metrics[f"{name}.{key}"] = value
        self.with_config()
        return metrics

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {}
        for member in self.members.values():
            out.update(member.state_arrays())
        return out

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        for name, member in self.members.items():
            member.load_state_arrays({k: v for k, v in arrays.items() if k.startswith(f"{name}.")})
        known = tuple(f"{name}." for name in self.members)
        extra = [k for k in arrays if not k.startswith(known)]
        if extra:
            raise ModelError(f"unexpected arrays in ensemble weights: {', '.join(sorted(extra)[:5])}")
