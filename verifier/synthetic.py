"""Writing generated images as DICOM: valid for their IOD, declared synthetic, and always signed.

Generators return arrays in [0, 1]; this module is the only place that turns them into DICOM files, and
:func:`write_synthetic` signs every file before it reaches the disk (an unsigned generated file is a bug).
The values are mapped to the modality's stored range: CT to Hounsfield units over the detectors' normalisation
window ``CT_HU_RANGE`` (-1000..2000 HU; 12 bits stored, Rescale Intercept -1024), MR and CR to 0..4095 (12 bits),
or, for a fake made from a source image, onto the source's own value range (the range the detectors' normalisation
took from it), so that a paired fake is stored on its source's scale rather than stretched over the full range.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from detectors.data.normalize import CT_HU_RANGE
from provenance.declaration import SyntheticDeclaration, declare_synthetic
from provenance.models import MacAlgorithm, SignatureProfile
from provenance.signature import SignerLike, sign_dataset, strip_signatures
from provenance.watermark import WatermarkKey, WatermarkStatus, display_window, embed
from provenance.watermark import detect as watermark_detect
from verifier.errors import InputError

_log = logging.getLogger(__name__)

__all__ = [
    "MODALITIES", "ModalitySpec", "build_synthetic_dataset", "usable_value_range", "write_generated", "write_synthetic",
]

if TYPE_CHECKING:
    from verifier.audit import AuditLog

_IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.8.498.1.19820")  # under pydicom's root, for medverify


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """How generated values in [0, 1] become stored pixels of one modality."""

    sop_class_uid: str
    bits_stored: int
    rescale_intercept: float | None
    window: tuple[float, float]
    pixel_spacing_mm: float


MODALITIES: dict[str, ModalitySpec] = {
    "CT": ModalitySpec("1.2.840.10008.5.1.4.1.1.2", 12, -1024.0, (40.0, 400.0), 0.7),
    "MR": ModalitySpec("1.2.840.10008.5.1.4.1.1.4", 12, None, (2048.0, 4096.0), 1.0),
    "CR": ModalitySpec("1.2.840.10008.5.1.4.1.1.1", 12, None, (2048.0, 4096.0), 0.2),
}


def _da_tm(now: dt.datetime) -> tuple[str, str]:
    local = now.astimezone(dt.UTC)
    return local.strftime("%Y%m%d"), local.strftime("%H%M%S.%f")


def build_synthetic_dataset(
    pixels: np.ndarray,
    *,
    modality: str,
    declaration: SyntheticDeclaration,
    series_uid: str | None = None,
    study_uid: str | None = None,
    instance_number: int = 1,
    value_range: tuple[float, float] | None = None,
) -> Dataset:
    """A complete, unsigned dataset of ``modality`` holding ``pixels`` (2-D, values in [0, 1]).

    ``value_range`` (MR and CR): the stored values that 0 and 1 become, as taken from a source image by
    :func:`detectors.data.normalize.normalization_range`; stored values are clipped to 0..65535, with up to 16
    bits stored when the range needs them. Without it, 0..1 spans the modality's 12 bits. CT always maps to
    Hounsfield units.
    """
    spec = MODALITIES.get(modality.upper())
    if spec is None:
        raise InputError(f"unsupported modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    array = np.asarray(pixels, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 8:
        raise InputError(f"a generated image must be 2-D and at least 8×8, not {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("a generated image contains NaN or infinite values")
    bits_stored, window = spec.bits_stored, spec.window
    unit = np.clip(array, 0.0, 1.0)
    if spec.rescale_intercept is not None:
        # CT: [0, 1] is the detectors' normalisation window (CT_HU_RANGE), mapped back to Hounsfield units.
        lo, hi = CT_HU_RANGE
        values = (lo + unit * (hi - lo)) - spec.rescale_intercept
    elif value_range is not None:
        lo, hi = _checked_range(value_range)
        bits_stored = max(bits_stored, min(16, int(np.ceil(hi)).bit_length()))
        values = lo + unit * (hi - lo)
        window = ((lo + hi) / 2.0, hi - lo)
    else:
        values = unit * ((1 << bits_stored) - 1)
    top = (1 << bits_stored) - 1
    stored = np.clip(np.rint(values), 0, top).astype("<u2")
    now = declaration.generated_at
    date, time = _da_tm(now)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(spec.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDVERIFY_01"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    # Patient: a synthetic identity, never a copy of the source's.
    ds.PatientName = f"SYNTHETIC^{declaration.generator.upper()}"
    ds.PatientID = "SYNTH-" + declaration.model_sha256[:8].upper() + f"-{declaration.seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyID = "SYNTH"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC IMAGES (medverify)"
    ds.Modality = modality.upper()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"SYNTHETIC {declaration.generator}"
    ds.Laterality = ""  # Type 2C: unknown for a synthetic image
    ds.Manufacturer = "medverify"
    ds.ManufacturerModelName = declaration.generator[:64]
    ds.SoftwareVersions = declaration.generator_version[:64] or "medverify"
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality.upper() == "CT" else "OTHER"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = (round(float(v), 2) for v in window)
    if modality.upper() in ("CT", "MR"):
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""
        ds.PixelSpacing = [spec.pixel_spacing_mm, spec.pixel_spacing_mm]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 0]
        ds.SliceThickness = 1.0
        ds.PatientPosition = ""  # Type 2C: unknown for a synthetic image
    if modality.upper() == "CT":
        ds.RescaleIntercept = spec.rescale_intercept
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = ""
        ds.AcquisitionNumber = 1
    elif modality.upper() == "MR":
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
    else:  # CR
        ds.BodyPartExamined = ""
        ds.ViewPosition = ""
    ds.PixelData = stored.tobytes()
    declare_synthetic(ds, declaration)
    if "SourceImageSequence" in ds and not ds.SourceImageSequence[0].ReferencedSOPClassUID:
        ds.SourceImageSequence[0].ReferencedSOPClassUID = ds.SOPClassUID
    return ds


def usable_value_range(value_range: tuple[float, float]) -> tuple[float, float] | None:
    """``value_range`` as two floats when a generated image can be stored on it (finite, not empty, overlapping
    the 0..65535 of unsigned 16-bit pixels), else None."""
    lo, hi = (float(v) for v in value_range)
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) and hi > max(lo, 0.0) and lo < 65535 else None


def _checked_range(value_range: tuple[float, float]) -> tuple[float, float]:
    """:func:`usable_value_range`, refusing a range it cannot use."""
    usable = usable_value_range(value_range)
    if usable is None:
        raise InputError(f"the value range of a generated image must overlap 0..65535 and be finite, not {value_range}")
    return usable


def write_synthetic(ds: Dataset, path: Path, signer: SignerLike) -> str:
    """Sign ``ds`` (creator profile, SHA-256) and write it atomically to ``path``; return the signature UID.

    This is the only way medverify writes a generated image: the file never exists unsigned.
    """
    strip_signatures(ds)
    uid = sign_dataset(ds, signer, profile=SignatureProfile.CREATOR, mac=MacAlgorithm.SHA256)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return uid


def write_generated(
    pixels: np.ndarray,
    *,
    path: Path,
    modality: str,
    declaration: SyntheticDeclaration,
    signer: SignerLike,
    log: AuditLog,
    key_name: str,
    watermark_key: WatermarkKey,
    value_range: tuple[float, float] | None = None,
) -> int:
    """The one path from a generator's output to a file: build, audit, declare, watermark, sign, write.

    ``value_range``: the source image's stored range for a paired MR or CR fake (see
    :func:`build_synthetic_dataset`).

    The audit record is written first, so that the declaration and the watermark payload can name it; it holds
    the SOP Instance UID, the declaration, the watermark key id and the SHA-256 of the generator's stored pixels
    before marking. The mark is embedded before signing, so the signature covers the marked pixels. Returns the
    record's id.
    """
    from verifier.audit import AuditEntry, Channel, EventKind

    ds = build_synthetic_dataset(pixels, modality=modality, declaration=declaration, value_range=value_range)
    record = log.append(
        AuditEntry(
            event=EventKind.GENERATE,
            channel=Channel.GENERATE,
            path=str(path),
            sop_instance_uid=str(ds.SOPInstanceUID),
            verdict="DECLARED_SYNTHETIC",
            details={
                **{k: v for k, v in declaration.to_dict().items() if k != "audit_id"},
                "modality": modality.upper(),
                "pixel_sha256": hashlib.sha256(ds.PixelData).hexdigest(),
                "signing_key": key_name,
                "watermark_key_id": str(watermark_key.key_id),
            },
        ).with_local_actor()
    )
    declare_synthetic(ds, dataclasses.replace(declaration, audit_id=record.id))
    stored = np.frombuffer(ds.PixelData, dtype="<u2").reshape(int(ds.Rows), int(ds.Columns))
    marked = mark_generated(stored, watermark_key, record.id, bits_stored=int(ds.BitsStored), window=display_window(ds))
    ds.PixelData = np.asarray(marked, dtype="<u2").tobytes()
    write_synthetic(ds, path, signer)
    return record.id


#: Strengths tried in turn for a generated image until its own mark reads back (1.0 keeps PSNR >= 50 dB).
GENERATED_MARK_STRENGTHS = (1.0, 1.5, 2.0, 3.0, 4.0)


def mark_generated(
    stored: npt.NDArray[np.uint16],
    key: WatermarkKey,
    payload: int,
    *,
    bits_stored: int,
    window: tuple[float, float] | None,
) -> npt.NDArray[np.generic]:
    """Embed the mark and read it back; strengthen it until the payload decodes.

    A generated image is not a patient's: that its provenance can be recovered after the tags are stripped matters
    more than the last decibels of PSNR. Generator output can be noisier than the mark at the 50 dB cap (GAN
    samples), so the mark is made stronger, step by step, until the payload reads back from the stored pixels.
    An image under the watermark's minimum size cannot carry a readable mark; it is marked at the default strength
    (the signature and the declaration still say what it is) and a warning is logged.
    """
    marked = embed(stored, key, payload, bits_stored=bits_stored, window=window)
    for strength in GENERATED_MARK_STRENGTHS:
        if strength != 1.0:
            marked = embed(stored, key, payload, bits_stored=bits_stored, window=window, strength=strength)
        report = watermark_detect(marked, [key], scales=(1.0,))
        if report.status is WatermarkStatus.TOO_SMALL:
            break
        if report.payload == payload:
            return marked
    _log.warning("the watermark of a generated %sx%s image does not read back; it is still signed and declared",
                 *stored.shape)  # fmt: skip
    return embed(stored, key, payload, bits_stored=bits_stored, window=window)
