"""Image exports: PNG, JPEG and TIFF files, and the images embedded in PDF files, as claims and archives hold them.

What insurers and archives receive is often not DICOM but what a viewer exported (an 8-bit PNG or a JPEG, often
resized) or a PDF report with the images in it. Each image of such a file is read here once into an
:class:`ExportImage` (its stored pixels for the watermark, its decoded frame for the detector and the reuse index,
its C2PA Content Credentials) and checked by :meth:`verifier.checker.Checker.check_export`: one result, and one
audit record, per image, naming the PDF page it came from.

A file that is not what it starts like (a PDF that is not a PDF, a PNG cut short, a header declaring 65535 x 65535
pixels) gives an UNREADABLE or MALFORMED result with why, never an exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from provenance.credentials import ContentCredentials, CredentialsError, read_credentials
from verifier.instance import UnreadableInstanceError

if TYPE_CHECKING:
    from detectors.data import ImageData

__all__ = [
    "EXPORT_KINDS",
    "ExportImage",
    "ExportPart",
    "export_kind",
    "is_export_file",
    "split_export",
    "stored_grey",
]

ExportKind = Literal["png", "jpeg", "tiff", "pdf"]
#: The file kinds read as exports (by content, not by name).
EXPORT_KINDS: tuple[ExportKind, ...] = ("png", "jpeg", "tiff", "pdf")
#: At most this many images are read from one PDF (each gets a result line and an audit record).
MAX_PDF_IMAGES = 200
_PDF_MAGIC = b"%PDF-"


def export_kind(head: bytes) -> ExportKind | None:
    """The kind of export ``head`` (a file's first bytes) starts like, or None (DICOM, or anything else)."""
    from detectors.data import raster_format

    if head[128:132] == b"DICM":
        return None  # DICOM, also when its preamble is a TIFF header (dual-personality files)
    fmt = raster_format(head)
    if fmt is not None:
        return fmt
    # A PDF may start with a few bytes of junk before its header (readers allow up to 1024).
    return "pdf" if _PDF_MAGIC in head[:1024] else None


def is_export_file(path: Path) -> bool:
    """Whether ``path`` starts like a PNG, JPEG, TIFF or PDF file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return False
    return export_kind(head) is not None


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ExportPart:
    """One image of an export file, still encoded: the file itself for a PNG, JPEG or TIFF; one embedded image
    for a PDF (``page`` and ``index`` count from 1; ``count`` is how many images the PDF gave).

    ``error`` is set (and ``data`` empty) for an embedded image that cannot be taken out of the PDF; ``kind`` is
    then the verdict it gets (``UNREADABLE`` or ``MALFORMED``)."""

    path: str
    file_sha256: str
    container: ExportKind
    data: bytes
    page: int | None = None
    index: int | None = None
    count: int | None = None
    name: str | None = None
    error: str | None = None
    kind: Literal["UNREADABLE", "MALFORMED"] = "MALFORMED"

    @property
    def label(self) -> str:
        """The path, and for an image of a PDF its page and number: ``report.pdf#page=2&image=1``."""
        if self.container != "pdf":
            return self.path
        return f"{self.path}#page={self.page}&image={self.index}"

    def describe(self) -> dict[str, Any]:
        """What an audit record and a JSON result say of where the image came from."""
        out: dict[str, Any] = {"container": self.container, "file_sha256": self.file_sha256}
        if self.container == "pdf":
            out.update(page=self.page, image=self.index, images_in_file=self.count, name=self.name)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ExportImage:
    """One decoded image of an export: what the watermark, the detector and the reuse index read.

    ``pixels`` are its stored values in one grey channel (8 or 16 bit), as ``medverify watermark detect`` reads
    them; ``image`` the same pixels as a float frame (colour reduced to luminance) for the detector and the
    fingerprint; ``credentials`` its C2PA Content Credentials (None: it carries none, or its format has none).
    """

    part: ExportPart
    format: str
    sha256: str
    size: int
    pixels: npt.NDArray[Any]
    image: ImageData
    credentials: ContentCredentials | None = None
    credentials_error: str | None = None

    @property
    def path(self) -> str:
        return self.part.path

    @property
    def label(self) -> str:
        return self.part.label

    @classmethod
    def from_part(cls, part: ExportPart, *, max_bytes: int | None = None) -> ExportImage:
        """Decode ``part``; raise :class:`UnreadableInstanceError` (MALFORMED) when its pixels cannot be read."""
        from detectors.data import decode_raster, image_from_raster, raster_format
        from detectors.errors import DetectorsError

        digest = hashlib.sha256(part.data).hexdigest()
        fmt = raster_format(part.data)
        if part.error is not None or fmt is None:
            why = part.error or "not a PNG, JPEG or TIFF image"
            raise UnreadableInstanceError(f"{part.label}: {why}", kind=part.kind, sha256=digest)
        try:
            array = decode_raster(part.data, where=part.label, max_bytes=max_bytes)
        except DetectorsError as exc:
            raise UnreadableInstanceError(exc.diagnostics(), kind="MALFORMED", sha256=digest) from None
        image = image_from_raster(array, fmt, where=part.label, source_id=f"file:{digest[:16]}")
        credentials, credentials_error = None, None
        try:
            credentials = read_credentials(part.data, fmt)
        except CredentialsError as exc:
            credentials_error = exc.diagnostics()
        return cls(part=part, format=fmt, sha256=digest, size=len(part.data), pixels=stored_grey(array),
                   image=image, credentials=credentials, credentials_error=credentials_error)  # fmt: skip


def stored_grey(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """One grey channel of stored values (8 or 16 bit) from a decoded raster: colour converted the way OpenCV
    converts it (what ``medverify watermark detect`` has always read), alpha dropped."""
    import cv2

    if array.ndim == 2:
        return array
    if array.shape[2] == 2:
        return np.ascontiguousarray(array[..., 0])
    code = cv2.COLOR_BGR2GRAY if array.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
    grey: npt.NDArray[Any] = cv2.cvtColor(array, code)
    return grey


def split_export(data: bytes, kind: ExportKind, *, path: str, max_bytes: int | None = None) -> list[ExportPart]:
    """The images of an export file: the file itself for a raster; each embedded image of a PDF, in page order.

    Raises :class:`UnreadableInstanceError` (MALFORMED) for a PDF that cannot be parsed; an embedded image that
    cannot be taken out becomes a part with ``error`` set, so that it still gets its own result.
    """
    digest = hashlib.sha256(data).hexdigest()
    if kind != "pdf":
        return [ExportPart(path=path, file_sha256=digest, container=kind, data=data)]
    parts = list(_pdf_images(data, path=path, digest=digest, max_bytes=max_bytes))
    return [dataclasses.replace(p, count=len(parts)) for p in parts]


def _pdf_images(data: bytes, *, path: str, digest: str, max_bytes: int | None) -> Iterator[ExportPart]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    from detectors.data import max_decoded_bytes

    limit = max_decoded_bytes() if max_bytes is None else max_bytes
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on damaged files would reach stderr
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise UnreadableInstanceError(f"{path}: the PDF is encrypted", kind="UNREADABLE", sha256=digest)
        pages = list(reader.pages)
    except UnreadableInstanceError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError, RecursionError) as exc:
        raise UnreadableInstanceError(
            f"{path}: not a readable PDF ({type(exc).__name__}: {str(exc)[:160]})", kind="MALFORMED", sha256=digest
        ) from None
    total = 0
    for page_no, page in enumerate(pages, start=1):
        base = {"path": path, "file_sha256": digest, "container": "pdf", "page": page_no}
        try:
            keys = list(page.images.keys())
        except Exception as exc:  # noqa: BLE001 - pypdf raises many types for a damaged page
            yield ExportPart(**base, index=1, data=b"",  # type: ignore[arg-type]
                             error=f"page {page_no} cannot be read ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        for index, key in enumerate(keys, start=1):
            total += 1
            if total > MAX_PDF_IMAGES:
                yield ExportPart(**base, index=index, data=b"", kind="UNREADABLE",  # type: ignore[arg-type]
                                 error=f"more than {MAX_PDF_IMAGES} images in one PDF: the rest are not read")
                return
            name = "/".join(key) if isinstance(key, list | tuple) else str(key)
            declared = _declared_bytes(page, key)
            if declared is not None and declared > limit:
                yield ExportPart(**base, index=index, name=name, data=b"",  # type: ignore[arg-type]
                                 error=f"the image declares {declared:,} bytes of pixels, over the limit of "
                                 f"{limit:,} (MEDVERIFY_MAX_DECODED_BYTES): refused before decoding")
                continue
            try:
                yield ExportPart(**base, index=index, name=name, data=_image_bytes(page.images[key]))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - pypdf and Pillow raise many types for a damaged image
                yield ExportPart(**base, index=index, name=name, data=b"",  # type: ignore[arg-type]
                                 error=f"the embedded image cannot be extracted ({type(exc).__name__}: "
                                 f"{str(exc)[:120]})")


def _declared_bytes(page: Any, key: str | Sequence[str]) -> int | None:
    """Width x height x components x bytes of an image XObject, read from its dictionary before anything is
    decoded (None for inline images and what cannot be looked up)."""
    try:
        names = [key] if isinstance(key, str) else list(key)
        holder = page
        obj = None
        for name in names:
            obj = holder["/Resources"]["/XObject"][name].get_object()
            holder = obj
        if obj is None:
            return None
        width, height = int(obj.get("/Width", 0)), int(obj.get("/Height", 0))
        bits = int(obj.get("/BitsPerComponent", 8) or 8)
        return width * height * 4 * max(1, (bits + 7) // 8)
    except Exception:  # noqa: BLE001 - an unusual dictionary: pypdf's own limits apply then
        return None


def _image_bytes(image: Any) -> bytes:
    """An embedded image as PNG, JPEG or TIFF bytes: JPEG streams as they are stored (the pixels a reused JPEG
    brought with it), anything else (Flate, JPEG 2000, CCITT ...) re-encoded losslessly as PNG by Pillow."""
    from detectors.data import raster_format

    data = bytes(image.data)
    if raster_format(data) is not None:
        return data
    if image.image is None:
        raise ValueError("no decoder for this image")
    out = io.BytesIO()
    pil = image.image
    if pil.mode not in ("L", "I;16", "RGB", "RGBA", "LA"):
        pil = pil.convert("RGB")
    pil.save(out, format="PNG")
    return out.getvalue()
