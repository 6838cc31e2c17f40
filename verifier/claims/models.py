"""What a claim audit works on and finds: claims, their audited images, findings, duplicate pairs, the audit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from verifier.claims.fhir.record import FhirClaim
from verifier.claims.fingerprint import Fingerprint
from verifier.claims.headers import HeaderFacts
from verifier.claims.matcher import Confirmation
from verifier.claims.store import IndexedImage
from verifier.errors import InputError
from verifier.result import FileResult

__all__ = [
    "AuditedFile",
    "CheckCoverage",
    "ClaimAudit",
    "ClaimInfo",
    "ClaimReport",
    "DuplicatePair",
    "Finding",
    "Severity",
    "why_not_applicable",
    "why_not_examined",
]


class Severity(enum.StrEnum):
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finding:
    """One thing an analyst should look at, with the files it concerns and the evidence for it."""

    kind: str
    severity: Severity
    message: str
    files: tuple[str, ...] = ()
    other_claim: str | None = None
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def evidence_text(self) -> str:
        """The evidence in plain language (:mod:`verifier.claims.evidence`)."""
        from verifier.claims.evidence import explain

        return explain(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity.value,
            "message": self.message,
            "files": list(self.files),
            "other_claim": self.other_claim,
            "evidence_text": self.evidence_text,
            "evidence": dict(self.evidence),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClaimInfo:
    """A claim as submitted: its id, what it says (all optional) and its image files."""

    claim_id: str
    files: tuple[Path, ...]
    patient_id: str | None = None
    patient_name: str | None = None
    patient_sex: str | None = None
    patient_birth_date: dt.date | None = None
    claim_date: dt.date | None = None
    body_part: str | None = None
    #: What the claim's FHIR bundle says (``claims audit --fhir``); the FHIR cross-checks read it.
    fhir: FhirClaim | None = None

    def __post_init__(self) -> None:
        if not self.claim_id.strip():
            raise InputError("a claim id must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim_id": self.claim_id,
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "patient_sex": self.patient_sex,
            "patient_birth_date": self.patient_birth_date.isoformat() if self.patient_birth_date else None,
            "claim_date": self.claim_date.isoformat() if self.claim_date else None,
            "body_part": self.body_part,
            **({"fhir": self.fhir.to_dict()} if self.fhir is not None else {}),
        }


@dataclasses.dataclass(kw_only=True, eq=False)
class AuditedFile:
    """One image of a claim: the checker's result, its header facts and fingerprint, and a thumbnail."""

    claim_id: str
    path: str
    result: FileResult
    facts: HeaderFacts | None = None
    fingerprint: Fingerprint | None = None
    #: 8-bit display view (the image's own window), longest side at most 256 pixels.
    thumbnail: npt.NDArray[np.uint8] | None = None
    pixel_error: str | None = None
    record_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out["claim_id"] = self.claim_id
        out["record_id"] = self.record_id
        out["pixel_error"] = self.pixel_error
        fp = self.fingerprint
        out["pixel_sha256"] = fp.pixel_sha256 if fp else None
        out["phash"] = f"{fp.phash:016x}" if fp and fp.phash is not None else None
        f = self.facts
        out["header"] = (
            None
            if f is None
            else {
                "patient_id": f.patient_id,
                "patient_name": f.patient_name,
                "patient_sex": f.patient_sex,
                "patient_birth_date": f.patient_birth_date.isoformat() if f.patient_birth_date else None,
                "body_part": f.body_part,
                "study_date": f.study_date.isoformat() if f.study_date else None,
                "study_instance_uid": f.study_instance_uid,
                "equipment": f.equipment_label() or None,
            }
        )
        return out


@dataclasses.dataclass(kw_only=True, eq=False)
class ClaimReport:
    """A claim's files and findings."""

    info: ClaimInfo
    files: list[AuditedFile]
    findings: list[Finding] = dataclasses.field(default_factory=list)
    record_id: int | None = None

    @property
    def claim_id(self) -> str:
        return self.info.claim_id

    @property
    def severity(self) -> Severity:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=Severity.NONE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim_id": self.claim_id,
            "severity": self.severity.value,
            "claim": self.info.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "files": [f.to_dict() for f in self.files],
            "record_id": self.record_id,
        }


@dataclasses.dataclass(kw_only=True, eq=False)
class DuplicatePair:
    """Two images found to be the same (for the report's side-by-side view)."""

    a: AuditedFile
    b: AuditedFile | IndexedImage
    how: str
    confirmation: Confirmation | None = None


