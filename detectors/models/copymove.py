"""``copymove``: finds a region of an image pasted from another place of the same image, by its noise.

Acquisition noise never repeats: two places of a real image have independent fine-scale residuals. A copy-move
forgery (a lesion or a patch of tissue copied elsewhere, Poisson-blended so that no edge shows) carries the
residual of its source along, since blending only adds a smooth correction. This member looks for that: the
finest-scale residual of the frame (image minus a sigma-1 blur; the dense pass computes it anyway), the sign
pattern of every ``block`` x ``block`` window hashed at every position, windows with equal hashes at least a
block apart verified by the correlation of their residuals, and the verified pairs counted per displacement.
A copy gives many pairs with one displacement; chance gives isolated ones. Only windows whose residual looks
like noise are hashed (not flat, saturated or quantised away, not dominated by an edge or burned-in text, whose
strokes repeat in real exports). The tamper score is the log of the largest count of one displacement; the
heatmap marks the windows of that displacement (the copy and its source). It has no opinion on synthesis.

A forger who re-noises the pasted region defeats it; the segmentation and one-class members look at other
traces.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import cv2
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
    register_detector,
)

__all__ = ["CopyMoveDetector", "copy_move_pairs"]


def _window_sums(a: npt.NDArray[np.float32], b: int) -> npt.NDArray[np.float32]:
    """Sums of every ``b`` x ``b`` window, indexed by its top-left corner ((H - b + 1, W - b + 1))."""
    box = cv2.boxFilter(a, -1, (b, b), normalize=False, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    return np.asarray(box[: a.shape[0] - b + 1, : a.shape[1] - b + 1], dtype=np.float32)


def copy_move_pairs(
    residual: npt.NDArray[np.float32],
    image: npt.NDArray[np.float32],
    *,
    block: int = 8,
    min_corr: float = 0.8,
    max_run: int = 6,
) -> tuple[dict[tuple[int, int], list[tuple[int, int]]], float]:
    """Verified pairs of windows with the same residual, grouped by displacement ``(dy, dx)`` (each pair given
    by its first window's top-left corner), and the noise level the windows were measured against."""
    r = np.asarray(residual, dtype=np.float32)
    h, w = r.shape
    if h < 2 * block or w < 2 * block:
        return {}, 0.0
    n = float(block * block)
    energy = _window_sums(r * r, block) / n
    fourth = _window_sums((r * r) * (r * r), block) / n
    mean = _window_sums(image, block) / n
    spread = _window_sums(image * image, block) / n - mean * mean
    noise = float(np.abs(r[::2, ::2]).mean()) * 1.2533  # the std of Gaussian noise from its mean |r|
    if noise <= 0:
        return {}, 0.0
    kurtosis = fourth / np.maximum(energy * energy, 1e-12)
    # Noise-like windows: energy of the order of the frame's noise, no heavy tails (edges, text), not clipped.
    usable = (energy > 0.25 * noise * noise) & (energy < 16 * noise * noise) & (kurtosis < 5.0)
    usable &= (mean > 0.002) & (mean < 0.998) & (spread > 0)
    # The signs of the window's first four rows, eight per row: a byte per row, four bytes per window.
    bits = (r > 0).astype(np.uint8)
    wide = w - block + 1
    row_code = np.zeros((h, wide), dtype=np.uint8)
    for j in range(8):
        row_code |= bits[:, j : j + wide] << np.uint8(j)
    tall = h - block + 1
    code = np.zeros((tall, wide), dtype=np.uint32)
    for i in range(4):
        code |= row_code[i : i + tall].astype(np.uint32) << np.uint32(8 * i)
    flat = np.flatnonzero(usable.ravel())
    if flat.size < 2:
        return {}, noise
    # Sorting (hash << 32 | position) brings equal hashes together, and is much faster than an argsort.
    packed = np.sort((code.ravel()[flat].astype(np.uint64) << np.uint64(32)) | flat.astype(np.uint64))
    keys = packed >> np.uint64(32)
    where = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    ys, xs = np.divmod(where, wide)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], keys.size]
    runs = ends - starts
    chosen = (runs >= 2) & (runs <= max_run)
    starts, ends = starts[chosen], ends[chosen]
    pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, b in zip(starts, ends, strict=True):
        for i in range(a, b):
            for j in range(i + 1, b):
                dy, dx = int(ys[j] - ys[i]), int(xs[j] - xs[i])
                if max(abs(dy), abs(dx)) < block:
                    continue
                p = r[ys[i] : ys[i] + block, xs[i] : xs[i] + block].ravel()
                q = r[ys[j] : ys[j] + block, xs[j] : xs[j] + block].ravel()
                pc, qc = p - p.mean(), q - q.mean()
                denominator = float(np.sqrt((pc @ pc) * (qc @ qc)))
                if denominator > 0 and float(pc @ qc) / denominator >= min_corr:
                    key = (dy, dx) if (dy, dx) > (0, 0) else (-dy, -dx)
                    first = (int(ys[i]), int(xs[i])) if (dy, dx) > (0, 0) else (int(ys[j]), int(xs[j]))
                    pairs.setdefault(key, []).append(first)
    return pairs, noise


