"""What a detector sees of an image: normalised, quantised frames, the patches it scores, their groups.

:func:`prepare_frames` normalises an image by a detector's config, :func:`frame_patches` picks the patches to
score (bounded, structured ones first), :func:`modality_group` names the group a modality's calibration offsets
belong to, and :class:`FrameSet` / :class:`FrameScores` carry a batch of frames and their scores between a
detector's dense pass and its patch members. :class:`PatchBatch` is a training batch of patches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from detectors.data.normalize import normalize_image
from detectors.data.reader import ImageData

if TYPE_CHECKING:
    from detectors.models.base import DetectorConfig

__all__ = [
    "FLAT_STD",
    "FrameScores",
    "FrameSet",
    "PatchBatch",
    "TrainingImage",
    "frame_patches",
    "grid_starts",
    "image_group",
    "modality_group",
    "prepare_frames",
]

#: Patch positions with a standard deviation below this are "flat" (background); they are scored last.
FLAT_STD = 0.01


@dataclasses.dataclass(frozen=True)
class PatchBatch:
    """A training batch: patches (B, P, P) in [0, 1] and their synthetic / tamper labels (B,) in {0, 1}; ``masks``
    (B, P, P) in {0, 1} marks the edited pixels (zero for real and synthetic patches), where the source has them."""

    patches: npt.NDArray[np.float32]
    synthetic: npt.NDArray[np.float32]
    tamper: npt.NDArray[np.float32]
    masks: npt.NDArray[np.float32] | None = None



# ------------------------------------------------------------------------------------------- preprocessing


def _quantize(frame: npt.NDArray[np.float32], bits: int) -> npt.NDArray[np.float32]:
    levels = float(2**bits - 1)
    return np.asarray(np.round(np.clip(frame, 0.0, 1.0) * levels) / levels, dtype=np.float32)


def prepare_frames(
    image: ImageData | npt.ArrayLike, config: DetectorConfig
) -> list[npt.NDArray[np.float32]]:
    """The frames a detector scores: normalised to [0, 1] by the config's rule and quantised to its bit depth.

    An :class:`ImageData` is normalised with :func:`~detectors.data.normalize.normalize_image` (its modality,
    window and photometric interpretation, the config's CT range and percentiles); an array is taken as already
    normalised frames in [0, 1], shape (H, W) or (n, H, W). At most ``max_frames`` evenly spaced frames are kept.
    """
    if isinstance(image, ImageData):
        frames = normalize_image(image, percentiles=config.percentiles, ct_range=config.ct_range)
    else:
        frames = np.asarray(image, dtype=np.float32)
        if frames.ndim == 2:
            frames = frames[None]
    if frames.ndim != 3 or frames.shape[0] == 0 or min(frames.shape[1:]) < 1:
        from detectors.models.base import DetectorInputError  # base imports this module

        raise DetectorInputError(f"need (H, W) or (n, H, W) frames, got shape {frames.shape}")
    frames = np.nan_to_num(frames, nan=0.0, posinf=1.0, neginf=0.0)
    n = frames.shape[0]
    keep = range(n) if n <= config.max_frames else sorted({round(float(i)) for i in np.linspace(0, n - 1,
                                                                                          config.max_frames)})
    return [_quantize(frames[i], config.quantize_bits) for i in keep]


def _starts(length: int, patch: int, stride: int) -> list[int]:
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def grid_starts(shape: tuple[int, int], patch: int, max_patches: int) -> tuple[list[int], list[int]]:
    """Row and column starts of the patch grid: half-overlapping patches when all of them fit in
    ``max_patches`` (finer heatmaps for small images), else stride = patch; the last ones flush with the edge."""
    h, w = shape
    ys, xs = _starts(h, patch, patch // 2), _starts(w, patch, patch // 2)
    if len(ys) * len(xs) <= max_patches:
        return ys, xs
    return _starts(h, patch, patch), _starts(w, patch, patch)


def frame_patches(
    frame: npt.NDArray[np.float32],
    patch_size: int,
    max_patches: int,
    priority: Callable[[int, int], float] | None = None,
) -> tuple[npt.NDArray[np.float32], list[tuple[int, int]], tuple[list[int], list[int]]]:
    """Patches of ``frame`` on the grid of :func:`grid_starts`.

    A frame smaller than a patch is padded by mirroring. When the grid has more than ``max_patches`` positions,
    a deterministic subset is kept, patches with content (standard deviation at least :data:`FLAT_STD`) first:
    with ``priority`` (a score of a patch's top-left corner, higher first: where a cheap dense pass points) half
    of them are the content patches of highest priority and the rest evenly spread; without, all evenly spread.
    Returns the patches (N, P, P), their top-left positions and the grid's row and column starts.
    """
    h, w = frame.shape
    p = patch_size
    if h < p or w < p:
        frame = np.pad(frame, ((0, max(0, p - h)), (0, max(0, p - w))), mode="symmetric")
        h, w = frame.shape
    ys, xs = grid_starts((h, w), p, max_patches)
    positions = [(y, x) for y in ys for x in xs]
    if len(positions) > max_patches:
        std = _patch_std(frame, positions, p)
        content = [i for i in range(len(positions)) if std[i] >= FLAT_STD]
        flat = [i for i in range(len(positions)) if std[i] < FLAT_STD]
        chosen: list[int] = []
        if priority is not None and content:
            ranked = sorted(content, key=lambda i: -priority(*positions[i]))
            chosen = ranked[: max_patches // 2]
            taken = set(chosen)
            content = [i for i in content if i not in taken]
        chosen += _spread(content, max_patches - len(chosen))
        if len(chosen) < max_patches:
            chosen += _spread(flat, max_patches - len(chosen))
        positions = [positions[i] for i in sorted(chosen)]
    patches = np.stack([frame[y : y + p, x : x + p] for y, x in positions]).astype(np.float32, copy=False)
    return patches, positions, (ys, xs)


def _patch_std(frame: npt.NDArray[np.float32], positions: Sequence[tuple[int, int]], p: int) -> npt.NDArray[np.float64]:
    """Standard deviation of each ``p`` x ``p`` patch at ``positions``, from summed-area tables (one pass over the
    frame instead of one per patch; OpenCV builds both tables in one pass, several times faster than numpy)."""
    import cv2

    tables = cv2.integral2(np.ascontiguousarray(frame, dtype=np.float32), sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
    sums, squares = (np.asarray(t, dtype=np.float64) for t in tables)
    y = np.array([q[0] for q in positions])
    x = np.array([q[1] for q in positions])

    def box(table: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(table[y + p, x + p] - table[y, x + p] - table[y + p, x] + table[y, x], dtype=np.float64)

    mean = box(sums) / (p * p)
    return np.sqrt(np.maximum(box(squares) / (p * p) - mean * mean, 0.0))


def _spread(items: Sequence[int], count: int) -> list[int]:
    if len(items) <= count:
        return list(items)
    return [items[round(float(i))] for i in np.linspace(0, len(items) - 1, count)]


# ---------------------------------------------------------------------------------------------- detector


#: Modality groups: calibrated apart where the data allow (radiography of every kind is one group).
_GROUPS = {"CT": "CT", "MR": "MR", "US": "US", "NM": "NM", "PT": "NM"}
_RADIOGRAPHY = frozenset({"XR", "CR", "DX", "RG", "MG", "RF", "XA", "PX", "IO", "DR"})


def modality_group(modality: str) -> str:
    """``CT``, ``MR``, ``XR`` (every radiography), ``US``, ``NM`` (with PET) or ``OT``."""
    m = modality.strip().upper()
    if m in _RADIOGRAPHY:
        return "XR"
    return _GROUPS.get(m, "OT")


def image_group(image: ImageData) -> str:
    """``<modality group>/<form>`` of a decoded image: ``8bit`` for PNG/JPEG and anything of at most 8 bits."""
    form = "8bit" if image.format in ("png", "jpeg") or (image.bits_stored or 16) <= 8 else "native"
    return f"{modality_group(image.modality)}/{form}"


@dataclasses.dataclass(frozen=True)
class TrainingImage:
    """An image for members that learn from whole images: normalised pixels, label (0 real, 1 synthetic,
    2 tampered), its group (``MR/native``), the edit mask where there is one, and the patient (source) it came
    from, so that members can keep a patient's images together when they fold."""

    pixels: npt.NDArray[np.float32]
    label: int
    group: str = ""
    mask: npt.NDArray[np.bool_] | None = None
    source: str = ""


class FrameSet:
    """The prepared frames of one image (:func:`prepare_frames`) and what members share about them, computed
    once: the physics statistics of every tile, the image's feature vector and each tile's anomaly."""

    def __init__(self, frames: list[npt.NDArray[np.float32]], group: str = "", levels: int = 4095) -> None:
        self.frames = frames
        self.group = group
        self.levels = levels
        self._tiles: dict[int, Any] = {}
        self._features: dict[int, npt.NDArray[np.float64]] = {}
        self._anomaly: dict[int, npt.NDArray[np.float64]] = {}

    @classmethod
    def of(cls, image: ImageData | npt.ArrayLike, config: DetectorConfig, *, group: str | None = None) -> FrameSet:
        """The frames of ``image`` as ``config`` prepares them; the group is read from an :class:`ImageData`
        unless given."""
        if group is None:
            group = image_group(image) if isinstance(image, ImageData) else ""
        return cls(prepare_frames(image, config), group, levels=2**config.quantize_bits - 1)

    def tiles(self, index: int) -> Any:
        """:func:`~detectors.models.physics.tile_features` of frame ``index``."""
        if index not in self._tiles:
            from detectors.models.physics import tile_features

            self._tiles[index] = tile_features(self.frames[index], levels=self.levels)
        return self._tiles[index]

    def image_features(self, index: int) -> npt.NDArray[np.float64]:
        if index not in self._features:
            from detectors.models.physics import image_features

            self._features[index] = image_features(self.frames[index], self.tiles(index))
        return self._features[index]

    def tile_anomaly(self, index: int) -> npt.NDArray[np.float64]:
        if index not in self._anomaly:
            from detectors.models.physics import tile_anomaly

            self._anomaly[index] = tile_anomaly(self.tiles(index))
        return self._anomaly[index]

    def priority(self, index: int) -> Callable[[int, int], float] | None:
        """Where the dense pass points in frame ``index``: the largest tile anomaly within a patch-sized
        neighbourhood of a position (None before the anomaly was computed)."""
        if index not in self._anomaly:
            return None
        tiles, anomaly = self.tiles(index), self._anomaly[index]
        half = tiles.tile // 2
        rows = 1 + max(y for y, _ in tiles.positions) // half
        cols = 1 + max(x for _, x in tiles.positions) // half
        grid = anomaly.reshape(rows, cols)

        def score(y: int, x: int) -> float:
            i, j = y // half, x // half
            return float(grid[i : i + 3, j : j + 3].max())

        return score

    def cell_map(self, index: int, values: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float32], int]:
        """Per-tile ``values`` of frame ``index`` as a map of half-tile cells: each cell the mean of the tiles
        that cover it."""
        tiles = self.tiles(index)
        half = tiles.tile // 2
        rows = 1 + max(y for y, _ in tiles.positions) // half
        cols = 1 + max(x for _, x in tiles.positions) // half
        grid = values.reshape(rows, cols)
        total = np.zeros((rows + 1, cols + 1))
        count = np.zeros((rows + 1, cols + 1))
        for dy in (0, 1):
            for dx in (0, 1):
                total[dy : dy + rows, dx : dx + cols] += grid
                count[dy : dy + rows, dx : dx + cols] += 1
        return (total / count).astype(np.float32), half


@dataclasses.dataclass
class FrameScores:
    """What a member says about one image: its raw synthetic and tamper scores, the frame with the most
    edit-like place, and what the heatmap needs (per-frame tile maps, or per-frame patch logits)."""

    synthetic: float
    tamper: float
    best_frame: int
    tile_maps: list[npt.NDArray[np.float64]] | None = None
    patch_frames: list[Any] | None = None
    patches: int = 0
