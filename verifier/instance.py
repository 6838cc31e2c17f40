"""One parsed DICOM instance, read once and passed everywhere.

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
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from verifier.errors import InputError

__all__ = ["MAX_FILE_BYTES", "Instance", "UnreadableInstanceError", "is_dicom_file"]

#: Files larger than this are refused before they are read (a bound on memory per file).
MAX_FILE_BYTES = int(os.environ.get("MEDVERIFY_MAX_FILE_BYTES", str(2 * 1024**3)))


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

    def refuse(why: str, consequence: str = "the file is cut short or damaged") -> None:
        raise UnreadableInstanceError(f"{path}: {why}: {consequence}", kind="MALFORMED", sha256=digest)

    for message in warned:
        if any(word in message.lower() for word in _TRUNCATION_WARNINGS):
            refuse(f"the parser reported '{message[:120]}'")
    last = None
    for tag, elem in ds.items():  # raw items: no value conversion
        length = getattr(elem, "length", None)
        value = getattr(elem, "value", None)
        if isinstance(value, bytes) and isinstance(length, int) and length != 0xFFFFFFFF and len(value) < length:
            refuse(f"element {tag} is truncated ({len(value)} of {length} bytes)")
        last = elem
    deflated = str(getattr(ds.file_meta, "TransferSyntaxUID", "")) == _DEFLATED
    if not deflated and isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF and last.value_tell is not None:
        end = last.value_tell + last.length
        if end != size:
            refuse(f"{size - end} byte(s) after the last complete element {last.tag}")
    if 0x00080018 not in ds:
        refuse("no SOP Instance UID in the data set", "not a composite DICOM instance, or cut short")
    sop_class = UID(str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or ""))
    is_image = "Rows" in ds or "Image Storage" in sop_class.name
    if is_image and not any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        refuse("an image without Pixel Data")


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (the 'DICM' magic after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Instance:
    """A DICOM instance: the dataset, the file's SHA-256 and the identifiers the reports need."""

    path: str
    sha256: str
    size: int
    dataset: FileDataset

    @property
    def sop_instance_uid(self) -> str | None:
        value = self.dataset.get("SOPInstanceUID")
        return str(value) if value else None

    @property
    def sop_class_uid(self) -> str | None:
        value = self.dataset.get("SOPClassUID")
        return str(value) if value else None

    @property
    def modality(self) -> str | None:
        value = self.dataset.get("Modality")
        return str(value) if value else None

    @classmethod
    def from_bytes(cls, data: bytes, *, path: str = "<bytes>") -> Instance:
        """Parse ``data``; raise :class:`UnreadableInstanceError` when it is not a usable DICOM instance."""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) < 132 or data[128:132] != b"DICM":
            raise UnreadableInstanceError(
                f"{path}: not a DICOM Part 10 file (no 'DICM' preamble)", kind="UNREADABLE", sha256=digest
            )
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(io.BytesIO(data))
            # Values stay raw (the signature check hashes the bytes as read); only the structure is checked here,
            # and a value that fails to convert later becomes a MALFORMED result at the pipeline boundary.
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
    def from_path(cls, path: Path | str) -> Instance:
        """Read and parse the file at ``path``."""
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > MAX_FILE_BYTES:
                raise UnreadableInstanceError(
                    f"{p}: {size} bytes exceeds the limit of {MAX_FILE_BYTES} bytes", kind="MALFORMED"
                )
            data = p.read_bytes()
        except IsADirectoryError as exc:
            raise UnreadableInstanceError(f"{p}: is a directory", kind="UNREADABLE") from exc
        except OSError as exc:
            raise UnreadableInstanceError(f"{p}: cannot be read ({exc.strerror})", kind="UNREADABLE") from exc
        return cls.from_bytes(data, path=str(p))
