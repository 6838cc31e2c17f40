"""What a reviewer sees of a quarantined instance: its frames as windowed PNGs, the detector's heatmap as a
transparent overlay, and the DICOM header as rows of text.

The instance is untrusted: it is parsed with :meth:`~verifier.instance.Instance.from_bytes` (size limits, typed
errors) and decoded with the detectors' reader (decode limits); anything that fails becomes a
:class:`RenderError` with a message the page shows in an error panel, never a server error.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from verifier.errors import MedverifyError
from verifier.instance import Instance

if TYPE_CHECKING:
    from detectors.data.reader import ImageData
    from detectors.models import DetectionReport, Detector
    from verifier.detection import DetectorSetup

__all__ = [
    "HeaderRow", "RenderError", "frame_png", "header_rows", "heatmap_png", "load_detector", "open_image", "outline_png",
    "overlay_png", "parse",
]  # fmt: skip

#: Longest side of a frame as served (larger frames are shrunk; a review page needs no 4k pixels).
MAX_SIDE = 1024
#: Characters of one header value shown.
_VALUE_CHARS = 160


class RenderError(MedverifyError):
    """The instance cannot be shown (unreadable file, pixel data that does not decode)."""


@dataclasses.dataclass(frozen=True)
class HeaderRow:
    tag: str
    keyword: str
    vr: str
    value: str
    depth: int = 0


def parse(data: bytes, label: str) -> Instance:
    """The instance in ``data``; :class:`RenderError` if it is not readable DICOM."""
    from verifier.instance import UnreadableInstanceError

    try:
        return Instance.from_bytes(data, path=label)
    except UnreadableInstanceError as exc:
        raise RenderError(str(exc).removeprefix(f"{label}: ")) from None


def open_image(instance: Instance) -> ImageData:
    """The decoded frames; :class:`RenderError` for pixel data that is missing or does not decode."""
    from detectors.data.reader import read_image
    from detectors.errors import DetectorsError

    try:
        return read_image(instance.dataset)
    except DetectorsError as exc:
        raise RenderError(f"the image cannot be decoded: {exc.diagnostics()[:300]}") from None
    except Exception as exc:  # noqa: BLE001 - a hostile file reaching a decoder bug: an error panel, not a 500
        raise RenderError(f"the image cannot be decoded ({type(exc).__name__})") from None


def _window(image: ImageData, frame: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """``frame`` to 8 bits: the file's own VOI window if it has one, else the 0.5-99.5 percentile range."""
    finite = frame[np.isfinite(frame)]
    if image.window is not None and image.window[1] > 0:
        low, high = image.window[0] - image.window[1] / 2, image.window[0] + image.window[1] / 2
    elif finite.size:
        low, high = (float(v) for v in np.percentile(finite, (0.5, 99.5)))
    else:
        low, high = 0.0, 1.0
    scaled = (np.nan_to_num(frame, nan=low) - low) / max(high - low, 1e-6)
    grey = np.clip(scaled, 0.0, 1.0)
    if image.photometric == "MONOCHROME1":
        grey = 1.0 - grey
    out: npt.NDArray[np.uint8] = np.round(grey * 255.0).astype(np.uint8)
    return out


def _shrink(pixels: npt.NDArray[Any]) -> npt.NDArray[Any]:
    import cv2

    rows, cols = pixels.shape[:2]
    scale = MAX_SIDE / max(rows, cols)
    if scale >= 1.0:
        return pixels
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    return np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))


def _png(pixels: npt.NDArray[Any]) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", pixels)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RenderError("PNG encoding failed")
    return bytes(data.tobytes())


def frame_png(image: ImageData, index: int) -> bytes:
    """Frame ``index`` (position among the decoded frames), windowed, as a greyscale PNG."""
    if not 0 <= index < image.frames.shape[0]:
        raise RenderError(f"there is no frame {index + 1}")
    return _png(_shrink(_window(image, image.frames[index])))


_LOAD_LOCK = threading.Lock()


def load_detector(detector: DetectorSetup) -> Detector:
    """The detector, loaded once even when the server's warm-up and a first heatmap ask at the same time."""
    with _LOAD_LOCK:
        return detector.load()


def heatmap_png(detector: DetectorSetup, instance: Instance) -> tuple[bytes, int]:
    """The detector's heatmap as a PNG with transparency (unscored pixels clear), and the frame it belongs to."""
    from detectors.data.reader import read_image
    from detectors.errors import DetectorsError

    try:
        image = read_image(instance.dataset)
        report = load_detector(detector).detect(image)
    except DetectorsError as exc:
        raise RenderError(f"the detector cannot score this image: {exc.diagnostics()[:300]}") from None
    frame = image.frame_indices[report.heatmap_frame] if report.heatmap_frame < len(image.frame_indices) else 0
    position = image.frame_indices.index(frame) if frame in image.frame_indices else 0
    return overlay_png(report), position


def overlay_png(report: DetectionReport) -> bytes:
    """The report's heatmap as a PNG with transparency: JET colours (blue low, red high), unscored pixels clear."""
    import cv2

    heat = report.pixel_heatmap()
    scored = ~np.isnan(heat)
    levels = np.round(np.nan_to_num(heat, nan=0.0) * 255.0).astype(np.uint8)
    colour = cv2.applyColorMap(levels, cv2.COLORMAP_JET)
    alpha = np.where(scored, 255, 0).astype(np.uint8)
    return _png(_shrink(np.dstack([colour, alpha])))


def outline_png(mask: npt.NDArray[np.bool_]) -> bytes:
    """The outline of ``mask`` (a tampered region) in yellow on a clear PNG, a few pixels wide."""
    import cv2

    region = np.ascontiguousarray(mask.astype(np.uint8))
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    cv2.drawContours(rgba, contours, -1, (0, 230, 255, 255), max(1, round(max(mask.shape) / 150)))
    return _png(_shrink(rgba))


def header_rows(instance: Instance, limit: int = 400) -> list[HeaderRow]:
    """The data set's elements as text rows (sequences indented, binary values by size only), at most ``limit``."""
    rows: list[HeaderRow] = []
    meta = getattr(instance.dataset, "file_meta", None)

    def walk(ds: Any, depth: int) -> None:
        for elem in ds:
            if len(rows) >= limit:
                return
            rows.append(_row(elem, depth))
            if elem.VR == "SQ":
                for item in elem.value or ():
                    if len(rows) >= limit:
                        return
                    walk(item, depth + 1)

    try:
        if meta is not None:
            walk(meta, 0)
        walk(instance.dataset, 0)
    except Exception as exc:  # noqa: BLE001 - a hostile element: show what was read, then say why it stopped
        rows.append(HeaderRow("", "", "", f"(the rest of the header cannot be read: {type(exc).__name__})"))
    return rows


def _row(elem: Any, depth: int) -> HeaderRow:
    tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
    vr = str(elem.VR)
    keyword = str(elem.keyword or "private" if elem.tag.is_private else elem.keyword or "")
    if vr == "SQ":
        value = f"sequence of {len(elem.value or ())} item(s)"
    elif vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.tag == 0x7FE00010:
        size = len(elem.value) if isinstance(elem.value, bytes | bytearray) else 0
        value = f"binary, {size} bytes"
    else:
        value = _text(elem)
    return HeaderRow(tag, keyword, vr, value, depth)


@functools.lru_cache(maxsize=1)
def _printable_table() -> dict[int, str]:
    return {c: "?" for c in range(32) if c not in (9,)}


def _text(elem: Any) -> str:
    try:
        text = str(elem.value)
    except Exception:  # noqa: BLE001 - a value that does not convert
        text = "(cannot be read)"
    text = text.translate(_printable_table())
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 1] + "…"
