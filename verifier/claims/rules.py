"""What a claim's headers say against the claim and against each other: one small rule per kind of finding.

Every rule reads a :class:`ClaimHeaders` (the claim and those of its images whose headers could be read) and yields
its findings; :func:`header_findings` runs them all, in the order of :data:`HEADER_RULES`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from verifier.claims.headers import (
    HeaderFacts,
    description_regions,
    distinct,
    known_region,
    normalise_body_part,
    regions_agree,
)
from verifier.claims.models import AuditedFile, ClaimInfo, ClaimReport, Finding, Severity

__all__ = ["DATE_TOLERANCE_DAYS", "HEADER_RULES", "ClaimHeaders", "header_findings"]

#: A study dated more than this many days before the claimed date is reported.
DATE_TOLERANCE_DAYS = 30


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClaimHeaders:
    """What the header rules read: the claim, its images with their header facts, and the date tolerance."""

    info: ClaimInfo
    images: tuple[tuple[AuditedFile, HeaderFacts], ...]
    tolerance_days: int = DATE_TOLERANCE_DAYS

    @classmethod
    def of(cls, report: ClaimReport, tolerance_days: int = DATE_TOLERANCE_DAYS) -> ClaimHeaders:
        images = tuple((f, f.facts) for f in report.files if f.facts is not None)
        return cls(info=report.info, images=images, tolerance_days=tolerance_days)

    @property
    def files(self) -> list[AuditedFile]:
        return [f for f, _ in self.images]


Rule = Callable[[ClaimHeaders], Iterable[Finding]]


def _finding(kind: str, severity: Severity, message: str, files: Iterable[AuditedFile], **evidence: Any) -> Finding:
    return Finding(kind=kind, severity=severity, message=message, files=tuple(f.path for f in files),
                   evidence=evidence)  # fmt: skip


def stripped_header(c: ClaimHeaders) -> Iterator[Finding]:
    """Images that lack identity elements; MEDIUM when both patient ID and name are gone."""
    stripped = [(f, h) for f, h in c.images if h.missing]
    if stripped:
        anonymous = [f for f, h in stripped if {"PatientID", "PatientName"} <= set(h.missing)]
        missing = sorted({m for _, h in stripped for m in h.missing})
        per_file = {Path(f.path).name: list(h.missing) for f, h in stripped}
        yield _finding("stripped_header", Severity.MEDIUM if anonymous else Severity.LOW,
                       f"{len(stripped)} image(s) lack identity elements: {', '.join(missing)}",
                       [f for f, _ in stripped], missing=per_file)  # fmt: skip


def patient_inconsistent(c: ClaimHeaders) -> Iterator[Finding]:
    """The images name more than one patient."""
    patients = distinct([h.patient_key for _, h in c.images])
    if len(patients) > 1:
        labels = distinct([h.patient_label for _, h in c.images])
        yield _finding("patient_inconsistent", Severity.MEDIUM,
                       f"the images name {len(patients)} different patients: {'; '.join(labels)}", c.files,
                       patients=labels)  # fmt: skip


def patient_mismatch(c: ClaimHeaders) -> Iterator[Finding]:
    """Images of another patient than the claimed one."""
    claimed = c.info.patient_id
    wrong = [(f, h) for f, h in c.images if claimed and h.patient_id and h.patient_id != claimed]
    if wrong:
        seen = distinct([h.patient_id for _, h in wrong])
        yield _finding("patient_mismatch", Severity.MEDIUM,
                       f"the claim is for patient {claimed}, {len(wrong)} image(s) are of {', '.join(seen)}",
                       [f for f, _ in wrong], claimed=claimed, found=seen)  # fmt: skip


def sex_inconsistent(c: ClaimHeaders) -> Iterator[Finding]:
    """The images give more than one sex."""
    sexes = distinct([h.patient_sex for _, h in c.images])
    if len(sexes) > 1:
        per_file = {Path(f.path).name: h.patient_sex for f, h in c.images if h.patient_sex}
        yield _finding("sex_inconsistent", Severity.MEDIUM, f"the images give different sexes: {', '.join(sexes)}",
                       c.files, sexes=per_file)  # fmt: skip


def sex_mismatch(c: ClaimHeaders) -> Iterator[Finding]:
    """Images whose sex (M or F) is not the claimed one."""
    claimed = c.info.patient_sex
    if claimed in ("M", "F"):
        wrong = [(f, h) for f, h in c.images if h.patient_sex in ("M", "F") and h.patient_sex != claimed]
        if wrong:
            yield _finding("sex_mismatch", Severity.MEDIUM,
                           f"the claim gives sex {claimed}, {len(wrong)} image(s) say otherwise", [f for f, _ in wrong],
                           claimed=claimed, sexes={Path(f.path).name: h.patient_sex for f, h in wrong})  # fmt: skip


def _implied_births(c: ClaimHeaders) -> list[tuple[float, AuditedFile]]:
    """The birth date (in years) each image implies: its header birth date, else study date minus stated age."""
    births: list[tuple[float, AuditedFile]] = []
    for f, h in c.images:
        if h.patient_birth_date is not None:
            births.append((h.patient_birth_date.toordinal() / 365.25, f))
        elif h.patient_age is not None and h.study_date is not None:
            births.append((h.study_date.toordinal() / 365.25 - h.patient_age, f))
    return births


def _as_date(years: float) -> str:
    """An implied birth date (in the years of :func:`_implied_births`) as an ISO date."""
    return dt.date.fromordinal(max(1, round(years * 365.25))).isoformat()


def age_inconsistent(c: ClaimHeaders) -> Iterator[Finding]:
    """The images' ages or birth dates do not belong to one person (more than two years apart)."""
    births = _implied_births(c)
    if births and max(b for b, _ in births) - min(b for b, _ in births) > 2.0:
        spread = max(b for b, _ in births) - min(b for b, _ in births)
        yield _finding("age_inconsistent", Severity.MEDIUM,
                       "the images' ages / birth dates do not belong to one person (they differ by "
                       f"{spread:.1f} years)", [f for _b, f in births], spread_years=round(spread, 1),
                       implied_birth={Path(f.path).name: _as_date(b) for b, f in births})  # fmt: skip


