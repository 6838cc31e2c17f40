"""Training data and progress plumbing shared by the generators.

Training data is any iterable of 2-D float arrays in [0, 1] (normalised frames, e.g. from the corpus). The
:class:`PatchSampler` draws random square crops of the config's ``image_size`` at native resolution; a frame
smaller than the patch is first upsampled (bicubic) so that its short side equals the patch size.

Crops are content-aware: about a third of uniformly placed crops of the sample corpus are flat background (air
around a CT or CR, the black outside an ultrasound sector), which teaches a generator nothing about anatomy or
texture. The sampler therefore only places crops where the crop has some contrast and is not mostly background
(see :class:`PatchSampler`); the admissible positions are found once, exactly, from integral images, so a draw
never retries and never hangs, even on a blank frame.
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

__all__ = [
    "PatchSampler",
    "ProgressCallback",
    "TrainProgress",
    "TrainingResult",
    "check_image",
    "content_positions",
]


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


def _window_sums(a: npt.NDArray[np.float64], s: int) -> npt.NDArray[np.float64]:
    """Sums of every ``s`` x ``s`` window of ``a``, indexed by the window's top-left corner."""
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(a, axis=0, dtype=np.float64), axis=1, out=c[1:, 1:])
    return c[s:, s:] - c[:-s, s:] - c[s:, :-s] + c[:-s, :-s]


def content_positions(
    frame: npt.NDArray[np.float32], size: int, *, min_std: float, min_content: float, background_margin: float
) -> npt.NDArray[np.int64]:
    """Flat indices (into the ``(H - size + 1, W - size + 1)`` grid) of the crops that carry content.

    A crop carries content when its standard deviation is at least ``min_std`` and at least ``min_content`` of
    its pixels lie more than ``background_margin`` above the frame's minimum (its background level).
    """
    x = frame.astype(np.float64)
    n = float(size * size)
    mean = _window_sums(x, size) / n
    var = _window_sums(x * x, size) / n - mean * mean
    foreground = (x > float(x.min()) + background_margin).astype(np.float64)
    fraction = _window_sums(foreground, size) / n
    ok = (var >= min_std * min_std - 1e-12) & (fraction >= min_content - 1e-9)
    return np.flatnonzero(ok)


def _whole(frame: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    """The central square of ``frame`` shrunk (area) to ``size`` x ``size``."""
    h, w = frame.shape
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    square = frame[y : y + side, x : x + side]
    return np.clip(cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA), 0.0, 1.0).astype(np.float32)


class PatchSampler:
    """Random ``size`` x ``size`` crops of in-memory frames, seeded by a numpy Generator.

    Content-aware: a crop is only placed where its standard deviation (in [0, 1] units) is at least ``min_std``
    and at least ``min_content`` of its pixels are more than ``background_margin`` above the frame's minimum.
    Frames are drawn in proportion to their number of such positions (their area of content), and a position
    uniformly among them. A frame without any (a blank frame) is skipped; only when no frame has content does
    the sampler fall back to uniform crops, so it always terminates. ``min_std=0`` and ``min_content=0`` give
    the plain uniform sampler. With ``whole_fraction`` > 0 that share of the crops is instead a whole frame
    (its central square) shrunk to the patch size: what a generator needs to learn the layout of anatomy for
    its unconditional samples, where native-resolution crops teach texture only.
    """

    def __init__(
        self,
        frames: Iterable[npt.NDArray[np.floating]],
        size: int,
        *,
        min_std: float = 0.02,
        min_content: float = 0.1,
        background_margin: float = 0.05,
        whole_fraction: float = 0.0,
    ) -> None:
        if not 0.0 <= whole_fraction <= 1.0:
            raise GeneratorInputError(f"whole_fraction must be in [0, 1], got {whole_fraction}")
        self.whole_fraction = float(whole_fraction)
        if size < 1:
            raise GeneratorInputError(f"patch size must be >= 1, got {size}")
        if min_std < 0 or not 0 <= min_content <= 1 or background_margin < 0:
            raise GeneratorInputError("min_std and background_margin must be >= 0 and min_content in [0, 1]")
        self.size = size
        self.min_std = float(min_std)
        self.min_content = float(min_content)
        self.background_margin = float(background_margin)
        self.frames: list[npt.NDArray[np.float32]] = []
        for i, frame in enumerate(frames):
            arr = check_image(frame, f"training frame {i}")
            h, w = arr.shape
            if min(h, w) < size:
                scale = size / min(h, w)
                new = (max(size, round(w * scale)), max(size, round(h * scale)))
                arr = np.clip(cv2.resize(arr, new, interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
            self.frames.append(np.ascontiguousarray(arr, dtype=np.float32))
        #: Each frame's central square shrunk to the patch size (area): the whole layout of the anatomy.
        self._wholes = [_whole(f, size) for f in self.frames] if whole_fraction > 0 else []
        if not self.frames:
            raise GeneratorInputError("no training frames")
        self._positions: list[npt.NDArray[np.int64]] = [
            content_positions(
                f, size, min_std=self.min_std, min_content=self.min_content, background_margin=background_margin
            )
            for f in self.frames
        ]
        counts = np.array([len(p) for p in self._positions], dtype=np.float64)
        #: False when no frame has a crop with content: the sampler then draws uniform crops.
        self.content_aware = bool(counts.sum() > 0)
        if not self.content_aware:
            counts = np.array([(f.shape[0] - size + 1) * (f.shape[1] - size + 1) for f in self.frames], float)
        # Frames in proportion to their admissible positions, so large frames are not under-used.
        self._p = counts / counts.sum()

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def description(self) -> dict[str, object]:
        """The sampling settings, for the training record."""
        return {
            "patch_size": self.size,
            "min_std": self.min_std,
            "min_content": self.min_content,
            "background_margin": self.background_margin,
            "content_aware": self.content_aware,
            "frames_with_content": sum(1 for p in self._positions if len(p)),
            **({"whole_fraction": self.whole_fraction} if self.whole_fraction > 0 else {}),
        }

    def batch(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` crops as a (n, 1, size, size) float32 tensor scaled to [-1, 1]; random flips augment."""
        s = self.size
        out = np.empty((n, 1, s, s), dtype=np.float32)
        picks = rng.choice(len(self.frames), size=n, p=self._p)
        for j, k in enumerate(picks):
            if self._wholes and rng.random() < self.whole_fraction:
                whole = self._wholes[int(rng.integers(len(self._wholes)))]
                out[j, 0] = whole[:, ::-1] if rng.random() < 0.5 else whole
                continue
            frame = self.frames[k]
            cols = frame.shape[1] - s + 1
            if self.content_aware:
                positions = self._positions[k]
                y, x = divmod(int(positions[rng.integers(0, len(positions))]), cols)
            else:
                y = int(rng.integers(0, frame.shape[0] - s + 1))
                x = int(rng.integers(0, cols))
            patch = frame[y : y + s, x : x + s]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            out[j, 0] = patch
        return torch.from_numpy(out * 2.0 - 1.0)
