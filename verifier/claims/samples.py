"""Claim sets built from real sample images, for the tests, the benchmark, the demo and the README.

:func:`reused_copy` makes what a fraudster makes of a scan from another patient: the pixels windowed differently,
cropped, resized, re-encoded as lossy JPEG in a new DICOM file with new UIDs and another patient's header.
:func:`relabelled_copy` keeps the pixels and rewrites the header (a different claim's patient, dates, body part).

Claims also arrive as exports: :func:`export_copy` writes what a viewer's "save as" writes (the image in its
display window, 8 bit, PNG or JPEG, optionally resized), :func:`pdf_with_images` a PDF report with images in it,
and :func:`with_content_credentials` adds a C2PA manifest (signed with a certificate the caller gives, e.g. one of
:func:`c2pa_test_certificate`) as commercial image generators do.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

if TYPE_CHECKING:
    from verifier.generation import GenerationKeys

__all__ = [
    "HeaderFields",
    "c2pa_test_certificate",
    "export_copy",
    "fhir_claim_bundle",
    "pdf_with_images",
    "relabelled_copy",
    "reused_copy",
    "transform_pixels",
    "with_content_credentials",
    "write_sample_fhir_claims",
]

#: Patient and study fields a sample file is given: PatientID, PatientName, PatientSex, PatientBirthDate,
#: StudyDate, BodyPartExamined, Manufacturer ... (any DICOM keyword).
HeaderFields = dict[str, Any]


def _apply(ds: Dataset, fields: HeaderFields) -> None:
    for keyword, value in fields.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    date = fields.get("StudyDate")
    if date:
        for keyword in ("SeriesDate", "AcquisitionDate", "ContentDate"):
            if keyword in ds or keyword == "ContentDate":
                setattr(ds, keyword, date)


def _new_uids(ds: Dataset) -> None:
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _strip_signatures(ds: Dataset) -> None:
    for keyword in ("DigitalSignaturesSequence", "MACParametersSequence"):
        if keyword in ds:
            delattr(ds, keyword)


def relabelled_copy(source: Path, target: Path, fields: HeaderFields, *, new_uids: bool = True) -> Path:
    """``source`` with its header rewritten by ``fields`` (pixels untouched), written to ``target``."""
    ds = pydicom.dcmread(source)
    _strip_signatures(ds)
    if new_uids:
        _new_uids(ds)
    _apply(ds, fields)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=False)
    return target


def transform_pixels(
    frame: npt.NDArray[np.floating],
    rng: np.random.Generator,
    *,
    crop: tuple[float, float] = (0.6, 0.8),
    resize: tuple[float, float] = (0.5, 1.2),
    quality: tuple[int, int] = (70, 90),
    monochrome1: bool = False,
) -> npt.NDArray[np.uint8]:
    """A re-windowed, centrally cropped (``crop`` fraction of each side, a few pixels off centre), resized and
    JPEG-re-encoded 8-bit copy of ``frame`` (physical units)."""
    f = np.asarray(frame, dtype=np.float32)
    if monochrome1:
        f = -f
    lo, hi = np.percentile(f, [rng.uniform(0, 15), rng.uniform(85, 100)])
    view = np.clip((f - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255
    h, w = view.shape
    s = rng.uniform(*crop)
    ch, cw = max(8, int(h * s)), max(8, int(w * s))
    dy, dx = (int(rng.integers(-2, 3)) for _ in range(2))
    top, left = min(max(0, (h - ch) // 2 + dy), h - ch), min(max(0, (w - cw) // 2 + dx), w - cw)
    view = view[top : top + ch, left : left + cw]
    r = rng.uniform(*resize)
    view = cv2.resize(view, (max(8, int(cw * r)), max(8, int(ch * r))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", view.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*quality))])
    if not ok:  # pragma: no cover - OpenCV encodes any 8-bit image
        raise RuntimeError("JPEG encoding failed")
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), dtype=np.uint8)


def _jpeg_dataset(pixels: npt.NDArray[np.uint8], fields: HeaderFields, *, quality: int = 90) -> Dataset:
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    today = dt.date.today().strftime("%Y%m%d")
    ds.StudyDate = ds.ContentDate = today
    ds.PatientID, ds.PatientName = "UNKNOWN", "UNKNOWN"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].VR = "OB"
    _apply(ds, fields)
    return ds


def reused_copy(source: Path, target: Path, fields: HeaderFields, *, seed: int = 0, **transform: Any) -> Path:
    """A reused copy of ``source``'s (first) image: windowed differently, cropped, resized, JPEG re-encoded, in a
    new Secondary Capture file with new UIDs and the header ``fields``."""
    from detectors.data import read_image

    image = read_image(source, frame_indices=[0])
    mono1 = image.photometric.strip().upper() == "MONOCHROME1"
    pixels = transform_pixels(image.frames[0], np.random.default_rng(seed), monochrome1=mono1, **transform)
    ds = _jpeg_dataset(pixels, fields)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def display_pixels(source: Path, *, own_window: bool = True) -> npt.NDArray[np.uint8]:
    """``source``'s first frame as a viewer shows it, 8 bit: in its own window (with ``own_window``, when it has
    one), else its 0.5-99.5 percentiles (the whole range, as many export tools do)."""
    from detectors.data import read_image

    image = read_image(source, frame_indices=[0])
    frame = image.frames[0]
    if image.window is not None and own_window:
        lo, hi = image.window[0] - image.window[1] / 2, image.window[0] + image.window[1] / 2
    else:
        lo, hi = (float(v) for v in np.percentile(frame, (0.5, 99.5)))
    view = np.clip((frame - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * 255.0
    if image.photometric.strip().upper() == "MONOCHROME1":
        view = 255.0 - view
    return np.asarray(view.round(), dtype=np.uint8)


def export_copy(
    source: Path, target: Path, *, scale: float = 1.0, quality: int = 90, own_window: bool = True
) -> Path:
    """``source`` exported the way a viewer exports it: 8 bit (:func:`display_pixels`), resized by ``scale``,
    written as PNG or JPEG (quality ``quality``) by ``target``'s suffix."""
    import cv2

    view = display_pixels(source, own_window=own_window)
    if scale != 1.0:
        h, w = view.shape
        view = np.asarray(cv2.resize(view, (max(8, round(w * scale)), max(8, round(h * scale))),
                                     interpolation=cv2.INTER_AREA), dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if target.suffix.lower() in (".jpg", ".jpeg") else []
    target.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(target), view, params):
        raise RuntimeError(f"cannot write {target}")
    return target


