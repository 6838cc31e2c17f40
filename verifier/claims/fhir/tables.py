"""The code tables the FHIR cross-checks read: SNOMED CT body sites and laterality as DICOM says them, and which
imaging fits which ICD-10 diagnosis.

They are small on purpose and kept here as data, in one place: a code that is in no table is not judged (the
finding says so only where it matters), never guessed. Sources: the SNOMED CT codes are those DICOM PS3.16 lists
for its body parts (CID 4031 "Common Anatomic Regions", Annex L "Correspondence of Anatomic Region Codes and Body
Part Examined Defined Terms") and laterality (CID 244); the body-part values are DICOM's Body Part Examined
defined terms as :func:`verifier.claims.headers.normalise_body_part` spells them. The diagnosis rules are a few
common claims of an imaging-backed diagnosis (ICD-10 category, three characters) and the modalities and body
regions that can show it; a region matches when it is the one named or contains it, or is contained by it
(:func:`verifier.claims.headers.regions_agree`: EXTREMITY agrees with WRIST).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from verifier.claims.headers import normalise_body_part, regions_agree

__all__ = [
    "ACQUISITION_MODALITIES",
    "DIAGNOSIS_RULES",
    "DICOM_MODALITY_SYSTEM",
    "ICD10_SYSTEMS",
    "LATERALITY",
    "SNOMED_BODY_PARTS",
    "SNOMED_SYSTEM",
    "DiagnosisRule",
    "body_part_of",
    "diagnosis_rule",
    "laterality_of",
]

SNOMED_SYSTEM = "http://snomed.info/sct"
DICOM_MODALITY_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
#: Code systems that mean ICD-10 (WHO) or one of its national modifications (US ICD-10-CM, German ICD-10-GM).
ICD10_SYSTEMS = frozenset({
    "http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm", "http://fhir.de/CodeSystem/bfarm/icd-10-gm",
    "http://hl7.org/fhir/sid/icd-10-de",
})  # fmt: skip

#: SNOMED CT body structure -> DICOM Body Part Examined (normalised). Both the current PS3.16 codes and the older
#: ones still sent by many systems (abdomen 113345001, pelvis 12921003) are listed.
SNOMED_BODY_PARTS: Mapping[str, str] = {
    "69536005": "HEAD",       # Head structure
    "12738006": "HEAD",       # Brain structure (BRAIN; medverify compares it as HEAD)
    "45048000": "NECK",       # Neck structure
    "51185008": "CHEST",      # Thoracic structure
    "39607008": "CHEST",      # Lung structure
    "80891009": "HEART",      # Heart structure
    "76752008": "BREAST",     # Breast structure
    "818981001": "ABDOMEN",   # Abdomen
    "113345001": "ABDOMEN",   # Abdominal structure
    "816092008": "PELVIS",    # Pelvis
    "12921003": "PELVIS",     # Pelvic structure
    "421060004": "SPINE",     # Spinal structure
    "122494005": "CSPINE",    # Cervical spine structure
    "122495006": "TSPINE",    # Thoracic spine structure
    "122496007": "LSPINE",    # Lumbar spine structure
    "16982005": "SHOULDER",   # Shoulder region structure
    "127949000": "ELBOW",     # Elbow region structure
    "8205005": "WRIST",       # Wrist region structure
    "85562004": "HAND",       # Hand structure
    "29836001": "HIP",        # Hip region structure
    "72696002": "KNEE",       # Knee region structure
    "70258002": "ANKLE",      # Ankle joint structure
    "56459004": "FOOT",       # Foot structure
    "66019005": "EXTREMITY",  # Limb structure
}  # fmt: skip

#: SNOMED CT laterality qualifier -> DICOM Laterality / Image Laterality (R, L, B = both).
LATERALITY: Mapping[str, str] = {
    "24028007": "R",  # Right
    "7771000": "L",  # Left
    "51440002": "B",  # Right and left (bilateral)
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiagnosisRule:
    """The imaging that can back a diagnosis: the modalities and the body regions."""

    icd10: str
    meaning: str
    modalities: frozenset[str]
    regions: frozenset[str]

    def fits_region(self, body_part: str) -> bool:
        return any(regions_agree(body_part, r) for r in self.regions)


def _rule(icd10: str, meaning: str, modalities: str, regions: str) -> DiagnosisRule:
    return DiagnosisRule(icd10=icd10, meaning=meaning, modalities=frozenset(modalities.split()),
                         regions=frozenset(regions.split()))  # fmt: skip


_XRAY = "CR DX"
#: ICD-10 category (three characters) -> the imaging that can back it. A category that is not here is not judged.
DIAGNOSIS_RULES: Mapping[str, DiagnosisRule] = {r.icd10: r for r in (
    _rule("S02", "fracture of skull and facial bones", f"{_XRAY} CT MR", "HEAD"),
    _rule("S06", "intracranial injury", "CT MR", "HEAD"),
    _rule("S12", "fracture of cervical vertebra", f"{_XRAY} CT MR", "CSPINE NECK"),
    _rule("S22", "fracture of rib(s), sternum and thoracic spine", f"{_XRAY} CT MR", "CHEST TSPINE"),
    _rule("S32", "fracture of lumbar spine and pelvis", f"{_XRAY} CT MR", "LSPINE PELVIS HIP"),
    _rule("S42", "fracture of shoulder and upper arm", f"{_XRAY} CT MR", "SHOULDER ARM"),
    _rule("S52", "fracture of forearm", f"{_XRAY} CT MR", "ELBOW WRIST ARM"),
    _rule("S62", "fracture at wrist and hand level", f"{_XRAY} CT MR", "WRIST HAND"),
    _rule("S72", "fracture of femur", f"{_XRAY} CT MR", "HIP LEG KNEE"),
    _rule("S82", "fracture of lower leg, including ankle", f"{_XRAY} CT MR", "KNEE LEG ANKLE"),
    _rule("S83", "dislocation, sprain and strain of the knee (meniscus, ligaments)", f"MR {_XRAY} CT US", "KNEE"),
    _rule("S92", "fracture of foot", f"{_XRAY} CT MR", "FOOT ANKLE"),
    _rule("M17", "osteoarthritis of the knee", f"{_XRAY} MR CT", "KNEE"),
    _rule("M51", "thoracic and lumbar disc disorders", f"MR CT {_XRAY}", "SPINE TSPINE LSPINE"),
    _rule("J18", "pneumonia", f"{_XRAY} CT", "CHEST"),
    _rule("J93", "pneumothorax", f"{_XRAY} CT US", "CHEST"),
    _rule("C34", "malignant neoplasm of bronchus and lung", f"CT PT {_XRAY} MR", "CHEST"),
    _rule("C50", "malignant neoplasm of breast", "MG US MR CT PT", "BREAST CHEST"),
    _rule("I63", "cerebral infarction", "CT MR", "HEAD"),
    _rule("K35", "acute appendicitis", "CT US MR", "ABDOMEN PELVIS"),
    _rule("N20", "calculus of kidney and ureter", f"CT US {_XRAY}", "ABDOMEN PELVIS"),
)}  # fmt: skip

#: Modalities an acquisition has; a diagnosis is judged by modality only for these (a Secondary Capture, OT, says
#: nothing about how the image was made).
ACQUISITION_MODALITIES = frozenset("CR DX CT MR US PT NM MG XA RF".split())


def body_part_of(system: str | None, code: str | None) -> str | None:
    """The DICOM body part of a SNOMED CT body site; None for another system or a code not in the table."""
    if code is None or (system is not None and system != SNOMED_SYSTEM):
        return None
    return normalise_body_part(SNOMED_BODY_PARTS.get(code.strip()))


def laterality_of(system: str | None, code: str | None) -> str | None:
    """R, L or B for a SNOMED CT laterality code; None for another system or an unknown code."""
    if code is None or (system is not None and system != SNOMED_SYSTEM):
        return None
    return LATERALITY.get(code.strip())


def diagnosis_rule(system: str | None, code: str | None) -> DiagnosisRule | None:
    """The rule of an ICD-10 code (``S62.1``, ``S6210XA``: by its category), None when the table has none."""
    if code is None or (system is not None and system not in ICD10_SYSTEMS):
        return None
    return DIAGNOSIS_RULES.get(code.strip().upper().replace(".", "")[:3])
