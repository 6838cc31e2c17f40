"""verifier.claims.fhir: the code tables, reading bundles (and refusing bad ones), each cross-check on its
contradiction and on nothing else, and the FHIR output, on real DICOM headers and bundles the R4 models accept."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from provenance.trust import TrustPolicy
from verifier.checker import Checker
from verifier.claims.evidence import explain, explained_kinds
from verifier.claims.fhir.bundle import MAX_BUNDLE_BYTES, load_fhir_claims, read_bundle
from verifier.claims.fhir.rules import FHIR_KINDS, fhir_findings
from verifier.claims.fhir.tables import (
    DIAGNOSIS_RULES,
    SNOMED_BODY_PARTS,
    body_part_of,
    diagnosis_rule,
    laterality_of,
)
from verifier.claims.headers import DESCRIPTION_REGIONS, HeaderFacts, normalise_body_part
from verifier.claims.models import AuditedFile, ClaimInfo, ClaimReport, Finding, Severity
from verifier.claims.samples import fhir_claim_bundle
from verifier.errors import InputError

CT_SMALL = str(get_testdata_file("CT_small.dcm"))
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
#: What the bundle of a consistent claim says about CT_small as :func:`_dataset` labels it.
SAYS: dict[str, Any] = {"family": "Doe", "given": "John", "gender": "male", "birth": "1970-01-01",
                        "date": "2024-03-01", "created": "2024-03-04", "site": ("51185008", "Thoracic structure"),
                        "icd10": ("J18.9", "Pneumonia")}  # fmt: skip


# -- tables ---------------------------------------------------------------------------------------------------------


def test_snomed_body_sites_map_to_dicom_body_parts() -> None:
    assert body_part_of(SNOMED, "72696002") == "KNEE"
    assert body_part_of(SNOMED, "51185008") == body_part_of(None, "39607008") == "CHEST"  # thorax, lung
    assert body_part_of(SNOMED, "12738006") == "HEAD"  # brain compares as head, as in the header rules
    assert body_part_of(SNOMED, "999999") is None  # not in the table: not judged
    assert body_part_of("http://loinc.org", "72696002") is None  # another code system
    # Every body part the table gives is one the header rules know, so contradictions can be judged.
    for part in SNOMED_BODY_PARTS.values():
        assert normalise_body_part(part) in set(DESCRIPTION_REGIONS.values()) | {"TSPINE", "EXTREMITY"}, part


def test_laterality_and_diagnosis_tables() -> None:
    assert (laterality_of(SNOMED, "24028007"), laterality_of(SNOMED, "7771000")) == ("R", "L")
    assert laterality_of(SNOMED, "51440002") == "B" and laterality_of(SNOMED, "1") is None
    wrist = diagnosis_rule(ICD10, "S62.101A")
    assert wrist is not None and wrist.icd10 == "S62" and "CT" in wrist.modalities
    assert wrist.fits_region("WRIST") and wrist.fits_region("EXTREMITY") and not wrist.fits_region("CHEST")
    assert diagnosis_rule("http://hl7.org/fhir/sid/icd-10", "s621") is wrist  # case and dots do not matter
    assert diagnosis_rule(ICD10, "Z00.0") is None  # not in the table: not judged
    assert diagnosis_rule(SNOMED, "S62.1") is None  # not ICD-10
    assert all(len(k) == 3 and r.modalities and r.regions for k, r in DIAGNOSIS_RULES.items())


# -- bundles --------------------------------------------------------------------------------------------------------


def _dataset(edit: Callable[[Dataset], None] | None = None) -> Dataset:
    ds = pydicom.dcmread(CT_SMALL)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = "P1", "DOE^JOHN", "M", "19700101"
    ds.BodyPartExamined = "CHEST"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240301"
    if edit is not None:
        edit(ds)
    return ds


def _bundle(ds: Dataset, **says: Any) -> dict[str, Any]:
    return fhir_claim_bundle("c1", "c1/ct.dcm", ds, {**SAYS, **says})


def _bytes(bundle: dict[str, Any]) -> bytes:
    return json.dumps(bundle).encode()


def test_a_bundle_reads_into_a_claim_with_its_elements() -> None:
    ds = _dataset()
    (claim,) = read_bundle(_bytes(_bundle(ds, side="24028007")), "b.json")
    assert claim.ref == "Claim/c1" and claim.attachments == ("c1/ct.dcm",)
    assert claim.patient is not None and claim.patient.sex == "M" and claim.patient.ref == "Patient/pat-c1"
    (study,) = claim.studies
    assert study.uid == ds.StudyInstanceUID and study.uid_element == "ImagingStudy/study-c1.identifier[0]"
    assert study.procedures == ("Procedure/proc-c1",)
    (series,) = study.series
    assert series.body_site is not None and series.body_site.element == "ImagingStudy/study-c1.series[0].bodySite"
    assert series.laterality is not None and series.instance_uids == (ds.SOPInstanceUID,)
    assert [d.code for d in claim.diagnoses] == ["J18.9"]
    assert [w.element for w in claim.service_dates] == ["Claim/c1.item[0].servicedDate"]


def _entry(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    resource: dict[str, Any] = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind)
    return resource


def _broken(change: Callable[[dict[str, Any]], None]) -> bytes:
    bundle = copy.deepcopy(_bundle(_dataset()))
    change(bundle)
    return _bytes(bundle)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"{not json", "is not JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b'{"resourceType": "Patient"}', "is not a FHIR Bundle"),
        (_broken(lambda b: _entry(b, "Patient").update(birthDate="yesterday")),
         "not valid FHIR R4: entry.1.resource.birthDate"),
        (_broken(lambda b: b["entry"].append({"resource": {"resourceType": "Nonsense"}})), "not valid FHIR R4"),
        (_broken(lambda b: _entry(b, "ImagingStudy").pop("status")), "not valid FHIR R4"),
        (_broken(lambda b: _entry(b, "Claim").update(patient={"reference": "Patient/nobody"})),
         "Claim/c1.patient refers to 'Patient/nobody', which is not in the bundle"),
        (_broken(lambda b: _entry(b, "ImagingStudy").update(procedureReference={"reference": "Procedure/gone"})),
         "ImagingStudy/study-c1.procedureReference refers to 'Procedure/gone'"),
        (_broken(lambda b: _entry(b, "Claim").update(patient={"reference": "ImagingStudy/study-c1"})),
         "refers to a ImagingStudy, not a Patient"),
        (_broken(lambda b: b.update(entry=[e for e in b["entry"] if e["resource"]["resourceType"] != "Claim"])),
         "holds no Claim"),
    ],
    ids=["not-json", "not-utf8", "not-bundle", "bad-date", "unknown-type", "missing-status", "unresolved-patient",
         "unresolved-procedure", "wrong-type", "no-claim"],
)  # fmt: skip
def test_bad_bundles_are_refused_with_a_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(InputError) as info:
        read_bundle(data, "b.json")
    assert says in str(info.value) and "b.json" in str(info.value)


def test_a_huge_bundle_is_refused_by_its_size_unread(tmp_path: Path) -> None:
    root = tmp_path / "claims"
    root.mkdir()
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as fh:  # sparse: 100 MB that take no disk and would take seconds to parse
        fh.truncate(100 * 1024**2)
    with pytest.raises(InputError, match=f"is 104857600 bytes, over the limit of {MAX_BUNDLE_BYTES} bytes"):
        load_fhir_claims(root, huge)
    with pytest.raises(InputError, match="over the limit of 100 bytes"):
        read_bundle(_bytes(_bundle(_dataset())), "b.json", max_bytes=100)


def test_attachments_must_resolve_inside_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "claims"
    root.mkdir()
    bundle = _bundle(_dataset())
    (tmp_path / "b.json").write_bytes(_bytes(bundle))
    with pytest.raises(InputError, match="does not resolve: no such file"):
        load_fhir_claims(root, tmp_path / "b.json")
    for url in ("../outside.dcm", "/etc/passwd", "http://example.org/ct.dcm"):
        claim = _entry(bundle, "Claim")
        claim["supportingInfo"][0]["valueAttachment"]["url"] = url
        (tmp_path / "b.json").write_bytes(_bytes(bundle))
        with pytest.raises(InputError, match="must be a path inside"):
            load_fhir_claims(root, tmp_path / "b.json")
    with pytest.raises(InputError, match="holds no FHIR bundle"):
        load_fhir_claims(root, root)


# -- cross-checks ---------------------------------------------------------------------------------------------------


def _report(tmp_path: Path, bundle: dict[str, Any], ds: Dataset) -> ClaimReport:
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    result = Checker(trust=TrustPolicy.unsafe_trust_everything()).check(path)
    audited = AuditedFile(claim_id="c1", path=str(path), result=result, facts=HeaderFacts.from_dataset(ds))
    (claim,) = read_bundle(_bytes(bundle), "b.json")
    return ClaimReport(info=ClaimInfo(claim_id="c1", files=(path,), fhir=claim), files=[audited])


def _set(**values: Any) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return edit


CASES: dict[str, tuple[dict[str, Any], Callable[[Dataset], None] | None, str | None, str | None]] = {
    # name: (what the bundle says differently, how the header differs after the bundle was made, kind, element)
    "consistent": ({}, None, None, None),
    "consistent-side": ({"side": "24028007"}, _set(Laterality="R"), None, None),
    "name": ({"family": "Smith"}, None, "fhir_name_mismatch", "Patient/pat-c1.name"),
    "initial-agrees": ({"given": "J"}, None, None, None),
    "birth": ({"birth": "1971-01-01"}, None, "fhir_birth_date_mismatch", "Patient/pat-c1.birthDate"),
    "sex": ({"gender": "female"}, None, "fhir_sex_mismatch", "Patient/pat-c1.gender"),
    "date": ({"date": "2024-05-01"}, None, "fhir_date_mismatch", "Claim/c1.item[0].servicedDate"),
    "created": ({"created": "2024-02-01"}, None, "fhir_date_after_claim", "Claim/c1.created"),
    "modality": ({}, _set(Modality="DX"), "fhir_modality_mismatch", "ImagingStudy/study-c1.series[0].modality"),
    "body-site": ({"site": ("72696002", "Knee")}, None, "fhir_body_site_mismatch",
                  "ImagingStudy/study-c1.series[0].bodySite"),
    "laterality": ({"side": "24028007"}, _set(Laterality="L"), "fhir_laterality_mismatch",
                   "ImagingStudy/study-c1.series[0].laterality"),
    "diagnosis": ({"icd10": ("S62.101A", "wrist fracture")}, None, "fhir_diagnosis_implausible",
                  "Claim/c1.diagnosis[0].diagnosisCodeableConcept"),
    "diagnosis-unknown": ({"icd10": ("Z00.0", "check-up")}, None, None, None),
    "other-study": ({}, _set(StudyInstanceUID=generate_uid()), "fhir_image_without_study",
                    "ImagingStudy/study-c1.identifier[0]"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_cross_check_fires_on_its_contradiction_only(tmp_path: Path, case: str) -> None:
    says, header, kind, element = CASES[case]
    ds = _dataset()
    bundle = _bundle(ds, **says)
    if header is not None:
        header(ds)
    findings = fhir_findings(_report(tmp_path, bundle, ds))
    kinds = {f.kind for f in findings}
    if kind is None:
        assert not findings, [f.message for f in findings]
        return
    assert kind in kinds, [f.message for f in findings]
    finding = next(f for f in findings if f.kind == kind)
    assert element in finding.evidence["fhir"] and element in finding.message  # names the FHIR element
    assert finding.files == (str(tmp_path / "ct.dcm"),)
    expected = {kind} | ({"fhir_study_without_images"} if case == "other-study" else set())
    assert kinds == expected, [f.message for f in findings]


def test_dates_that_say_the_same_make_one_finding_and_a_later_image_is_high(tmp_path: Path) -> None:
    ds = _dataset()
    (before,) = fhir_findings(_report(tmp_path, _bundle(ds, date="2024-05-01"), ds))
    assert before.severity is Severity.MEDIUM and len(before.evidence["fhir"]) == 3  # item, Procedure, study start
    (after,) = fhir_findings(_report(tmp_path, _bundle(ds, date="2024-01-02", created="2024-03-10"), ds))
    assert after.severity is Severity.HIGH and after.evidence["days_off"] == {"ct.dcm": 59}


def test_a_study_without_its_images(tmp_path: Path) -> None:
    ds = _dataset()
    bundle = _bundle(ds)
    other = _bundle(_dataset())  # a second ImagingStudy whose image was not sent
    study = _entry(other, "ImagingStudy") | {"id": "study-gone"}
    bundle["entry"].append({"resource": study})
    _entry(bundle, "Claim")["supportingInfo"].append(
        {"sequence": 3, "category": {"coding": [{"code": "info"}]},
         "valueReference": {"reference": "ImagingStudy/study-gone"}})  # fmt: skip
    (finding,) = fhir_findings(_report(tmp_path, bundle, ds))
    assert finding.kind == "fhir_study_without_images" and finding.evidence["study"] == "ImagingStudy/study-gone"
    assert finding.files == () and "no image of that study was submitted" in finding.evidence_text


def test_every_fhir_kind_reads_as_a_sentence() -> None:
    assert FHIR_KINDS <= explained_kinds()
    odd = Finding(kind="fhir_date_mismatch", severity=Severity.LOW, message="odd", evidence={"x": [1]})
    assert explain(odd) == "Odd. Evidence: x: 1."  # unexpected evidence falls back to the plain sentence


def test_the_cli_imports_fhir_resources_only_to_read_a_bundle() -> None:
    """``medverify --help`` and ``claims audit --help`` leave fhir.resources (half a second of imports) unloaded."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    for argv in (["--help"], ["claims", "audit", "--help"]):
        probe = (f"import sys, contextlib, io\nfrom verifier.cli import main\n"
                 f"with contextlib.redirect_stdout(io.StringIO()):\n    main({argv!r})\n"
                 "print(sorted(m for m in sys.modules\n"
                 "             if m.startswith(('fhir', 'verifier.claims')) and m != 'verifier.claims'))")  # fmt: skip
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=repo, check=True)
        assert done.stdout.strip().splitlines()[-1] == "[]", (argv, done.stdout)