def pdf_with_images(target: Path, images: list[npt.NDArray[np.uint8]]) -> Path:
    """A PDF with one 8-bit image a page (Pillow stores them as JPEG), like a report printed to PDF."""
    from PIL import Image

    pages = [Image.fromarray(np.asarray(image, dtype=np.uint8)) for image in images]
    target.parent.mkdir(parents=True, exist_ok=True)
    pages[0].save(target, format="PDF", save_all=True, append_images=pages[1:], resolution=72.0)
    return target


def c2pa_test_certificate(common_name: str = "medverify sample generator") -> tuple[bytes, bytes]:
    """A throwaway C2PA signing identity: a certificate chain (end entity, then its own test CA; PEM) and the end
    entity's private key (PKCS#8 PEM, ES256). Made here, never trusted: for samples and tests only."""
    import datetime as _dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = _dt.datetime.now(_dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medverify test CA")])  # fmt: skip

    def usage(*, sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=not sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=sign, crl_sign=sign,
                             encipher_only=False, decipher_only=False)  # fmt: skip

    ca_key, ee_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name(f"{common_name} CA")).issuer_name(name(f"{common_name} CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - _dt.timedelta(days=1)).not_valid_after(now + _dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    ee = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(ca.subject)
          .public_key(ee_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - _dt.timedelta(days=1)).not_valid_after(now + _dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(usage(sign=False), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ee_key.public_key()), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    chain = ee.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    key = ee_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())  # fmt: skip
    return chain, key


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".tif": "image/tiff", ".tiff": "image/tiff"}


def with_content_credentials(
    source: Path,
    target: Path,
    *,
    chain_pem: bytes,
    key_pem: bytes,
    source_type: str = "trainedAlgorithmicMedia",
    generator: tuple[str, str] = ("medverify-sample-generator", "1.0"),
) -> Path:
    """``source`` (PNG, JPEG or TIFF) with a C2PA manifest signed by ``chain_pem`` / ``key_pem`` (ES256): one
    ``c2pa.created`` action whose digital source type is the IPTC ``source_type``, claim generator ``generator``."""
    import io

    import c2pa

    mime = _MIME.get(source.suffix.lower())
    if mime is None:
        raise ValueError(f"{source}: C2PA manifests are written here into PNG, JPEG or TIFF files")
    manifest = {
        "claim_generator_info": [{"name": generator[0], "version": generator[1]}],
        "title": target.name,
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
            "action": "c2pa.created",
            "digitalSourceType": f"http://cv.iptc.org/newscodes/digitalsourcetype/{source_type}",
        }]}}],
    }  # fmt: skip
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain_pem, key_pem, None))
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    out = io.BytesIO()
    with c2pa.Builder.from_json(manifest, context) as builder:
        builder.sign(signer, mime, io.BytesIO(source.read_bytes()), out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(out.getvalue())
    return target


#: The claims :func:`write_sample_claims` writes: (claim, file, source image, how, header fields, claimed fields).
_SAMPLE_CLAIMS: tuple[tuple[str, str, str, str, HeaderFields, dict[str, str]], ...] = (
    ("CLM-1001", "chest.dcm", "RG1_UNCR.dcm", "copy",
     {"PatientID": "P-1001", "PatientName": "DOE^JANE", "PatientSex": "F", "PatientBirthDate": "19700101",
      "StudyDate": "20240312", "BodyPartExamined": "CHEST"},
     {"patient_id": "P-1001", "patient_sex": "F", "claim_date": "2024-03-15", "body_part": "chest"}),
    ("CLM-1002", "knee.dcm", "MR2_UNCR.dcm", "copy",
     {"PatientID": "P-2002", "PatientName": "ROE^RICHARD", "PatientSex": "M", "PatientBirthDate": "19650505",
      "StudyDate": "20240301", "BodyPartExamined": "KNEE"},
     {"patient_id": "P-2002", "patient_sex": "M", "claim_date": "2024-03-04", "body_part": "knee"}),
    ("CLM-1003", "knee_mri.dcm", "MR2_UNCR.dcm", "reused",
     {"PatientID": "P-3003", "PatientName": "POE^EDGAR", "PatientSex": "M", "PatientBirthDate": "19800808",
      "StudyDate": "20240320", "BodyPartExamined": "KNEE"},
     {"patient_id": "P-3003", "patient_sex": "M", "claim_date": "2024-03-22", "body_part": "knee"}),
    ("CLM-1004", "ct.dcm", "CT_small.dcm", "copy",
     {"PatientID": "P-9999", "PatientName": "SMITH^ANNA", "PatientSex": "F", "PatientBirthDate": "19900101",
      "StudyDate": "20240402", "BodyPartExamined": "HEAD"},
     {"patient_id": "P-4004", "patient_sex": "F", "claim_date": "2024-03-30", "body_part": "chest"}),
)  # fmt: skip


#: Claims whose images are exports, not DICOM: (claim, file, claimed fields). Written by :func:`write_sample_claims`.
_EXPORT_CLAIMS: tuple[tuple[str, str, dict[str, str]], ...] = (
    # A half-size JPEG of CLM-1001's chest X-ray, filed for another patient.
    ("CLM-1005", "xray.jpg",
     {"patient_id": "P-5005", "patient_sex": "F", "claim_date": "2024-04-10", "body_part": "chest"}),
    # A discharge report printed to PDF: page 1 a CT of its own, page 2 CLM-1002's knee MR.
    ("CLM-1006", "discharge.pdf",
     {"patient_id": "P-6006", "patient_sex": "M", "claim_date": "2024-04-12", "body_part": "knee"}),
    # An image with C2PA Content Credentials saying a generative model made it.
    ("CLM-1007", "ai_render.jpg",
     {"patient_id": "P-7007", "patient_sex": "F", "claim_date": "2024-04-15", "body_part": "abdomen"}),
    # A PNG export of a CT made by medverify's own generator (signed, declared, watermarked; the export keeps only
    # the watermark). Written only when generation keys are given.
    ("CLM-1008", "ct_export.png",
     {"patient_id": "P-8008", "patient_sex": "M", "claim_date": "2024-04-18", "body_part": "chest"}),
)  # fmt: skip


def write_sample_claims(root: Path, *, generation_keys: GenerationKeys | None = None) -> Path:
    """Write a small claim set from the installed sample images and its ``claims.csv``; return the manifest.

    CLM-1001 is clean; CLM-1003 reuses CLM-1002's knee MR for another patient (windowed differently, cropped,
    resized, JPEG re-encoded); CLM-1004's header contradicts the claim (patient, date, body part). Then exports:
    CLM-1005 a half-size JPEG of CLM-1001's chest X-ray for another patient; CLM-1006 a PDF whose second page is
    CLM-1002's knee MR; CLM-1007 a JPEG whose C2PA Content Credentials (signed with a throwaway test certificate)
    declare it made by a generative model; with ``generation_keys``, CLM-1008 a PNG export of a CT made by the
    in-house GAN (its signature and declaration are gone in the export; its watermark is not).
    """
    import csv

    from detectors.data import sample_dicom_files
    from verifier.errors import InputError

    found = {p.name: p for _pkg, p in sample_dicom_files()}
    needed = {source for _c, _n, source, _h, _f, _cl in _SAMPLE_CLAIMS} | {"693_UNCR.dcm", "US1_UNCR.dcm"}
    missing = sorted(needed - set(found))
    if missing:
        raise InputError(f"the sample image(s) {', '.join(missing)} are not installed (pip install pydicom-data)")
    rows = []
    for claim, name, source, how, fields, claimed in _SAMPLE_CLAIMS:
        target = root / claim / name
        if how == "reused":
            reused_copy(found[source], target, fields, seed=7, crop=(0.7, 0.7))
        else:
            relabelled_copy(found[source], target, fields)
        rows.append({"claim_id": claim, "file": f"{claim}/{name}", **claimed})
    for claim, name, claimed in _EXPORT_CLAIMS:
        target = root / claim / name
        if claim == "CLM-1005":
            export_copy(found["RG1_UNCR.dcm"], target, scale=0.5, quality=85)
        elif claim == "CLM-1006":
            pdf_with_images(target, [display_pixels(found["693_UNCR.dcm"]), display_pixels(found["MR2_UNCR.dcm"])])
        elif claim == "CLM-1007":
            plain = export_copy(found["US1_UNCR.dcm"], root / ".work" / "render.jpg")
            chain, key = c2pa_test_certificate()
            with_content_credentials(plain, target, chain_pem=chain, key_pem=key)
            plain.unlink()
            plain.parent.rmdir()
        elif generation_keys is not None:
            _generated_export(target, generation_keys)
        else:
            continue
        rows.append({"claim_id": claim, "file": f"{claim}/{name}", **claimed})
    manifest = root / "claims.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["claim_id", "file", "patient_id", "patient_sex", "claim_date", "body_part"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _generated_export(target: Path, keys: GenerationKeys) -> None:
    """A CT from the in-house GAN, written as generated images always are (signed, declared, watermarked, audited),
    then exported to an 8-bit PNG in its display window: what is left when someone files it as a scan."""
    import tempfile

    from verifier.generation import generate_signed_image, load_generator

    with tempfile.TemporaryDirectory(prefix="medverify-sample-") as tmp:
        generated = Path(tmp) / "generated.dcm"
        generate_signed_image(load_generator("gan", seed=5), name="gan", seed=5, path=generated, modality="CT",
                              keys=keys, size=256)  # fmt: skip
        # The whole range: a soft-tissue window (40/400 HU) saturates most of a 256-pixel generated CT, and the
        # mark does not survive that export (`medverify watermark detect` finds none in it either).
        export_copy(generated, target, own_window=False)


#: The claims :func:`write_sample_fhir_claims` writes: (claim, file, source image, header fields, what the bundle
#: says). Each bundle is consistent with its image unless the comment says otherwise.
_FHIR_CLAIMS: tuple[tuple[str, str, str, HeaderFields, dict[str, Any]], ...] = (
    # Consistent: a chest CT for pneumonia.
    ("CLM-2001", "chest_ct.dcm", "693_UNCR.dcm",
     {"PatientID": "P-2001", "PatientName": "DOE^JANE", "PatientSex": "F", "PatientBirthDate": "19700101",
      "StudyDate": "20240312", "BodyPartExamined": "CHEST"},
     {"family": "Doe", "given": "Jane", "gender": "female", "birth": "1970-01-01", "date": "2024-03-12",
      "created": "2024-03-15", "site": ("51185008", "Thoracic structure"), "icd10": ("J18.9", "Pneumonia")}),
    # Consistent: an MR of the right knee for a meniscus tear.
    ("CLM-2002", "knee_mr.dcm", "MR2_UNCR.dcm",
     {"PatientID": "P-2002", "PatientName": "ROE^RICHARD", "PatientSex": "M", "PatientBirthDate": "19650505",
      "StudyDate": "20240301", "BodyPartExamined": "KNEE", "Laterality": "R",
      "StudyDescription": "MR KNEE RIGHT"},
     {"family": "Roe", "given": "Richard", "gender": "male", "birth": "1965-05-05", "date": "2024-03-01",
      "created": "2024-03-04", "site": ("72696002", "Knee region structure"), "side": "24028007",
      "icd10": ("S83.2", "Tear of meniscus, current")}),
    # A consistent bundle around a reused image: CLM-2002's knee MR, relabelled for another patient.
    ("CLM-2003", "knee_mr.dcm", "MR2_UNCR.dcm",
     {"PatientID": "P-2003", "PatientName": "POE^EDGAR", "PatientSex": "M", "PatientBirthDate": "19800808",
      "StudyDate": "20240320", "BodyPartExamined": "KNEE", "Laterality": "R",
      "StudyDescription": "MR KNEE RIGHT"},
     {"family": "Poe", "given": "Edgar", "gender": "male", "birth": "1980-08-08", "date": "2024-03-20",
      "created": "2024-03-22", "site": ("72696002", "Knee region structure"), "side": "24028007",
      "icd10": ("S83.2", "Tear of meniscus, current")}),
    # A date that contradicts: the service, procedure and study dates are seven weeks after the CT's StudyDate.
    ("CLM-2004", "chest_ct.dcm", "CT_small.dcm",
     {"PatientID": "P-2004", "PatientName": "SMITH^ANNA", "PatientSex": "F", "PatientBirthDate": "19900101",
      "StudyDate": "20240402", "BodyPartExamined": "CHEST"},
     {"family": "Smith", "given": "Anna", "gender": "female", "birth": "1990-01-01", "date": "2024-05-20",
      "created": "2024-05-24", "site": ("51185008", "Thoracic structure"),
      "icd10": ("C34.1", "Malignant neoplasm of upper lobe, bronchus or lung")}),
    # A body part that contradicts: the bundle bills a knee MR, the image is of the head.
    ("CLM-2005", "knee_mr.dcm", "MR_small.dcm",
     {"PatientID": "P-2005", "PatientName": "LEE^MARK", "PatientSex": "M", "PatientBirthDate": "19751212",
      "StudyDate": "20240408", "BodyPartExamined": "HEAD"},
     {"family": "Lee", "given": "Mark", "gender": "male", "birth": "1975-12-12", "date": "2024-04-08",
      "created": "2024-04-10", "site": ("72696002", "Knee region structure"),
      "icd10": ("M25.561", "Pain in right knee")}),
    # A diagnosis that does not fit the imaging: a wrist fracture claimed with a chest CT.
    ("CLM-2006", "ct.dcm", "eCT_Supplemental.dcm",
     {"PatientID": "P-2006", "PatientName": "KING^LAURA", "PatientSex": "F", "PatientBirthDate": "19850303",
      "StudyDate": "20240415", "BodyPartExamined": "CHEST"},
     {"family": "King", "given": "Laura", "gender": "female", "birth": "1985-03-03", "date": "2024-04-15",
      "created": "2024-04-16", "site": ("51185008", "Thoracic structure"),
      "icd10": ("S62.101A", "Fracture of unspecified carpal bone, right wrist")}),
)  # fmt: skip


def fhir_claim_bundle(claim_id: str, attachment: str, ds: Dataset, says: dict[str, Any]) -> dict[str, Any]:
    """A FHIR R4 ``collection`` Bundle of one Claim with its Patient, ImagingStudy (of the image ``ds``) and
    Procedure, as an insurer's system would send it. ``says``: family, given, gender, birth, date (service,
    procedure and study start), created, site (SNOMED CT code, display), side (SNOMED CT laterality, optional),
    icd10 (code, display)."""
    n = claim_id.lower()
    snomed, dcm = "http://snomed.info/sct", "http://dicom.nema.org/resources/ontology/DCM"
    site = {"system": snomed, "code": says["site"][0], "display": says["site"][1]}
    series: dict[str, Any] = {
        "uid": str(ds.SeriesInstanceUID), "modality": {"system": dcm, "code": str(ds.Modality)}, "bodySite": site,
        "instance": [{"uid": str(ds.SOPInstanceUID), "sopClass": {"system": "urn:ietf:rfc:3986",
                                                                  "code": f"urn:oid:{ds.SOPClassUID}"}}],
    }  # fmt: skip
    if says.get("side"):
        series["laterality"] = {"system": snomed, "code": says["side"]}
    patient = {"resourceType": "Patient", "id": f"pat-{n}",
               "name": [{"use": "official", "family": says["family"], "given": [says["given"]]}],
               "gender": says["gender"], "birthDate": says["birth"]}  # fmt: skip
    procedure = {"resourceType": "Procedure", "id": f"proc-{n}", "status": "completed",
                 "subject": {"reference": f"Patient/pat-{n}"}, "performedDateTime": says["date"],
                 "bodySite": [{"coding": [site]}]}  # fmt: skip
    study = {"resourceType": "ImagingStudy", "id": f"study-{n}", "status": "available",
             "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{ds.StudyInstanceUID}"}],
             "subject": {"reference": f"Patient/pat-{n}"}, "started": says["date"],
             "modality": [{"system": dcm, "code": str(ds.Modality)}], "numberOfSeries": 1, "numberOfInstances": 1,
             "procedureReference": {"reference": f"Procedure/proc-{n}"}, "series": [series]}  # fmt: skip
    claim = {
        "resourceType": "Claim", "id": claim_id, "status": "active", "use": "claim",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "patient": {"reference": f"Patient/pat-{n}"}, "created": says["created"],
        "provider": {"display": "Sample Imaging Centre"},
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Sample health plan"}}],
        "diagnosis": [{"sequence": 1, "diagnosisCodeableConcept": {"coding": [{
            "system": "http://hl7.org/fhir/sid/icd-10-cm", "code": says["icd10"][0], "display": says["icd10"][1]}]}}],
        "procedure": [{"sequence": 1, "procedureReference": {"reference": f"Procedure/proc-{n}"}}],
        "supportingInfo": [
            {"sequence": 1, "category": {"coding": [{"code": "attachment"}]},
             "valueAttachment": {"contentType": "application/dicom", "url": attachment}},
            {"sequence": 2, "category": {"coding": [{"code": "info"}]},
             "valueReference": {"reference": f"ImagingStudy/study-{n}"}},
        ],
        "item": [{"sequence": 1, "productOrService": {"text": f"{ds.Modality} imaging"}, "servicedDate": says["date"],
                  "unitPrice": {"value": 250, "currency": "EUR"}}],
    }  # fmt: skip
    return {"resourceType": "Bundle", "id": f"bundle-{n}", "type": "collection",
            "entry": [{"fullUrl": f"urn:medverify-sample:{r['resourceType']}/{r['id']}", "resource": r}
                      for r in (claim, patient, study, procedure)]}  # fmt: skip


