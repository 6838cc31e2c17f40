"""Header facts of one image, and what a claim's headers say against each other and against the claim."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

__all__ = [
    "DESCRIPTION_REGIONS",
    "HeaderFacts",
    "age_years",
    "description_regions",
    "known_region",
    "normalise_body_part",
    "parse_da",
    "regions_agree",
]

_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
#: Body-part spellings that mean the same region (DICOM PS3.16 CID 4031 terms and common free text).
_BODY_SYNONYMS = {
    "THORAX": "CHEST",
    "LUNG": "CHEST",
    "LUNGS": "CHEST",
    "BRAIN": "HEAD",
    "SKULL": "HEAD",
    "CSPINE": "CSPINE",
    "C-SPINE": "CSPINE",
    "ABD": "ABDOMEN",
    "ABDOMINAL": "ABDOMEN",
    "KNEE": "KNEE",
    "EXTREMITIES": "EXTREMITY",
    "HAND": "HAND",
    "WRIST": "WRIST",
}
#: Words of a study, series or protocol description that name a body region, and the region (as
#: :func:`normalise_body_part` spells Body Part Examined) each names. Only words that name one region without doubt
#: are listed; a description naming none of them says nothing. Edit here: the header rule
#: :func:`verifier.claims.rules.body_part_description` reads this table and nothing else.
DESCRIPTION_REGIONS: dict[str, str] = {
    "HEAD": "HEAD", "BRAIN": "HEAD", "SKULL": "HEAD", "CRANIAL": "HEAD", "CEREBRAL": "HEAD",
    "NECK": "NECK", "CERVICAL": "CSPINE", "CSPINE": "CSPINE", "C-SPINE": "CSPINE",
    "CHEST": "CHEST", "THORAX": "CHEST", "THORACIC": "CHEST", "LUNG": "CHEST", "LUNGS": "CHEST",
    "HEART": "HEART", "CARDIAC": "HEART", "BREAST": "BREAST", "MAMMO": "BREAST", "MAMMOGRAPHY": "BREAST",
    "ABDOMEN": "ABDOMEN", "ABDOMINAL": "ABDOMEN", "ABD": "ABDOMEN", "LIVER": "ABDOMEN", "KIDNEY": "ABDOMEN",
    "PELVIS": "PELVIS", "PELVIC": "PELVIS", "LUMBAR": "LSPINE", "LSPINE": "LSPINE", "L-SPINE": "LSPINE",
    "SPINE": "SPINE",
    "SHOULDER": "SHOULDER", "ELBOW": "ELBOW", "WRIST": "WRIST", "HAND": "HAND", "FINGER": "HAND",
    "HIP": "HIP", "KNEE": "KNEE", "ANKLE": "ANKLE", "FOOT": "FOOT",
}  # fmt: skip
#: Regions that contain others: a description naming the container agrees with any of its parts, and the reverse
#: (SPINE and LSPINE, CHEST and HEART, EXTREMITY and KNEE).
_REGION_PARTS: dict[str, frozenset[str]] = {
    "SPINE": frozenset({"CSPINE", "TSPINE", "LSPINE", "SSPINE"}),
    "CHEST": frozenset({"HEART", "BREAST", "TSPINE"}),
    "ABDOMEN": frozenset({"LSPINE"}),
    "HEAD": frozenset({"NECK"}),
    "EXTREMITY": frozenset({"SHOULDER", "ELBOW", "WRIST", "HAND", "HIP", "KNEE", "ANKLE", "FOOT", "ARM", "LEG"}),
}
#: Elements whose absence in a patient image suggests the header was stripped.
IDENTITY_ELEMENTS = ("PatientID", "PatientName", "StudyDate", "StudyInstanceUID", "Modality")


def normalise_body_part(value: str | None) -> str | None:
    """Upper-case, spaces and underscores removed, synonyms mapped (``Thorax`` and ``chest`` compare equal)."""
    if not value:
        return None
    text = re.sub(r"[\s_]+", "", str(value).strip().upper())
    return _BODY_SYNONYMS.get(text, text) or None


def description_regions(text: str | None) -> tuple[str, ...]:
    """The body regions (see :data:`DESCRIPTION_REGIONS`) that the words of a description name, in order."""
    out: list[str] = []
    for word in re.split(r"[^A-Za-z-]+", (text or "").upper()):
        region = DESCRIPTION_REGIONS.get(word.strip("-"))
        if region is not None and region not in out:
            out.append(region)
    return tuple(out)


def regions_agree(a: str, b: str) -> bool:
    """Whether body regions ``a`` and ``b`` (normalised) can describe the same image: equal, or one contains the
    other."""
    return a == b or b in _REGION_PARTS.get(a, ()) or a in _REGION_PARTS.get(b, ())


def known_region(region: str | None) -> bool:
    """Whether :data:`DESCRIPTION_REGIONS` knows ``region`` well enough to say what contradicts it."""
    return region is not None and (region in _REGION_PARTS or region in DESCRIPTION_REGIONS.values())


def parse_da(value: Any) -> dt.date | None:
    """A DICOM DA (``YYYYMMDD``, also the old ``YYYY.MM.DD``) or ISO date; ``None`` if empty or invalid."""
    text = str(value or "").strip().replace(".", "").replace("-", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def age_years(value: Any) -> float | None:
    """A DICOM AS (``045Y``, ``006M``, ``010W``, ``003D``) in years."""
    m = _AGE.match(str(value or "").strip().upper())
    if not m:
        return None
    n = int(m.group(1))
    return {"Y": n, "M": n / 12, "W": n / 52.18, "D": n / 365.25}[m.group(2)]


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a value that does not convert counts as absent
        return None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeaderFacts:
    """What one image's header says about the patient, the study and the equipment."""

    patient_id: str | None = None
    patient_name: str | None = None
    patient_sex: str | None = None
    patient_birth_date: dt.date | None = None
    patient_age: float | None = None
    body_part: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    protocol_name: str | None = None
    study_date: dt.date | None = None
    #: Every acquisition-related date in the header (study, series, acquisition, content), by keyword.
    dates: dict[str, dt.date] = dataclasses.field(default_factory=dict)
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    #: Laterality, else Image Laterality: R, L, B (both) or U (unpaired).
    laterality: str | None = None
    equipment: dict[str, str] = dataclasses.field(default_factory=dict)
    missing: tuple[str, ...] = ()

    @classmethod
    def from_dataset(cls, ds: Dataset) -> HeaderFacts:
        dates = {}
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            parsed = parse_da(_text(ds, keyword))
            if parsed is not None:
                dates[keyword] = parsed
        equipment = {
            k: v
            for k in ("Manufacturer", "ManufacturerModelName", "StationName", "DeviceSerialNumber")
            if (v := _text(ds, k)) is not None
        }
        sex = (_text(ds, "PatientSex") or "").upper() or None
        return cls(
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            patient_sex=sex if sex in ("M", "F", "O") else None,
            patient_birth_date=parse_da(_text(ds, "PatientBirthDate")),
            patient_age=age_years(_text(ds, "PatientAge")),
            body_part=normalise_body_part(_text(ds, "BodyPartExamined")),
            study_description=_text(ds, "StudyDescription"),
            series_description=_text(ds, "SeriesDescription"),
            protocol_name=_text(ds, "ProtocolName"),
            study_date=dates.get("StudyDate"),
            dates=dates,
            study_instance_uid=_text(ds, "StudyInstanceUID"),
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            modality=_text(ds, "Modality"),
            laterality=((_text(ds, "Laterality") or _text(ds, "ImageLaterality") or "").upper() or None),
            equipment=equipment,
            missing=tuple(k for k in IDENTITY_ELEMENTS if _text(ds, k) is None),
        )

    @property
    def patient_key(self) -> str | None:
        """A pseudonymous key of the patient identity (ID and name); ``None`` when the header names no one."""
        if not self.patient_id and not self.patient_name:
            return None
        ident = f"{(self.patient_id or '').upper()}\x00{_name_key(self.patient_name)}"
        return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:32]

    @property
    def patient_label(self) -> str:
        return " / ".join(x for x in (self.patient_id, self.patient_name) if x) or "(no patient identity)"

    def age_at(self, when: dt.date | None) -> float | None:
        """The patient's age in years at ``when`` from the birth date, else the stated age (at the study)."""
        if self.patient_birth_date is not None and when is not None:
            return (when - self.patient_birth_date).days / 365.25
        return self.patient_age

    def equipment_label(self) -> str:
        return " ".join(self.equipment.get(k, "") for k in ("Manufacturer", "ManufacturerModelName")).strip()

    def descriptions(self) -> dict[str, str]:
        """The header's free-text descriptions of what was imaged, by what a reader calls them."""
        named = {"study description": self.study_description, "series description": self.series_description,
                 "protocol name": self.protocol_name}  # fmt: skip
        return {k: v for k, v in named.items() if v}

    def body_part_matches(self, claimed: str) -> bool | None:
        """Whether the header supports ``claimed``; ``None`` when it says nothing about the body part."""
        want = normalise_body_part(claimed)
        if want is None:
            return None
        if self.body_part is not None:
            return self.body_part == want
        if self.study_description:
            words = {normalise_body_part(w) for w in re.split(r"[^A-Za-z-]+", self.study_description) if w}
            if want in words:
                return True
        return None


def _name_key(name: str | None) -> str:
    return re.sub(r"[\s^]+", " ", (name or "").upper()).strip()


def distinct(values: Sequence[str | None]) -> list[str]:
    """The distinct non-empty values, in first-seen order."""
    out: list[str] = []
    for v in values:
        if v and v not in out:
            out.append(v)
    return out
