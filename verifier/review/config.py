"""What the review pages and the quarantine API serve with."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from verifier.review.desk import ReviewDesk
from verifier.review.sessions import Sessions

if TYPE_CHECKING:
    from verifier.audit import TrustedCertificates
    from verifier.detection import DetectorSetup

__all__ = ["ReviewConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReviewConfig:
    """The quarantine (``desk``), the detector that draws heatmaps (None: no heatmap), who may sign audit
    checkpoints (None: proofs are shown unchecked), and the browser sessions."""

    desk: ReviewDesk
    detector: DetectorSetup | None = None
    trusted: TrustedCertificates | None = None
    sessions: Sessions = dataclasses.field(default_factory=Sessions)