def write_sample_fhir_claims(root: Path) -> Path:
    """Write claims from the installed sample images and one FHIR R4 bundle a claim under ``root / "fhir"``; return
    that folder (``medverify claims audit ROOT --fhir ROOT/fhir``).

    CLM-2001 and CLM-2002 are consistent; CLM-2003 files CLM-2002's knee MR for another patient (the same pixels,
    relabelled, with a bundle that agrees with its new header); CLM-2004's service, procedure and study dates are
    seven weeks after its CT; CLM-2005 bills a knee MR for an image of the head; CLM-2006 claims a wrist fracture
    with a chest CT.
    """
    import json

    from detectors.data import sample_dicom_files
    from verifier.errors import InputError

    found = {p.name: p for _pkg, p in sample_dicom_files()}
    missing = sorted({source for _c, _n, source, _h, _s in _FHIR_CLAIMS} - set(found))
    if missing:
        raise InputError(f"the sample image(s) {', '.join(missing)} are not installed (pip install pydicom-data)")
    bundles = root / "fhir"
    bundles.mkdir(parents=True, exist_ok=True)
    for claim, name, source, fields, says in _FHIR_CLAIMS:
        target = relabelled_copy(found[source], root / claim / name, fields)
        ds = pydicom.dcmread(target, stop_before_pixels=True)
        bundle = fhir_claim_bundle(claim, f"{claim}/{name}", ds, says)
        (bundles / f"{claim}.json").write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
    return bundles