def _with_report(bundle: dict[str, Any], **fields: Any) -> dict[str, Any]:
    report = {"resourceType": "DiagnosticReport", "id": "rep-c1", "status": "final", "code": {"text": "CT chest"},
              "subject": {"reference": "Patient/pat-c1"}, "imagingStudy": [{"reference": "ImagingStudy/study-c1"}],
              **fields}  # fmt: skip
    bundle["entry"].append({"resource": report})
    return bundle


def test_a_diagnostic_report_is_read_and_cross_checked(tmp_path: Path) -> None:
    ds = _dataset()
    consistent = _with_report(_bundle(ds), effectiveDateTime="2024-03-02",
                              conclusionCode=[{"coding": [{"system": ICD10, "code": "J18.9"}]}])  # fmt: skip
    (claim,) = read_bundle(_bytes(consistent), "b.json")
    (report,) = claim.reports
    assert report.studies == ("ImagingStudy/study-c1",) and [c.code for c in report.conclusions] == ["J18.9"]
    assert fhir_findings(_report(tmp_path, consistent, ds)) == []

    contradicting = _with_report(_bundle(ds), effectiveDateTime="2024-06-01",
                                 conclusionCode=[{"coding": [{"system": ICD10, "code": "S82.0"}]}])  # fmt: skip
    findings = {f.kind: f for f in fhir_findings(_report(tmp_path, contradicting, ds))}
    assert set(findings) == {"fhir_date_mismatch", "fhir_diagnosis_implausible"}
    assert findings["fhir_date_mismatch"].evidence["fhir"] == ["DiagnosticReport/rep-c1.effectiveDateTime"]
    assert findings["fhir_diagnosis_implausible"].evidence["fhir"] == ["DiagnosticReport/rep-c1.conclusionCode[0]"]

    dangling = _with_report(_bundle(ds), imagingStudy=[{"reference": "ImagingStudy/elsewhere"}])
    with pytest.raises(InputError, match=r"rep-c1.imagingStudy\[0\] refers to 'ImagingStudy/elsewhere'"):
        read_bundle(_bytes(dangling), "b.json")
