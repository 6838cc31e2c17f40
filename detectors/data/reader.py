"""The one pixel reader: DICOM, NIfTI, PNG and JPEG files become float32 frames in physical units.

Every image that medverify looks at goes through :func:`read_image`, so the application, the corpora, the
generators and the detectors all see the same pixels:

- DICOM: every transfer syntax pydicom 3 decodes with the ``data`` extra's plugins (native little/big endian,
  deflate, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000); single- and multi-frame. The Modality LUT is
  applied (Rescale Slope/Intercept, also per frame from the functional groups of enhanced objects, or a Modality
  LUT Sequence), so CT frames are in Hounsfield units. Colour images (RGB, YBR_*, PALETTE COLOR) are reduced to
  luminance (ITU-R BT.601: ``0.299 R + 0.587 G + 0.114 B``) and flagged ``is_color``.
- NIfTI (nibabel): the volume is reoriented to the closest canonical (RAS+) orientation and cut into axial slices,
  displayed radiologically (anterior up); a 4-D series gives its first volume; ``scl_slope``/``scl_inter`` applied.
- PNG / JPEG / TIFF (OpenCV): 8 or 16 bits, grey or colour (reduced to luminance), alpha dropped; the first page
  of a multi-page TIFF. :func:`read_raster` decodes them from bytes (images embedded in a PDF, uploads).

The decoded size declared by the header is checked against a limit *before* any pixel data is decoded; see
:func:`max_decoded_bytes`. All failures are :class:`~detectors.errors.ImageDecodeError` (or its subclass
:class:`~detectors.errors.ImageTooLargeError`), never a third-party exception.

``source_id`` names what a split must keep together: ``patient:…`` (Patient ID), else ``study:…`` (Study Instance
UID), else ``instance:…`` (SOP Instance UID), else ``file:…`` (SHA-256 of the file). Identifiers are pseudonymised
with a truncated SHA-256, so manifests and logs carry no Patient ID; the pseudonym is stable, not secret.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from detectors.errors import ImageDecodeError, ImageTooLargeError

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "ENV_MAX_DECODED_BYTES",
    "NIFTI_SUFFIXES",
    "ImageData",
    "ImageFormat",
    "decode_raster",
    "image_from_raster",
    "max_decoded_bytes",
    "pseudonym",
    "raster_format",
    "read_image",
    "read_raster",
    "sniff_format",
]

ImageFormat = Literal["dicom", "nifti", "png", "jpeg", "tiff"]
#: The raster formats (what clinical viewers and claim portals export).
RasterFormat = Literal["png", "jpeg", "tiff"]

#: The default limit on the decoded size of one image (all frames, all samples), in bytes.
DEFAULT_MAX_DECODED_BYTES = 1024**3
#: Environment variable that overrides :data:`DEFAULT_MAX_DECODED_BYTES` (an integer number of bytes).
ENV_MAX_DECODED_BYTES = "MEDVERIFY_MAX_DECODED_BYTES"

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LUMA = (0.299, 0.587, 0.114)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
#: Classic TIFF (42) and BigTIFF (43), little and big endian.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# What pydicom, its plugins, nibabel and OpenCV raise on bad input; re-raised as ImageDecodeError.
_DECODE_FAILURES: tuple[type[BaseException], ...] = (
    InvalidDicomError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,
    NotImplementedError,
    OSError,
    EOFError,
    struct.error,
    zlib.error,
)


def max_decoded_bytes() -> int:
    """The decode limit in force: ``$MEDVERIFY_MAX_DECODED_BYTES`` if set, else :data:`DEFAULT_MAX_DECODED_BYTES`."""
    raw = os.environ.get(ENV_MAX_DECODED_BYTES, "").strip()
    if not raw:
        return DEFAULT_MAX_DECODED_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ImageDecodeError(f"{ENV_MAX_DECODED_BYTES}={raw!r} is not an integer number of bytes") from None
    if value <= 0:
        raise ImageDecodeError(f"{ENV_MAX_DECODED_BYTES} must be positive, not {value}")
    return value


def pseudonym(kind: str, value: str) -> str:
    """A stable pseudonymous identifier ``kind:<16 hex>`` for a patient, study, instance or file."""
    return f"{kind}:{hashlib.sha256(value.encode('utf-8')).hexdigest()[:16]}"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ImageData:
    """Decoded frames of one image plus the metadata the normalisation, corpora and detectors need.

    ``frames`` has shape ``(n, H, W)``, dtype float32, in physical units (HU for CT) or stored values where the
    modality has none. ``photometric`` is the source's Photometric Interpretation (``MONOCHROME1`` means high
    values display dark; :func:`~detectors.data.normalize.normalize` inverts it). ``window`` is the first DICOM
    VOI window ``(center, width)`` in the same units as ``frames``. ``frame_indices`` are the source frame (or
    slice) numbers of ``frames``.
    """

    frames: npt.NDArray[np.float32]
    format: ImageFormat
    modality: str
    bits_stored: int | None
    photometric: str
    pixel_spacing: tuple[float, float] | None
    window: tuple[float, float] | None
    source_id: str
    sop_instance_uid: str | None
    is_color: bool
    frame_indices: tuple[int, ...]
    total_frames: int
    path: str | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim != 3 or self.frames.dtype != np.float32:
            raise ValueError(f"frames must be a (n, H, W) float32 array, not {self.frames.dtype}{self.frames.shape}")
        if len(self.frame_indices) != self.frames.shape[0]:
            raise ValueError("frame_indices must name every frame")

    @property
    def n_frames(self) -> int:
        """How many frames were decoded."""
        return int(self.frames.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of each frame."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])


# --------------------------------------------------------------------------------------------------- dispatch


def sniff_format(path: str | os.PathLike[str]) -> ImageFormat | None:
    """The format of ``path`` judged by its content (and ``.nii.gz`` by name), or None if it is none of ours.

    DICOM files without the 128-byte preamble are recognised by trying pydicom on the header.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(352)
    except OSError:
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"  # first: a DICOM preamble may itself be a TIFF header (dual-personality files)
    raster = raster_format(head)
    if raster is not None:
        return raster
    name = p.name.lower()
    if head.startswith(b"\x1f\x8b") and name.endswith(".nii.gz"):
        return "nifti"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"ni2\x00"):
        return "nifti"
    if len(head) >= 4 and (head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00")):
        return "nifti" if name.endswith(NIFTI_SUFFIXES) else None
    try:
        pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except _DECODE_FAILURES:
        return None
    return "dicom"


def raster_format(data: bytes) -> RasterFormat | None:
    """``"png"``, ``"jpeg"`` or ``"tiff"`` when ``data`` starts like one (its magic bytes), else None."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data[:4] in _TIFF_MAGIC:
        return "tiff"
    return None


def read_image(
    source: str | os.PathLike[str] | Dataset,
    *,
    frame_indices: Sequence[int] | None = None,
    modality: str | None = None,
    max_bytes: int | None = None,
) -> ImageData:
    """Decode ``source`` (a path, or an already parsed pydicom Dataset) into an :class:`ImageData`.

    ``frame_indices`` decodes only those frames (DICOM) or axial slices (NIfTI); by default all of them.
    ``modality`` sets the modality of NIfTI/PNG/JPEG images (they carry none; default ``"OT"``) and overrides
    a DICOM one. ``max_bytes`` overrides :func:`max_decoded_bytes`.

    Raises :class:`ImageTooLargeError` before decoding when the header declares more than the limit, and
    :class:`ImageDecodeError` for anything unreadable.
    """
    limit = max_decoded_bytes() if max_bytes is None else max_bytes
    if isinstance(source, Dataset):
        return _read_dicom(source, path=_dataset_path(source), frame_indices=frame_indices, modality=modality,
                           limit=limit)
    path = Path(source)
    if not path.is_file():
        raise ImageDecodeError(f"{path}: not a readable file")
    fmt = sniff_format(path)
    if fmt is None:
        raise ImageDecodeError(f"{path}: not a DICOM, NIfTI, PNG or JPEG file")
    if fmt == "dicom":
        try:
            ds = pydicom.dcmread(path)
        except _DECODE_FAILURES as exc:
            raise ImageDecodeError(f"{path}: cannot parse DICOM: {exc}") from exc
        return _read_dicom(ds, path=str(path), frame_indices=frame_indices, modality=modality, limit=limit)
    if fmt == "nifti":
        return _read_nifti(path, frame_indices=frame_indices, modality=modality, limit=limit)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read: {exc}") from exc
    return read_raster(data, where=str(path), frame_indices=frame_indices, modality=modality, max_bytes=limit)


def _dataset_path(ds: Dataset) -> str | None:
    filename = getattr(ds, "filename", None)
    return filename if isinstance(filename, str) and filename else None


def _check_limit(where: str, size_bytes: int, limit: int) -> None:
    if size_bytes > limit:
        raise ImageTooLargeError(
            f"{where}: decoded image would take {size_bytes} bytes, over the limit of {limit} bytes",
            size_bytes=size_bytes,
            limit_bytes=limit,
        )


def _select(where: str, total: int, frame_indices: Sequence[int] | None) -> list[int]:
    if frame_indices is None:
        return list(range(total))
    chosen = [int(i) for i in frame_indices]
    bad = [i for i in chosen if not 0 <= i < total]
    if bad:
        raise ImageDecodeError(f"{where}: frame index {bad[0]} out of range (the image has {total} frames)")
    if not chosen:
        raise ImageDecodeError(f"{where}: no frame selected")
    return chosen


def _luminance(rgb: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    out = np.zeros(rgb.shape[:-1], dtype=np.float32)
    for channel, weight in enumerate(_LUMA):
        out += np.float32(weight) * rgb[..., channel].astype(np.float32)
    return out


def _file_source_id(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"file:{digest.hexdigest()[:16]}"


# ------------------------------------------------------------------------------------------------------- DICOM


def _int_attr(ds: Dataset, keyword: str, where: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise ImageDecodeError(f"{where}: missing {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageDecodeError(f"{where}: {keyword} {value!r} is not an integer") from None


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        seq = [value]
    else:
        seq = list(value)
    if not seq:
        return None
    try:
        return float(seq[0])
    except (TypeError, ValueError):
        return None


def _group_items(ds: Dataset, sequence: str, index: int | None) -> list[Dataset]:
    """Items of ``sequence`` from the per-frame group of frame ``index`` then the shared group."""
    items: list[Dataset] = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if index is not None and per_frame is not None and index < len(per_frame):
        inner = per_frame[index].get(sequence)
        if inner:
            items.append(inner[0])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        inner = shared[0].get(sequence)
        if inner:
            items.append(inner[0])
    return items


def _rescale_for(ds: Dataset, index: int) -> tuple[float, float] | None:
    for item in [ds, *_group_items(ds, "PixelValueTransformationSequence", index)]:
        slope = _first_float(item.get("RescaleSlope"))
        intercept = _first_float(item.get("RescaleIntercept"))
        if slope is not None and intercept is not None:
            return slope, intercept
    return None


def _window_of(ds: Dataset) -> tuple[float, float] | None:
    for item in [ds, *_group_items(ds, "FrameVOILUTSequence", 0)]:
        center = _first_float(item.get("WindowCenter"))
        width = _first_float(item.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            return center, width
    return None


def _spacing_of(ds: Dataset) -> tuple[float, float] | None:
    candidates: list[Any] = [ds.get("PixelSpacing")]
    candidates += [item.get("PixelSpacing") for item in _group_items(ds, "PixelMeasuresSequence", 0)]
    candidates += [ds.get("ImagerPixelSpacing")]
    for value in candidates:
        try:
            if value is not None and len(value) == 2:
                row, col = float(value[0]), float(value[1])
                if row > 0 and col > 0:
                    return row, col
        except (TypeError, ValueError):
            continue
    return None


def _dicom_source_id(ds: Dataset, path: str | None) -> str:
    for keyword, kind in (("PatientID", "patient"), ("StudyInstanceUID", "study"), ("SOPInstanceUID", "instance")):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return pseudonym(kind, value)
    if path is not None and Path(path).is_file():
        return _file_source_id(Path(path))
    return "unknown"


def _read_dicom(
    ds: Dataset,
    *,
    path: str | None,
    frame_indices: Sequence[int] | None,
    modality: str | None,
    limit: int,
) -> ImageData:
    where = path or "dataset"
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError(f"{where}: the dataset has no pixel data")
    rows = _int_attr(ds, "Rows", where)
    columns = _int_attr(ds, "Columns", where)
    total = _int_attr(ds, "NumberOfFrames", where, default=1)
    samples = _int_attr(ds, "SamplesPerPixel", where, default=1)
    bits_allocated = _int_attr(ds, "BitsAllocated", where)
    if rows <= 0 or columns <= 0 or total <= 0 or samples not in (1, 3) or bits_allocated <= 0:
        raise ImageDecodeError(
            f"{where}: impossible image geometry {rows}x{columns}, {total} frames, {samples} samples, "
            f"{bits_allocated} bits allocated"
        )
    photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    chosen = _select(where, total, frame_indices)
    n = len(chosen)
    # Colour is decoded to 3 samples (a palette through 16-bit LUTs), and every frame ends up as float32.
    sample_bytes = 2 if photometric == "PALETTE COLOR" else max(1, (bits_allocated + 7) // 8)
    out_samples = 3 if photometric == "PALETTE COLOR" else samples
    decoded = rows * columns * n * max(out_samples * sample_bytes, 4)
    _check_limit(where, decoded, limit)

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        raise ImageDecodeError(f"{where}: no Transfer Syntax UID in the file meta information")
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise ImageDecodeError(f"{where}: no decoder for transfer syntax {ts.name}") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "none"
        raise ImageDecodeError(f"{where}: cannot decode {ts.name}: plugins missing ({missing})")

    frames = np.empty((n, rows, columns), dtype=np.float32)
    is_color = photometric == "PALETTE COLOR" or samples == 3
    has_modality_lut = bool(ds.get("ModalityLUTSequence"))
    lut_descriptor = ds.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 16]
    lut_bits = int(lut_descriptor[2]) if len(lut_descriptor) == 3 else 16
    try:
        for position, (array, _meta) in enumerate(decoder.iter_array(ds, indices=chosen, as_rgb=True)):
            index = chosen[position]
            if photometric == "PALETTE COLOR":
                array = apply_color_lut(array, ds)
                if lut_bits == 8 and array.max() > 255:
                    array = array >> 8  # 8-bit entries stored in the high byte of 16-bit words
            if array.ndim == 3:
                frames[position] = _luminance(array)
                continue
            if array.shape != (rows, columns):
                raise ImageDecodeError(f"{where}: frame {index} decoded to {array.shape}, not {(rows, columns)}")
            rescale = _rescale_for(ds, index)
            if rescale is not None:
                slope, intercept = rescale
                frames[position] = array.astype(np.float64) * slope + intercept
            elif has_modality_lut:
                frames[position] = apply_modality_lut(array, ds)
            else:
                frames[position] = array
    except ImageDecodeError:
        raise
    except _DECODE_FAILURES as exc:
        raise ImageDecodeError(f"{where}: cannot decode {ts.name} pixel data: {exc}") from exc
    if not np.isfinite(frames).all():
        np.nan_to_num(frames, copy=False, nan=0.0, posinf=0.0, neginf=0.0)

    bits_stored = ds.get("BitsStored")
    sop = str(ds.get("SOPInstanceUID", "") or "").strip() or None
    return ImageData(
        frames=frames,
        format="dicom",
        modality=(modality or str(ds.get("Modality", "") or "OT")).strip().upper() or "OT",
        bits_stored=int(bits_stored) if bits_stored not in (None, "") else None,
        photometric=photometric,
        pixel_spacing=_spacing_of(ds),
        window=None if is_color else _window_of(ds),
        source_id=_dicom_source_id(ds, path),
        sop_instance_uid=sop,
        is_color=is_color,
        frame_indices=tuple(chosen),
        total_frames=total,
        path=path,
    )


# ------------------------------------------------------------------------------------------------------- NIfTI


def _read_nifti(
    path: Path, *, frame_indices: Sequence[int] | None, modality: str | None, limit: int
) -> ImageData:
    import nibabel
    from nibabel.filebasedimages import ImageFileError

    nib = cast(Any, nibabel)
    failures = (*_DECODE_FAILURES, cast(type[BaseException], ImageFileError))
    where = str(path)
    try:
        img: Any = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        if len(shape) < 2 or len(shape) > 4 or any(s <= 0 for s in shape):
            raise ImageDecodeError(f"{where}: unsupported NIfTI shape {shape}")
        if len(shape) == 4:
            img = img.slicer[..., 0]  # the first volume of a series
        elif len(shape) == 2:
            img = img.slicer[:, :, None]
        x, y, z = (int(s) for s in img.shape[:3])
        dtype = img.get_data_dtype()
        chosen = _select(where, z, frame_indices)
        _check_limit(where, x * y * z * max(int(dtype.itemsize), 4), limit)
        img = nib.as_closest_canonical(img)
        volume = np.asarray(img.dataobj, dtype=np.float32)
        zooms = tuple(float(v) for v in img.header.get_zooms()[:2])
    except ImageDecodeError:
        raise
    except failures as exc:
        raise ImageDecodeError(f"{where}: cannot read NIfTI: {exc}") from exc
    # Axial slices shown radiologically: rows run anterior -> posterior, columns right -> left of the image.
    frames = np.ascontiguousarray(np.stack([np.flipud(volume[:, :, k].T) for k in chosen]), dtype=np.float32)
    np.nan_to_num(frames, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    integer = np.issubdtype(dtype, np.integer)
    return ImageData(
        frames=frames,
        format="nifti",
        modality=(modality or "OT").strip().upper(),
        bits_stored=int(dtype.itemsize) * 8 if integer else None,
        photometric="MONOCHROME2",
        pixel_spacing=(zooms[1], zooms[0]) if len(zooms) == 2 and min(zooms) > 0 else None,
        window=None,
        source_id=_file_source_id(path),
        sop_instance_uid=None,
        is_color=False,
        frame_indices=tuple(chosen),
        total_frames=z,
        path=where,
    )


# ------------------------------------------------------------------------------------------------- PNG / JPEG


def _png_header(data: bytes, where: str) -> tuple[int, int, int, int]:
    """``(height, width, channels, bytes per sample)`` from the IHDR chunk."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageDecodeError(f"{where}: PNG without an IHDR chunk")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour)
    if channels is None or width == 0 or height == 0:
        raise ImageDecodeError(f"{where}: malformed PNG header")
    return height, width, channels, 2 if depth == 16 else 1


def _jpeg_header(data: bytes, where: str) -> tuple[int, int, int, int]:
    """``(height, width, components, bytes per sample)`` from the first SOF marker."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageDecodeError(f"{where}: malformed JPEG marker stream")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 10 > len(data):
                break
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            if height == 0 or width == 0 or components == 0:
                raise ImageDecodeError(f"{where}: malformed JPEG frame header")
            return height, width, components, 2 if precision > 8 else 1
        pos += 2 + length
    raise ImageDecodeError(f"{where}: JPEG without a frame header")


def _tiff_header(data: bytes, where: str) -> tuple[int, int, int, int]:
    """``(height, width, samples, bytes per sample)`` from the first image file directory (TIFF or BigTIFF)."""
    e = "<" if data[:2] == b"II" else ">"
    try:
        big = struct.unpack(e + "H", data[2:4])[0] == 43
        offset = struct.unpack(e + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
        count_fmt, entry, slot = ("Q", 20, 8) if big else ("H", 12, 4)
        (n,) = struct.unpack(e + count_fmt, data[offset : offset + struct.calcsize(count_fmt)])
        start = offset + struct.calcsize(count_fmt)
        tags: dict[int, int] = {}
        sizes = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}
        for k in range(min(n, 4096)):
            pos = start + k * entry
            tag, kind = struct.unpack(e + "HH", data[pos : pos + 4])
            if tag not in (256, 257, 258, 277) or kind not in sizes:
                continue
            (count,) = struct.unpack(e + ("Q" if big else "I"), data[pos + 4 : pos + 4 + slot])
            fmt, size = sizes[kind]
            where_value = pos + 4 + slot
            if count * size > slot:  # the values live elsewhere: the offset is in the slot
                (where_value,) = struct.unpack(e + ("Q" if big else "I"), data[pos + 4 + slot : pos + 4 + 2 * slot])
            (tags[tag],) = struct.unpack(e + fmt, data[where_value : where_value + size])
    except struct.error as exc:
        raise ImageDecodeError(f"{where}: malformed TIFF header ({exc})") from None
    width, height = tags.get(256, 0), tags.get(257, 0)
    if width == 0 or height == 0:
        raise ImageDecodeError(f"{where}: TIFF without image width and length")
    return height, width, max(1, tags.get(277, 1)), max(1, (tags.get(258, 8) + 7) // 8)


_RASTER_HEADERS = {"png": _png_header, "jpeg": _jpeg_header, "tiff": _tiff_header}


def decode_raster(data: bytes, *, where: str = "<bytes>", max_bytes: int | None = None) -> npt.NDArray[Any]:
    """The pixels of a PNG, JPEG or TIFF image as OpenCV decodes them (grey, grey + alpha, BGR or BGRA; 8 or 16
    bits), after its header's declared size was checked against the decode limit (:func:`max_decoded_bytes`, or
    ``max_bytes``): a few hundred bytes can declare 65535 x 65535 pixels."""
    import cv2

    fmt = raster_format(data)
    if fmt is None:
        raise ImageDecodeError(f"{where}: not a PNG, JPEG or TIFF image")
    limit = max_decoded_bytes() if max_bytes is None else max_bytes
    height, width, channels, sample_bytes = _RASTER_HEADERS[fmt](data, where)
    _check_limit(where, height * width * max(channels * sample_bytes, 4), limit)
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageDecodeError(f"{where}: cannot decode {fmt}: {exc}") from exc
    if array is None:
        raise ImageDecodeError(f"{where}: cannot decode {fmt} (damaged or cut short)")
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise ImageDecodeError(f"{where}: unsupported {fmt} pixels ({array.dtype}, shape {array.shape})")
    decoded: npt.NDArray[Any] = array
    return decoded


def image_from_raster(
    array: npt.NDArray[Any], fmt: RasterFormat, *, where: str, source_id: str, modality: str | None = None
) -> ImageData:
    """An :class:`ImageData` of one decoded raster (:func:`decode_raster`): colour reduced to luminance."""
    is_color = array.ndim == 3 and array.shape[2] >= 3
    if array.ndim == 3:
        if array.shape[2] >= 3:
            pixels = _luminance(array[..., 2::-1])  # OpenCV gives BGR(A)
        else:
            pixels = array[..., 0].astype(np.float32)  # grey + alpha
    else:
        pixels = array.astype(np.float32)
    return ImageData(
        frames=pixels[None, ...].astype(np.float32, copy=False),
        format=fmt,
        modality=(modality or "OT").strip().upper(),
        bits_stored=8 * int(array.dtype.itemsize),
        photometric="RGB" if is_color else "MONOCHROME2",
        pixel_spacing=None,
        window=None,
        source_id=source_id,
        sop_instance_uid=None,
        is_color=is_color,
        frame_indices=(0,),
        total_frames=1,
        path=where,
    )


def read_raster(
    data: bytes,
    *,
    where: str = "<bytes>",
    frame_indices: Sequence[int] | None = None,
    modality: str | None = None,
    max_bytes: int | None = None,
) -> ImageData:
    """Decode a PNG, JPEG or TIFF image held in memory (:func:`decode_raster`, then :func:`image_from_raster`)."""
    fmt = raster_format(data)
    if fmt is None:
        raise ImageDecodeError(f"{where}: not a PNG, JPEG or TIFF image")
    _select(where, 1, frame_indices)
    array = decode_raster(data, where=where, max_bytes=max_bytes)
    source_id = f"file:{hashlib.sha256(data).hexdigest()[:16]}"
    return image_from_raster(array, fmt, where=where, source_id=source_id, modality=modality)