@register_detector("copymove")
class CopyMoveDetector(Detector):
    """Copies of a region within the image, found by their duplicated noise (no training)."""

    IMAGE_LEVEL: ClassVar[bool] = True
    HEADS: ClassVar[tuple[str, ...]] = ("tamper",)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"patch_size": 32, "max_patches": 8, "arch_args": {"block": 8}},
        "small": {"patch_size": 64, "max_patches": 32, "arch_args": {"block": 8}},
    }

    def __init__(self, config: DetectorConfig, *, seed: int = 0) -> None:
        super().__init__(config, seed=seed)
        self.block = int(config.arch_args.get("block", 8))

    def score_frames(self, frames: FrameSet) -> FrameScores:
        best, best_frame = 0.0, 0
        maps: list[npt.NDArray[np.float64]] = []
        total = 0
        for index, frame in enumerate(frames.frames):
            tiles = frames.tiles(index)
            residual = tiles.residual if tiles.residual is not None else frame - cv2.GaussianBlur(frame, (0, 0), 1.0)
            padded = np.pad(frame, ((0, residual.shape[0] - frame.shape[0]), (0, residual.shape[1] - frame.shape[1])),
                            mode="symmetric")
            pairs, _ = copy_move_pairs(residual, padded, block=self.block)
            count = max((len(v) for v in pairs.values()), default=0)
            score = float(np.log1p(count))
            tile_map = np.zeros(len(tiles.positions))
            if count:
                shift, firsts = max(pairs.items(), key=lambda kv: len(kv[1]))
                half = tiles.tile // 2
                cols = 1 + max(x for _, x in tiles.positions) // half
                hits = np.zeros(len(tiles.positions))
                for y, x in firsts:
                    for cy, cx in ((y, x), (y + shift[0], x + shift[1])):
                        i, j = min(cy // half, len(hits) // cols - 1), min(cx // half, cols - 1)
                        hits[i * cols + j] += 1
                tile_map = score * hits / max(hits.max(), 1.0)
            maps.append(tile_map)
            total += len(tiles.positions)
            if score > best or index == 0:
                best, best_frame = max(best, score), index if score >= best else best_frame
        return FrameScores(synthetic=0.0, tamper=best, best_frame=best_frame, tile_maps=maps, patches=total)

    def patch_logits(self, patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        raise ModelError("copymove scores whole frames, not patches")

    def fit(self, batches: Iterator[PatchBatch], *, steps: int, seed: int = 0,
            progress: FitProgress | None = None) -> dict[str, float]:
        raise ModelError("copymove learns nothing from patches")

    def fit_images(self, images: Sequence[TrainingImage], *, seed: int = 0,
                   progress: FitProgress | None = None) -> dict[str, float]:
        """Nothing to learn: duplicated noise is found, not learned."""
        metrics = {"images": float(len(images))}
        if progress is not None:
            progress(1, 1, metrics)
        return metrics

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"copymove.block": np.array([self.block], dtype=np.int64)}

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        if "copymove.block" not in arrays:
            raise ModelError("copymove weights lack copymove.block")
