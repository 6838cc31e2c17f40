"""Image fingerprints for finding reused images: exact digests, crop-tolerant perceptual hashes, and a finer check.

A reused image rarely comes back byte-identical: it is re-encoded (lossy JPEG, another transfer syntax), exported
with another window/level, resized, and cropped. The fingerprint is built so that each of these changes little:

* the frame is reduced to a small *view* (longest side :data:`VIEW_SIDE`), and every hashed region is
  **rank-equalised** (after reduction to 32x32), so a linear intensity change (rescale, window/level without
  clipping, bit depth) gives the same hash (up to float rounding at near-ties), and other monotone ones (gamma,
  a window that saturates part of the image) change it by a few bits;
* a 64-bit DCT hash (pHash) is taken of the central region at each scale of :data:`SCALES` (1.0 down to 0.55),
  so an image cropped to its central 60-80 % has, at scale 1.0, about the hash its source has at the crop's scale;
* a second 64-bit hash of the same regions, a SimHash (random-hyperplane signs) of their low DCT coefficients,
  finds what the pHash misses on images that are mostly one smooth shape on a uniform background (a brain slice
  in black): there most of the pHash's 64 coefficients sit near their median and flip with any change, while a
  random projection sums over all of them and stays put (the copies of such slices in the benchmark were 14-24
  pHash bits from their source, and 0-4 SimHash bits);
* pairs whose hashes are close are confirmed by :func:`similarity`: normalised cross-correlation of the two
  rank-equalised regions after a small search over shift and scale. Only confirmed pairs are reported.

Nothing here needs the original file again: the :class:`Fingerprint` keeps a :data:`MATCH_SIDE`-pixel
equalised thumbnail (``match_view``), which the audit database stores so that images seen in earlier audits can be
confirmed the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "MATCH_SIDE",
    "SCALES",
    "SIMHASH_OFFSET",
    "VIEW_SIDE",
    "Fingerprint",
    "band_probes",
    "band_values",
    "fingerprint_frame",
    "hamming",
    "masked_similarity",
    "similarity",
    "slot_is_simhash",
    "slot_scale",
    "tied_fraction",
]

#: Central-crop scales hashed for every image (fractions of each side).
SCALES: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55)
#: Longest side of the working view the hashes are taken from.
VIEW_SIDE = 256
#: Side of the stored, equalised thumbnail used to confirm matches (also against earlier audits).
MATCH_SIDE = 96
#: Bits in each of the four bands of a 64-bit hash (multi-index hashing).
BAND_BITS = 16
_HASH_SIDE = 32
_LOW = 8
#: Hash slots: a pHash of the central region at ``SCALES[i]`` is slot ``i``, the SimHash of it slot
#: ``SIMHASH_OFFSET + i`` (the audit database's ``image_hashes.scale`` column stores the slot).
SIMHASH_OFFSET = 100
#: The SimHash projects the ``_SIM_LOW`` x ``_SIM_LOW`` lowest DCT coefficients but the mean.
_SIM_LOW = 6
#: Below this spread (of the working view, 0-255 after min/max scaling) an image is treated as blank.
_BLANK_STD = 2.0


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    return (a ^ b).bit_count()


def band_values(h: int) -> tuple[int, int, int, int]:
    """The four 16-bit bands of a 64-bit hash: two hashes within 7 bits agree in one band up to one bit."""
    mask = (1 << BAND_BITS) - 1
    return tuple((h >> (BAND_BITS * i)) & mask for i in range(4))  # type: ignore[return-value]


def band_probes(value: int) -> list[int]:
    """``value`` and every value one bit away from it (radius-1 probing of one band)."""
    return [value] + [value ^ (1 << i) for i in range(BAND_BITS)]


def _rank(values: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Ranks scaled to [0, 1], ties sharing their mean rank (monotone intensity changes leave it unchanged)."""
    flat = values.ravel()
    if flat.size == 0:
        return values.astype(np.float32)
    _uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = (ends - (counts + 1) / 2.0) / max(flat.size - 1, 1)
    return mean_rank[inverse].reshape(values.shape).astype(np.float32)