def age_mismatch(c: ClaimHeaders) -> Iterator[Finding]:
    """Images whose implied birth date is more than a year from the claimed one."""
    births = _implied_births(c)
    if c.info.patient_birth_date is not None and births:
        claimed = c.info.patient_birth_date.toordinal() / 365.25
        wrong = [(b, f) for b, f in births if abs(b - claimed) > 1.0]
        if wrong:
            yield _finding("age_mismatch", Severity.MEDIUM,
                           f"{len(wrong)} image(s) give an age that does not match the claimed birth date "
                           f"{c.info.patient_birth_date.isoformat()}", [f for _b, f in wrong],
                           claimed_birth_date=c.info.patient_birth_date.isoformat(),
                           implied_birth={Path(f.path).name: _as_date(b) for b, f in wrong})  # fmt: skip


def body_part_mismatch(c: ClaimHeaders) -> Iterator[Finding]:
    """Images of another body part than the claimed one."""
    claimed = c.info.body_part
    if claimed:
        wrong = [(f, h) for f, h in c.images if h.body_part_matches(claimed) is False]
        if wrong:
            seen = distinct([h.body_part for _, h in wrong])
            yield _finding("body_part_mismatch", Severity.MEDIUM,
                           f"the claim is for {normalise_body_part(claimed)}, {len(wrong)} image(s) show "
                           f"{', '.join(seen)}", [f for f, _ in wrong], claimed=claimed, found=seen,
                           body_parts={Path(f.path).name: h.body_part for f, h in wrong})  # fmt: skip


