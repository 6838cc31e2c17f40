"""What a FHIR claim bundle says about a claim, as plain frozen objects: every value keeps the FHIR element it came
from (``Patient/p1.birthDate``), so that a finding can name it. Built by :mod:`verifier.claims.fhir.bundle`; read
by the cross-checks (:mod:`verifier.claims.fhir.rules`) and the FHIR output (:mod:`verifier.claims.fhir.export`).
Nothing here imports ``fhir.resources``."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

__all__ = ["Code", "FhirClaim", "FhirPatient", "FhirProcedure", "FhirReport", "FhirSeries", "FhirStudy", "When"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Code:
    """One coding: its system, code and display, and the element it came from."""

    system: str | None
    code: str
    display: str | None = None
    element: str

    def label(self) -> str:
        return f"{self.code} ({self.display})" if self.display else self.code


@dataclasses.dataclass(frozen=True, kw_only=True)
class When:
    """A date or a period (``end`` set) and the element it came from."""

    start: dt.date
    end: dt.date | None = None
    element: str

    def days_off(self, day: dt.date) -> int:
        """How many days ``day`` lies outside this date or period (0 inside); negative before it."""
        if day < self.start:
            return (day - self.start).days
        last = self.end or self.start
        return (day - last).days if day > last else 0

    def label(self) -> str:
        return self.start.isoformat() + (f" to {self.end.isoformat()}" if self.end and self.end != self.start else "")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FhirPatient:
    ref: str
    family: str | None = None
    given: tuple[str, ...] = ()
    birth_date: dt.date | None = None
    #: DICOM's Patient's Sex for the FHIR gender: M, F or O (None for unknown or none).
    sex: str | None = None
    gender: str | None = None

    def name_label(self) -> str | None:
        parts = [self.family or "", " ".join(self.given)]
        return ", ".join(p for p in parts if p) or None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FhirSeries:
    element: str
    uid: str | None = None
    modality: Code | None = None
    body_site: Code | None = None
    laterality: Code | None = None
    instance_uids: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class FhirStudy:
    ref: str
    #: The Study Instance UID (ImagingStudy.identifier, system urn:dicom:uid, without its ``urn:oid:`` prefix).
    uid: str | None = None
    uid_element: str = ""
    started: When | None = None
    modalities: tuple[Code, ...] = ()
    series: tuple[FhirSeries, ...] = ()
    number_of_instances: int | None = None
    procedures: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class FhirProcedure:
    ref: str
    performed: When | None = None
    body_sites: tuple[Code, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class FhirReport:
    """A DiagnosticReport: when it was effective, the ImagingStudy resources it reads, its coded conclusions."""

    ref: str
    effective: When | None = None
    studies: tuple[str, ...] = ()
    conclusions: tuple[Code, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class FhirClaim:
    """One Claim of a bundle with the resources it rests on."""

    ref: str
    bundle: str
    created: dt.date | None = None
    patient: FhirPatient | None = None
    studies: tuple[FhirStudy, ...] = ()
    procedures: tuple[FhirProcedure, ...] = ()
    #: Claim.item[].servicedDate / servicedPeriod.
    service_dates: tuple[When, ...] = ()
    #: Claim.diagnosis[].diagnosisCodeableConcept (or the Condition it references) codings.
    diagnoses: tuple[Code, ...] = ()
    #: Claim.supportingInfo[].valueAttachment.url, relative to the audited folder.
    attachments: tuple[str, ...] = ()
    #: DiagnosticReport resources on the claim's studies (or its patient).
    reports: tuple[FhirReport, ...] = ()

    def study_of(self, study_instance_uid: str | None) -> FhirStudy | None:
        if not study_instance_uid:
            return None
        return next((s for s in self.studies if s.uid == study_instance_uid), None)

    def summary(self) -> str:
        """One line for a reader: the Claim, its bundle, the patient, the studies, dates and diagnoses."""
        parts = [f"{self.ref} ({self.bundle})"]
        p = self.patient
        if p is not None:
            born = f", born {p.birth_date.isoformat()}" if p.birth_date else ""
            parts.append(f"patient {p.name_label() or p.ref}{f', {p.gender}' if p.gender else ''}{born}")
        if self.studies:
            parts.append(", ".join(s.ref for s in self.studies))
        if self.service_dates:
            parts.append("service " + ", ".join(w.label() for w in self.service_dates))
        if self.diagnoses:
            parts.append("diagnoses " + ", ".join(d.label() for d in self.diagnoses))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        p = self.patient
        return {
            "claim": self.ref,
            "bundle": self.bundle,
            "created": self.created.isoformat() if self.created else None,
            "patient": None if p is None else {"ref": p.ref, "name": p.name_label(), "gender": p.gender,
                                               "birth_date": p.birth_date.isoformat() if p.birth_date else None},
            "imaging_studies": [{"ref": s.ref, "study_instance_uid": s.uid} for s in self.studies],
            "procedures": [p.ref for p in self.procedures],
            "diagnostic_reports": [r.ref for r in self.reports],
            "service_dates": [w.label() for w in self.service_dates],
            "diagnoses": [d.code for d in self.diagnoses],
        }  # fmt: skip
