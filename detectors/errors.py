"""The one error base of the ``detectors`` package.

Third-party failures (pydicom, nibabel, OpenCV, decoder plugins) are re-raised as subclasses of
:class:`DetectorsError`, so that the application can turn any of them into a typed record without catching
``Exception``.
"""

from __future__ import annotations

__all__ = ["CorpusError", "DetectorsError", "ImageDecodeError", "ImageTooLargeError"]


class DetectorsError(Exception):
    """Base class of every error raised by :mod:`detectors`."""

    def diagnostics(self) -> str:
        """A human-readable explanation, safe to print (never contains pixel data or patient identifiers)."""
        return str(self)


class ImageDecodeError(DetectorsError):
    """An image file or dataset cannot be turned into frames (unreadable, malformed, unsupported or no pixels)."""


class ImageTooLargeError(ImageDecodeError):
    """The declared image size exceeds the decode limit; refused before any pixel data was decoded."""

    def __init__(self, message: str, *, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(message)
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class CorpusError(DetectorsError):
    """A corpus directory or its manifest is missing, malformed or inconsistent."""
