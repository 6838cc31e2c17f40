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

from verifier.claims.fingerprint import Fingerprint
from verifier.claims.headers import HeaderFacts
from verifier.claims.matcher import Confirmation
from verifier.claims.store import IndexedImage
from verifier.errors import InputError
from verifier.result import FileResult

__all__ = ["AuditedFile", "ClaimAudit", "ClaimInfo", "ClaimReport", "DuplicatePair", "Finding", "Severity"]


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity.value,
            "message": self.message,
            "files": list(self.files),
            "other_claim": self.other_claim,
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

    @property
    def files(self) -> int:
        return sum(len(c.files) for c in self.claims)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "medverify-claims-audit/v1",
            "started_at": self.started_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "images_indexed_before": self.indexed_before,
            "policy_version": self.policy_version,
            "checks": list(self.checks),
            "claims": [c.to_dict() for c in self.claims],
        }
