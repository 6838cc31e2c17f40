"""Embedding and detection (see the package docstring for the scheme and why)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from provenance.watermark import _ecc
from provenance.watermark.models import WatermarkError, WatermarkKey, WatermarkReport, WatermarkStatus

__all__ = ["DEFAULT_SCALES", "MIN_SIDE", "TILE", "detect", "embed"]

FloatArray = npt.NDArray[Any]

TILE = 128  # tile side in pixels at scale 1
MIN_SIDE = TILE  # detect needs one whole tile: smaller images (at the scale tried) are TOO_SMALL
CHIP = 2  # chip pitch in pixels
GRID = TILE // CHIP  # chips per tile side
N_CHIPS = GRID * GRID
N_SYNC = 1280  # chips carrying the known synchronisation signs; the rest carry the coded payload
N_PAYLOAD_CHIPS = N_CHIPS - N_SYNC
BAND_HIGH = 30  # highest frequency kept, cycles per tile (per axis): 0.23 cycles per pixel
BAND_LOW = 7.0  # radial cut (0.055 cycles per pixel) below which anatomy dominates the band
JPEG_BLOCK_FREQUENCY = TILE // 8  # 8x8-block edges of JPEG put energy on these lines of the spectrum
MAX_ANALYSIS_SIDE = 1024
DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.5, 2.0)
MASKING = 0.6  # mark amplitude relative to the local activity of the image (perceptual masking)
ACTIVITY_CAP = 3.0  # local activity counts up to this multiple of its median (edges stay clean)
FLOOR_LEVELS = 0.7  # least mark amplitude inside the display window, in 8-bit grey levels of that window
OUTSIDE_FLOOR_LEVELS = 0.2  # the same outside the window
ROUNDING_FLOOR = 0.6  # least amplitude of an integer image, in stored units
SOFT_CLIP = 2.5  # payload soft values are clipped at this many robust standard deviations (edges, outliers)
MIN_IMAGE_PSNR_DB = 40.0  # the mark is scaled down to stay this far below the image's own dynamic range
MIN_STORED_PSNR_DB = 50.0
_SIGN_HYPOTHESES = 2  # the image may have been inverted (MONOCHROME1 export)
_WHITEN_SIGMA = 2.0
_ACTIVITY_SIGMA = 6.0
_CLIP = 3.0
_MASK_SIGMA = 2.0
_MASK_ERODE = 9


def _band_mask() -> FloatArray:
    k = np.fft.fftfreq(TILE) * TILE
    ky, kx = np.meshgrid(k, k, indexing="ij")
    keep = (np.abs(kx) <= BAND_HIGH) & (np.abs(ky) <= BAND_HIGH) & (np.hypot(kx, ky) >= BAND_LOW)
    keep &= (np.abs(kx) != JPEG_BLOCK_FREQUENCY) & (np.abs(ky) != JPEG_BLOCK_FREQUENCY)
    mask: FloatArray = keep.astype(np.float64)
    return mask


_MASK = _band_mask()
_CHIP_ROWS, _CHIP_COLS = np.divmod(np.arange(N_CHIPS), GRID)


@dataclass(frozen=True)
class _Tables:
    """What the key determines: chip roles, signs and the interleaver."""

    sync_chips: npt.NDArray[np.int64]
    sync_signs: FloatArray
    payload_chips: npt.NDArray[np.int64]
    scramble: FloatArray
    coded_index: npt.NDArray[np.int64]  # coded bit carried by each payload chip
    sync_spectrum: npt.NDArray[np.complex128]  # conj FFT of the sync comb
    indicator_spectrum: npt.NDArray[np.complex128]  # conj FFT of the sync-position comb


def _tables(key: WatermarkKey) -> _Tables:
    cached = key._derived  # the key keeps its derived tables
    if isinstance(cached, _Tables):
        return cached
    rng = np.random.Generator(np.random.PCG64(np.frombuffer(key.derive(b"chips-v2"), dtype=np.uint32)))
    order = rng.permutation(N_CHIPS)
    sync_chips, payload_chips = np.sort(order[:N_SYNC]), order[N_SYNC:]
    sync_signs = rng.choice(np.array([-1.0, 1.0]), size=N_SYNC)
    scramble = rng.choice(np.array([-1.0, 1.0]), size=N_PAYLOAD_CHIPS)
    coded_index = np.arange(N_PAYLOAD_CHIPS) % _ecc.CODED_BITS
    sync_comb = _comb(sync_chips, sync_signs)
    indicator = _comb(sync_chips, np.ones(N_SYNC))
    tables = _Tables(
        sync_chips=sync_chips,
        sync_signs=sync_signs,
        payload_chips=payload_chips,
        scramble=scramble,
        coded_index=coded_index,
        sync_spectrum=np.conj(np.fft.fft2(sync_comb)),
        indicator_spectrum=np.conj(np.fft.fft2(indicator)),
    )
    key._derived = tables
    return tables


def _comb(chips: npt.NDArray[np.int64], values: FloatArray) -> FloatArray:
    comb = np.zeros((TILE, TILE))
    comb[_CHIP_ROWS[chips] * CHIP, _CHIP_COLS[chips] * CHIP] = values
    return comb


def _tile_pattern(key: WatermarkKey, payload: int) -> FloatArray:
    """The mark's tile: band-limited chips (sync signs and scrambled, repeated code bits), unit RMS."""
    t = _tables(key)
    coded = _ecc.encode(payload).astype(np.float64)
    chips = np.zeros(N_CHIPS)
    chips[t.sync_chips] = t.sync_signs
    chips[t.payload_chips] = (1.0 - 2.0 * coded[t.coded_index]) * t.scramble
    rows, cols = np.divmod(np.arange(N_CHIPS), GRID)
    comb = np.zeros((TILE, TILE))
    comb[rows * CHIP, cols * CHIP] = chips
    pattern = np.fft.ifft2(np.fft.fft2(comb) * _MASK).real
    result: FloatArray = pattern / pattern.std()
    return result


