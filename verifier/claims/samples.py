"""Claim sets built from real sample images, for the tests, the benchmark, the demo and the README.

:func:`reused_copy` makes what a fraudster makes of a scan from another patient: the pixels windowed differently,
cropped, resized, re-encoded as lossy JPEG in a new DICOM file with new UIDs and another patient's header.
:func:`relabelled_copy` keeps the pixels and rewrites the header (a different claim's patient, dates, body part).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

__all__ = ["HeaderFields", "relabelled_copy", "reused_copy", "transform_pixels"]

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


def write_sample_claims(root: Path) -> Path:
    """Write a small claim set from the installed sample images and its ``claims.csv``; return the manifest.

    CLM-1001 is clean; CLM-1003 reuses CLM-1002's knee MR for another patient (windowed differently, cropped,
    resized, JPEG re-encoded); CLM-1004's header contradicts the claim (patient, date, body part).
    """
    import csv

    from detectors.data import sample_dicom_files
    from verifier.errors import InputError

    found = {p.name: p for _pkg, p in sample_dicom_files()}
    rows = []
    for claim, name, source, how, fields, claimed in _SAMPLE_CLAIMS:
        if source not in found:
            raise InputError(f"the sample image {source} is not installed (pip install pydicom-data)")
        target = root / claim / name
        if how == "reused":
            reused_copy(found[source], target, fields, seed=7, crop=(0.7, 0.7))
        else:
            relabelled_copy(found[source], target, fields)
        rows.append({"claim_id": claim, "file": f"{claim}/{name}", **claimed})
    manifest = root / "claims.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["claim_id", "file", "patient_id", "patient_sex", "claim_date", "body_part"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest
