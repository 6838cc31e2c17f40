"""The reports a check makes besides the signature's: the watermark's and the detector's.

Each step reads the parsed :class:`~verifier.instance.Instance` and says what it found; an image it cannot examine
gets a report that says why, not an exception.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provenance.watermark import WatermarkError, WatermarkKey
from provenance.watermark import detect as watermark_detect
from verifier.errors import InputError, is_contained_failure
from verifier.instance import Instance

if TYPE_CHECKING:  # torch is imported only when a detector runs
    from detectors.models import Detector

__all__ = ["DetectorSetup", "watermark_report"]


def watermark_report(instance: Instance, keys: Sequence[WatermarkKey]) -> dict[str, Any]:
    """Detect our mark in the stored pixels (first frame); an image that cannot be decoded says so."""
    import numpy as np

    try:
        pixels = np.asarray(instance.dataset.pixel_array)
    except BaseException as exc:  # decoders raise many types (and Rust ones panic); the report says why
        if not is_contained_failure(exc):
            raise
        return {"present": False, "status": "UNDECODABLE", "error": f"{type(exc).__name__}: {str(exc)[:120]}"}
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]
    if pixels.ndim != 2:
        return {"present": False, "status": "UNSUPPORTED", "error": f"pixel array of shape {pixels.shape}"}
    try:
        return watermark_detect(pixels, keys).to_dict()
    except WatermarkError as exc:  # e.g. float pixels with NaN, 64-bit integers: the report says why
        return {"present": False, "status": "UNSUPPORTED", "error": str(exc)}


#: Detectors loaded in this process, by bundle path ("" for the default): loaded once per process or worker.
_DETECTORS: dict[str, Detector] = {}


@dataclasses.dataclass(frozen=True)
class DetectorSetup:
    """Which detector bundle the detector check uses (None: the shipped default) and where heatmaps go."""

    model: Path | None = None
    heatmap_dir: Path | None = None

    def load(self) -> Detector:
        """The detector, loaded once per process, with one torch thread."""
        key = str(self.model or "")
        if key not in _DETECTORS:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            import torch

            from detectors.errors import DetectorsError
            from detectors.models import load_bundle

            # One torch thread, in workers and in a single process alike: the detector's batches of small patches
            # ran half as fast with two threads as with one on the 2-core machine (bench_scan, one worker).
            torch.set_num_threads(1)
            try:
                _DETECTORS[key] = load_bundle(self.model)
            except DetectorsError as exc:
                raise InputError(f"detector model: {exc.diagnostics()}") from exc
        return _DETECTORS[key]

    def report(self, instance: Instance) -> dict[str, Any]:
        """The detection report of ``instance``: scores, model tag, thresholds; a heatmap PNG when asked.

        An image the reader cannot decode (or no image at all) gets a report with ``error`` and no scores.
        """
        from detectors.data.reader import read_image
        from detectors.errors import DetectorsError
        from detectors.models import prepare_frames, render_heatmap

        detector = self.load()
        ds = instance.dataset
        try:
            total = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            total = 1
        limit = detector.config.max_frames
        indices = None if total <= limit else sorted({round(i * (total - 1) / (limit - 1)) for i in range(limit)})
        try:
            image = read_image(ds, frame_indices=indices)
        except DetectorsError as exc:
            return {"model_tag": detector.config.tag, "threshold": detector.config.threshold,
                    "tamper_threshold": detector.config.tamper_threshold, "synthetic_score": None,
                    "tamper_score": None, "error": exc.diagnostics()[:200]}
        report = detector.detect(image)
        out = report.to_dict()
        if self.heatmap_dir is not None:
            frame = prepare_frames(image, detector.config)[report.heatmap_frame]
            target = self.heatmap_dir / f"{Path(instance.path).stem[:60]}-{instance.sha256[:12]}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(render_heatmap(report, frame))
            os.replace(tmp, target)
            out["heatmap"] = str(target)
        return out
