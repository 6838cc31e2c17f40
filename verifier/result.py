"""What checking one file found (:class:`FileResult`), and the one audit record it leaves."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from provenance.credentials import ContentCredentials
from provenance.models import SignatureReport
from verifier.policy import Action, Verdict

if TYPE_CHECKING:  # SQLAlchemy is imported only when a record is written, torch only when a detector runs
    from verifier.audit import AuditEntry, Channel
    from verifier.reports import DetectionOutcome, WatermarkOutcome

__all__ = ["ExportSource", "FileResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportSource:
    """Where an image that is not DICOM came from: a PNG, JPEG or TIFF file, or an image embedded in a PDF
    (``page`` and ``index`` count from 1; ``count`` images in the file)."""

    container: str
    format: str | None
    file_sha256: str
    page: int | None = None
    index: int | None = None
    count: int | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"container": self.container, "format": self.format, "file_sha256": self.file_sha256}
        if self.container == "pdf":
            out.update(page=self.page, image=self.index, images_in_file=self.count, name=self.name)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileResult:
    """What checking one file found: the reports, and the verdict the site policy gives them.

    ``status`` is the provenance check's own status (the signature status, or UNREADABLE/MALFORMED for input that
    cannot be read); ``verdict`` is the final decision.
    """

    path: str
    status: str
    verdict: Verdict
    sha256: str | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    signature: SignatureReport | None = None
    #: The watermark check's report (or why it could not look), None when it did not run.
    watermark: WatermarkOutcome | None = None
    #: The detector's report (or why it could not score the image), None when it did not run.
    detection: DetectionOutcome | None = None
    #: The detector's heatmap PNG, when one was written.
    heatmap: str | None = None
    error: str | None = None
    audit_id: int | None = None
    #: The checks asked for that could not run here (no watermark key yet, no detector model ...), with why.
    not_run: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The checks that do not apply to this input, with why (a PNG export carries no DICOM signature).
    not_applicable: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: For an image that is not DICOM: which file (and PDF page) it came from; ``sha256`` is then the digest of
    #: the image's own bytes, the file's is in here.
    source: ExportSource | None = None
    #: The image's C2PA Content Credentials, when it carries a manifest (and the signature check ran).
    credentials: ContentCredentials | None = None

    def __bool__(self) -> bool:
        raise TypeError("a FileResult has no truth value; use .verdict, .problem_found or .failed")

    @property
    def label(self) -> str:
        """The path, and for an image of a PDF its page and number: ``report.pdf#page=2&image=1``."""
        src = self.source
        if src is None or src.container != "pdf" or src.page is None:
            return self.path
        return f"{self.path}#page={src.page}&image={src.index}"

    @property
    def file_sha256(self) -> str | None:
        """The SHA-256 of the file on disk (for an image of a PDF: of the PDF)."""
        return self.source.file_sha256 if self.source is not None else self.sha256

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.verdict.reasons)

    @property
    def failed(self) -> bool:
        """The check could not be done (unreadable or malformed input)."""
        return self.error is not None

    @property
    def problem_found(self) -> bool:
        """The policy does not simply accept the file (tampered, synthetic, uncovered content, ...)."""
        return not self.failed and self.verdict.action is not Action.ACCEPT

    def with_audit_id(self, audit_id: int | None) -> FileResult:
        return dataclasses.replace(self, audit_id=audit_id)

    def detection_dict(self) -> dict[str, Any] | None:
        """The detector's report as stored and printed: its ``to_dict()``, plus ``heatmap`` when one was written."""
        if self.detection is None:
            return None
        out = self.detection.to_dict()
        if self.heatmap is not None:
            out["heatmap"] = self.heatmap
        return out

    def audit_entry(
        self,
        *,
        channel: Channel,
        event: str = "verify",
        details: Mapping[str, Any] | None = None,
        peer_ae_title: str | None = None,
        peer_address: str | None = None,
        api_token_id: str | None = None,
        path: str | None = None,
    ) -> AuditEntry:
        """The one audit record of this result (one per input, also for unreadable input), by the local user.

        ``details`` are added to the record's own (the verdict's reasons and the error), e.g. where a scan or an
        intake channel took the file; the peer fields say who sent it. ``path`` is the record's path (default
        :attr:`label`, which names the page of an image of a PDF; ``details.export`` names it too). Built in one
        step: validating an entry is what a scan's driver spends most of its time per file on.
        """
        from verifier.audit.entry import AuditEntry, local_actor

        user, host = local_actor()
        detection = self.detection_dict()
        return AuditEntry(
            event=event,
            channel=channel,
            path=self.label if path is None else path,
            sop_instance_uid=self.sop_instance_uid,
            file_sha256=self.sha256,
            os_user=user,
            host=host,
            peer_ae_title=peer_ae_title,
            peer_address=peer_address,
            api_token_id=api_token_id,
            signature_report=self.signature.to_dict() if self.signature is not None else None,
            watermark_report=self.watermark.to_dict() if self.watermark is not None else None,
            detection_report=detection,
            model_tag=self.detection.model_tag if self.detection is not None else None,
            policy_version=self.verdict.policy_version,
            verdict=self.verdict.status.value,
            action=self.verdict.action.value,
            details={
                "reasons": [r.to_dict() for r in self.verdict.reasons],
                "error": self.error,
                **({"not_run": dict(self.not_run)} if self.not_run else {}),
                **({"not_applicable": dict(self.not_applicable)} if self.not_applicable else {}),
                **({"export": self.source.to_dict()} if self.source is not None else {}),
                **({"content_credentials": self.credentials.to_dict()} if self.credentials is not None else {}),
                **(details or {}),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``medverify verify --format json``."""
        detection = self.detection_dict()
        return {
            "path": self.path,
            "sop_instance_uid": self.sop_instance_uid,
            "verdict": self.verdict.status.value,
            "action": self.verdict.action.value,
            "reasons": list(self.reasons),
            "status": self.status,
            "sha256": self.sha256,
            "modality": self.modality,
            "signature": self.signature.to_dict() if self.signature is not None else None,
            "watermark": self.watermark.to_dict() if self.watermark is not None else None,
            "synthetic_score": detection.get("synthetic_score") if detection is not None else None,
            "tamper_score": detection.get("tamper_score") if detection is not None else None,
            "detector": _detector_summary(detection),
            "policy_version": self.verdict.policy_version,
            "not_run": dict(self.not_run),
            "not_applicable": dict(self.not_applicable),
            "label": self.label,
            "export": self.source.to_dict() if self.source is not None else None,
            "content_credentials": self.credentials.to_dict() if self.credentials is not None else None,
            "error": self.error,
            "audit_id": self.audit_id,
        }


def _detector_summary(detection: dict[str, Any] | None) -> dict[str, Any] | None:
    if detection is None:
        return None
    keys = ("model_tag", "threshold", "tamper_threshold", "heatmap", "error")
    return {k: detection[k] for k in keys if k in detection}
