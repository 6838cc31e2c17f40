"""Physics-level statistics of an image, tile by tile: the cheap dense pass that looks at every pixel.

Acquisition leaves traces that a generator has no reason to reproduce: sensor or reconstruction noise at the
finest scale, whose power, spectrum, correlation and dependence on the signal level follow the modality's physics
(roughly Poisson in X-ray, Rician in MR backgrounds, near-Gaussian and kernel-shaped in CT); values that occupy the
levels of the stored bit depth; and, in JPEG exports, the 8 x 8 block grid. :func:`tile_features` measures these
on every tile of a frame (``tile`` pixels, half-overlapping), vectorised with OpenCV and numpy so that a 512 x 512
frame costs a few milliseconds. :func:`image_features` summarises a frame's tiles into one vector (quantiles over
the tiles with content, the slope of noise against signal, the block grid), which the one-class member
(:mod:`detectors.models.oneclass`) compares with real images of the same modality group, and
:func:`tile_anomaly` measures every tile against the rest of *its own* frame: a local edit (an inpainted hole,
an injected lesion) is a place whose noise does not match the image around it.

Everything here works on normalised frames in [0, 1] (:func:`~detectors.models.base.prepare_frames`).
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "FEATURES",
    "IMAGE_FEATURES",
    "TileFeatures",
    "image_features",
    "tile_anomaly",
    "tile_features",
]

_EPS = 1e-6
#: The per-tile features, in column order.
FEATURES: tuple[str, ...] = (
    "mean",  # grey level
    "log_std",  # contrast of the tile
    "log_noise",  # std of the finest-scale residual (image minus a sigma-1 Gaussian blur), from its mean |r|
    "log_band2",  # std of the next band (sigma-1 minus sigma-2 blur)
    "fine_share",  # log ratio of the two: how much of the detail sits at the finest scale
    "log_lap",  # mean absolute Laplacian
    "corr_x",  # lag-1 correlation of the residual along rows
    "corr_y",  # ... along columns
    "corr_2",  # lag-2 correlation (interpolated or up-sampled data correlate further out)
    "log_kurt",  # kurtosis of the residual (heavy tails: edges; Gaussian: noise)
    "flat",  # share of pixels equal to their 3 x 3 median (quantised, smoothed or saturated areas)
    "checker",  # residual energy at the Nyquist checkerboard, relative (up-sampling layers leave it)
)
#: Names of :func:`image_features`' columns.
IMAGE_FEATURES: tuple[str, ...] = (
    *(f"{name}_q{q}" for name in FEATURES[1:] for q in (10, 50, 90)),
    "noise_slope",
    "noise_offset",
    "grid8",
    "grid2",
    "content",
    "occupancy",
)
#: A tile has content when its standard deviation reaches this (flat background says nothing about noise).
CONTENT_STD = 0.004


@dataclasses.dataclass(frozen=True)
class TileFeatures:
    """Features (T, F) of a frame's tiles at top-left ``positions``, which ones have content, and the tile size."""

    values: npt.NDArray[np.float64]
    positions: tuple[tuple[int, int], ...]
    content: npt.NDArray[np.bool_]
    tile: int
    shape: tuple[int, int]
    #: The frame's finest-scale residual (image minus its sigma-1 blur), for the image-level features.
    residual: npt.NDArray[np.float32] | None = None


