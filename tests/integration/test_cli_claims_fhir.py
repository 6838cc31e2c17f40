"""`medverify claims audit --fhir` through the CLI on the FHIR sample (`claims sample --fhir`): each contradiction
found and named, the findings written back as FHIR that the R4 models accept, and bad bundles refused with exit 2
before anything is checked, recorded or written."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from testkit import jsonl, run_cli

#: What each sample claim must be found to have (and nothing else), with --checks signature.
EXPECTED = {
    "CLM-2001": set(),
    "CLM-2002": {"reused_image"},
    "CLM-2003": {"reused_image"},
    "CLM-2004": {"fhir_date_mismatch"},
    "CLM-2005": {"fhir_body_site_mismatch"},
    "CLM-2006": {"fhir_diagnosis_implausible"},
}


@pytest.fixture
def fhir_sample(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    warnings.simplefilter("ignore")
    root = tmp_path / "claims"
    code, out, err = run_cli(capsys, "claims", "sample", "--fhir", root)
    assert code == 0, err
    assert "wrote 6 claims" in out and len(list((root / "fhir").glob("*.json"))) == 6
    return root


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _extension(resource: dict[str, Any], url: str) -> Any:
    (found,) = [e for e in resource["extension"] if e["url"] == url]
    return next(v for k, v in found.items() if k.startswith("value"))


def test_the_fhir_sample_audited(fhir_sample: Path, keyed_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fhir_sample
    code, out, err = run_cli(capsys, "claims", "audit", root, "--fhir", root / "fhir", "--checks", "signature",
                             "--format", "jsonl")  # fmt: skip
    assert code == 1, err
    claims = {c["claim_id"]: c for c in jsonl(out)}
    assert {k: {f["kind"] for f in c["findings"]} for k, c in claims.items()} == EXPECTED
    reuse = claims["CLM-2003"]["findings"][0]
    assert reuse["other_claim"] == "CLM-2002" and reuse["evidence"]["different_patient"]
    (dates,) = claims["CLM-2004"]["findings"]
    assert dates["evidence"]["fhir"] == ["Claim/CLM-2004.item[0].servicedDate",
                                         "Procedure/proc-clm-2004.performedDateTime",
                                         "ImagingStudy/study-clm-2004.started"]  # fmt: skip
    assert "2024-04-02" in dates["evidence_text"] and "2024-05-20" in dates["evidence_text"]
    (site,) = claims["CLM-2005"]["findings"]
    assert "ImagingStudy/study-clm-2005.series[0].bodySite" in site["message"] and "HEAD" in site["message"]
    (dx,) = claims["CLM-2006"]["findings"]
    assert dx["evidence"]["icd10"] == "S62.101A" and "CT CHEST" in dx["evidence_text"]
    assert claims["CLM-2001"]["claim"]["fhir"]["claim"] == "Claim/CLM-2001"

    # The text output says the FHIR cross-checks ran; the HTML report shows each claim's FHIR side in words.
    report = root.parent / "report.html"
    code, out, _err = run_cli(capsys, "claims", "audit", root, "--fhir", root / "fhir", "--checks", "signature",
                              "--report", report)  # fmt: skip
    assert code == 1 and "FHIR cross-checks: all" in out and "fhir_diagnosis_implausible" in out
    html = report.read_text()
    assert "Claim/CLM-2006 (CLM-2006.json); patient King, Laura, female, born 1985-03-03" in html
    assert "claims ICD-10 S62.101A (fracture at wrist and hand level)" in html and "{&#39;" not in html

    # Written back as FHIR: a DetectedIssue a finding, a Provenance an image with its verdict and audit record.
    code, out, err = run_cli(capsys, "claims", "audit", root, "--fhir", root / "fhir", "--checks", "signature",
                             "--format", "fhir")  # fmt: skip
    assert code == 1, err
    from fhir.resources.R4B.bundle import Bundle

    bundle = json.loads(out)
    Bundle.model_validate(bundle)  # what was written is valid R4 as it stands
    issues, provenances = _resources(bundle, "DetectedIssue"), _resources(bundle, "Provenance")
    assert len(provenances) == 6
    # One issue a finding: the three FHIR findings of the first run among them.
    assert sum(1 for i in issues if i["code"]["coding"][0]["code"].startswith("fhir_")) == 3
    dx_issue = next(i for i in issues if i["code"]["coding"][0]["code"] == "fhir_diagnosis_implausible")
    assert {r["reference"] for r in dx_issue["implicated"]} == {"Claim/CLM-2006", "ImagingStudy/study-clm-2006"}
    assert dx_issue["patient"] == {"reference": "Patient/pat-clm-2006"} and dx_issue["severity"] == "moderate"
    assert dx_issue["evidence"][0]["detail"][0]["display"] == "Claim/CLM-2006.diagnosis[0].diagnosisCodeableConcept"
    prov = next(p for p in provenances if p["target"][0]["display"].endswith("CLM-2006/ct.dcm"))
    record_id = _extension(prov, "urn:medverify:extension:audit-record-id")
    assert _extension(prov, "urn:medverify:extension:verdict") == "NO_EVIDENCE"
    assert prov["policy"] == [f"urn:medverify:audit-record:{record_id}"]
    assert prov["entity"][0]["what"] == {"reference": "ImagingStudy/study-clm-2006"}
    code, out, _err = run_cli(capsys, "audit", "show", str(record_id))
    record = json.loads(out)
    assert code == 0 and record["details"]["claim"]["id"] == "CLM-2006"
    assert record["file_sha256"] == _extension(prov, "urn:medverify:extension:sha256")


def _break(bundle: Path, change: Any) -> None:
    data = json.loads(bundle.read_text())
    change(data)
    bundle.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda b: b["entry"][1]["resource"].update(gender=7), "is not valid FHIR R4"),
        (lambda b: b["entry"][0]["resource"].update(patient={"reference": "Patient/x"}), "which is not in the bundle"),
    ],
    ids=["invalid", "unresolved"],
)
def test_a_bad_bundle_stops_the_audit_before_anything_is_written(
    fhir_sample: Path, keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, says: str
) -> None:
    root = fhir_sample
    _break(root / "fhir" / "CLM-2005.json", change)
    report = tmp_path / "report.html"
    code, out, err = run_cli(capsys, "claims", "audit", root, "--fhir", root / "fhir", "--report", report,
                             "--format", "fhir")  # fmt: skip
    assert code == 2 and says in err and "CLM-2005.json" in err
    assert out == "" and not report.exists() and not (keyed_home / "audit.db").exists()


def test_fhir_options_are_checked(fhir_sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fhir_sample
    code, _out, err = run_cli(capsys, "claims", "audit", root, "--format", "fhir")
    assert code == 2 and "give --fhir too" in err
    code, _out, err = run_cli(capsys, "claims", "audit", root, "--fhir", root / "fhir", "--manifest", root / "x.csv")
    assert code == 2 and "either --fhir or --manifest" in err
