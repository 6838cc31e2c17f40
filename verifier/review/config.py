"""What the review pages and the quarantine API serve with."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from verifier.review.desk import ReviewDesk
from verifier.review.sessions import Sessions

if TYPE_CHECKING:
    from verifier.audit import TrustedCertificates
    from verifier.detection import DetectorSetup
    from verifier.review.training import TrainingStore
    from verifier.settings import Settings

__all__ = ["ReviewConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReviewConfig:
    """The quarantine (``desk``), the detector that draws heatmaps (None: no heatmap), who may sign audit
    checkpoints (None: proofs are shown unchecked), the browser sessions, and the training sessions (None: no
    training corpus) with the settings their fakes are signed with."""

    desk: ReviewDesk
    detector: DetectorSetup | None = None
    trusted: TrustedCertificates | None = None
    sessions: Sessions = dataclasses.field(default_factory=Sessions)
    training: TrainingStore | None = None
    settings: Settings | None = None
