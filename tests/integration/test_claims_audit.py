"""`medverify claims audit` on a claim set built from real sample images, and its evidence package.

The claim set: a clean claim; a scan reused for another patient (windowed differently, cropped, resized, JPEG
re-encoded, new UIDs); a generated image (the project's GAN, signed and declared) and a copy of it stripped of its
signature and relabelled as a patient scan (found by the watermark); a claim whose headers contradict it.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from testkit import jsonl, require_tool, run_cli

from detectors.data import sample_dicom_files
from verifier.claims.samples import relabelled_copy, reused_copy

CLAIM_DATE = "20240315"


def _sample(name: str) -> Path:
    found = {p.name: p for _pkg, p in sample_dicom_files()}
    if name not in found:
        pytest.skip(f"sample image {name} is not installed (pydicom-data)")
    return found[name]


def _patient(pid: str, name: str, sex: str, birth: str, body: str, date: str = CLAIM_DATE) -> dict[str, str]:
    return {
        "PatientID": pid,
        "PatientName": name,
        "PatientSex": sex,
        "PatientBirthDate": birth,
        "StudyDate": date,
        "BodyPartExamined": body,
    }


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(
            fh, ["claim_id", "file", "patient_id", "patient_sex", "patient_birth_date", "claim_date", "body_part"]
        )
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(claim: str, file: str, pid: str, sex: str, birth: str, body: str) -> dict[str, str]:
    return {"claim_id": claim, "file": file, "patient_id": pid, "patient_sex": sex, "patient_birth_date": birth,
            "claim_date": "2024-03-15", "body_part": body}  # fmt: skip


def _by_claim(out: str) -> dict[str, dict[str, object]]:
    return {line["claim_id"]: line for line in jsonl(out)}


def _kinds(claim: dict[str, object]) -> set[str]:
    return {f["kind"] for f in claim["findings"]}  # type: ignore[index,union-attr]


@pytest.fixture
def claim_set(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    warnings.simplefilter("ignore")
    root = tmp_path / "claims"
    p1 = _patient("P-1001", "DOE^JANE", "F", "19700101", "CHEST")
    relabelled_copy(_sample("RG1_UNCR.dcm"), root / "clean" / "chest.dcm", p1)
    relabelled_copy(_sample("693_UNCR.dcm"), root / "clean" / "ct.dcm", p1)
    p2 = _patient("P-2002", "ROE^RICHARD", "M", "19650505", "KNEE")
    relabelled_copy(_sample("MR2_UNCR.dcm"), root / "source" / "knee.dcm", p2)
    p3 = _patient("P-3003", "POE^EDGAR", "M", "19800808", "KNEE")
    reused_copy(_sample("MR2_UNCR.dcm"), root / "reuse" / "knee_export.dcm", p3, seed=7, crop=(0.7, 0.7))
    # A generated image, as the generator wrote it (signed, declared), and stripped and relabelled.
    code, _out, err = run_cli(capsys, "generate", "gan", "-n", "1", "--size", "128", "--modality", "CT", "--seed",
                              "5", "-o", tmp_path / "gen")  # fmt: skip
    assert code == 0, err
    generated = next((tmp_path / "gen").glob("*.dcm"))
    (root / "synthetic").mkdir(parents=True)
    shutil.copy(generated, root / "synthetic" / "generated.dcm")
    p4 = _patient("P-4004", "DOE^JOHN", "M", "19750303", "CHEST")
    relabelled_copy(generated, root / "stripped" / "scan.dcm",
                    p4 | {"ImageType": ["ORIGINAL", "PRIMARY"], "SyntheticData": None})  # fmt: skip
    # Headers that contradict the claim: another patient, acquired after the claim date, another body part.
    p5 = _patient("P-9999", "SMITH^ANNA", "F", "19900101", "HEAD", date="20240402")
    relabelled_copy(_sample("CT_small.dcm"), root / "headers" / "head.dcm", p5)
    manifest = _manifest(
        tmp_path / "claims.csv",
        [
            _row("clean", "clean/chest.dcm", "P-1001", "F", "1970-01-01", "chest"),
            _row("clean", "clean/ct.dcm", "P-1001", "F", "1970-01-01", "chest"),
            _row("source", "source/knee.dcm", "P-2002", "M", "1965-05-05", "knee"),
            _row("reuse", "reuse/knee_export.dcm", "P-3003", "M", "1980-08-08", "knee"),
            _row("synthetic", "synthetic/generated.dcm", "P-4004", "M", "1975-03-03", "chest"),
            _row("stripped", "stripped/scan.dcm", "P-4004", "M", "1975-03-03", "chest"),
            _row("headers", "headers/head.dcm", "P-5005", "F", "1990-01-01", "chest"),
        ],
    )
    return root, manifest


def test_claim_audit_findings_report_and_package(
    claim_set: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, manifest = claim_set
    report, package = tmp_path / "report.html", tmp_path / "evidence.zip"
    code, out, err = run_cli(capsys, "claims", "audit", root, "--manifest", manifest, "--report", report,
                             "--package", package, "--format", "jsonl")  # fmt: skip
    assert code == 1, err
    claims = _by_claim(out)
    assert set(claims) == {"clean", "source", "reuse", "synthetic", "stripped", "headers"}

    # The clean claim has no findings at all.
    assert claims["clean"]["findings"] == [] and claims["clean"]["severity"] == "none"

    # The reused scan is found in both claims, each naming the other, with the patients different.
    for mine, other in (("source", "reuse"), ("reuse", "source")):
        reuse = [f for f in claims[mine]["findings"] if f["kind"] == "reused_image"]  # type: ignore[union-attr,index]
        assert len(reuse) == 1 and reuse[0]["other_claim"] == other
        assert reuse[0]["evidence"]["match"] == "near-duplicate" and reuse[0]["evidence"]["different_patient"]
        assert reuse[0]["evidence"]["correlation"] >= 0.85
        assert claims[mine]["severity"] == "high"

    # The generated image is declared synthetic by its signature; the copy stripped of its signature and
    # relabelled as a patient's scan is found by its watermark (every check runs by default), and as the same
    # image (its pixels are identical).
    assert "declared_synthetic" in _kinds(claims["synthetic"])
    stripped = claims["stripped"]
    assert stripped["files"][0]["status"] == "UNSIGNED"  # type: ignore[index]
    assert {"declared_synthetic", "reused_image"} <= _kinds(stripped)
    assert "reused_image" in _kinds(claims["synthetic"])

    # Headers against the claim.
    assert {"date_after_claim", "body_part_mismatch", "patient_mismatch"} <= _kinds(claims["headers"])
    assert "reused_image" not in _kinds(claims["headers"])

    # Every image left an audit record, every claim a summary record.
    code, out, _err = run_cli(capsys, "audit", "list", "--format", "jsonl")
    records = jsonl(out)
    assert sum(1 for r in records if r["event"] == "claim") == 7
    assert sum(1 for r in records if r["event"] == "claim.summary") == 6

    # The report names the claims and embeds its images.
    html = report.read_text()
    assert "reused image" in html and "declared synthetic" in html.lower()
    assert 'src="http' not in html and "<script" not in html

    # The package verifies; a changed finding, a removed entry and an untrusted signer do not.
    code, out, err = run_cli(capsys, "claims", "verify-package", package)
    assert code == 0 and out.startswith("VALID"), out + err
    with zipfile.ZipFile(package) as zf:
        names = zf.namelist()
        entries = {n: zf.read(n) for n in names}
    manifest_json = json.loads(entries["MANIFEST.json"])
    assert {f["path"] for f in manifest_json["audited_files"]} >= {str(root / "clean" / "chest.dcm")}
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) for f in manifest_json["audited_files"])

    findings = json.loads(entries["findings.json"])
    findings["claims"][0]["findings"] = []
    _rezip(tmp_path / "edited.zip", entries | {"findings.json": json.dumps(findings).encode()})
    code, out, _err = run_cli(capsys, "claims", "verify-package", tmp_path / "edited.zip")
    assert code == 1 and "INVALID" in out and "findings.json was changed" in out

    _rezip(tmp_path / "removed.zip", {k: v for k, v in entries.items() if k != "report.html"})
    code, out, _err = run_cli(capsys, "claims", "verify-package", tmp_path / "removed.zip")
    assert code == 1 and "report.html is listed but missing" in out

    generated_cert = _generator_certificate(next((tmp_path / "gen").glob("*.dcm")))
    code, out, _err = run_cli(capsys, "claims", "verify-package", package, "--trust-cert", generated_cert)
    assert code == 1 and "UNTRUSTED" in out

    # Without the watermark check the stripped copy passes on its own, and is still caught as the copy of an
    # image that is declared synthetic.
    code, out, err = run_cli(capsys, "claims", "audit", root, "--manifest", manifest, "--checks", "signature",
                             "--format", "jsonl")  # fmt: skip
    assert code == 1, err
    assert {"synthetic_copy", "reused_image"} <= _kinds(_by_claim(out)["stripped"])


def _generator_certificate(dicom: Path) -> Path:
    """The signer certificate embedded in a signed file (a real certificate that is not the audit key's)."""
    import pydicom
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ds = pydicom.dcmread(dicom)
    der = bytes(ds.DigitalSignaturesSequence[0].CertificateOfSigner)
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    out = dicom.with_suffix(".pem")
    out.write_bytes(pem)
    return out


def _rezip(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def test_reuse_found_against_earlier_audits(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image audited months ago in one claim is found when a re-encoded, cropped copy comes with another."""
    warnings.simplefilter("ignore")
    first, second = tmp_path / "january", tmp_path / "march"
    relabelled_copy(
        _sample("RG1_UNCR.dcm"), first / "C-100" / "chest.dcm", _patient("A1", "A^B", "F", "19600101", "CHEST")
    )
    relabelled_copy(
        _sample("MR2_UNCR.dcm"), first / "C-101" / "knee.dcm", _patient("A2", "C^D", "M", "19610101", "KNEE")
    )
    code, _out, err = run_cli(capsys, "claims", "audit", first, "--format", "jsonl")
    assert code == 0, err

    reused_copy(_sample("RG1_UNCR.dcm"), second / "C-200" / "xray.dcm", _patient("B1", "E^F", "F", "19700101", "CHEST"),
                seed=3, crop=(0.65, 0.65))  # fmt: skip
    relabelled_copy(
        _sample("CT_small.dcm"), second / "C-201" / "ct.dcm", _patient("B2", "G^H", "M", "19710101", "CHEST")
    )
    code, out, err = run_cli(capsys, "claims", "audit", second, "--format", "jsonl")
    assert code == 1, err
    claims = _by_claim(out)
    assert claims["C-201"]["findings"] == []
    reuse = claims["C-200"]["findings"]
    assert [f["kind"] for f in reuse] == ["reused_image"]  # type: ignore[index,union-attr]
    assert reuse[0]["other_claim"] == "C-100" and reuse[0]["evidence"]["different_patient"]  # type: ignore[index]
    assert "compared with 2 image(s) of earlier audits" in err

    # Auditing the same claims again reports nothing new about them (a re-audit is not reuse).
    code, out, _err = run_cli(capsys, "claims", "audit", first, "--format", "jsonl")
    again = _by_claim(out)
    assert again["C-101"]["findings"] == []
    assert [f["other_claim"] for f in again["C-100"]["findings"]] == ["C-200"]  # type: ignore[index,union-attr]


def test_report_renders_in_headless_chromium(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report renders in Chromium without console errors; a screenshot is taken and is not blank."""
    chromium = require_tool("chromium")
    warnings.simplefilter("ignore")
    root = tmp_path / "claims"
    relabelled_copy(_sample("MR2_UNCR.dcm"), root / "K-1" / "knee.dcm", _patient("K1", "A^A", "M", "19600101", "KNEE"))
    reused_copy(
        _sample("MR2_UNCR.dcm"), root / "K-2" / "knee.dcm", _patient("K2", "B^B", "F", "19610101", "KNEE"), seed=1
    )
    relabelled_copy(_sample("CT_small.dcm"), root / "K-3" / "ct.dcm", _patient("K3", "C^C", "F", "19620101", "HEAD"))
    report = tmp_path / "report.html"
    code, _out, err = run_cli(capsys, "claims", "audit", root, "--report", report)
    assert code == 1, err
    html = report.read_text()
    sources = re.findall(r'src="([^"]+)"', html)
    assert len(sources) >= 5  # three thumbnails and a side-by-side pair
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        decoded = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and decoded.size > 0

    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--window-size=1280,2000", f"--screenshot={shot}", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Refused to" in line]
    assert console == [], console
    image = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape[1] == 1280
    assert float(image.std()) > 10  # rendered content, not a blank page


def test_sample_claims_and_bad_input(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`claims sample` writes a set whose findings are known, exports included; missing and junk files and an
    empty claim are findings too, never a crash."""
    root = tmp_path / "claims"
    code, out, err = run_cli(capsys, "claims", "sample", root)
    assert code == 0 and "wrote 8 claims" in out, err
    manifest = root / "claims.csv"
    (root / "CLM-1001" / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    with open(manifest, "a") as fh:
        fh.write("CLM-1099,CLM-1099/missing.dcm,P-9099,F,2024-03-01,chest\n")
        fh.write("CLM-1001,CLM-1001/junk.dcm,P-1001,F,2024-03-15,chest\n")
    code, out, err = run_cli(capsys, "claims", "audit", root, "--manifest", manifest, "--format", "jsonl")
    assert code == 1, err
    claims = _by_claim(out)
    assert _kinds(claims["CLM-1001"]) == {"unreadable", "reused_image"}
    assert [f["kind"] for f in claims["CLM-1099"]["findings"]] == ["unreadable"]  # type: ignore[index,union-attr]
    assert _kinds(claims["CLM-1002"]) == _kinds(claims["CLM-1003"]) == {"reused_image"}
    assert {"date_after_claim", "body_part_mismatch", "patient_mismatch"} == _kinds(claims["CLM-1004"])
    _check_sample_exports(claims, root, capsys)

    (tmp_path / "folders" / "EMPTY").mkdir(parents=True)
    code, out, err = run_cli(capsys, "claims", "audit", tmp_path / "folders", "--format", "jsonl")
    assert code == 1, err
    assert _kinds(_by_claim(out)["EMPTY"]) == {"no_images"}
    code, _out, err = run_cli(capsys, "claims", "audit", tmp_path / "nowhere")
    assert code == 2 and "is not a directory" in err


def _findings(claim: dict[str, object], kind: str) -> list[dict[str, object]]:
    return [f for f in claim["findings"] if f["kind"] == kind]  # type: ignore[index,union-attr]


def _check_sample_exports(claims: dict[str, dict[str, object]], root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The sample's exports: what issue 26 found refused or missed is checked, and found."""
    # A half-size JPEG of CLM-1001's chest X-ray, filed for another patient: found as reuse, and the JPEG is no
    # finding by itself (it used to be UNREADABLE, "not a DICOM Part 10 file").
    [reuse] = _findings(claims["CLM-1005"], "reused_image")
    assert reuse["other_claim"] == "CLM-1001" and reuse["evidence"]["different_patient"]  # type: ignore[index]
    assert _kinds(claims["CLM-1005"]) == {"reused_image"}
    [jpeg] = claims["CLM-1005"]["files"]  # type: ignore[misc]
    assert jpeg["error"] is None and jpeg["export"]["format"] == "jpeg"
    assert "signature" in jpeg["not_applicable"] and jpeg["verdict"] not in ("UNREADABLE", "MALFORMED")
    # The PDF: one result per embedded image; its second page is CLM-1002's knee, and the finding names the page.
    pdf_files = claims["CLM-1006"]["files"]
    assert [f["export"]["page"] for f in pdf_files] == [1, 2]  # type: ignore[index,union-attr]
    pages = {f["other_claim"]: f["files"] for f in _findings(claims["CLM-1006"], "reused_image")}
    assert pages.keys() == {"CLM-1002", "CLM-1003"}
    assert all(files == [str(root / "CLM-1006" / "discharge.pdf") + "#page=2&image=1"] for files in pages.values())
    # C2PA Content Credentials declaring a generative model, with the claim generator named.
    [declared] = _findings(claims["CLM-1007"], "declared_synthetic")
    assert any("claim generator 'medverify-sample-generator 1.0'" in r for r in declared["evidence"]["reasons"])  # type: ignore[index,union-attr]
    # A PNG export of a generated CT: `watermark detect` finds the mark, and so does the claim audit.
    png = root / "CLM-1008" / "ct_export.png"
    code, out, _err = run_cli(capsys, "watermark", "detect", png)
    assert code == 1 and "PRESENT" in out
    [caught] = _findings(claims["CLM-1008"], "declared_synthetic")
    assert any(r.startswith("watermark: provenance recovered") for r in caught["evidence"]["reasons"])  # type: ignore[index,union-attr]

    # verify takes the same files, and each image of the PDF leaves its own audit record naming its page.
    code, out, err = run_cli(capsys, "verify", root / "CLM-1006" / "discharge.pdf", png, "--format", "jsonl")
    assert code == 1, err
    lines = jsonl(out)
    assert [line["label"].rsplit("/", 1)[-1] for line in lines] == [
        "discharge.pdf#page=1&image=1", "discharge.pdf#page=2&image=1", "ct_export.png"]
    code, out, _err = run_cli(capsys, "audit", "list", "--format", "jsonl", "--channel", "cli", "--limit", "0")
    recorded = [r for r in jsonl(out) if r["id"] in {x["audit_id"] for x in lines}]
    pdf_records = sorted((r["details"]["export"]["page"], r["path"]) for r in recorded
                         if r["details"]["export"]["container"] == "pdf")  # fmt: skip
    assert [(page, path.rsplit("/", 1)[-1]) for page, path in pdf_records] == [
        (1, "discharge.pdf#page=1&image=1"), (2, "discharge.pdf#page=2&image=1")]


def test_detector_scores_and_heatmaps_reach_the_report(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --checks detector, each file carries the detector's scores and the report embeds its heatmap."""
    import torch

    from detectors.data import build_sample_corpus

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    corpus, bundle = tmp_path / "corpus", tmp_path / "bundle"
    build_sample_corpus(corpus)
    code, _out, err = run_cli(capsys, "train", "detector", "--corpus", corpus, "--generators", "vae,tamper",
                              "--preset", "tiny", "--steps", "3", "--batch-size", "8", "--view-size", "48",
                              "--threads", "1", "--out", bundle)  # fmt: skip
    assert code == 0, err
    root = tmp_path / "claims"
    relabelled_copy(_sample("CT_small.dcm"), root / "D-1" / "ct.dcm", _patient("D1", "A^A", "F", "19600101", "HEAD"))
    relabelled_copy(_sample("MR2_UNCR.dcm"), root / "D-2" / "mr.dcm", _patient("D2", "B^B", "M", "19610101", "KNEE"))
    report = tmp_path / "report.html"
    code, out, err = run_cli(capsys, "claims", "audit", root, "--checks", "signature,detector", "--model", bundle,
                             "--report", report, "--format", "jsonl")  # fmt: skip
    assert code in (0, 1), err
    files = [f for claim in jsonl(out) for f in claim["files"]]
    assert len(files) == 2
    for f in files:
        assert 0.0 <= f["synthetic_score"] <= 1.0 and f["detector"]["model_tag"].startswith("ensemble-")
    html = report.read_text()
    assert html.count('alt="heatmap of') == 2 and "synthetic score" in html
    # The heatmaps went to a temporary folder, embedded in the report and removed afterwards.
    assert all(f["detector"]["heatmap"] and not Path(f["detector"]["heatmap"]).exists() for f in files)
