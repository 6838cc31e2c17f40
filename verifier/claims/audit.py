"""Claim audits: every image of every claim through the checker, then findings per claim.

Findings come from three places, each tied to the evidence it rests on:

* **reused images** (:mod:`verifier.claims.reuse`): the same file, the same decoded pixels, or a near-duplicate
  (re-encoded, windowed differently, resized, cropped; see :mod:`verifier.claims.fingerprint`) in another claim of
  the batch or in any earlier audit (the image index of the audit database), with the other claim named; UIDs
  shared by different patients;
* **headers** (:mod:`verifier.claims.rules`): patient identity, sex and age, body part and dates against the claim
  and against each other, equipment within a study, stripped identity elements;
* **FHIR** (:mod:`verifier.claims.fhir.rules`, for claims read from a FHIR bundle): images against the
  ImagingStudy, Patient, Procedure, service dates and diagnoses of the claim;
* **the checker's verdicts** (here): tampered, synthetic (declared or suspected), signature problems, unreadable
  input.

Every file leaves one audit record (channel ``claims``) and each claim one summary record with its findings.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from verifier.checker import Checker, Examined
from verifier.claims.fingerprint import fingerprint_frame
from verifier.claims.headers import HeaderFacts
from verifier.claims.models import (
    AuditedFile,
    ClaimAudit,
    ClaimInfo,
    ClaimReport,
    DuplicatePair,
    Finding,
    Severity,
)
from verifier.claims.reuse import batch_reuse, index_reuse, uid_reuse
from verifier.claims.rules import DATE_TOLERANCE_DAYS, header_findings
from verifier.claims.store import ImageStore, NewImage
from verifier.errors import InputError
from verifier.policy import Action, VerdictStatus

if TYPE_CHECKING:  # SQLAlchemy is imported only when a database is used
    from verifier.audit import AuditLog

__all__ = ["CREDENTIALS_SOURCE", "DETECTOR_SOURCE", "ClaimsAuditor"]

_THUMB_SIDE = 256
_DETECTOR_VERDICTS = (VerdictStatus.TAMPERED, VerdictStatus.SUSPECTED_SYNTHETIC)


def _display(frame: npt.NDArray[np.float32], window: tuple[float, float] | None, monochrome1: bool) -> Any:
    import cv2

    if window is not None and window[1] > 0:
        lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    else:
        lo, hi = (float(v) for v in np.percentile(frame, (0.5, 99.5)))
    scaled = (frame - lo) / (hi - lo) if hi > lo else np.zeros_like(frame)
    view = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    if monochrome1:
        view = 255 - view
    h, w = view.shape
    factor = _THUMB_SIDE / max(h, w)
    if factor < 1:
        view = cv2.resize(view, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return view


#: What the detector is called in a verdict finding's ``caught_by`` (the report puts its heatmap beside such).
DETECTOR_SOURCE = "detector scores"
#: What an export's C2PA manifest is called in a verdict finding's ``caught_by``.
CREDENTIALS_SOURCE = "Content Credentials"
#: What each reason source of a verdict is called in a finding ("found by its ...").
_SOURCE_NAMES = {"declaration": "synthetic declaration", "signature": "signature", "watermark": "watermark",
                 "detector": DETECTOR_SOURCE, "input": "file structure",
                 "credentials": CREDENTIALS_SOURCE}  # fmt: skip


def _verdict_evidence(f: AuditedFile) -> dict[str, Any]:
    """A verdict finding's evidence: the verdict, the action, the reasons and what they came from, and the
    detector's scores against its thresholds when it scored the image."""
    v = f.result.verdict
    # What did not run, or does not apply (an export's DICOM signature), told nothing.
    told = [r for r in v.reasons if not r.message.startswith(("not run:", "not applicable:"))]
    if told and told[-1].source == "detector" and v.status in _DETECTOR_VERDICTS:
        decisive = told[-1:]  # the policy's last reason decided (verifier.policy.decide)
    else:
        decisive = [r for r in told if r.source != "detector"] or told
    caught_by = list(dict.fromkeys(_SOURCE_NAMES.get(r.source, r.source) for r in decisive))
    evidence: dict[str, Any] = {
        "verdict": v.status.value,
        "action": v.action.value,
        "reasons": list(f.result.reasons),
        "caught_by": caught_by,
    }
    if f.result.source is not None:  # an export: what it is and where it came from (a PDF's page)
        evidence["export"] = f.result.source.to_dict()
    if f.result.credentials is not None:
        c = f.result.credentials
        evidence["content_credentials"] = {"status": c.status.value, "claim_generator": c.claim_generator,
                                           "signer": c.signer, "signer_trusted": c.signer_trusted,
                                           "digital_source_types": list(c.source_types),
                                           "problems": list(c.problems)}  # fmt: skip
    detection = f.result.detection_dict()
    if detection is not None and detection.get("synthetic_score") is not None:
        keys = ("synthetic_score", "threshold", "tamper_score", "tamper_threshold", "model_tag")
        evidence["detector"] = {k: detection[k] for k in keys if k in detection}
    return evidence