def _central(view: npt.NDArray[np.float32], scale: float) -> npt.NDArray[np.float32]:
    h, w = view.shape
    ch, cw = max(2, round(h * scale)), max(2, round(w * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    return view[top : top + ch, left : left + cw]


def _simhash_planes() -> npt.NDArray[np.float32]:
    """64 fixed +-1 hyperplanes over the 35 projected coefficients, drawn from SHA-256 (stable across NumPy
    versions and machines, unlike a seeded generator's stream: stored hashes must stay comparable)."""
    n = _SIM_LOW * _SIM_LOW - 1
    bits = bytearray()
    counter = 0
    while len(bits) * 8 < 64 * n:
        bits += hashlib.sha256(b"medverify-simhash-v1:%d" % counter).digest()
        counter += 1
    signs = np.unpackbits(np.frombuffer(bytes(bits), dtype=np.uint8))[: 64 * n].reshape(64, n)
    return (signs.astype(np.float32) * 2.0 - 1.0).astype(np.float32)


_PLANES = _simhash_planes()


def _hashes(region: npt.NDArray[np.float32]) -> tuple[int, int]:
    """The pHash and the SimHash of one region (both of its rank-equalised 32x32 reduction)."""
    small = cv2.resize(region, (_HASH_SIDE, _HASH_SIDE), interpolation=cv2.INTER_AREA)
    dct = cv2.dct(_rank(small) - np.float32(0.5))
    low = dct[:_LOW, :_LOW].ravel()
    phash = np.packbits((low > np.median(low)).astype(np.uint8)).view(">u8")[0]
    projected = _PLANES @ dct[:_SIM_LOW, :_SIM_LOW].ravel()[1:]
    simhash = np.packbits((projected > 0).astype(np.uint8)).view(">u8")[0]
    return int(phash), int(simhash)


def slot_is_simhash(slot: int) -> bool:
    """Whether a hash slot holds a SimHash (else a pHash)."""
    return slot >= SIMHASH_OFFSET


def slot_scale(slot: int) -> float:
    """The central-crop scale a hash slot was taken at."""
    return SCALES[slot % SIMHASH_OFFSET]


def _dhash(region: npt.NDArray[np.float32]) -> int:
    small = _rank(cv2.resize(region, (9, 8), interpolation=cv2.INTER_AREA))
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Fingerprint:
    """What the duplicate matcher knows of one image.

    ``pixel_sha256`` is the SHA-256 of the decoded frame (same pixels in another container or transfer syntax);
    ``phashes`` holds one pHash per scale of :data:`SCALES` and ``simhashes`` one SimHash per scale;
    ``match_view`` is a ``MATCH_SIDE``² uint8
    rank-equalised thumbnail. A blank image (no structure) has no perceptual hashes and is never matched by them.
    """

    pixel_sha256: str
    phashes: tuple[int, ...]
    dhash: int | None
    match_view: npt.NDArray[np.uint8]
    blank: bool = False
    simhashes: tuple[int, ...] = ()

    @property
    def phash(self) -> int | None:
        """The whole-image pHash (scale 1.0)."""
        return self.phashes[0] if self.phashes else None

    def slots(self) -> dict[int, int]:
        """Every perceptual hash by its slot (see :data:`SIMHASH_OFFSET`); empty for a blank image."""
        out = dict(enumerate(self.phashes))
        out.update((SIMHASH_OFFSET + i, h) for i, h in enumerate(self.simhashes))
        return out


def working_view(frame: npt.NDArray[np.floating], *, monochrome1: bool = False) -> npt.NDArray[np.float32]:
    """``frame`` (physical units) as a float32 view with the longest side at most :data:`VIEW_SIDE`."""
    array = np.nan_to_num(np.asarray(frame, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if array.ndim != 2 or min(array.shape) < 4:
        raise ValueError(f"a fingerprint needs a 2-D frame of at least 4x4 pixels, not {array.shape}")
    if monochrome1:  # displayed inverted: compare what a reader sees
        array = -array
    h, w = array.shape
    factor = VIEW_SIDE / max(h, w)
    if factor < 1.0:
        size = (max(4, round(w * factor)), max(4, round(h * factor)))
        array = np.asarray(cv2.resize(array, size, interpolation=cv2.INTER_AREA), dtype=np.float32)
    return array


def fingerprint_frame(frame: npt.NDArray[np.floating], *, monochrome1: bool = False) -> Fingerprint:
    """The fingerprint of one frame in physical (or stored) units."""
    raw = np.ascontiguousarray(np.asarray(frame))
    pixel_sha256 = hashlib.sha256(raw.astype("<f4").tobytes() + repr(raw.shape).encode()).hexdigest()
    view = working_view(raw, monochrome1=monochrome1)
    lo, hi = float(view.min()), float(view.max())
    spread = float(((view - lo) / (hi - lo) * 255.0).std()) if hi > lo else 0.0
    small = cv2.resize(view, (MATCH_SIDE, MATCH_SIDE), interpolation=cv2.INTER_AREA)
    p_lo, p_hi = np.percentile(small, (0.5, 99.5))
    scaled = (small - p_lo) / (p_hi - p_lo) if p_hi > p_lo else np.zeros_like(small)
    thumb = (np.clip(scaled, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if spread < _BLANK_STD:
        return Fingerprint(pixel_sha256=pixel_sha256, phashes=(), dhash=None, match_view=thumb, blank=True)
    both = [_hashes(_central(view, s)) for s in SCALES]
    return Fingerprint(pixel_sha256=pixel_sha256, phashes=tuple(p for p, _ in both), dhash=_dhash(view),
                       match_view=thumb, simhashes=tuple(h for _, h in both))  # fmt: skip


def _region(view: npt.NDArray[np.uint8], scale: float, side: int) -> npt.NDArray[np.float32]:
    """The central ``scale`` region at ``side`` pixels, rank-equalised, with the coarse shading removed."""
    crop = _central(view.astype(np.float32), scale)
    values = _rank(cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA))
    # High-pass: the outline and shading (a brain, a bone shaft) are alike in many different images; the detail
    # inside is what a reused image shares with its source.
    return np.asarray(values - cv2.GaussianBlur(values, (0, 0), side / 16), dtype=np.float32)


def similarity(
    a: npt.NDArray[np.uint8],
    b: npt.NDArray[np.uint8],
    *,
    scale_a: float,
    scale_b: float,
    jitter: Sequence[float] = (0.9, 0.95, 1.0, 1.05, 1.1),
) -> float:
    """Best normalised cross-correlation of the central ``scale_a`` region of ``a`` and ``scale_b`` of ``b``.

    Both are ``match_view`` thumbnails. The regions are high-passed (detail, not outline), and the inner 80 % of
    ``b``'s region is slid over ``a``'s region at a few relative sizes (``jitter``), which absorbs the coarseness of
    the scale ladder and off-centre crops of a few per cent. Returns a value in [-1, 1]; in the benchmark,
    unrelated images and most neighbouring slices or tiles of one image score below 0.65, reused copies above.
    """
    side = 64
    best = -1.0
    ra = _region(a, scale_a, side)
    if float(ra.std()) < 1e-6:
        return best
    for j in jitter:
        inner = scale_b * 0.8 / j
        if inner > 1.0:
            continue
        template = _region(b, inner, round(side * 0.8))
        if float(template.std()) < 1e-6:
            continue
        score = float(cv2.matchTemplate(ra, template, cv2.TM_CCOEFF_NORMED).max())
        if np.isfinite(score):
            best = max(best, score)
    return best


#: Scales searched by :func:`masked_similarity` (which has no hash to propose one).
_FINE_SCALES = tuple(round(0.5 + 0.025 * k, 3) for k in range(21))


def _rank_levels(values: npt.NDArray[np.float32], levels: int = 16) -> npt.NDArray[np.float32]:
    """:func:`_rank` of an image of 0-255 values to 1/``levels`` of a grey level, by histogram (linear time):
    values within that step of each other tie."""
    q = np.clip(np.rint(values * levels), 0, 255 * levels).astype(np.intp)
    counts = np.bincount(q.ravel(), minlength=255 * levels + 1)
    ends = np.cumsum(counts)
    mean_rank = (ends - (counts + 1) / 2.0) / max(q.size - 1, 1)
    return mean_rank[q].astype(np.float32)


def tied_fraction(view: npt.NDArray[np.uint8]) -> float:
    """Share of a ``match_view`` thumbnail at its darkest or brightest value: background and saturated pixels."""
    return float(((view <= view.min()) | (view >= view.max())).mean())


def masked_similarity(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    """Best rank correlation of one thumbnail's central 80 % inside the other's central region at any scale of
    0.5-1.0, ignoring the template's tied pixels (its darkest and brightest values, and the pixels next to them),
    both ways round.

    For an image that is mostly uniform background, or a copy whose window saturated much of it, the tied pixels
    carry no information and, rank-equalised, disagree with their source; the rest must still agree. Compared at
    the thumbnail's full resolution and without a high-pass, since the outline of what is left is part of the
    evidence. In the benchmark, such copies score 0.80 or more and neighbouring slices of one brain at most 0.70.
    """
    side = MATCH_SIDE
    inner = round(side * 0.8)
    best = -1.0
    for x, y in ((a, b), (b, a)):
        crop = np.asarray(cv2.resize(_central(x.astype(np.float32), 0.8), (inner, inner),
                                     interpolation=cv2.INTER_AREA), dtype=np.float32)  # fmt: skip
        lo, hi = float(crop.min()), float(crop.max())
        keep = ((crop > lo + 1.0) & (crop < hi - 1.0)).astype(np.uint8)
        mask = cv2.erode(keep, np.ones((3, 3), np.uint8)).astype(np.float32)
        if mask.mean() < 0.1:  # too little left to compare
            continue
        template = _rank_levels(crop)
        for scale in _FINE_SCALES:
            region = _rank_levels(np.asarray(cv2.resize(_central(y.astype(np.float32), scale), (side, side),
                                                        interpolation=cv2.INTER_AREA), dtype=np.float32))  # fmt: skip
            scores = cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED, mask=mask)
            scores = scores[np.isfinite(scores)]
            if scores.size:
                best = max(best, float(scores.max()))
    return best
