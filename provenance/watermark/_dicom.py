"""What the mark needs from a DICOM dataset: the display window in stored pixel values."""

from __future__ import annotations

import math
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["display_window"]


def _item(ds: Dataset, sequence: str) -> Dataset:
    """The first item of ``sequence`` in the shared functional groups of an enhanced image, else ``ds`` itself."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        outer = ds.get(groups)
        if outer and sequence in outer[0] and outer[0][sequence].value:
            item: Dataset = outer[0][sequence][0]
            return item
    return ds


def _first(value: Any) -> float | None:
    """The first of a DS value's numbers (pydicom gives a MultiValue for VM > 1), or None."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        number = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def display_window(ds: Dataset) -> tuple[float, float] | None:
    """The file's first VOI window (Window Center/Width) as (low, high) in stored values, or None.

    The window is read from the dataset or, for enhanced multi-frame images, from its functional groups, and
    taken back through the Rescale Slope/Intercept, so that :func:`~provenance.watermark.embed` can keep the
    mark at a grey level or so of the view a reader will export. Malformed values give None.
    """
    voi = _item(ds, "FrameVOILUTSequence")
    center, width = _first(voi.get("WindowCenter")), _first(voi.get("WindowWidth"))
    if center is None or width is None or width <= 1:
        return None
    rescale = _item(ds, "PixelValueTransformationSequence")
    slope = _first(rescale.get("RescaleSlope")) or 1.0
    intercept = _first(rescale.get("RescaleIntercept")) or 0.0
    low, high = (center - width / 2 - intercept) / slope, (center + width / 2 - intercept) / slope
    return (min(low, high), max(low, high))