def _stored_range(dtype: np.dtype[np.generic], bits_stored: int | None) -> tuple[float, float] | None:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)  # type: ignore[type-var]
        bits = info.bits if bits_stored is None else bits_stored
        if not 1 <= bits <= info.bits:
            raise WatermarkError(f"bits_stored={bits_stored} does not fit a {dtype} image")
        if info.min < 0:
            return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
        return 0.0, 2.0**bits - 1
    if bits_stored is not None:
        return 0.0, 2.0**bits_stored - 1
    return None


def _blur(image: npt.NDArray[Any], sigma: float) -> npt.NDArray[Any]:
    import cv2  # imported where used: OpenCV costs a signature-only verification a third of its start-up

    blurred: npt.NDArray[Any] = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return blurred


def _check_image(pixels: npt.ArrayLike) -> npt.NDArray[np.generic]:
    array = np.asarray(pixels)
    if array.ndim != 2:
        raise WatermarkError(f"a watermark needs a single-channel (H, W) image, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise WatermarkError(f"unsupported pixel type {array.dtype}")
    if array.dtype.itemsize > 4 and np.issubdtype(array.dtype, np.integer):
        raise WatermarkError(f"unsupported pixel type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise WatermarkError("the image has non-finite pixel values (NaN or infinity)")
    return array


def embed(
    pixels: npt.ArrayLike,
    key: WatermarkKey,
    payload: int,
    *,
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    strength: float = 1.0,
) -> npt.NDArray[np.generic]:
    """Return ``pixels`` with the mark of ``key`` carrying the 64-bit ``payload``; same shape and dtype.

    Integer images are rounded and clipped to the stored range (``bits_stored``, default the dtype's; signed
    types use the signed range). ``window`` is the display window (low, high) in stored values, e.g. a DICOM
    file's VOI window; without it the 1st to 99th percentiles stand in. The mark is ``MASKING`` times the local
    activity (more in texture, less in flat areas), at least ``FLOOR_LEVELS`` of an 8-bit grey level of that
    window inside it, and scaled down so that the PSNR over the stored range stays above
    ``MIN_STORED_PSNR_DB`` (and over the image's own 0.1-99.9 percentile range above ``MIN_IMAGE_PSNR_DB``).
    """
    image = _check_image(pixels)
    if not isinstance(payload, int) or isinstance(payload, bool) or not 0 <= payload < 2**_ecc.PAYLOAD_BITS:
        raise WatermarkError("the payload must be an integer in [0, 2**64)")
    if not (math.isfinite(strength) and strength > 0):
        raise WatermarkError("strength must be a positive number")
    stored = _stored_range(image.dtype, bits_stored)
    x = image.astype(np.float32)
    height, width = x.shape

    tile = _tile_pattern(key, payload).astype(np.float32)
    pattern = np.tile(tile, (-(-height // TILE), -(-width // TILE)))[:height, :width]
    amplitude = _amplitude(x, stored, window) * np.float32(strength)
    marked = x.astype(np.float64) + amplitude * pattern
    if stored is not None:
        marked = np.clip(np.rint(marked), stored[0], stored[1])
    result: npt.NDArray[np.generic] = marked.astype(image.dtype)
    return result


def _amplitude(
    x: npt.NDArray[np.float32], stored: tuple[float, float] | None, window: tuple[float, float] | None
) -> npt.NDArray[np.float32]:
    """The perceptual mask: the mark's local RMS amplitude at each pixel (see :func:`embed`)."""
    height, width = x.shape
    sample = (slice(None, None, max(1, height // 256)), slice(None, None, max(1, width // 256)))
    low, p1, p99, high = (float(v) for v in np.percentile(x[sample], [0.1, 1, 99, 99.9]))
    dynamic = high - low
    if dynamic <= 0:
        dynamic = (stored[1] - stored[0]) if stored else 1.0
    if window is None and stored is not None and stored[1] - stored[0] <= 255:
        window = stored  # an 8-bit image is shown as it is
    if window is None:
        # Unknown display window: no floor tied to it. A guessed (wide) window would put a visible mark into
        # flat regions that a narrow window shows; only the activity mask and the rounding floor apply.
        w_low, w_high, level = p1, p99, 0.0
    else:
        w_low, w_high = float(min(window)), float(max(window))
        if not (math.isfinite(w_low) and math.isfinite(w_high)) or w_high <= w_low:
            raise WatermarkError("the display window must be two finite, different values")
        level = (w_high - w_low) / 255.0  # one grey level of an 8-bit export through the window

    residual = x - _blur(x, _WHITEN_SIGMA)
    # Local activity, eroded so that an edge's contrast does not raise the mark in the flat tissue beside it.
    activity = np.sqrt(_blur(residual * residual, _MASK_SIGMA))
    import cv2

    activity = _blur(cv2.erode(activity, np.ones((_MASK_ERODE, _MASK_ERODE), np.uint8)), _MASK_SIGMA)
    # The typical activity of the textured part (flat background, often most of an ultrasound or CT image,
    # would drag a plain median to zero).
    sampled = activity[sample]
    textured = sampled[sampled > 0.01 * float(np.percentile(sampled, 99))]
    typical = float(np.median(textured)) if textured.size else 0.0
    if typical <= 0:
        typical = float(activity.mean()) or 1.0
    # Inside the window an 8-bit export keeps a mark of a grey level or so; outside it (clipped to black or
    # white there) only the stored values carry it, so the floor is lower.
    inside = _blur(((x >= w_low) & (x <= w_high)).astype(np.float32), _MASK_SIGMA)
    floor = np.float32(FLOOR_LEVELS * level) * inside + np.float32(OUTSIDE_FLOOR_LEVELS * level) * (1 - inside)
    if stored is not None:
        floor = np.maximum(floor, np.float32(ROUNDING_FLOOR))  # below about half a step rounding erases the mark
    masked = np.float32(MASKING) * np.minimum(activity, np.float32(ACTIVITY_CAP * typical))
    limit = dynamic * 10 ** (-MIN_IMAGE_PSNR_DB / 20)
    if stored is not None:
        limit = min(limit, (stored[1] - stored[0]) * 10 ** (-(MIN_STORED_PSNR_DB + 0.5) / 20))
    return _within_limit(masked, floor, limit)


def _within_limit(masked: npt.NDArray[Any], floor: npt.NDArray[Any], limit: float) -> npt.NDArray[np.float32]:
    """max(gain x masked, floor) with the largest gain <= 1 whose RMS is at most ``limit``.

    The floor is kept as long as it fits (scaling it down with the rest would put it under the rounding step
    and erase the mark in flat regions); when the floor alone is over the limit, everything is scaled down.
    """
    def rms(values: npt.NDArray[Any]) -> float:
        return math.sqrt(float(np.mean(np.square(values, dtype=np.float64))))

    full: npt.NDArray[np.float32] = np.maximum(masked, floor).astype(np.float32)
    if rms(full) <= limit:
        return full
    if rms(floor) >= limit:
        scaled: npt.NDArray[np.float32] = (floor * (limit / rms(floor))).astype(np.float32)
        return scaled
    low, high = 0.0, 1.0
    for _ in range(20):  # bisection on the gain; the RMS grows monotonically with it
        gain = (low + high) / 2
        if rms(np.maximum(np.float32(gain) * masked, floor)) <= limit:
            low = gain
        else:
            high = gain
    result: npt.NDArray[np.float32] = np.maximum(np.float32(low) * masked, floor).astype(np.float32)
    return result


def _whitened(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """High-pass residual divided by its local RMS and clipped: suppresses the host image, edges and gain."""
    residual = x - _blur(x, _WHITEN_SIGMA)
    local = _blur(residual * residual, _ACTIVITY_SIGMA)
    floor = 1e-6 * float(local.mean()) + 1e-12
    white: npt.NDArray[Any] = np.clip(residual / np.sqrt(local + floor), -_CLIP, _CLIP)
    return white


def _folded_chip_field(x: npt.NDArray[Any], scale: float) -> FloatArray:
    """Undo a resize by ``scale``, whiten, fold into one tile, and filter with the chip band (matched filter)."""
    height, width = x.shape
    # A central window of at most MAX_ANALYSIS_SIDE native pixels a side holds enough tiles; it bounds the time.
    limit = max(TILE, round(MAX_ANALYSIS_SIDE * scale))
    if height > limit or width > limit:
        top, left = max(0, (height - limit) // 2), max(0, (width - limit) // 2)
        x = x[top : top + limit, left : left + limit]
        height, width = x.shape
    new_h, new_w = round(height / scale), round(width / scale)
    if (new_h, new_w) != (height, width):
        import cv2

        interpolation = cv2.INTER_AREA if scale > 1 else cv2.INTER_CUBIC
        x = cv2.resize(x, (new_w, new_h), interpolation=interpolation)
    white = _whitened(x)
    pad_h, pad_w = -new_h % TILE, -new_w % TILE
    if pad_h or pad_w:
        white = np.pad(white, ((0, pad_h), (0, pad_w)))
    folded = white.reshape(white.shape[0] // TILE, TILE, white.shape[1] // TILE, TILE).sum(axis=(0, 2))
    field: FloatArray = np.fft.ifft2(np.fft.fft2(folded.astype(np.float64)) * _MASK).real
    return field


@dataclass(frozen=True)
class _Candidate:
    key: WatermarkKey
    scale: float
    score: float
    offset: tuple[int, int]
    payload: int | None


def _search(field: FloatArray, key: WatermarkKey, scale: float) -> _Candidate:
    t = _tables(key)
    spectrum = np.fft.fft2(field)
    corr = np.fft.ifft2(spectrum * t.sync_spectrum).real
    energy = np.fft.ifft2(np.fft.fft2(field * field) * t.indicator_spectrum).real
    z = corr / np.sqrt(np.maximum(energy, 1e-30))
    best = int(np.argmax(np.abs(z)))
    dy, dx = divmod(best, TILE)
    score = float(z.flat[best])
    rows = (_CHIP_ROWS[t.payload_chips] * CHIP + dy) % TILE
    cols = (_CHIP_COLS[t.payload_chips] * CHIP + dx) % TILE
    chips = field[rows, cols] * t.scramble * math.copysign(1.0, score)
    spread = 1.4826 * float(np.median(np.abs(chips))) + 1e-30  # robust scale (MAD) of the chip values
    chips = np.clip(chips, -SOFT_CLIP * spread, SOFT_CLIP * spread)
    soft = np.bincount(t.coded_index, weights=chips, minlength=_ecc.CODED_BITS)
    return _Candidate(key, scale, score, (dy, dx), _ecc.decode(soft))


def _sync_tail(score: float) -> float:
    """P(max |z| over the tile's offsets >= |score|) for a key independent of the image (Hoeffding + union)."""
    return min(1.0, _SIGN_HYPOTHESES * TILE * TILE * math.exp(-score * score / 2))


def _analysable(shape: tuple[int, ...], scale: float) -> bool:
    """Whether the image, resized back by 1/``scale``, holds a whole tile."""
    return min(shape) >= MIN_SIDE and min(round(side / scale) for side in shape) >= MIN_SIDE


def detect(
    pixels: npt.ArrayLike,
    keys: Sequence[WatermarkKey],
    *,
    threshold_pfa: float = 1e-9,
    scales: Sequence[float] = DEFAULT_SCALES,
) -> WatermarkReport:
    """Look for the mark of any of ``keys`` in ``pixels`` (any dtype, any window, possibly resized or cropped).

    The report is PRESENT when the false-alarm probability of what was found, accounting for every key, scale
    and offset tried, is at most ``threshold_pfa``; the payload is reported only when its check code matches.
    An image under ``MIN_SIDE`` pixels a side is TOO_SMALL (nothing tested); scales at which the image resized
    back would be smaller than that are not tried.
    """
    image = _check_image(pixels)
    keys = list(keys)
    if not keys:
        raise WatermarkError("detect needs at least one watermark key")
    if not all(isinstance(k, WatermarkKey) for k in keys):
        raise WatermarkError("keys must be WatermarkKey objects")
    if not 0 < threshold_pfa < 1:
        raise WatermarkError("threshold_pfa must be in (0, 1)")
    scales = [float(s) for s in scales]
    if not scales or not all(0.05 <= s <= 20 for s in scales):
        raise WatermarkError("scales must be a non-empty list of factors in [0.05, 20]")
    scales = [s for s in scales if _analysable(image.shape, s)]
    if not scales:
        return WatermarkReport(
            status=WatermarkStatus.TOO_SMALL, false_alarm_probability=1.0, payload=None, key_id=None, score=0.0,
            details={"reason": f"image too small: the mark needs at least {MIN_SIDE}x{MIN_SIDE} pixels",
                     "shape": list(image.shape), "hypotheses": 0},
        )
    x = image.astype(np.float32)
    # Every key and scale that could be tried counts, also when a match ends the search early.
    trials = len(keys) * len(scales)
    crc_miss = 2.0**-_ecc.CRC_BITS
    best: tuple[float, _Candidate] | None = None
    for scale in scales:
        field = _folded_chip_field(x, scale)
        for key in keys:
            cand = _search(field, key, scale)
            tail = _sync_tail(cand.score)
            if cand.payload is not None:
                # The payload signs are keyed independently of the sync signs: under the null the decoded word
                # is uniform, so a matching check code multiplies the tail by 2**-16 (one decoding per key and scale).
                pfa = min(1.0, trials * tail * crc_miss)
            else:
                pfa = min(1.0, trials * tail)
            if best is None or pfa < best[0]:
                best = (pfa, cand)
            if cand.payload is not None and pfa <= threshold_pfa:
                return _report(pfa, cand, trials, threshold_pfa)
    if best is None:  # unreachable: scales and keys are non-empty
        raise WatermarkError("no hypothesis was tested")
    return _report(best[0], best[1], trials, threshold_pfa)


def _report(pfa: float, cand: _Candidate, trials: int, threshold_pfa: float) -> WatermarkReport:
    present = pfa <= threshold_pfa
    details = {
        "scale": cand.scale,
        "offset": list(cand.offset),
        "inverted": cand.score < 0,
        "check_code_ok": cand.payload is not None if present else None,
        "hypotheses": trials * _SIGN_HYPOTHESES * TILE * TILE,
        "threshold_pfa": threshold_pfa,
    }
    return WatermarkReport(
        status=WatermarkStatus.PRESENT if present else WatermarkStatus.ABSENT,
        false_alarm_probability=pfa,
        payload=cand.payload if present else None,
        key_id=cand.key.key_id if present else None,
        score=cand.score,
        details=details,
    )
