"""The cross-checks of a claim's images against its FHIR resources: one small rule per kind of finding.

Every finding names the FHIR element it rests on (``evidence["fhir"]``, and in its message), beside what the DICOM
header says. A code that is in no table of :mod:`verifier.claims.fhir.tables` is not judged. The rules run after
the header rules (:mod:`verifier.claims.rules`) for each claim read from a bundle (``claims audit --fhir``);
:func:`fhir_findings` runs them all, in the order of :data:`FHIR_RULES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from verifier.claims.fhir.record import Code, FhirClaim, FhirStudy, When
from verifier.claims.fhir.tables import (
    ACQUISITION_MODALITIES,
    DICOM_MODALITY_SYSTEM,
    body_part_of,
    diagnosis_rule,
    laterality_of,
)
from verifier.claims.headers import HeaderFacts, regions_agree
from verifier.claims.models import AuditedFile, ClaimReport, Finding, Severity
from verifier.claims.rules import DATE_TOLERANCE_DAYS, ClaimHeaders

__all__ = ["FHIR_KINDS", "FHIR_RULES", "STUDY_DATE_TOLERANCE_DAYS", "fhir_findings"]

#: ImagingStudy.started and the StudyDate of its images name the same day (one day either way for time zones).
STUDY_DATE_TOLERANCE_DAYS = 1

Image = tuple[AuditedFile, HeaderFacts]
Rule = Callable[[FhirClaim, ClaimHeaders], Iterable[Finding]]


def _name(f: AuditedFile) -> str:
    return Path(f.path).name


def _finding(kind: str, severity: Severity, message: str, files: Iterable[AuditedFile], fhir: str | list[str],
             **evidence: Any) -> Finding:  # fmt: skip
    elements = [fhir] if isinstance(fhir, str) else list(dict.fromkeys(fhir))
    return Finding(kind=kind, severity=severity, message=message, files=tuple(f.path for f in files),
                   evidence={"fhir": elements, **evidence})  # fmt: skip


def _images_of(c: ClaimHeaders, studies: list[FhirStudy]) -> list[Image]:
    """The images of ``studies``; every image of the claim when a resource names no study."""
    return [i for s in studies for i in _study_images(c, s)] if studies else list(c.images)


def _study_images(c: ClaimHeaders, study: FhirStudy) -> list[Image]:
    return [(f, h) for f, h in c.images if study.uid and h.study_instance_uid == study.uid]


def _series_of(claim: FhirClaim, h: HeaderFacts) -> tuple[FhirStudy | None, Any]:
    """The ImagingStudy of an image (by Study Instance UID) and its series (by Series Instance UID, or the only one)."""
    study = claim.study_of(h.study_instance_uid)
    if study is None:
        return None, None
    series = next((s for s in study.series if s.uid and s.uid == h.series_instance_uid), None)
    if series is None and len(study.series) == 1 and not study.series[0].uid:
        series = study.series[0]
    return study, series


# -- images and studies ---------------------------------------------------------------------------------------------


def image_without_study(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    """DICOM images of the claim whose Study Instance UID is no ImagingStudy of the claim."""
    lost = [(f, h) for f, h in c.images if claim.study_of(h.study_instance_uid) is None]
    if lost:
        claimed = [s.uid for s in claim.studies if s.uid]
        elements = [s.uid_element or s.ref for s in claim.studies] or [f"{claim.ref}.supportingInfo"]
        what = (f"{len(claimed)} ImagingStudy UID(s) of the claim" if claimed
                else "the claim, which names no ImagingStudy with a urn:dicom:uid identifier")  # fmt: skip
        yield _finding("fhir_image_without_study", Severity.MEDIUM,
                       f"{len(lost)} image(s) belong to no study of the {what} ({', '.join(elements)})",
                       [f for f, _ in lost],
                       elements, claimed_studies=claimed,
                       image_studies={_name(f): h.study_instance_uid or "none" for f, h in lost})  # fmt: skip


def study_without_images(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    """ImagingStudy resources of the claim whose images are not in it (none, or some of the instances listed)."""
    for study in claim.studies:
        if not study.uid:
            continue
        members = _study_images(c, study)
        listed = [u for s in study.series for u in s.instance_uids]
        have = {h.sop_instance_uid for _f, h in members}
        missing = [u for u in listed if u not in have]
        if not members:
            yield _finding("fhir_study_without_images", Severity.MEDIUM,
                           f"{study.ref} (Study Instance UID {study.uid}) has none of its images in the claim", [],
                           study.uid_element or study.ref, study=study.ref, study_instance_uid=study.uid,
                           instances_listed=len(listed))  # fmt: skip
        elif missing:
            yield _finding("fhir_study_without_images", Severity.LOW,
                           f"{study.ref} lists {len(listed)} instance(s), {len(missing)} of them are not in the claim",
                           [f for f, _ in members], [f"{s.element}.instance" for s in study.series],
                           study=study.ref, study_instance_uid=study.uid, instances_listed=len(listed),
                           missing_instances=missing[:20])  # fmt: skip


# -- the patient -----------------------------------------------------------------------------------------------------


def _words(text: str | None) -> list[str]:
    return [w for w in re.split(r"[^A-Z]+", (text or "").upper()) if w]


def _name_differs(family: str | None, given: tuple[str, ...], dicom_name: str) -> bool:
    parts = dicom_name.split("^")
    d_family, d_given = _words(parts[0]), _words(parts[1] if len(parts) > 1 else "")
    f_family, f_given = _words(family), _words(" ".join(given))
    if f_family and d_family and f_family != d_family:
        return True
    if f_given and d_given:
        a, b = f_given[0], d_given[0]
        return a[0] != b[0] if min(len(a), len(b)) == 1 else a != b  # an initial agrees with its name
    return False


def patient_name_mismatch(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    p = claim.patient
    if p is None or not (p.family or p.given):
        return
    wrong = [(f, h) for f, h in c.images if h.patient_name and _name_differs(p.family, p.given, h.patient_name)]
    if wrong:
        yield _finding("fhir_name_mismatch", Severity.MEDIUM,
                       f"{p.ref}.name is {p.name_label()}, {len(wrong)} image(s) name another patient",
                       [f for f, _ in wrong], f"{p.ref}.name", claimed=p.name_label(),
                       names={_name(f): h.patient_name for f, h in wrong})  # fmt: skip


def birth_date_mismatch(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    p = claim.patient
    if p is None or p.birth_date is None:
        return
    wrong = [(f, h) for f, h in c.images if h.patient_birth_date and h.patient_birth_date != p.birth_date]
    if wrong:
        yield _finding("fhir_birth_date_mismatch", Severity.MEDIUM,
                       f"{p.ref}.birthDate is {p.birth_date.isoformat()}, {len(wrong)} image(s) give another",
                       [f for f, _ in wrong], f"{p.ref}.birthDate", claimed=p.birth_date.isoformat(),
                       birth_dates={_name(f): h.patient_birth_date.isoformat() for f, h in wrong
                                    if h.patient_birth_date})  # fmt: skip


def sex_mismatch(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    p = claim.patient
    if p is None or p.sex not in ("M", "F"):
        return
    wrong = [(f, h) for f, h in c.images if h.patient_sex in ("M", "F") and h.patient_sex != p.sex]
    if wrong:
        yield _finding("fhir_sex_mismatch", Severity.MEDIUM,
                       f"{p.ref}.gender is {p.gender}, {len(wrong)} image(s) give sex "
                       f"{', '.join(sorted({str(h.patient_sex) for _, h in wrong}))}", [f for f, _ in wrong],
                       f"{p.ref}.gender", claimed=p.gender,
                       sexes={_name(f): h.patient_sex for f, h in wrong})  # fmt: skip


# -- dates -----------------------------------------------------------------------------------------------------------


def _dated(claim: FhirClaim, c: ClaimHeaders) -> Iterator[tuple[When, list[Image], int]]:
    """Each date of the bundle, the images it speaks of, and the days of tolerance."""
    for w in claim.service_dates:
        yield w, list(c.images), c.tolerance_days
    for proc in claim.procedures:
        if proc.performed is None:
            continue
        yield proc.performed, _images_of(c, [s for s in claim.studies if proc.ref in s.procedures]), c.tolerance_days
    for study in claim.studies:
        if study.started is not None:
            yield study.started, _study_images(c, study), STUDY_DATE_TOLERANCE_DAYS
    for report in claim.reports:
        if report.effective is None:
            continue
        yield report.effective, _images_of(c, [s for s in claim.studies if s.ref in report.studies]), c.tolerance_days


def date_mismatch(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    """Images whose StudyDate lies more than the tolerance outside a service date, a Procedure's performed date or
    period, a DiagnosticReport's effective date, or their ImagingStudy's start; HIGH when the image was taken after
    the date it is to support. Elements that give the same date against the same images make one finding that
    names them all."""
    groups: dict[tuple[str, tuple[str, ...], bool], tuple[list[str], int, list[tuple[AuditedFile, HeaderFacts, int]]]]
    groups = {}
    for when, images, tolerance in _dated(claim, c):
        off = [(f, h, d) for f, h in images if h.study_date is not None
               and abs(d := when.days_off(h.study_date)) > tolerance]  # fmt: skip
        if not off:
            continue
        later = any(d > 0 for _f, _h, d in off)
        key = (when.label(), tuple(f.path for f, _h, _d in off), later)
        elements, known, _off = groups.get(key, ([], tolerance, off))
        groups[key] = ([*elements, when.element], min(known, tolerance), off)
    for (label, _paths, later), (elements, tolerance, off) in groups.items():
        says = "says" if len(elements) == 1 else "say"
        most = max(abs(d) for _f, _h, d in off)
        yield _finding("fhir_date_mismatch", Severity.HIGH if later else Severity.MEDIUM,
                       f"{', '.join(elements)} {says} {label}, {len(off)} image(s) have a StudyDate up to {most} "
                       f"day(s) {'after' if later else 'before'} it (tolerance {tolerance})",
                       [f for f, _h, _d in off], elements, claimed=label, tolerance_days=tolerance,
                       study_dates={_name(f): h.study_date.isoformat() for f, h, _d in off if h.study_date},
                       days_off={_name(f): d for f, _h, d in off})  # fmt: skip


def date_after_claim(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    """Images acquired after the claim was created (the claim cannot rest on them)."""
    created = claim.created
    later = [(f, h) for f, h in c.images if created and h.study_date and h.study_date > created]
    if created and later:
        yield _finding("fhir_date_after_claim", Severity.HIGH,
                       f"{claim.ref}.created is {created.isoformat()}, {len(later)} image(s) were taken after it",
                       [f for f, _ in later], f"{claim.ref}.created", claimed=created.isoformat(),
                       study_dates={_name(f): h.study_date.isoformat() for f, h in later if h.study_date})  # fmt: skip


# -- what was imaged -------------------------------------------------------------------------------------------------


def modality_mismatch(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    """Images whose Modality is not the one their ImagingStudy (series, else study) gives."""
    by_element: dict[str, tuple[Code, list[Image]]] = {}
    for f, h in c.images:
        study, series = _series_of(claim, h)
        if study is None or not h.modality:
            continue
        codes = [series.modality] if series is not None and series.modality else list(study.modalities)
        codes = [m for m in codes if m.system in (None, DICOM_MODALITY_SYSTEM)]
        if codes and h.modality.upper() not in {m.code.upper() for m in codes}:
            by_element.setdefault(codes[0].element, (codes[0], []))[1].append((f, h))
    for element, (code, wrong) in by_element.items():
        seen = ", ".join(sorted({str(h.modality) for _, h in wrong}))
        yield _finding("fhir_modality_mismatch", Severity.MEDIUM,
                       f"{element} is {code.code}, {len(wrong)} image(s) are {seen}", [f for f, _ in wrong], element,
                       claimed=code.code,
                       modalities={_name(f): h.modality for f, h in wrong})  # fmt: skip


def _sites(claim: FhirClaim, h: HeaderFacts) -> list[Code]:
    """The body sites the bundle gives for an image: its series', and its procedures' (else the claim's)."""
    study, series = _series_of(claim, h)
    sites = [series.body_site] if series is not None and series.body_site is not None else []
    procs = [p for p in claim.procedures if study is not None and p.ref in study.procedures] or list(claim.procedures)
    return sites + [s for p in procs for s in p.body_sites]


def body_site_mismatch(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    """Images whose Body Part Examined is not the region a SNOMED CT body site of the bundle names (the series' and
    the procedure's sites that name the same region make one finding)."""
    by_part: dict[str, tuple[list[Code], list[Image]]] = {}
    for f, h in c.images:
        if h.body_part is None:
            continue
        for site in _sites(claim, h):
            part = body_part_of(site.system, site.code)
            if part is not None and not regions_agree(part, h.body_part):
                sites, images = by_part.setdefault(part, ([], []))
                if all(s.element != site.element for s in sites):
                    sites.append(site)
                if all(f is not g for g, _ in images):
                    images.append((f, h))
    for part, (sites, wrong) in by_part.items():
        elements = [s.element for s in sites]
        yield _finding("fhir_body_site_mismatch", Severity.MEDIUM,
                       f"{', '.join(elements)}: SNOMED CT {sites[0].code} {sites[0].display or ''} ({part}), "
                       f"{len(wrong)} image(s) show {', '.join(sorted({str(h.body_part) for _, h in wrong}))}",
                       [f for f, _ in wrong], elements, claimed=part, snomed=sites[0].code,
                       body_parts={_name(f): h.body_part for f, h in wrong})  # fmt: skip


def laterality_mismatch(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    """Images whose Laterality (or Image Laterality) is the other side than their series' laterality."""
    by_element: dict[str, tuple[Code, str, list[Image]]] = {}
    for f, h in c.images:
        _study, series = _series_of(claim, h)
        if series is None or series.laterality is None or h.laterality not in ("R", "L"):
            continue
        side = laterality_of(series.laterality.system, series.laterality.code)
        if side in ("R", "L") and side != h.laterality:
            by_element.setdefault(series.laterality.element, (series.laterality, side, []))[2].append((f, h))
    words = {"R": "right", "L": "left"}
    for element, (code, side, wrong) in by_element.items():
        yield _finding("fhir_laterality_mismatch", Severity.MEDIUM,
                       f"{element} is {words[side]} (SNOMED CT {code.code}), {len(wrong)} image(s) are of the "
                       f"{words['L' if side == 'R' else 'R']} side", [f for f, _ in wrong], element, claimed=side,
                       lateralities={_name(f): h.laterality for f, h in wrong})  # fmt: skip


def _imaged(claim: FhirClaim, h: HeaderFacts) -> str | None:
    """The body part an image shows: its Body Part Examined, else its series' SNOMED CT body site."""
    if h.body_part is not None:
        return h.body_part
    _study, series = _series_of(claim, h)
    if series is not None and series.body_site is not None:
        return body_part_of(series.body_site.system, series.body_site.code)
    return None


def diagnosis_implausible(claim: FhirClaim, c: ClaimHeaders) -> Iterator[Finding]:
    """A claimed ICD-10 diagnosis (the Claim's, or a DiagnosticReport's conclusion) that none of the claim's images
    can show (by :data:`DIAGNOSIS_RULES`): a wrist fracture claimed with a chest CT. Images that say neither modality
    nor body part are not judged."""
    for dx in (*claim.diagnoses, *(code for r in claim.reports for code in r.conclusions)):
        rule = diagnosis_rule(dx.system, dx.code)
        if rule is None:
            continue
        judged: list[tuple[AuditedFile, str | None, str | None]] = []
        for f, h in c.images:
            part = _imaged(claim, h)
            modality = h.modality.upper() if h.modality and h.modality.upper() in ACQUISITION_MODALITIES else None
            if part is not None or modality is not None:
                judged.append((f, part, modality))
        fits = [
            f
            for f, part, modality in judged
            if (part is None or rule.fits_region(part)) and (modality is None or modality in rule.modalities)
        ]
        if judged and not fits:
            shown = sorted({" ".join(x for x in (m, p) if x) for _f, p, m in judged})
            yield _finding("fhir_diagnosis_implausible", Severity.MEDIUM,
                           f"{dx.element} is ICD-10 {dx.code} ({rule.meaning}), the images are "
                           f"{', '.join(shown)}: none can show it", [f for f, _p, _m in judged], dx.element,
                           icd10=dx.code, meaning=rule.meaning, expected_modalities=sorted(rule.modalities),
                           expected_regions=sorted(rule.regions),
                           imaged={_name(f): " ".join(x for x in (m, p) if x) for f, p, m in judged})  # fmt: skip


#: Every FHIR cross-check, in the order their findings are listed (before sorting by severity).
FHIR_RULES: tuple[Rule, ...] = (
    image_without_study,
    study_without_images,
    patient_name_mismatch,
    birth_date_mismatch,
    sex_mismatch,
    date_after_claim,
    date_mismatch,
    modality_mismatch,
    body_site_mismatch,
    laterality_mismatch,
    diagnosis_implausible,
)
#: The finding kinds the FHIR cross-checks make.
FHIR_KINDS = frozenset({
    "fhir_image_without_study", "fhir_study_without_images", "fhir_name_mismatch", "fhir_birth_date_mismatch",
    "fhir_sex_mismatch", "fhir_date_after_claim", "fhir_date_mismatch", "fhir_modality_mismatch",
    "fhir_body_site_mismatch", "fhir_laterality_mismatch", "fhir_diagnosis_implausible",
})  # fmt: skip


def fhir_findings(report: ClaimReport, tolerance_days: int = DATE_TOLERANCE_DAYS) -> list[Finding]:
    """The findings of every FHIR cross-check on ``report`` (none for a claim not read from a bundle)."""
    claim = report.info.fhir
    if claim is None:
        return []
    headers = ClaimHeaders.of(report, tolerance_days)
    return [finding for rule in FHIR_RULES for finding in rule(claim, headers)]
