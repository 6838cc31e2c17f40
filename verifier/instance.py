"""One parsed DICOM instance, read once and passed everywhere, and the DICOM files named on a command line.

Unreadable input becomes :class:`UnreadableInstanceError` (with a ``kind`` of ``UNREADABLE`` or ``MALFORMED``),
never a traceback: parsing is tolerant (pydicom's defaults) but the checks below refuse what cannot be a DICOM
instance or is cut short.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID

from verifier.errors import InputError

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_INFLATED_BYTES",
    "MAX_PIXEL_BYTES",
    "SYNTHETIC_DATA_TAG",
    "Instance",
    "UnreadableInstanceError",
    "is_dicom_file",
    "iter_input_files",
]

#: Files larger than this are refused before they are read (a bound on memory per file).
MAX_FILE_BYTES = int(os.environ.get("MEDVERIFY_MAX_FILE_BYTES", str(2 * 1024**3)))
#: An image whose header promises more decoded pixel bytes than this is refused before anything is decoded: a
#: few kilobytes of JPEG or RLE can claim 65535 x 65535 x 2^31 frames (a decompression bomb).
MAX_PIXEL_BYTES = int(os.environ.get("MEDVERIFY_MAX_PIXEL_BYTES", str(1024**3)))
#: A deflated data set is inflated whole by the parser; more than this is refused before inflating.
MAX_INFLATED_BYTES = int(os.environ.get("MEDVERIFY_MAX_INFLATED_BYTES", str(512 * 1024**2)))


class UnreadableInstanceError(InputError):
    """The input is not a readable DICOM instance."""

    def __init__(self, message: str, *, kind: Literal["UNREADABLE", "MALFORMED"], sha256: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.sha256 = sha256


_TRUNCATION_WARNINGS = ("end of file", "before delimiter", "truncat")
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _check_truncation(ds: FileDataset, size: int, path: str, digest: str, warned: list[str]) -> None:
    """pydicom reads a file cut short without complaint; find the cut here (MALFORMED).

    A value shorter than its length field, a last element that does not end where the file ends (a cut inside an
    element header), a warning that the data ended before a delimiter, or an image without Pixel Data.
    """

    def refuse(why: str, consequence: str = "the file is cut short or damaged") -> NoReturn:
        raise UnreadableInstanceError(f"{path}: {why}: {consequence}", kind="MALFORMED", sha256=digest)

    for message in warned:
        if any(word in message.lower() for word in _TRUNCATION_WARNINGS):
            refuse(f"the parser reported '{message[:120]}'")
    # pydicom reads the top level in order and stops at the end of the data, so only the last element read can
    # hold fewer bytes than its length field promises (a cut inside a nested sequence gives a warning above).
    last = next(reversed(ds.values()), None)  # type: ignore[call-overload]  # raw items: no value conversion
    length = getattr(last, "length", None)
    value = getattr(last, "value", None)
    if isinstance(value, bytes) and isinstance(length, int) and length != 0xFFFFFFFF and len(value) < length:
        refuse(f"element {last.tag} is truncated ({len(value)} of {length} bytes)")  # type: ignore[union-attr]
    deflated = _meta_text(ds, 0x00020010) == _DEFLATED
    if not deflated and isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF and last.value_tell is not None:
        end = last.value_tell + last.length
        if end != size:
            refuse(f"{size - end} byte(s) after the last complete element {last.tag}")
    if 0x00080018 not in ds:
        refuse("no SOP Instance UID in the data set", "not a composite DICOM instance, or cut short")
    for keyword, vr in _IDENTIFIERS:
        elem = ds.get_item(_TAGS[keyword])
        if _plain_text(elem, vr):
            continue  # the decoding cannot fail: the dictionary's VR (or implicit) and ASCII bytes
        try:  # the identifiers every report and audit record reads: decode them now, at the boundary
            _peek(ds, keyword)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged value
            refuse(f"{keyword} cannot be decoded ({type(exc).__name__}: {str(exc)[:80]})")
    media_class = _meta_text(ds, 0x00020002)  # a damaged one raises here: MALFORMED
    is_image = 0x00280010 in ds or "Image Storage" in UID(media_class).name  # the name lookup only without Rows
    if is_image and not any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        refuse("an image without Pixel Data")
    if 0x7FE00010 in ds:
        _check_pixel_budget(ds, refuse)


_IDENTIFIERS = (("SOPInstanceUID", "UI"), ("SOPClassUID", "UI"), ("Modality", "CS"), ("PatientID", "LO"))
_IDENTIFIER_VRS = dict(_IDENTIFIERS)
#: Synthetic Data (0008,001C), CS, YES or NO: the standard's own flag for an image that is not of a patient.
SYNTHETIC_DATA_TAG = 0x0008001C
_TAGS: dict[str, int] = {
    keyword: tag
    for keyword in ("SOPInstanceUID", "SOPClassUID", "Modality", "PatientID", "Rows", "Columns", "NumberOfFrames",
                    "SamplesPerPixel", "BitsAllocated")
    if (tag := tag_for_keyword(keyword)) is not None
}  # fmt: skip


def _meta_text(ds: FileDataset, tag: int) -> str:
    """A UID of the file meta group ("" when absent): a raw UI value is decoded here (a UID's conversion costs as
    much as the rest of these checks), anything else is converted by pydicom, which raises for a damaged one."""
    meta = getattr(ds, "file_meta", None)
    elem = meta.get_item(tag) if meta is not None else None
    if elem is None:
        return ""
    if isinstance(elem, RawDataElement) and elem.VR == "UI" and isinstance(elem.value, bytes):
        return elem.value.decode("latin-1").rstrip("\x00 ")
    return str(meta[tag].value or "")  # type: ignore[index]


def _plain_text(elem: object, vr: str) -> bool:
    """A raw text element whose conversion cannot fail: its VR is the dictionary's (or implicit) and its bytes
    are printable ASCII without a NUL or backslash inside (a NUL at the end is UI padding)."""
    if not isinstance(elem, RawDataElement) or elem.VR not in (None, vr) or not isinstance(elem.value, bytes):
        return False
    text = elem.value.rstrip(b"\x00 ")
    return text.isascii() and b"\x00" not in text and b"\\" not in text and (not text or text.decode().isprintable())


def _peek(ds: FileDataset, keyword: str) -> Any:
    """The value of ``keyword`` decoded from a copy: the data set keeps its raw element, so that the signature
    check still hashes the bytes as read (and takes its fast path)."""
    elem = ds.get_item(_TAGS.get(keyword) or tag_for_keyword(keyword))  # type: ignore[arg-type]  # a known keyword
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        elem = convert_raw_data_element(elem, encoding=getattr(ds, "_character_set", None), ds=ds)
    return elem.value


def _peek_us(ds: FileDataset, keyword: str) -> Any:
    """:func:`_peek` of a US attribute, read straight from its two raw bytes when it has them (the common case:
    conversion costs more than the rest of the header checks together)."""
    elem = ds.get_item(_TAGS[keyword])
    if isinstance(elem, RawDataElement) and elem.VR in (None, "US") and isinstance(elem.value, bytes):
        if len(elem.value) == 2:
            return int.from_bytes(elem.value, "little" if elem.is_little_endian else "big")
    return _peek(ds, keyword)


_US_ATTRIBUTES = frozenset({"Rows", "Columns", "SamplesPerPixel", "BitsAllocated"})


def _int_attr(ds: FileDataset, keyword: str, default: int | None, refuse: Callable[[str, str], NoReturn]) -> int:
    """An integer attribute of the image pixel module, refusing absent (without default), odd or negative values."""
    value = _peek_us(ds, keyword) if keyword in _US_ATTRIBUTES else _peek(ds, keyword)
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        if default is None:
            refuse(f"an image without {keyword}", "the pixel data cannot be interpreted")
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        refuse(f"{keyword} is not a number ({str(value)[:40]!r})", "the pixel data cannot be interpreted")
    if number < 0 or (number == 0 and keyword != "PixelRepresentation"):
        refuse(f"{keyword} is {number}", "the pixel data cannot be interpreted")
    return number


def _check_pixel_budget(ds: FileDataset, refuse: Callable[[str, str], NoReturn]) -> None:
    """Refuse absurd dimensions before any decoder allocates for them (decompression bombs, hostile headers)."""

    def refuse1(why: str, consequence: str = "the image is refused before decoding") -> NoReturn:
        refuse(why, consequence)

    rows = _int_attr(ds, "Rows", None, refuse1)
    columns = _int_attr(ds, "Columns", None, refuse1)
    frames = _int_attr(ds, "NumberOfFrames", 1, refuse1)
    samples = _int_attr(ds, "SamplesPerPixel", 1, refuse1)
    bits = _int_attr(ds, "BitsAllocated", None, refuse1)
    if samples > 4 or bits > 64:
        refuse1(f"{samples} samples of {bits} bits per pixel is not an image DICOM allows")
    decoded = rows * columns * frames * samples * ((bits + 7) // 8)
    if decoded > MAX_PIXEL_BYTES:
        refuse1(
            f"the header promises {decoded:,} bytes of decoded pixels ({rows}x{columns}, {frames} frame(s), "
            f"{samples} sample(s) of {bits} bits), over the limit of {MAX_PIXEL_BYTES:,} (MEDVERIFY_MAX_PIXEL_BYTES)"
        )


def _check_deflate_budget(data: bytes, path: str, digest: str) -> None:
    """Inflate a deflated data set in bounded steps before pydicom inflates it whole (a deflate bomb)."""
    if _DEFLATED.encode() not in data[132:4096]:  # the file meta group names the transfer syntax; usually absent
        return
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        syntax = str(_read_file_meta_info(fp).get("TransferSyntaxUID", ""))
    except Exception:  # noqa: BLE001 - a broken meta header is reported by the full parse that follows
        return
    if syntax != _DEFLATED:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[fp.tell() :], MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise UnreadableInstanceError(
            f"{path}: the deflated data set cannot be inflated ({exc})", kind="MALFORMED", sha256=digest
        ) from exc
    if inflater.unconsumed_tail:
        raise UnreadableInstanceError(
            f"{path}: the deflated data set inflates to more than {MAX_INFLATED_BYTES:,} bytes "
            "(MEDVERIFY_MAX_INFLATED_BYTES): refused before inflating",
            kind="MALFORMED",
            sha256=digest,
        )


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (the 'DICM' magic after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def iter_input_files(
    paths: Iterable[Path | str], *, follow_symlinks: bool = False, exports: bool = False
) -> Iterator[Path]:
    """Files named on the command line, and DICOM files (by content) found under directories; with ``exports``
    also PNG, JPEG, TIFF and PDF files (by content: :func:`verifier.exports.is_export_file`).

    A path named explicitly is always yielded (a missing or non-DICOM file gets its own UNREADABLE result);
    files in directories are yielded only when they start like DICOM (or an export). Symlinks inside directories
    are not followed unless asked.
    """
    from verifier.exports import is_export_file

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for sub in sorted(_walk(p, follow_symlinks)):
                if is_dicom_file(sub) or (exports and is_export_file(sub)):
                    yield sub
        else:
            # Named explicitly: it gets its own result, UNREADABLE if it does not exist (one line per input).
            yield p


def _walk(root: Path, follow_symlinks: bool) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            if not follow_symlinks and full.is_symlink():
                continue
            yield full


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Instance:
    """A DICOM instance: the dataset, the file's SHA-256 and the identifiers the reports need."""

    path: str
    sha256: str
    size: int
    dataset: FileDataset

    def _text(self, keyword: str) -> str | None:
        """An identifier as text for reports and records: padding removed, control characters escaped (a hostile
        file can put NULs inside a UID; the audit database refuses them)."""
        elem = self.dataset.get_item(_TAGS[keyword])
        if _plain_text(elem, _IDENTIFIER_VRS[keyword]):  # the common case, without converting the element
            return elem.value.rstrip(b"\x00 ").decode("ascii") or None
        value = self.dataset.get(keyword)
        if not value:
            return None
        text = str(value).rstrip("\x00 ")
        if text.isprintable():
            return text or None
        return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text) or None

    @property
    def sop_instance_uid(self) -> str | None:
        return self._text("SOPInstanceUID")

    @property
    def sop_class_uid(self) -> str | None:
        return self._text("SOPClassUID")

    @property
    def modality(self) -> str | None:
        return self._text("Modality")

    @property
    def synthetic_data(self) -> bool | None:
        """Synthetic Data (0008,001C): True for YES, False for NO, None when absent or unreadable (read tolerantly:
        padding and case ignored; a damaged value says nothing rather than stopping the check)."""
        elem = self.dataset.get_item(SYNTHETIC_DATA_TAG)
        if elem is None:
            return None
        value = elem.value
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        text = str(value or "").strip("\x00 ").upper()
        return True if text == "YES" else False if text == "NO" else None

    @classmethod
    def from_bytes(cls, data: bytes, *, path: str = "<bytes>", max_bytes: int = MAX_FILE_BYTES) -> Instance:
        """Parse ``data``; raise :class:`UnreadableInstanceError` when it is not a usable DICOM instance (or is
        larger than ``max_bytes``)."""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) > max_bytes:
            raise UnreadableInstanceError(
                f"{path}: {len(data)} bytes exceeds the limit of {max_bytes} bytes", kind="MALFORMED", sha256=digest
            )
        if len(data) < 132 or data[128:132] != b"DICM":
            raise UnreadableInstanceError(
                f"{path}: not a DICOM Part 10 file (no 'DICM' preamble)", kind="UNREADABLE", sha256=digest
            )
        try:
            _check_deflate_budget(data, path, digest)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(io.BytesIO(data))
            # Values stay raw (the signature check hashes the bytes as read); only the structure is checked here,
            # and a value that fails to convert later becomes a MALFORMED result at the checker's boundary.
            _check_truncation(ds, len(data), path, digest, [str(w.message) for w in caught])
        except UnreadableInstanceError:
            raise
        except InvalidDicomError as exc:
            raise UnreadableInstanceError(f"{path}: {exc}", kind="UNREADABLE", sha256=digest) from exc
        except Exception as exc:
            raise UnreadableInstanceError(
                f"{path}: malformed DICOM ({type(exc).__name__}: {str(exc)[:200]})",
                kind="MALFORMED",
                sha256=digest,
            ) from exc
        if len(ds) == 0:
            raise UnreadableInstanceError(f"{path}: the file has no data set", kind="MALFORMED", sha256=digest)
        return cls(path=path, sha256=digest, size=len(data), dataset=ds)

    @classmethod
    def from_path(cls, path: Path | str, *, max_bytes: int = MAX_FILE_BYTES) -> Instance:
        """Read and parse the file at ``path`` (refused unread when it is larger than ``max_bytes``)."""
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > max_bytes:
                raise UnreadableInstanceError(
                    f"{p}: {size} bytes exceeds the limit of {max_bytes} bytes", kind="MALFORMED"
                )
            data = p.read_bytes()
        except IsADirectoryError as exc:
            raise UnreadableInstanceError(f"{p}: is a directory", kind="UNREADABLE") from exc
        except OSError as exc:
            raise UnreadableInstanceError(f"{p}: cannot be read ({exc.strerror})", kind="UNREADABLE") from exc
        return cls.from_bytes(data, path=str(p), max_bytes=max_bytes)
