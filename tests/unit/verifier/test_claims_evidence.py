"""verifier.claims.evidence: every finding kind the audit makes has its own plain-language sentence, built from
its real evidence, and no output carries a Python representation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from provenance.trust import TrustPolicy
from verifier.checker import Checker
from verifier.claims.audit import _verdict_evidence
from verifier.claims.evidence import explain, explained_kinds, words
from verifier.claims.fhir.rules import FHIR_KINDS
from verifier.claims.headers import HeaderFacts
from verifier.claims.models import AuditedFile, ClaimInfo, ClaimReport, Finding, Severity
from verifier.claims.rules import header_findings
from verifier.report.legend import ACTION_MEANINGS, SEVERITY_MEANINGS, VERDICT_MEANINGS

#: What a Python representation leaks into text: dict and list literals, True/False/None after "=" or ":".
REPR = re.compile(r"\{'|\['|'\]|'\}|=(True|False|None)\b|: (True|False|None)\b|\bdict\(|<[a-zA-Z_.]+ object at")

#: Every kind verifier.claims makes (rules, reuse, verdicts); a new kind must be added here and get a sentence.
KINDS = {
    "stripped_header", "patient_inconsistent", "patient_mismatch", "sex_inconsistent", "sex_mismatch",
    "age_inconsistent", "age_mismatch", "body_part_mismatch", "body_part_description", "date_after_claim",
    "date_mismatch", "equipment_inconsistent", "reused_image", "duplicate_in_claim", "synthetic_copy", "uid_reused",
    "tampered", "suspected_synthetic", "declared_synthetic", "signature_problem", "unreadable",
    "undecodable_pixels", "no_images",
} | FHIR_KINDS  # fmt: skip


def test_every_kind_has_its_own_sentence() -> None:
    assert explained_kinds() >= KINDS


def _image(tmp_path: Path, name: str, **values: str) -> AuditedFile:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = "P1", "DOE^JOHN", "M", "19700101"
    ds.BodyPartExamined, ds.StudyInstanceUID, ds.Manufacturer = "CHEST", "1.2.3.4", "GE"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240301"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path)
    result = Checker(trust=TrustPolicy.unsafe_trust_everything()).check(path)
    return AuditedFile(claim_id="c1", path=str(path), result=result, facts=HeaderFacts.from_dataset(ds))


def test_header_findings_read_as_sentences(tmp_path: Path) -> None:
    """Every header rule fires on one claim; each sentence names the file and the values, and nothing else."""
    good = _image(tmp_path, "good.dcm")
    odd = _image(tmp_path, "odd.dcm", PatientID="P2", PatientName="ROE^JANE", PatientSex="F",
                 PatientBirthDate="19900101", BodyPartExamined="KNEE", StudyDescription="SHOULDER",
                 StudyDate="20240320", Manufacturer="SIEMENS")  # fmt: skip
    old = _image(tmp_path, "old.dcm", StudyDate="20230101")
    info = ClaimInfo(claim_id="c1", files=(), patient_id="P1", patient_sex="M", patient_birth_date=dt.date(1970, 1, 1),
                     claim_date=dt.date(2024, 3, 10), body_part="chest")  # fmt: skip
    findings = header_findings(ClaimReport(info=info, files=[good, odd, old]))
    by_kind = {f.kind: explain(f) for f in findings}
    assert set(by_kind) >= {"patient_mismatch", "sex_mismatch", "age_mismatch", "body_part_mismatch",
                            "body_part_description", "date_after_claim", "date_mismatch"}  # fmt: skip
    for kind, text in by_kind.items():
        assert not REPR.search(text), (kind, text)
        assert text.rstrip().endswith("."), text
    assert by_kind["patient_mismatch"] == "The claim is for patient P1, but the header of odd.dcm names patient P2."
    assert "odd.dcm says F" in by_kind["sex_mismatch"]
    assert (
        "odd.dcm says body part KNEE, but its study description \u201cSHOULDER\u201d names the shoulder"
        in (by_kind["body_part_description"])
    )
    assert "odd.dcm has study date 2024-03-20" in by_kind["date_after_claim"]
    assert "old.dcm is from a study on 2023-01-01" in by_kind["date_mismatch"]
    assert "1990-01-0" in by_kind["age_mismatch"] or "1989-12-3" in by_kind["age_mismatch"]
    # The JSON form keeps the structured evidence beside the sentence.
    as_json = findings[0].to_dict()
    assert as_json["evidence_text"] == explain(findings[0]) and isinstance(as_json["evidence"], dict)


def test_reuse_sentences_say_who_and_how() -> None:
    near = Finding(kind="reused_image", severity=Severity.HIGH, message="m", files=("/c/CLM-2/knee.dcm",),
                   other_claim="CLM-1", evidence={"match": "near-duplicate", "hamming": 3, "hash": "phash",
                   "correlation": 0.912, "scale": 0.7, "other_scale": 1.0, "different_patient": True,
                   "other_path": "/c/CLM-1/k.dcm", "other_record_id": 17,
                   "other_audited_at": "2024-01-05T10:00:00+00:00"})  # fmt: skip
    text = explain(near)
    assert text.startswith("knee.dcm was also submitted with claim CLM-1 as k.dcm, for a different patient.")
    assert "differ in 3 of 64 bits" in text and "0.91" in text and "70%" in text
    assert "audited on 2024-01-05 (audit record 17)" in text
    same = Finding(kind="reused_image", severity=Severity.HIGH, message="m", files=("a.dcm",), other_claim="X",
                   evidence={"match": "identical file", "different_patient": False, "other_path": "b.dcm"})  # fmt: skip
    assert explain(same) == ("a.dcm was also submitted with claim X as b.dcm, for the same patient. "
                             "The two files are identical, byte for byte.")  # fmt: skip
    # Against an earlier audit's export (no patient in the index): unknown, never "for the same patient".
    unknown = dataclasses.replace(same, evidence={**same.evidence, "different_patient": None})
    assert explain(unknown).startswith("a.dcm was also submitted with claim X as b.dcm. The two files")


def test_a_kind_without_a_writer_still_reads_plainly() -> None:
    """A new kind (another helper's) before it has its writer: its message and evidence, never a repr."""
    f = Finding(kind="c2pa_something", severity=Severity.LOW, message="a manifest was found", files=("x.png",),
                evidence={"claim_generator": "Gen 1.0", "actions": ["c2pa.created", "c2pa.edited"], "valid": True,
                          "detail": {"PatientID": "P1"}, "empty": None})  # fmt: skip
    text = explain(f)
    assert text == ("A manifest was found. Evidence: claim generator: Gen 1.0; actions: c2pa.created and c2pa.edited; "
                    "valid: yes; detail: patient ID: P1.")  # fmt: skip
    assert words([1.23456, None]) == "1.23 and none"


def test_watermark_caught_fake_is_not_called_declared(tmp_path: Path) -> None:
    """A synthetic verdict reached by the watermark alone says so; one the file declares says that."""
    from verifier.policy import Action, Reason, Verdict, VerdictStatus

    image = _image(tmp_path, "scan.dcm")

    def finding(*reasons: Reason) -> str:
        verdict = Verdict(status=VerdictStatus.DECLARED_SYNTHETIC, action=Action.QUARANTINE, reasons=reasons,
                          policy_version="t")  # fmt: skip
        image.result = dataclasses.replace(image.result, verdict=verdict)
        return explain(Finding(kind="declared_synthetic", severity=Severity.HIGH, message="m", files=(image.path,),
                               evidence=_verdict_evidence(image)))  # fmt: skip

    by_mark = finding(Reason("watermark", "provenance recovered from watermark: the pixels carry the mark"),
                      Reason("detector", "not run: no model"))  # fmt: skip
    assert by_mark.startswith("scan.dcm was caught by its watermark") and "declares" not in by_mark
    declared = finding(Reason("declaration", "Synthetic Data (0008,001C) is YES"))
    assert "caught by its watermark" not in declared and "synthetic declaration" in declared
    assert "QUARANTINE" in declared


def test_the_legend_covers_every_verdict_action_and_severity() -> None:
    from verifier.policy import Action, VerdictStatus

    assert set(VERDICT_MEANINGS) == set(VerdictStatus)
    assert set(ACTION_MEANINGS) == set(Action)
    assert set(SEVERITY_MEANINGS) == set(Severity)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_sentence_never_fails_on_odd_evidence(kind: str) -> None:
    """Evidence of an unexpected shape (an older record) falls back to the plain sentence, not a crash."""
    text = explain(Finding(kind=kind, severity=Severity.LOW, message="something odd", evidence={"x": [1]}))
    assert text and not REPR.search(text)


def test_exports_findings_read_as_sentences(tmp_path: Path) -> None:
    """What exports add reads as words: a C2PA-declared JPEG names its claim generator, a C2PA manifest whose hard
    binding fails is tampered by its Content Credentials, a watermarked PNG export is caught by its watermark
    (never "declared by its provenance"), an image of a PDF is named by its page, and the DICOM signature is "not
    applicable" to exports in the checks that ran, neither examined nor "not run"."""
    import cv2
    import numpy as np

    from detectors.data import sample_dicom_files
    from provenance.watermark import WatermarkKey, embed
    from verifier.checker import parse_checks
    from verifier.claims.audit import ClaimsAuditor
    from verifier.claims.models import ClaimAudit, ClaimInfo
    from verifier.claims.samples import c2pa_test_certificate, export_copy, pdf_with_images, with_content_credentials

    found = {p.name: p for _pkg, p in sample_dicom_files()}
    if "US1_UNCR.dcm" not in found or "693_UNCR.dcm" not in found:
        pytest.skip("sample images are not installed (pydicom-data)")
    key = WatermarkKey.generate("wm-evidence")
    checker = Checker(checks=parse_checks("signature,watermark"), trust=TrustPolicy.unsafe_trust_everything(),
                      watermark_keys=(key,))  # fmt: skip
    chain, pem = c2pa_test_certificate("Imaginary Image AI")
    plain = export_copy(found["US1_UNCR.dcm"], tmp_path / "plain.jpg")
    signed = with_content_credentials(plain, tmp_path / "render.jpg", chain_pem=chain, key_pem=pem,
                                      generator=("ImageAI", "4.2"))  # fmt: skip
    image = cv2.imdecode(np.frombuffer(plain.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    image[10:30, 10:30] = 255
    ok, other = cv2.imencode(".jpg", image)
    assert ok
    data = signed.read_bytes()
    changed = tmp_path / "changed.jpg"
    changed.write_bytes(data[: data.index(b"\xff\xda")] + other.tobytes()[other.tobytes().index(b"\xff\xda") :])
    from detectors.data import read_image

    frame = read_image(found["693_UNCR.dcm"]).frames[0]
    lo, hi = np.percentile(frame, [1, 99])
    marked = embed((np.clip((frame - lo) / (hi - lo), 0, 1) * 4095).astype(np.uint16), key, 77, bits_stored=12)
    png = tmp_path / "ct_export.png"
    assert cv2.imwrite(str(png), (marked.astype(np.float32) / 4095 * 255).round().astype(np.uint8))
    pdf = pdf_with_images(tmp_path / "report.pdf", [image, image])

    files = [AuditedFile(claim_id="c1", path=e.result.label, result=e.result)
             for path in (signed, changed, png, pdf) for e in checker.examine_file(path)]  # fmt: skip
    report = ClaimReport(info=ClaimInfo(claim_id="c1", files=()), files=files)
    findings = {Path(f.files[0]).name: f for f in ClaimsAuditor._verdict_findings(report)}
    c2pa = findings["render.jpg"]
    assert c2pa.kind == "declared_synthetic"
    assert "declared synthetic by its Content Credentials, made by ImageAI 4.2" in c2pa.message
    assert explain(c2pa).startswith("render.jpg (a JPEG export) is declared synthetic by its C2PA Content "
                                    "Credentials, made by ImageAI 4.2")  # fmt: skip
    assert "signed by Imaginary Image AI" in explain(c2pa)
    tampered = findings["changed.jpg"]
    assert tampered.kind == "tampered" and "Content Credentials" in tampered.message
    assert "changed after its C2PA Content Credentials were signed" in explain(tampered)
    mark = findings["ct_export.png"]
    assert "caught by its watermark (a PNG export" in mark.message
    assert explain(mark).startswith("ct_export.png (a PNG export) was caught by its watermark")
    for f in (c2pa, tampered, mark):
        text = f.message + explain(f)
        assert "provenance)" not in text and "declared by its own" not in text and not REPR.search(text)
        assert "signature" not in f.evidence["caught_by"]
    # An image of a PDF is named by its page in words.
    reuse = Finding(kind="reused_image", severity=Severity.HIGH, message="m", files=(f"{pdf}#page=2&image=1",),
                    other_claim="X", evidence={"match": "identical pixels", "other_path": "/c/k.dcm"})  # fmt: skip
    assert explain(reuse).startswith("image 1 on page 2 of report.pdf was also submitted with claim X as k.dcm")

    # The checks that ran: the signature is not applicable to the 5 export images, and there is no other image.
    audit = ClaimAudit(claims=[report], pairs=[], started_at=dt.datetime.now(dt.UTC), seconds=1.0, indexed_before=0,
                       policy_version="t", checks=("signature", "watermark"))  # fmt: skip
    signature, watermark, detector = audit.coverage()
    assert signature.not_applicable == 5 and signature.examined == 0 and not signature.applies
    assert signature.complete and signature.sentence().startswith("signature: not applicable to any of the 5 images")
    assert watermark.sentence() == "watermark: examined all 5 images" and detector.sentence().endswith("not asked for")
    dicom = _image(tmp_path, "ct.dcm")
    audit.claims.append(ClaimReport(info=ClaimInfo(claim_id="c2", files=()), files=[dicom]))
    signature = audit.coverage()[0]
    assert signature.sentence().startswith("signature: examined the DICOM image; not applicable to 5 export image(s)")
    assert signature.complete and signature.applies