#: The checks a claim audit can run on each image, in the order a report states them.
CHECK_NAMES = ("signature", "watermark", "detector")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckCoverage:
    """Whether one check ran in an audit, and on how many of its images: what a report states at the top, so that
    no image is said to have passed a check that did not look at it."""

    check: str
    #: Asked for (``--checks``, every check by default).
    asked: bool
    #: Images the check examined.
    examined: int
    #: Images in the audit.
    images: int
    #: Why it did not examine the others (the reason, and how many images), e.g. "no watermark key given".
    not_examined: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: Images the check does not apply to (an export carries no DICOM signature): neither examined nor missed.
    not_applicable: int = 0

    @property
    def ran(self) -> bool:
        return self.examined > 0

    @property
    def applies(self) -> bool:
        """The check applies to some image of the audit (else it is neither run nor missing)."""
        return self.not_applicable < self.images

    @property
    def complete(self) -> bool:
        """It examined every image it applies to."""
        return self.images > 0 and self.examined == self.images - self.not_applicable

    def sentence(self) -> str:
        """``watermark: examined 3 of 4 image(s); not the others: pixels cannot be decoded`` and the like."""
        if not self.asked:
            return f"{self.check}: not run: not asked for"
        na = self.not_applicable
        why_na = _NOT_APPLICABLE_WORDS.get(self.check, "it does not apply to them")
        if na and not self.applies:
            return f"{self.check}: not applicable to {'the image' if na == 1 else f'any of the {na} images'} ({why_na})"
        applicable = self.images - na
        not_applicable = f"; not applicable to {na} export image(s) ({why_na})" if na else ""
        why = "; ".join(
            f"{n} image(s): {reason}" if n != applicable else reason for reason, n in self.not_examined.items()
        )
        if not self.ran:
            return f"{self.check}: not run: {why or 'no image to examine'}{not_applicable}"
        if self.complete:
            scope = "DICOM " if na else ""
            every = f"the {scope}image" if applicable == 1 else f"all {applicable} {scope}images"
            return f"{self.check}: examined {every}{not_applicable}"
        return f"{self.check}: examined {self.examined} of {applicable} image(s); not the others: {why}{not_applicable}"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "asked": self.asked, "examined": self.examined, "images": self.images,
                "not_examined": dict(self.not_examined), "not_applicable": self.not_applicable,
                "summary": self.sentence()}  # fmt: skip


#: Why a check does not apply to an image, as the coverage sentence says it.
_NOT_APPLICABLE_WORDS = {
    "signature": "an export carries no DICOM signature; its C2PA Content Credentials were read instead",
}


def why_not_applicable(check: str, f: AuditedFile) -> str | None:
    """Why ``check`` does not apply to ``f`` (a PNG export carries no DICOM signature), None when it applies."""
    r = f.result
    return None if r.failed or check not in r.not_applicable else str(r.not_applicable[check])


def why_not_examined(check: str, f: AuditedFile) -> str | None:
    """None when ``check`` examined ``f`` (or does not apply to it: :func:`why_not_applicable`), else why not."""
    from verifier.reports import DetectionFailure, WatermarkNotChecked

    r = f.result
    if r.failed:
        return "the file could not be read"
    if check in r.not_applicable:
        return None
    if check in r.not_run:
        return str(r.not_run[check])
    outcome: Any = {"signature": r.signature, "watermark": r.watermark, "detector": r.detection}[check]
    if outcome is None:
        return "not asked for"
    if isinstance(outcome, WatermarkNotChecked | DetectionFailure):
        return outcome.error
    return None


@dataclasses.dataclass(kw_only=True, eq=False)
class ClaimAudit:
    """The outcome of one ``claims audit`` run."""

    claims: list[ClaimReport]
    pairs: list[DuplicatePair]
    started_at: dt.datetime
    seconds: float
    indexed_before: int | None
    policy_version: str
    checks: tuple[str, ...]
    #: Checks asked for that could not run here, with why (no watermark key yet, no detector model ...).
    not_run: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The site policy's action for each verdict (for the report's legend).
    policy_actions: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def files(self) -> int:
        return sum(len(c.files) for c in self.claims)

    def coverage(self) -> list[CheckCoverage]:
        """For each check, whether it was asked for and which images it examined (and why not the others)."""
        files = [f for c in self.claims for f in c.files]
        out = []
        for check in CHECK_NAMES:
            asked = check in self.checks or check in self.not_run
            why: dict[str, int] = {}
            examined = not_applicable = 0
            for f in files:
                if asked and why_not_applicable(check, f) is not None:
                    not_applicable += 1
                    continue
                reason = why_not_examined(check, f) if asked else "not asked for"
                if reason is None:
                    examined += 1
                else:
                    why[reason] = why.get(reason, 0) + 1
            out.append(CheckCoverage(check=check, asked=asked, examined=examined, images=len(files),
                                     not_examined=why, not_applicable=not_applicable))  # fmt: skip
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "medverify-claims-audit/v1",
            "started_at": self.started_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "images_indexed_before": self.indexed_before,
            "policy_version": self.policy_version,
            "checks": list(self.checks),
            "not_run": dict(self.not_run),
            "coverage": [c.to_dict() for c in self.coverage()],
            "claims": [c.to_dict() for c in self.claims],
        }