def _declared_how(evidence: dict[str, Any]) -> str:
    """How a declared synthetic image was found out, for its finding's one line."""
    caught_by = evidence["caught_by"]
    export = evidence.get("export")
    if caught_by == ["watermark"]:
        if export is not None:
            kind = f"a {str(export.get('format') or 'image').upper()} export"
            return f"caught by its watermark ({kind}: no signature or synthetic declaration to read)"
        return "caught by its watermark (its signature and synthetic declaration are gone)"
    credentials = evidence.get("content_credentials")
    if caught_by == [CREDENTIALS_SOURCE] and credentials is not None:
        made = credentials.get("claim_generator") or "an unnamed claim generator"
        return f"declared synthetic by its Content Credentials, made by {made}"
    return "declared by its own " + " and ".join(caught_by)


class ClaimsAuditor:
    """Audits batches of claims with one trust policy, site policy and (optionally) audit database."""

    def __init__(
        self,
        checker: Checker,
        *,
        log: AuditLog | None = None,
        date_tolerance_days: int = DATE_TOLERANCE_DAYS,
        progress: Callable[[int], None] | None = None,
        label: Callable[[Path], str] | None = None,
    ) -> None:
        """``label`` names each file in the results, findings and audit records (default: its path), e.g. the name
        an upload of the HTTP API had rather than the temporary file it was written to."""
        self._checker = checker
        self._label = label
        self._log = log
        self._store = ImageStore(log) if log is not None else None
        self._tolerance = date_tolerance_days
        self._progress = progress

    # -- per file ------------------------------------------------------------------------------------------

    def _check(self, claim_id: str, path: Path) -> list[AuditedFile]:
        """The audited images of one file: one for DICOM, one per image for an export (a PDF may hold several)."""
        examined = self._checker.examine_file(path)
        if self._label is not None:
            prefix, name = str(path), self._label(path)
            examined = [
                dataclasses.replace(e, result=dataclasses.replace(e.result, path=name + e.result.path[len(prefix) :]))
                if e.result.path.startswith(prefix)
                else e
                for e in examined
            ]
        return [self._audited(claim_id, e) for e in examined]

    @staticmethod
    def _audited(claim_id: str, examined: Examined) -> AuditedFile:
        audited = AuditedFile(claim_id=claim_id, path=examined.result.label, result=examined.result)
        if examined.image is not None:  # an export: no header to read; its pixels are compared like any image
            try:
                frame = examined.image.image.frames[0]
                audited.fingerprint = fingerprint_frame(frame)
                audited.thumbnail = _display(frame, None, False)
            except Exception as exc:  # noqa: BLE001 - a degenerate image (a 1-pixel line) is not compared
                audited.pixel_error = f"pixels: {type(exc).__name__}: {str(exc)[:160]}"
            return audited
        instance = examined.instance
        if instance is None:  # unreadable: the result says why, there is nothing more to read
            return audited
        try:
            audited.facts = HeaderFacts.from_dataset(instance.dataset)
        except Exception as exc:  # noqa: BLE001 - a header value that does not convert is a finding, not a crash
            audited.pixel_error = f"header: {type(exc).__name__}: {str(exc)[:120]}"
        try:
            from detectors.data import read_image

            meta = read_image(instance.dataset, frame_indices=[0], max_bytes=None)
            total = meta.total_frames
            image = meta if total <= 1 else read_image(instance.dataset, frame_indices=[total // 2])
            frame = image.frames[0]
            mono1 = image.photometric.strip().upper() == "MONOCHROME1"
            audited.fingerprint = fingerprint_frame(frame, monochrome1=mono1)
            audited.thumbnail = _display(frame, image.window, mono1)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types; the report says why
            audited.pixel_error = f"pixels: {type(exc).__name__}: {str(exc)[:160]}"
        return audited

    # -- the batch -----------------------------------------------------------------------------------------

    def audit(self, claims: Sequence[ClaimInfo]) -> ClaimAudit:
        """Audit ``claims``: check every file, record it, find reuse and header problems, index the images."""
        ids = [c.claim_id for c in claims]
        if len(set(ids)) != len(ids):
            raise InputError("claim ids must be unique within one audit")
        started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
        reports = []
        done = 0
        for info in claims:
            files = []
            for path in info.files:
                files.extend(self._check(info.claim_id, path))
                done += 1
                if self._progress is not None:
                    self._progress(done)
            reports.append(ClaimReport(info=info, files=files))
        self._record_files(reports)
        indexed_before = self._store.count() if self._store is not None else None
        pairs: list[DuplicatePair] = []
        for report in reports:
            report.findings.extend(self._verdict_findings(report))
        pairs += batch_reuse(reports)
        if self._store is not None:
            # A pair found in this batch is not reported again from the index (a re-audit of the same claims).
            known = {(p.a.path, p.b.claim_id) for p in pairs if isinstance(p.b, AuditedFile)}
            known |= {(p.b.path, p.a.claim_id) for p in pairs if isinstance(p.b, AuditedFile)}
            pairs += index_reuse(reports, self._store, known)
        uid_reuse(reports, self._store)
        for report in reports:
            report.findings.extend(header_findings(report, self._tolerance))
            if report.info.fhir is not None:
                from verifier.claims.fhir.rules import fhir_findings

                report.findings.extend(fhir_findings(report, self._tolerance))
            report.findings.sort(key=lambda f: (-f.severity.rank, f.kind))
        if self._store is not None:
            self._index(reports)
        self._record_claims(reports)
        return ClaimAudit(
            claims=reports,
            pairs=pairs,
            started_at=started,
            seconds=time.perf_counter() - t0,
            indexed_before=indexed_before,
            policy_version=self._checker.site_policy.version,
            checks=tuple(sorted(c.value for c in self._checker.checks)),
            not_run={c.value: why for c, why in self._checker.not_run.items()},
            policy_actions={s.value: a.value for s, a in self._checker.site_policy.actions.items()},
        )

    def _record_files(self, reports: Sequence[ClaimReport]) -> None:
        if self._log is None:
            return
        from verifier.audit import Channel, EventKind

        files = [f for r in reports for f in r.files]
        entries = []
        for f in files:
            entry = f.result.audit_entry(channel=Channel.CLAIMS, event=EventKind.CLAIM)
            details = {**entry.details, "claim": {"id": f.claim_id}}
            if f.fingerprint is not None:
                details["claim"]["pixel_sha256"] = f.fingerprint.pixel_sha256
            entries.append(dataclasses.replace(entry, details=details))
        for f, receipt in zip(files, self._log.append_many(entries), strict=True):
            f.record_id = receipt.id
            f.result = f.result.with_audit_id(receipt.id)

    def _record_claims(self, reports: Sequence[ClaimReport]) -> None:
        if self._log is None:
            return
        from verifier.audit import AuditEntry, Channel

        entries = [
            AuditEntry(
                event="claim.summary",
                channel=Channel.CLAIMS,
                verdict=r.severity.value.upper(),
                details={
                    "claim": r.info.to_dict(),
                    "files": [{"path": f.path, "record_id": f.record_id, "sha256": f.result.sha256} for f in r.files],
                    "findings": [f.to_dict() for f in r.findings],
                },
            ).with_local_actor()
            for r in reports
        ]
        for r, receipt in zip(reports, self._log.append_many(entries), strict=True):
            r.record_id = receipt.id

    # -- findings: verdicts ---------------------------------------------------------------------------------

    @staticmethod
    def _verdict_findings(report: ClaimReport) -> list[Finding]:
        out = []
        if not report.files:
            out.append(Finding(kind="no_images", severity=Severity.MEDIUM, message="the claim has no images"))
        for f in report.files:
            v = f.result.verdict
            evidence = _verdict_evidence(f)
            if v.status in (VerdictStatus.TAMPERED, VerdictStatus.SUSPECTED_SYNTHETIC):
                word = "tampered" if v.status is VerdictStatus.TAMPERED else "suspected synthetic"
                out.append(
                    Finding(
                        kind=v.status.value.lower(),
                        severity=Severity.HIGH,
                        message=f"{Path(f.path).name}: {word} (found by its {' and '.join(evidence['caught_by'])})",
                        files=(f.path,),
                        evidence=evidence,
                    )
                )
            elif v.status is VerdictStatus.DECLARED_SYNTHETIC:
                # What says so matters to the analyst: a file that declares itself synthetic was at least honest; a
                # stripped copy caught by its watermark was made to pass for a patient scan.
                how = _declared_how(evidence)
                out.append(
                    Finding(
                        kind="declared_synthetic",
                        severity=Severity.HIGH,
                        message=f"{Path(f.path).name}: a synthetic image, {how}, submitted as a patient scan",
                        files=(f.path,),
                        evidence=evidence,
                    )
                )
            elif f.result.failed:
                out.append(
                    Finding(
                        kind="unreadable",
                        severity=Severity.MEDIUM,
                        message=f"{Path(f.path).name}: could not be checked ({v.status.value})",
                        files=(f.path,),
                        evidence={**evidence, "error": f.result.error},
                    )
                )
            elif v.action is not Action.ACCEPT:
                out.append(
                    Finding(
                        kind="signature_problem",
                        severity=Severity.MEDIUM,
                        message=f"{Path(f.path).name}: {v.status.value}, action {v.action.value}",
                        files=(f.path,),
                        evidence=evidence,
                    )
                )
            if f.pixel_error and not f.result.failed:
                out.append(
                    Finding(
                        kind="undecodable_pixels",
                        severity=Severity.LOW,
                        message=f"{Path(f.path).name}: image not compared ({f.pixel_error})",
                        files=(f.path,),
                        evidence={"error": f.pixel_error},
                    )
                )
        return out  # fmt: skip

    # -- the index -------------------------------------------------------------------------------------------

    def _index(self, reports: Sequence[ClaimReport]) -> None:
        store = self._store
        if store is None:
            return
        new = []
        for r in reports:
            for f in r.files:
                fp, facts = f.fingerprint, f.facts
                if fp is None and facts is None:
                    continue
                if store.known(r.claim_id, f.result.sha256):
                    continue
                new.append(
                    NewImage(
                        record_id=f.record_id,
                        claim_id=r.claim_id,
                        path=f.path,
                        sop_instance_uid=facts.sop_instance_uid if facts else None,
                        file_sha256=f.result.sha256,
                        pixel_sha256=fp.pixel_sha256 if fp else None,
                        slots=fp.slots() if fp else {},
                        dhash=fp.dhash if fp else None,
                        patient_key=facts.patient_key if facts else None,
                        study_instance_uid=facts.study_instance_uid if facts else None,
                        study_date=facts.study_date.strftime("%Y%m%d") if facts and facts.study_date else None,
                        body_part=facts.body_part if facts else None,
                        match_view=fp.match_view if fp else None,
                    )
                )
        store.add(new)
