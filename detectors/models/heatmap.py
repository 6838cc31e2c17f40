"""Heatmap images: the per-patch tamper probabilities over the scored frame, as a PNG."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from detectors.models.base import DetectionReport

__all__ = ["render_heatmap"]


def render_heatmap(report: DetectionReport, frame: npt.NDArray[np.floating] | None = None) -> bytes:
    """PNG bytes: the heatmap (JET colours, 0 blue .. 1 red; unscored patches black) at the frame's pixel size,
    blended half and half with the normalised ``frame`` in [0, 1] when it is given."""
    heat = report.pixel_heatmap()
    scored = ~np.isnan(heat)
    levels = np.round(np.nan_to_num(heat, nan=0.0) * 255.0).astype(np.uint8)
    colour = cv2.applyColorMap(levels, cv2.COLORMAP_JET)
    colour[~scored] = 0
    if frame is not None:
        grey = np.asarray(frame, dtype=np.float32)[: heat.shape[0], : heat.shape[1]]
        base = np.zeros(heat.shape, dtype=np.float32)
        base[: grey.shape[0], : grey.shape[1]] = np.clip(grey, 0.0, 1.0)
        grey8 = cv2.cvtColor(np.round(base * 255.0).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        colour = cv2.addWeighted(grey8, 0.5, colour, 0.5, 0.0)
    ok, data = cv2.imencode(".png", colour)
    if not ok:  # pragma: no cover - OpenCV always encodes a BGR uint8 image
        raise ValueError("PNG encoding failed")
    return bytes(data.tobytes())
