"""The detector check: which model bundle, loaded once per process, and where heatmaps go."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from verifier.instance import Instance
from verifier.reports import DetectionFailure

if TYPE_CHECKING:  # torch is imported only when a detector runs
    from detectors.data import ImageData
    from detectors.models import Detector
    from verifier.reports import DetectionOutcome

__all__ = ["DetectorSetup"]

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
            from detectors.models import load_bundle

            _DETECTORS[key] = load_bundle(self.model)
            # One torch thread, in workers and in a single process alike: the detector's batches of small patches
            # ran half as fast with two threads as with one on the 2-core machine (bench_scan, one worker). Torch
            # is only there when the bundle has a member that needs it (the shipped one has none).
            torch = sys.modules.get("torch")
            if torch is not None:
                torch.set_num_threads(1)
        return _DETECTORS[key]

    def report(self, instance: Instance) -> tuple[DetectionOutcome, str | None]:
        """The detection report of ``instance`` (scores, model tag, thresholds), and the heatmap PNG written when
        asked; an image the reader cannot decode (or no image at all) gets a :class:`DetectionFailure`."""
        from detectors.data.reader import read_image
        from detectors.errors import DetectorsError

        detector = self.load()
        config = detector.config
        ds = instance.dataset
        try:
            total = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            total = 1
        limit = config.max_frames
        indices = None if total <= limit else sorted({round(i * (total - 1) / (limit - 1)) for i in range(limit)})
        try:
            image = read_image(ds, frame_indices=indices)
        except DetectorsError as exc:
            failure = DetectionFailure(model_tag=config.tag, threshold=config.threshold,
                                       tamper_threshold=config.tamper_threshold, error=exc.diagnostics()[:200])
            return failure, None
        return self.report_image(image, stem=Path(instance.path).stem, sha256=instance.sha256)

    def report_image(self, image: ImageData, *, stem: str, sha256: str) -> tuple[DetectionOutcome, str | None]:
        """The detection report of decoded ``image`` (a DICOM instance's frames, or an exported PNG, JPEG or TIFF),
        and its heatmap, written as ``{stem}-{sha256[:12]}.png`` when asked."""
        from detectors.models import prepare_frames, render_heatmap

        detector = self.load()
        config = detector.config
        report = detector.detect(image)
        heatmap = None
        if self.heatmap_dir is not None:
            frame = prepare_frames(image, config)[report.heatmap_frame]
            target = self.heatmap_dir / f"{stem[:60]}-{sha256[:12]}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(render_heatmap(report, frame))
            os.replace(tmp, target)
            heatmap = str(target)
        # The per-pixel scores were for the heatmap; the result travels between processes without them.
        return dataclasses.replace(report, pixel_patches=None, pixel_origins=()), heatmap
