"""Detector models: a patch CNN (timm), a classical spectrum/residual model, a tamper segmentation network, and
their calibrated ensemble.

One registry and one factory::

    from detectors.models import create_detector, list_detectors, load_bundle

    detector = load_bundle()                 # the shipped default bundle (detectors/checkpoints/detector)
    report = detector.detect(image)          # an ImageData (physical units) or normalised frames in [0, 1]
    report.synthetic_score, report.threshold, report.tamper_score, report.heatmap

Training: :func:`detectors.models.training.train_detector` on views from :mod:`detectors.models.views`;
evaluation: :mod:`detectors.models.evaluation`. ``torch`` is imported by the CNN and segmentation members only,
whose modules load when a bundle or a caller first asks for them (:func:`detector_class`).
"""

from __future__ import annotations

from detectors.models import classical as _classical
from detectors.models import copymove as _copymove
from detectors.models import ensemble as _ensemble
from detectors.models import oneclass as _oneclass
from detectors.models.base import (
    DetectionReport,
    Detector,
    DetectorConfig,
    DetectorInputError,
    ModelError,
    PatchBatch,
    UnknownDetectorError,
    create_detector,
    detector_class,
    frame_patches,
    list_detectors,
    platt,
    prepare_frames,
    register_detector,
)
from detectors.models.bundle import DEFAULT_BUNDLE, load_bundle, read_bundle_config, save_bundle
from detectors.models.heatmap import render_heatmap

del _classical, _copymove, _ensemble, _oneclass

__all__ = [
    "DEFAULT_BUNDLE",
    "DetectionReport",
    "Detector",
    "DetectorConfig",
    "DetectorInputError",
    "ModelError",
    "PatchBatch",
    "UnknownDetectorError",
    "create_detector",
    "detector_class",
    "frame_patches",
    "list_detectors",
    "load_bundle",
    "platt",
    "prepare_frames",
    "read_bundle_config",
    "register_detector",
    "render_heatmap",
    "save_bundle",
]