def body_part_description(c: ClaimHeaders) -> Iterator[Finding]:
    """Images whose Body Part Examined contradicts their own study or series description or protocol name (a knee
    in the body part, a shoulder in the description): one of them was rewritten. The words that name a region are
    :data:`verifier.claims.headers.DESCRIPTION_REGIONS`."""
    per_file: dict[str, dict[str, str]] = {}
    wrong = []
    for f, h in c.images:
        part = h.body_part
        if part is None or not known_region(part):
            continue
        for field, text in h.descriptions().items():
            regions = description_regions(text)
            if regions and not any(regions_agree(part, r) for r in regions):
                per_file[Path(f.path).name] = {"body_part": part, "field": field, "description": text,
                                               "regions": ", ".join(regions)}  # fmt: skip
                wrong.append(f)
                break
    if wrong:
        shown = "; ".join(f"{name}: {e['body_part']}, {e['field']} \"{e['description']}\""
                          for name, e in per_file.items())  # fmt: skip
        yield _finding("body_part_description", Severity.MEDIUM,
                       f"the body part of {len(wrong)} image(s) contradicts their own description ({shown})", wrong,
                       images=per_file)  # fmt: skip


def _after_claim(c: ClaimHeaders, claim_date: dt.date) -> list[tuple[AuditedFile, HeaderFacts]]:
    return [(f, h) for f, h in c.images if any(d > claim_date for d in h.dates.values())]


def date_after_claim(c: ClaimHeaders) -> Iterator[Finding]:
    """Images acquired after the claimed date (HIGH: the claim cannot rest on them)."""
    claim_date = c.info.claim_date
    later = _after_claim(c, claim_date) if claim_date is not None else []
    if claim_date is not None and later:
        dates = {Path(f.path).name: {k: d.isoformat() for k, d in h.dates.items()} for f, h in later}
        yield _finding("date_after_claim", Severity.HIGH,
                       f"{len(later)} image(s) were acquired after the claimed date {claim_date.isoformat()}",
                       [f for f, _ in later], claim_date=claim_date.isoformat(), dates=dates)  # fmt: skip


def date_mismatch(c: ClaimHeaders) -> Iterator[Finding]:
    """Images from studies more than the tolerance before the claimed date (those after it are reported above)."""
    claim_date = c.info.claim_date
    if claim_date is None:
        return
    later = [f for f, _ in _after_claim(c, claim_date)]
    tolerance = dt.timedelta(days=c.tolerance_days)
    old = [(f, d) for f, h in c.images
           if f not in later and (d := h.study_date) is not None and claim_date - d > tolerance]  # fmt: skip
    if old:
        oldest = min(d for _, d in old)
        yield _finding("date_mismatch", Severity.MEDIUM,
                       f"{len(old)} image(s) are from studies more than {c.tolerance_days} days before the claimed "
                       f"date {claim_date.isoformat()} (oldest {oldest.isoformat()})", [f for f, _ in old],
                       claim_date=claim_date.isoformat(), tolerance_days=c.tolerance_days,
                       study_dates={Path(f.path).name: d.isoformat() for f, d in old})  # fmt: skip


def equipment_inconsistent(c: ClaimHeaders) -> Iterator[Finding]:
    """One study acquired on different equipment."""
    studies: dict[str, list[tuple[AuditedFile, HeaderFacts]]] = {}
    for f, h in c.images:
        if h.study_instance_uid:
            studies.setdefault(str(h.study_instance_uid), []).append((f, h))
    for uid, members in studies.items():
        kinds = distinct([h.equipment_label() for _, h in members])
        if len(kinds) > 1:
            yield _finding("equipment_inconsistent", Severity.LOW,
                           f"one study ({uid}) was acquired on different equipment: {'; '.join(kinds)}",
                           [f for f, _ in members], study_instance_uid=uid, equipment=kinds)  # fmt: skip


#: Every header rule, in the order their findings are listed (before sorting by severity).
HEADER_RULES: tuple[Rule, ...] = (
    stripped_header,
    patient_inconsistent,
    patient_mismatch,
    sex_inconsistent,
    sex_mismatch,
    age_inconsistent,
    age_mismatch,
    body_part_mismatch,
    body_part_description,
    date_after_claim,
    date_mismatch,
    equipment_inconsistent,
)


def header_findings(report: ClaimReport, tolerance_days: int = DATE_TOLERANCE_DAYS) -> list[Finding]:
    """The findings of every header rule on ``report``."""
    headers = ClaimHeaders.of(report, tolerance_days)
    return [finding for rule in HEADER_RULES for finding in rule(headers)]