def _block_sums(a: npt.NDArray[np.float32], b: int) -> npt.NDArray[np.float64]:
    """Sums of ``a`` over non-overlapping ``b`` x ``b`` blocks (``a``'s sides are multiples of ``b``): OpenCV's
    area resampling by an integer factor is the block mean."""
    h, w = a.shape
    means = cv2.resize(a, (w // b, h // b), interpolation=cv2.INTER_AREA)
    return np.asarray(means, dtype=np.float64) * float(b * b)


@functools.lru_cache(maxsize=8)
def _checkerboard(h: int, w: int) -> npt.NDArray[np.float32]:
    board = np.ones((h, w), dtype=np.float32)
    board[::2, 1::2] = -1.0
    board[1::2, ::2] = -1.0
    board.flags.writeable = False
    return board


def _tile_sums(blocks: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Sums over tiles of 2 x 2 blocks, at a stride of one block: half-overlapping tiles."""
    if blocks.shape[0] < 2 or blocks.shape[1] < 2:
        return blocks
    return blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]


def tile_features(frame: npt.NDArray[np.float32], *, tile: int = 32, levels: int = 4095) -> TileFeatures:
    """The :data:`FEATURES` of every tile of ``frame`` ((H, W) in [0, 1]), on a half-overlapping grid of
    ``tile``-pixel tiles. ``levels`` is the quantisation the frame was prepared with.

    Every statistic is a moment of a per-pixel map, summed over blocks of half a tile and then over 2 x 2 blocks,
    so the cost is a few full-frame filters and sums (a frame whose sides are not multiples of half a tile is
    padded by mirroring; one smaller than a tile, too)."""
    half = tile // 2
    x = np.asarray(frame, dtype=np.float32)
    h0, w0 = x.shape
    ph, pw = max(tile - h0, (-h0) % half), max(tile - w0, (-w0) % half)
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw)), mode="symmetric")
    h, w = x.shape
    b1 = cv2.GaussianBlur(x, (0, 0), 1.0)
    b2 = cv2.GaussianBlur(x, (0, 0), 2.0)
    r = x - b1
    r2 = b1 - b2
    lap = np.abs(cv2.Laplacian(x, cv2.CV_32F, ksize=1))
    flat = (np.abs(x - cv2.medianBlur(x, 3)) < 0.5 / levels).astype(np.float32)
    rx = np.zeros_like(r)
    rx[:, :-1] = r[:, :-1] * r[:, 1:]
    ry = np.zeros_like(r)
    ry[:-1, :] = r[:-1, :] * r[1:, :]
    rr2 = np.zeros_like(r)
    rr2[:, :-2] = r[:, :-2] * r[:, 2:]
    rr2[:-2, :] += r[:-2, :] * r[2:, :]
    sign = _checkerboard(h, w)
    rsq = r * r

    def tiles(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return _tile_sums(_block_sums(a, half)).reshape(-1)

    n = float(tile * tile) if h >= tile and w >= tile else float(half * half)
    m1 = tiles(x) / n
    m2 = tiles(x * x) / n
    e1 = tiles(r) / n
    v1 = np.maximum(tiles(rsq) / n - e1 * e1, 1e-12)
    v2 = np.maximum(tiles(r2 * r2) / n - (tiles(r2) / n) ** 2, 1e-12)
    abs1 = tiles(np.abs(r)) / n
    kurt = tiles(rsq * rsq) / n / (v1 * v1)
    corr_x = (tiles(rx) / n - e1 * e1) / v1
    corr_y = (tiles(ry) / n - e1 * e1) / v1
    corr_2 = (tiles(rr2) / (2 * n) - e1 * e1) / v1
    checker = np.abs(tiles(r * sign) / n) / np.sqrt(v1)
    std = np.sqrt(np.maximum(m2 - m1 * m1, 0.0))
    values = np.stack([
        m1,
        np.log(std + _EPS),
        np.log(abs1 * 1.2533 + _EPS),  # mean absolute deviation -> std for Gaussian noise
        np.log(np.sqrt(v2) + _EPS),
        0.5 * np.log(v1 / v2),
        np.log(tiles(lap) / n + _EPS),
        corr_x,
        corr_y,
        corr_2,
        np.log(kurt + 1.0),
        tiles(flat) / n,
        np.log(checker + _EPS),
    ], axis=1)
    values = np.nan_to_num(values, nan=0.0, posinf=30.0, neginf=-30.0)
    rows = max(1, h // half - 1) if h >= tile else 1
    cols = max(1, w // half - 1) if w >= tile else 1
    positions = tuple((i * half, j * half) for i in range(rows) for j in range(cols))
    return TileFeatures(values=values, positions=positions, content=std >= CONTENT_STD, tile=tile, shape=(h0, w0),
                        residual=r)


def _grid_energy(residual: npt.NDArray[np.float32], period: int) -> float:
    """Log ratio of the mean absolute residual difference across the ``period``-grid lines to that elsewhere:
    > 0 where a block codec (JPEG, period 8) or a strided up-sampler (period 2) left a grid."""
    d_col = np.abs(np.diff(residual, axis=1))
    d_row = np.abs(np.diff(residual, axis=0))
    on_c = (np.arange(d_col.shape[1]) % period) == period - 1
    on_r = (np.arange(d_row.shape[0]) % period) == period - 1
    on = d_col[:, on_c].mean() + d_row[on_r, :].mean()
    off = d_col[:, ~on_c].mean() + d_row[~on_r, :].mean()
    return float(np.log((on + _EPS) / (off + _EPS)))


def _occupancy(x: npt.NDArray[np.float32], levels: int = 4095) -> float:
    """Distinct grey levels used between the 1st and 99th percentile, over the levels that range spans:
    smoothing and rescaling leave gaps in, or fill, the histogram of a stored image."""
    q = (np.clip(x, 0.0, 1.0) * levels + 0.5).astype(np.int32)
    counts = np.bincount(q.ravel(), minlength=levels + 1)
    cdf = np.cumsum(counts) / max(1, q.size)
    low, high = int(np.searchsorted(cdf, 0.01)), int(np.searchsorted(cdf, 0.99))
    if high <= low:
        return 0.0
    return float((counts[low : high + 1] > 0).mean())


def image_features(frame: npt.NDArray[np.float32], tiles: TileFeatures | None = None) -> npt.NDArray[np.float64]:
    """One vector (:data:`IMAGE_FEATURES`) for a frame: per feature the 10th, 50th and 90th percentile over the
    tiles with content (all tiles when fewer than four have content), the slope and offset of log noise against
    log grey level over those tiles (the noise model), the 8 x 8 and 2 x 2 grid energies, and the share of
    tiles with content."""
    t = tile_features(frame) if tiles is None else tiles
    chosen = t.values[t.content] if t.content.sum() >= 4 else t.values
    quantiles = np.percentile(chosen[:, 1:], [10, 50, 90], axis=0).T.reshape(-1)
    level = np.log(np.clip(chosen[:, 0], 1e-3, None))
    noise = chosen[:, FEATURES.index("log_noise")]
    if chosen.shape[0] >= 3 and level.std() > 1e-3:
        slope, offset = np.polyfit(level, noise, 1)
    else:
        slope, offset = 0.0, float(noise.mean()) if noise.size else 0.0
    x = np.asarray(frame, dtype=np.float32)
    residual = t.residual if t.residual is not None else x - cv2.GaussianBlur(x, (0, 0), 1.0)
    extra = [float(slope), float(offset), _grid_energy(residual, 8), _grid_energy(residual, 2),
             float(t.content.mean()), _occupancy(x)]
    out = np.concatenate([quantiles, np.asarray(extra)])
    return np.asarray(np.nan_to_num(out, nan=0.0, posinf=30.0, neginf=-30.0), dtype=np.float64)


#: The features :func:`tile_anomaly` compares between a tile and its frame: the noise, not the content.
ANOMALY_FEATURES: tuple[str, ...] = ("log_noise", "fine_share", "corr_x", "corr_y", "corr_2", "log_kurt", "flat")


def tile_anomaly(tiles: TileFeatures) -> npt.NDArray[np.float64]:
    """How far each tile's noise sits from the rest of its frame: per feature of :data:`ANOMALY_FEATURES`, the
    tile's deviation from what the frame's content tiles predict at its grey level (a robust linear fit of the
    feature on the grey level), in units of the frame's robust spread; the root mean square over the features.
    Tiles without content get 0."""
    values = tiles.values
    content = tiles.content
    out = np.zeros(len(values))
    if content.sum() < 8:
        return out
    level = values[:, 0]
    columns = [FEATURES.index(name) for name in ANOMALY_FEATURES]
    design = np.stack([np.ones_like(level), level], axis=1)
    total = np.zeros(len(values))
    for j in columns:
        y = values[:, j]
        coef, *_ = np.linalg.lstsq(design[content], y[content], rcond=None)
        residual = y - design @ coef
        med = np.median(residual[content])
        spread = 1.4826 * np.median(np.abs(residual[content] - med)) + 1e-3
        total += ((residual - med) / spread) ** 2
    out[content] = np.sqrt(total[content] / len(columns))
    return out
