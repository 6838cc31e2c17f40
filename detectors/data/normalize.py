"""Modality-aware normalisation of physical-unit frames to float32 in ``[0, 1]``.

The rule, deterministic and the same for training and inference:

- **CT** (and anything in Hounsfield units): a fixed HU window, :data:`CT_HU_RANGE` = ``[-1000, 2000]`` by
  default (air to dense bone), clipped. A fixed window keeps the HU scale comparable across scanners; the stored
  DICOM window is ignored for CT because it is a display choice (brain, lung, bone) that differs per series.
- **Every other modality** (MR, CR, DX, MG, US, NM, PT, XA, OT, NIfTI, PNG …): the DICOM VOI window
  ``(center, width)`` when one is given, as the linear range ``[center - width/2, center + width/2]``; otherwise
  robust percentile scaling, the ``percentiles`` (default 0.5 and 99.5) of all the given frames together, so the
  frames of one image share one scale.
- ``MONOCHROME1`` images (high values display dark, e.g. many CR) are inverted after scaling, so that in the output
  bright always means dense / high signal.

Values outside the range are clipped; a constant image becomes all zeros; NaN becomes 0.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from detectors.data.reader import ImageData

__all__ = ["CT_HU_RANGE", "DEFAULT_PERCENTILES", "normalization_range", "normalize", "normalize_image"]

CT_HU_RANGE: tuple[float, float] = (-1000.0, 2000.0)
DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def normalization_range(
    frames: npt.ArrayLike,
    modality: str,
    *,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ct_range: tuple[float, float] = CT_HU_RANGE,
) -> tuple[float, float]:
    """The ``(low, high)`` physical values that :func:`normalize` maps to 0 and 1."""
    if str(modality).strip().upper() == "CT":
        return float(ct_range[0]), float(ct_range[1])
    if window is not None and window[1] > 0:
        center, width = float(window[0]), float(window[1])
        return center - width / 2.0, center + width / 2.0
    low_p, high_p = percentiles
    if not 0.0 <= low_p < high_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, not {percentiles}")
    values = np.asarray(frames, dtype=np.float32)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(values, [low_p, high_p])
    return float(low), float(high)


def normalize(
    frames: npt.ArrayLike,
    modality: str,
    *,
    window: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ct_range: tuple[float, float] = CT_HU_RANGE,
) -> npt.NDArray[np.float32]:
    """Map ``frames`` (physical units) to float32 in ``[0, 1]`` by the module's rule; the shape is kept."""
    array = np.asarray(frames, dtype=np.float32)
    low, high = normalization_range(array, modality, window=window, percentiles=percentiles, ct_range=ct_range)
    if not high > low:
        return np.zeros(array.shape, dtype=np.float32)
    out = (array - np.float32(low)) * np.float32(1.0 / (high - low))
    np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    if photometric.strip().upper() == "MONOCHROME1":
        np.subtract(np.float32(1.0), out, out=out)
    return out


def normalize_image(
    image: ImageData,
    *,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ct_range: tuple[float, float] = CT_HU_RANGE,
) -> npt.NDArray[np.float32]:
    """:func:`normalize` with the image's own modality, DICOM window and photometric interpretation."""
    return normalize(
        image.frames,
        image.modality,
        window=image.window,
        photometric=image.photometric,
        percentiles=percentiles,
        ct_range=ct_range,
    )
