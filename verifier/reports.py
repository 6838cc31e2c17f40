"""What the watermark and detector checks say when they cannot give their report: typed, with the reason.

The signature check always gives a :class:`~provenance.models.SignatureReport`. The watermark check gives a
:class:`~provenance.watermark.WatermarkReport`, or a :class:`WatermarkNotChecked` when the pixels cannot be
examined; the detector gives a :class:`~detectors.models.DetectionReport`, or a :class:`DetectionFailure` when it
cannot score the image. These reach :func:`verifier.policy.decide` as they are; dicts appear only when a result is
serialised.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # torch is imported only when a detector runs
    from detectors.models import DetectionReport
    from provenance.watermark import WatermarkReport

__all__ = ["DetectionFailure", "NotChecked", "WatermarkNotChecked"]


class NotChecked(enum.StrEnum):
    """Why the watermark check did not examine an image."""

    #: The pixel data cannot be decoded.
    UNDECODABLE = "UNDECODABLE"
    #: Pixels the mark does not go in (not one grey channel, float with NaN, 64-bit integers ...).
    UNSUPPORTED = "UNSUPPORTED"


@dataclasses.dataclass(frozen=True, kw_only=True)
class WatermarkNotChecked:
    """The watermark check could not look for the mark, and why."""

    reason: NotChecked
    error: str

    def __bool__(self) -> bool:
        raise TypeError("a WatermarkNotChecked has no truth value; read .reason")

    def to_dict(self) -> dict[str, Any]:
        return {"present": False, "status": self.reason.value, "error": self.error}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectionFailure:
    """The detector could not score the image (no image, or pixels the reader cannot decode), and why."""

    model_tag: str
    threshold: float
    tamper_threshold: float
    error: str

    def __bool__(self) -> bool:
        raise TypeError("a DetectionFailure has no truth value; read .error")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_tag": self.model_tag,
            "threshold": self.threshold,
            "tamper_threshold": self.tamper_threshold,
            "synthetic_score": None,
            "tamper_score": None,
            "error": self.error,
        }


if TYPE_CHECKING:
    #: What the watermark check gives.
    WatermarkOutcome: TypeAlias = WatermarkReport | WatermarkNotChecked
    #: What the detector check gives.
    DetectionOutcome: TypeAlias = DetectionReport | DetectionFailure
