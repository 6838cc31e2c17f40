"""Training data and progress plumbing shared by the generators.

Training data is any iterable of 2-D float arrays in [0, 1] (normalised frames, e.g. from the corpus). The
:class:`PatchSampler` draws random square crops of the config's ``image_size`` at native resolution; a frame
smaller than the patch is first upsampled (bicubic) so that its short side equals the patch size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping

import cv2
import numpy as np
import numpy.typing as npt
import torch

from detectors.generators.errors import GeneratorInputError

__all__ = ["PatchSampler", "ProgressCallback", "TrainProgress", "TrainingResult", "check_image"]


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """One progress report: losses are running means over the last report interval."""

    step: int
    total_steps: int
    losses: Mapping[str, float]
    elapsed_s: float
    steps_per_s: float

    @property
    def eta_s(self) -> float:
        remaining = self.total_steps - self.step
        return remaining / self.steps_per_s if self.steps_per_s > 0 else math.inf


ProgressCallback = Callable[[TrainProgress], None]


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """What :meth:`Generator.fit` did; ``metrics`` holds the final running losses."""

    steps: int
    seed: int
    elapsed_s: float
    metrics: Mapping[str, float]
    frames: int


def check_image(image: object, where: str) -> npt.NDArray[np.float32]:
    """A 2-D finite float32 array with values in [0, 1] (a tolerance of 1e-3 is clipped), else an error."""
    if not isinstance(image, np.ndarray):
        raise GeneratorInputError(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 2:
        raise GeneratorInputError(f"{where}: expected a 2-D (H, W) array, got shape {image.shape}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise GeneratorInputError(f"{where}: image {image.shape} is smaller than 8x8")
    if not np.issubdtype(image.dtype, np.floating):
        raise GeneratorInputError(f"{where}: expected floats normalised to [0, 1], got dtype {image.dtype}")
    arr = np.asarray(image, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise GeneratorInputError(f"{where}: image contains NaN or infinite values")
    if arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
        raise GeneratorInputError(f"{where}: values must be in [0, 1], got [{arr.min():.4g}, {arr.max():.4g}]")
    return np.clip(arr, 0.0, 1.0)


class PatchSampler:
    """Random ``size`` x ``size`` crops of in-memory frames, seeded by a numpy Generator."""

    def __init__(self, frames: Iterable[npt.NDArray[np.floating]], size: int) -> None:
        self.size = size
        self.frames: list[npt.NDArray[np.float32]] = []
        for i, frame in enumerate(frames):
            arr = check_image(frame, f"training frame {i}")
            h, w = arr.shape
            if min(h, w) < size:
                scale = size / min(h, w)
                new = (max(size, round(w * scale)), max(size, round(h * scale)))
                arr = np.clip(cv2.resize(arr, new, interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
            self.frames.append(np.ascontiguousarray(arr, dtype=np.float32))
        if not self.frames:
            raise GeneratorInputError("no training frames")
        # Sample frames in proportion to their area, so large frames are not under-used.
        areas = np.array([f.size for f in self.frames], dtype=np.float64)
        self._p = areas / areas.sum()

    def __len__(self) -> int:
        return len(self.frames)

    def batch(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` crops as a (n, 1, size, size) float32 tensor scaled to [-1, 1]; random flips augment."""
        s = self.size
        out = np.empty((n, 1, s, s), dtype=np.float32)
        picks = rng.choice(len(self.frames), size=n, p=self._p)
        for j, k in enumerate(picks):
            frame = self.frames[k]
            y = int(rng.integers(0, frame.shape[0] - s + 1))
            x = int(rng.integers(0, frame.shape[1] - s + 1))
            patch = frame[y : y + s, x : x + s]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            out[j, 0] = patch
        return torch.from_numpy(out * 2.0 - 1.0)
