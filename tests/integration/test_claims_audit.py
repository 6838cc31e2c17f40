"""`medverify claims audit` on a claim set built from real sample images, and its evidence package.

The claim set: a clean claim; a scan reused for another patient (windowed differently, cropped, resized, JPEG
re-encoded, new UIDs); a generated image (the project's GAN, signed and declared) and a copy of it stripped of its
signature and relabelled as a patient scan (found by the watermark); a claim whose headers contradict it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from testkit import CHROMIUM, jsonl, run_cli, sync_playwright_or_skip

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
                             "--package", package, "--include-images", "--format", "jsonl")  # fmt: skip
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
    # Each says how it was found: the generated file declares itself, the stripped copy was caught by its mark.
    (honest,) = [f for f in claims["synthetic"]["findings"] if f["kind"] == "declared_synthetic"]  # type: ignore[union-attr,index]
    (caught,) = [f for f in stripped["findings"] if f["kind"] == "declared_synthetic"]  # type: ignore[union-attr,index]
    assert "caught by its watermark" in caught["message"] and "declared" not in caught["message"]
    assert caught["evidence_text"].startswith("scan.dcm was caught by its watermark")
    assert "declared by its own synthetic declaration" in honest["message"]
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
    # Every image is in it (--include-images), byte for byte, with a thumbnail that decodes.
    for f in manifest_json["audited_files"]:
        assert entries[f["image"]] == Path(f["path"]).read_bytes()
        thumb = cv2.imdecode(np.frombuffer(entries[f["thumbnail"]], np.uint8), cv2.IMREAD_UNCHANGED)
        assert thumb is not None and max(thumb.shape[:2]) <= 256
    image_entry = manifest_json["audited_files"][0]["image"]
    _rezip(tmp_path / "swapped.zip", entries | {image_entry: entries[image_entry] + b"\0"})
    code, out, _err = run_cli(capsys, "claims", "verify-package", tmp_path / "swapped.zip")
    assert code == 1 and f"{image_entry} was changed" in out

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
    relabelled_copy(  # MR2_UNCR is a shoulder (its StudyDescription says so)
        _sample("MR2_UNCR.dcm"), first / "C-101" / "shoulder.dcm", _patient("A2", "C^D", "M", "19610101", "SHOULDER")
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


#: What a Python representation leaks into a page: dict and list literals, True/False/None after "=" or ":".
REPR = re.compile(r"\{'|\['|'\]|'\}|=(True|False|None)\b|: (True|False|None)\b|<[a-zA-Z_.]+ object at")


def _side_by_side(page: Any, selector: str) -> None:
    """The images under ``selector`` are loaded and shown in one row, left to right, not overlapping."""
    images = page.locator(selector)
    assert images.count() == 2, selector
    boxes = [images.nth(i).bounding_box() for i in range(2)]
    assert all(b is not None and b["width"] > 50 and b["height"] > 50 for b in boxes), boxes
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 5 and boxes[1]["x"] >= boxes[0]["x"] + boxes[0]["width"], boxes
    assert images.evaluate_all("els => els.every(i => i.complete && i.naturalWidth > 0)")


def test_report_reads_in_chromium(keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The report as an analyst sees it in Chromium (Playwright, Debian's /usr/bin/chromium): the checks that ran
    at the top, a legend, sentences instead of Python objects, every image loaded, a reused pair side by side (also
    one whose other side is a JPEG export), an image of a PDF named by its page, a C2PA-declared and a watermarked
    export in words, a detector finding beside its heatmap, and no "passed" for checks that did not run.
    Screenshots go to $MEDVERIFY_REPORT_SCREENSHOTS (else the test's folder)."""
    sync_playwright = sync_playwright_or_skip()
    warnings.simplefilter("ignore")
    shots = Path(os.environ.get("MEDVERIFY_REPORT_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "claims"
    code, _out, err = run_cli(capsys, "claims", "sample", root)
    assert code == 0, err
    # A claim without findings, to read what the report says of it.
    relabelled_copy(_sample("MR_small.dcm"), root / "CLM-1009" / "head.dcm",
                    _patient("P-1009", "ROE^RAY", "F", "19700101", "HEAD"))  # fmt: skip
    with open(root / "claims.csv", "a") as fh:
        fh.write("CLM-1009,CLM-1009/head.dcm,P-1009,F,2024-03-20,head\n")
    # No detector: the report must not say the images passed it.
    report = tmp_path / "report.html"
    code, _out, err = run_cli(capsys, "claims", "audit", root, "--manifest", root / "claims.csv", "--checks",
                              "signature,watermark", "--report", report)  # fmt: skip
    assert code == 1, err
    # A detector finding with its heatmap: a policy whose synthetic threshold every score meets.
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "report-test-1"\nsynthetic_threshold = 0.0\n')
    relabelled_copy(_sample("MR_small.dcm"), tmp_path / "det" / "D-1" / "mr.dcm",
                    _patient("D1", "A^A", "F", "19600101", "HEAD"))  # fmt: skip
    detector_report = tmp_path / "detector.html"
    code, _out, err = run_cli(capsys, "claims", "audit", tmp_path / "det", "--checks", "signature,detector",
                              "--policy", policy, "--report", detector_report)  # fmt: skip
    assert code == 1, err

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(report.as_uri())
            text = page.locator("body").inner_text()
            assert not REPR.search(text), REPR.search(text)
            assert "passed" not in text.lower()
            checks = page.locator("#checks").inner_text()
            # The signature does not apply to exports: neither "not run" nor missing on them.
            assert "signature: examined all 5 DICOM images; not applicable to 5 export image(s)" in checks
            assert "watermark: examined all 10 images" in checks and "detector: not run" in checks
            assert "Not checked on every image: detector." in checks
            legend = page.locator("#legend")
            assert legend.is_visible()
            for word in ("DECLARED_SYNTHETIC", "SUSPECTED_SYNTHETIC", "NO_EVIDENCE", "quarantine", "reject", "high"):
                assert word in legend.inner_text()
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            assert page.evaluate("document.images.length") >= 14
            clean = page.locator("#claim-CLM-1009").inner_text()
            assert "No findings from what ran (signature, watermark, reuse, header rules)" in clean
            assert "Not run, so not evidence either way: detector" in clean
            knee = page.locator("#claim-CLM-1002")
            assert "names the shoulder" in knee.inner_text()
            _side_by_side(page, "#claim-CLM-1002 .pair-figures >> nth=0 >> img")
            # Exports: the half-size JPEG beside the chest X-ray it copies, the signature "not applicable" to it.
            jpeg = page.locator("#claim-CLM-1005")
            _side_by_side(page, "#claim-CLM-1005 .pair-figures img")
            assert "signature: not applicable" in jpeg.inner_text() and "signature: not run" not in jpeg.inner_text()
            pdf = page.locator("#claim-CLM-1006").inner_text()
            assert "image 1 on page 2 of discharge.pdf" in pdf
            assert "JPEG image 1 of page 2 of the PDF (2 images in all)" in pdf
            assert "PDF's SHA-256" in pdf
            _side_by_side(page, "#claim-CLM-1006 .pair-figures >> nth=0 >> img")
            c2pa = page.locator("#claim-CLM-1007").inner_text()
            assert "declared synthetic by its Content Credentials, made by medverify-sample-generator 1.0" in c2pa
            mark = page.locator("#claim-CLM-1008").inner_text()
            assert "caught by its watermark (a PNG export" in mark
            assert "declared by its provenance" not in page.locator("body").inner_text()
            page.screenshot(path=str(shots / "claims-report-top.png"))
            knee.screenshot(path=str(shots / "claims-report-reuse-pair.png"))
            jpeg.screenshot(path=str(shots / "claims-report-export-pair.png"))
            page.locator("#claim-CLM-1006").screenshot(path=str(shots / "claims-report-pdf.png"))
            page.locator("#claim-CLM-1007").screenshot(path=str(shots / "claims-report-c2pa.png"))
            page.screenshot(path=str(shots / "claims-report-full.png"), full_page=True)

            page.goto(detector_report.as_uri())
            finding = page.locator("#claim-D-1 tr", has_text="suspected synthetic")
            assert "threshold 0.000" in finding.inner_text() and "detector heatmap" in finding.inner_text()
            _side_by_side(page, "#claim-D-1 .image-figures img")
            assert not REPR.search(page.locator("body").inner_text())
            finding.screenshot(path=str(shots / "claims-report-heatmap.png"))
            assert problems == [], problems
        finally:
            browser.close()
    for name in ("claims-report-top.png", "claims-report-reuse-pair.png", "claims-report-export-pair.png",
                 "claims-report-pdf.png", "claims-report-heatmap.png"):
        shot = cv2.imread(str(shots / name), cv2.IMREAD_GRAYSCALE)
        assert shot is not None and float(shot.std()) > 10  # rendered content, not a blank page


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
    # CLM-1002's "knee" is MR2_UNCR, a shoulder by its own StudyDescription; CLM-1003's copy lost that header.
    assert _kinds(claims["CLM-1002"]) == {"reused_image", "body_part_description"}
    assert _kinds(claims["CLM-1003"]) == {"reused_image"}
    assert {"date_after_claim", "body_part_mismatch", "patient_mismatch"} == _kinds(claims["CLM-1004"])
    # The same audit as a spreadsheet: one row a finding, the evidence in words, a row for a claim without any.
    code, out, err = run_cli(capsys, "claims", "audit", root, "--manifest", manifest, "--checks", "signature",
                             "--format", "csv")  # fmt: skip
    assert code == 1, err
    rows = list(csv.DictReader(out.splitlines()))
    assert {r["kind"] for r in rows if r["claim_id"] == "CLM-1002"} == {"reused_image", "body_part_description"}
    (shoulder,) = [r for r in rows if r["kind"] == "body_part_description"]
    assert "names the shoulder" in shoulder["evidence"] and shoulder["files"].endswith("knee.dcm")
    assert all(r["evidence"] and not REPR.search(r["evidence"]) for r in rows)
    code, _out, err = run_cli(capsys, "claims", "audit", root, "--include-images")
    assert code == 2 and "give --package too" in err
    # The evidence package lists each export image with its file: a PDF's images by page, with the PDF's SHA-256,
    # the PDF itself included once, and the package verifies.
    package = root.parent / "evidence.zip"
    code, _out, err = run_cli(capsys, "claims", "audit", root, "--manifest", manifest, "--checks", "signature",
                              "--package", package, "--include-images", "--format", "jsonl")  # fmt: skip
    assert code == 1, err
    with zipfile.ZipFile(package) as zf:
        listed = json.loads(zf.read("MANIFEST.json"))
        pdf = root / "CLM-1006" / "discharge.pdf"
        rows = [r for r in listed["audited_files"] if r["file"] == str(pdf)]
        assert [r["export"]["page"] for r in rows] == [1, 2] and [r["path"] for r in rows] == [
            f"{pdf}#page=1&image=1", f"{pdf}#page=2&image=1"]
        digest = hashlib.sha256(pdf.read_bytes()).hexdigest()
        assert {r["file_sha256"] for r in rows} == {digest} and len({r["sha256"] for r in rows}) == 2
        assert rows[0]["image"] == rows[1]["image"] and zf.read(rows[0]["image"]) == pdf.read_bytes()
        assert rows[1]["thumbnail"].endswith("discharge.pdf_page_2_image_1.png")
        assert cv2.imdecode(np.frombuffer(zf.read(rows[1]["thumbnail"]), np.uint8), cv2.IMREAD_GRAYSCALE) is not None
    code, out, err = run_cli(capsys, "claims", "verify-package", package)
    assert code == 0 and out.startswith("VALID"), out + err
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
