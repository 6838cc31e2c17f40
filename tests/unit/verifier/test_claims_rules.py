"""verifier.claims.rules: each header rule fires on its contradiction, on real DICOM headers, and on nothing else."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from provenance.trust import TrustPolicy
from verifier.checker import Checker
from verifier.claims.headers import HeaderFacts, description_regions
from verifier.claims.models import AuditedFile, ClaimInfo, ClaimReport, Severity
from verifier.claims.rules import HEADER_RULES, ClaimHeaders, header_findings

CT_SMALL = str(get_testdata_file("CT_small.dcm"))
Edit = Callable[[Dataset], None]


def _image(tmp_path: Path, name: str, edit: Edit | None = None) -> AuditedFile:
    """CT_small as a claim image: patient P1, male, born 1970-01-01, chest, study 2024-03-01; then ``edit``."""
    ds = pydicom.dcmread(CT_SMALL)
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = "P1", "DOE^JOHN", "M", "19700101"
    ds.BodyPartExamined = "CHEST"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240301"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    if edit is not None:
        edit(ds)
    path = tmp_path / name
    ds.save_as(path)
    result = Checker(trust=TrustPolicy.unsafe_trust_everything()).check(path)
    return AuditedFile(claim_id="c1", path=str(path), result=result, facts=HeaderFacts.from_dataset(ds))


def _claim(*files: AuditedFile, **claimed: object) -> ClaimReport:
    info = ClaimInfo(claim_id="c1", files=tuple(Path(f.path) for f in files), **claimed)  # type: ignore[arg-type]
    return ClaimReport(info=info, files=list(files))


def _set(**values: object) -> Edit:
    def edit(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return edit


def _strip(ds: Dataset) -> None:
    del ds.PatientID
    del ds.PatientName


BORN = dt.date(1970, 1, 1)
CLAIMED = {"patient_id": "P1", "patient_sex": "M", "patient_birth_date": BORN,
           "claim_date": dt.date(2024, 3, 10), "body_part": "thorax"}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "severity", "edit", "claimed"),
    [
        ("stripped_header", Severity.MEDIUM, _strip, {}),
        ("patient_inconsistent", Severity.MEDIUM, _set(PatientID="P2", PatientName="ROE^JANE"), {}),
        ("patient_mismatch", Severity.MEDIUM, _set(PatientID="P2"), {"patient_id": "P1"}),
        ("sex_inconsistent", Severity.MEDIUM, _set(PatientSex="F"), {}),
        ("sex_mismatch", Severity.MEDIUM, _set(PatientSex="F"), {"patient_sex": "M"}),
        ("age_inconsistent", Severity.MEDIUM, _set(PatientBirthDate="19800101"), {}),
        ("age_mismatch", Severity.MEDIUM, _set(PatientBirthDate="19800101"), {"patient_birth_date": BORN}),
        ("body_part_mismatch", Severity.MEDIUM, _set(BodyPartExamined="KNEE"), {"body_part": "chest"}),
        ("body_part_description", Severity.MEDIUM, _set(BodyPartExamined="KNEE", StudyDescription="SHOULDER"), {}),
        ("body_part_description", Severity.MEDIUM, _set(SeriesDescription="Brain axial T1"), {}),
        ("date_after_claim", Severity.HIGH, _set(StudyDate="20240320"), {"claim_date": dt.date(2024, 3, 10)}),
        ("date_mismatch", Severity.MEDIUM, _set(StudyDate="20230101"), {"claim_date": dt.date(2024, 3, 10)}),
        ("equipment_inconsistent", Severity.LOW, _set(Manufacturer="SIEMENS"), {}),
    ],
)
def test_each_rule_finds_its_contradiction(
    tmp_path: Path, kind: str, severity: Severity, edit: Edit, claimed: dict[str, object]
) -> None:
    good, odd = _image(tmp_path, "good.dcm"), _image(tmp_path, "odd.dcm", edit)
    findings = [f for f in header_findings(_claim(good, odd, **claimed)) if f.kind == kind]
    assert len(findings) == 1, [f.kind for f in header_findings(_claim(good, odd, **claimed))]
    assert findings[0].severity is severity and odd.path in findings[0].files


def test_a_consistent_claim_has_no_header_finding(tmp_path: Path) -> None:
    files = [_image(tmp_path, f"f{i}.dcm") for i in range(3)]
    assert header_findings(_claim(*files, **CLAIMED)) == []
    assert len(HEADER_RULES) == 12


@pytest.mark.parametrize(
    ("body_part", "description"),
    [
        ("CHEST", "THORAX"),  # synonyms
        ("CHEST", "CT chest abdomen pelvis"),  # one of several regions named
        ("LSPINE", "SPINE routine"),  # a region and its container
        ("KNEE", "T1W/SE/1024"),  # a description that names no region says nothing
        ("LEG", "KNEE"),  # a body part the table does not know is not judged
    ],
)
def test_a_description_that_agrees_is_no_finding(tmp_path: Path, body_part: str, description: str) -> None:
    odd = _image(tmp_path, "odd.dcm", _set(BodyPartExamined=body_part, StudyDescription=description))
    assert [f.kind for f in header_findings(_claim(odd))] == []


def test_the_sample_shoulder_labelled_knee_is_found() -> None:
    """pydicom's MR2_UNCR (StudyDescription SHOULDER) with Body Part Examined KNEE, as `claims sample` writes it."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.StudyDescription, ds.BodyPartExamined = "SHOULDER", "KNEE"
    facts = HeaderFacts.from_dataset(ds)
    assert facts.descriptions() == {"study description": "SHOULDER"}
    assert description_regions("L-SPINE / Shoulder, left") == ("LSPINE", "SHOULDER")


def test_rules_read_only_images_with_headers(tmp_path: Path) -> None:
    missing = tmp_path / "x.dcm"
    result = Checker(trust=TrustPolicy.unsafe_trust_everything()).check(missing)
    unreadable = AuditedFile(claim_id="c1", path=str(missing), result=result)
    report = _claim(_image(tmp_path, "good.dcm"), unreadable, **CLAIMED)
    assert [f.path for f in ClaimHeaders.of(report).files] == [str(tmp_path / "good.dcm")]
    assert header_findings(report) == []
