"""Exports through the checker: PNG, JPEG and TIFF files and the images inside PDFs, one result per image.

Real sample images (pydicom-data), real PDFs (Pillow writes them, pypdf builds the hostile one), a real watermark
and real C2PA manifests; no mocks.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from pypdf import PdfWriter
from pypdf.generic import DictionaryObject, NameObject, NumberObject, StreamObject

from detectors.data import sample_dicom_files
from provenance.trust import TrustPolicy
from provenance.watermark import WatermarkKey, embed
from verifier.checker import Checker, parse_checks
from verifier.claims.samples import (
    c2pa_test_certificate,
    display_pixels,
    export_copy,
    pdf_with_images,
    with_content_credentials,
)
from verifier.cli.watermark import read_pixels
from verifier.policy import Action, VerdictStatus

KEY = WatermarkKey.generate("wm-test")


def _sample(name: str) -> Path:
    found = {p.name: p for _pkg, p in sample_dicom_files()}
    if name not in found:
        pytest.skip(f"sample image {name} is not installed (pydicom-data)")
    return found[name]


@pytest.fixture(scope="module")
def checker() -> Checker:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Checker(checks=parse_checks("signature,watermark,detector"), trust=TrustPolicy.unsafe_trust_everything(),
                       watermark_keys=(KEY,))  # fmt: skip


def _marked_png(path: Path) -> Path:
    """A CT slice marked with KEY in 12 bits, then exported as an 8-bit PNG (what a viewer writes)."""
    from detectors.data import read_image

    frame = read_image(_sample("693_UNCR.dcm")).frames[0]
    lo, hi = np.percentile(frame, [1, 99])
    marked = embed((np.clip((frame - lo) / (hi - lo), 0, 1) * 4095).astype(np.uint16), KEY, 77, bits_stored=12)
    assert cv2.imwrite(str(path), (marked.astype(np.float32) / 4095 * 255).round().astype(np.uint8))
    return path


def test_png_export_of_a_marked_image_is_declared_by_its_watermark(checker: Checker, tmp_path: Path) -> None:
    png = _marked_png(tmp_path / "export.png")
    [examined] = checker.examine_file(png)
    result = examined.result
    assert result.verdict.status is VerdictStatus.DECLARED_SYNTHETIC, result.reasons
    assert result.watermark is not None and result.watermark.to_dict()["payload"] == 77
    # The checker reads the pixels exactly as `medverify watermark detect` does.
    assert examined.image is not None and np.array_equal(examined.image.pixels, read_pixels(png))
    # The signature check does not apply, and says so; it is neither failed nor "not run".
    assert result.not_applicable.keys() == {"signature"} and not result.not_run
    assert any(r.startswith("signature: not applicable: a PNG image export") for r in result.reasons)
    assert result.status == "NOT_APPLICABLE" and result.source is not None and result.source.format == "png"
    entry = result.audit_entry(channel=__import__("verifier.audit", fromlist=["Channel"]).Channel.CLI)
    assert entry.details["export"]["container"] == "png" and entry.details["not_applicable"]["signature"]


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_plain_exports_are_checked_not_refused(checker: Checker, tmp_path: Path, suffix: str) -> None:
    path = export_copy(_sample("RG1_UNCR.dcm"), tmp_path / f"xray{suffix}", scale=0.5)
    [result] = checker.check_file(path)
    assert result.error is None and result.verdict.status is not VerdictStatus.UNREADABLE
    assert result.detection is not None and result.detection.to_dict()["synthetic_score"] is not None
    assert result.watermark is not None and result.watermark.to_dict()["present"] is False


def test_each_image_of_a_pdf_gets_its_own_result_naming_its_page(checker: Checker, tmp_path: Path) -> None:
    pdf = pdf_with_images(tmp_path / "report.pdf", [display_pixels(_sample("693_UNCR.dcm")),
                                                    display_pixels(_sample("MR2_UNCR.dcm"))])  # fmt: skip
    results = checker.check_file(pdf)
    assert [r.label for r in results] == [f"{pdf}#page=1&image=1", f"{pdf}#page=2&image=1"]
    assert all(r.path == str(pdf) and r.error is None for r in results)
    assert {r.source.page for r in results if r.source is not None} == {1, 2}
    assert len({r.sha256 for r in results}) == 2 and {r.file_sha256 for r in results} == {results[0].file_sha256}
    assert all("embedded in a PDF" in r.not_applicable["signature"] for r in results)

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    empty = tmp_path / "letter.pdf"
    with open(empty, "wb") as fh:
        writer.write(fh)
    [nothing] = checker.check_file(empty)
    assert nothing.status == "NO_IMAGE" and nothing.verdict.status is VerdictStatus.NO_EVIDENCE
    assert all("the PDF holds no image" in why for why in nothing.not_applicable.values())


def test_content_credentials_declare_or_fail(checker: Checker, tmp_path: Path) -> None:
    chain, key = c2pa_test_certificate("Imaginary Image AI")
    plain = export_copy(_sample("US1_UNCR.dcm"), tmp_path / "plain.jpg")
    signed = with_content_credentials(plain, tmp_path / "render.jpg", chain_pem=chain, key_pem=key,
                                      generator=("ImageAI", "4.2"))  # fmt: skip
    [result] = checker.check_file(signed)
    assert result.verdict.status is VerdictStatus.DECLARED_SYNTHETIC, result.reasons
    assert result.credentials is not None and result.status == "C2PA_VALID"
    assert any("claim generator 'ImageAI 4.2'" in r and r.startswith("credentials:") for r in result.reasons)

    # Changed pixels under the same manifest: the hard binding fails.
    image = cv2.imdecode(np.frombuffer(plain.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    image[10:30, 10:30] = 255
    ok, other = cv2.imencode(".jpg", image)
    assert ok
    data = signed.read_bytes()
    # Splice: the signed file's header segments (with the manifest) and the new image's scan data.
    sos_signed, sos_other = data.index(b"\xff\xda"), other.tobytes().index(b"\xff\xda")
    changed = tmp_path / "changed.jpg"
    changed.write_bytes(data[:sos_signed] + other.tobytes()[sos_other:])
    [tampered] = checker.check_file(changed)
    assert tampered.verdict.status is VerdictStatus.TAMPERED, tampered.reasons
    assert tampered.verdict.action is Action.REJECT and any("fail validation" in r for r in tampered.reasons)


def _png_header_only(width: int, height: int) -> bytes:
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 16


def _pdf_with_huge_image() -> bytes:
    writer = PdfWriter()
    page = writer.add_blank_page(100, 100)
    image = StreamObject()
    for key, value in (("/Type", NameObject("/XObject")), ("/Subtype", NameObject("/Image")),
                       ("/Width", NumberObject(60000)), ("/Height", NumberObject(60000)),
                       ("/ColorSpace", NameObject("/DeviceGray")), ("/BitsPerComponent", NumberObject(8))):
        image[NameObject(key)] = value  # fmt: skip
    image.set_data(b"\x00" * 64)
    ref = writer._add_object(image)
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/XObject"): DictionaryObject({NameObject("/Im0"): ref})}
    )
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "kind", "why"),
    [
        ("cut.png", lambda png: png[: len(png) // 2], "MALFORMED", "damaged or cut short"),
        ("fake.pdf", lambda _png: b"%PDF-1.7\nnot a PDF at all", "MALFORMED", "not a readable PDF"),
        ("huge.png", lambda _png: _png_header_only(65535, 65535), "MALFORMED", "over the limit"),
        ("huge.tif", lambda _png: b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHII", 256, 4, 1, 90000)
         + struct.pack("<HHII", 257, 4, 1, 90000) + b"\x00" * 4, "MALFORMED", "over the limit"),
        ("bomb.pdf", lambda _png: _pdf_with_huge_image(), "MALFORMED", "refused before decoding"),
    ],
)  # fmt: skip
def test_bad_exports_get_a_verdict_and_a_record(
    checker: Checker, tmp_path: Path, name: str, make: object, kind: str, why: str
) -> None:
    from verifier.audit import Channel

    png = _marked_png(tmp_path / "good.png").read_bytes()
    path = tmp_path / name
    path.write_bytes(make(png))  # type: ignore[operator]
    [result] = checker.check_file(path)
    assert result.verdict.status.value == kind and result.verdict.action is Action.REJECT
    assert result.error is not None and why in result.error, result.error
    entry = result.audit_entry(channel=Channel.CLI)
    assert entry.verdict == kind and entry.path == result.label
    # An image of a PDF is named by its page also when it cannot be read.
    assert result.label == (f"{path}#page=1&image=1" if name == "bomb.pdf" else str(path))


def test_a_scan_checks_exports_one_image_at_a_time(tmp_path: Path, audit_db_url: str) -> None:
    """Exports are found by content in an archive; each PDF image is recorded, the file's state once (SQLite and
    PostgreSQL), and an incremental scan skips the unchanged PDF."""
    import shutil

    from verifier.audit import AuditLog
    from verifier.audit.scanstate import ScanStateStore
    from verifier.scan import LocalExecutor, Scanner

    root = tmp_path / "archive"
    root.mkdir()
    shutil.copy(_sample("CT_small.dcm"), root / "ct")  # named without a suffix: found by content
    export_copy(_sample("MR2_UNCR.dcm"), root / "knee.png")
    pdf = pdf_with_images(root / "letter", [display_pixels(_sample("693_UNCR.dcm")),
                                            display_pixels(_sample("MR2_UNCR.dcm"))])  # fmt: skip
    (root / "notes.txt").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checker = Checker(checks=parse_checks("signature"), trust=TrustPolicy.unsafe_trust_everything())
    with AuditLog.open(audit_db_url) as log:
        state = ScanStateStore(log)
        scanner = Scanner(checker, state=state)
        plan = scanner.plan([root])
        results = list(scanner.execute(plan, LocalExecutor(1)))
        summary = scanner.finish(plan)
        assert sorted(r.label.rsplit("/", 1)[-1] for r in results) == [
            "ct", "knee.png", "letter#page=1&image=1", "letter#page=2&image=1"]
        assert summary.not_dicom == 1 and all(r.audit_id is not None and r.error is None for r in results)
        # Scan records keep the file's path (a resumed run matches them to the files); the page is in the details.
        import sqlalchemy as sa

        from verifier.audit._schema import records

        with sa.create_engine(audit_db_url).connect() as conn:
            rows = conn.execute(sa.select(records.c.path, records.c.details).where(records.c.event == "scan")).all()
        assert sorted((Path(p).name, (d.get("export") or {}).get("page")) for p, d in rows) == [
            ("ct", None), ("knee.png", None), ("letter", 1), ("letter", 2)]
        known = state.known_files(str(root.resolve()))
        pdf_results = [r for r in results if r.path == str(pdf.resolve())]
        assert known[str(pdf.resolve())].sha256 == pdf_results[0].file_sha256
        worst = max(pdf_results, key=lambda r: r.verdict.action.severity).verdict
        assert (known[str(pdf.resolve())].verdict, known[str(pdf.resolve())].action) == (
            worst.status.value, worst.action.value)
        again = scanner.plan([root], incremental=True)
        assert list(scanner.execute(again, LocalExecutor(1))) == []
        assert scanner.finish(again).not_dicom == 1
