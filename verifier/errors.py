"""The one error root of medverify, :class:`MedverifyError`, and where the other packages' errors join it.

``provenance`` and ``detectors`` may not import the application (ARCHITECTURE.md, "Layers"), so their own bases
(:class:`~provenance.errors.ProvenanceError`, :class:`~detectors.errors.DetectorsError`) cannot derive from the
root; :func:`application_errors` maps them to it, in this one place. The CLI's ``main`` runs every command inside
it and turns the root into exit code 2 with the diagnostics on stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from detectors.errors import DetectorsError
from provenance.errors import ProvenanceError

__all__ = [
    "AuditError",
    "ConfigError",
    "DatabaseUnavailableError",
    "DetectorsFailure",
    "InputError",
    "MedverifyError",
    "ProvenanceFailure",
    "application_errors",
    "is_contained_failure",
]


class MedverifyError(Exception):
    """The root of every error medverify reports (the application's own, and those mapped from its packages)."""

    def diagnostics(self) -> str:
        """A human-readable explanation, safe to print (never contains secrets)."""
        return str(self)


class ConfigError(MedverifyError):
    """The settings file or environment is invalid."""


class InputError(MedverifyError):
    """A path or argument given by the user cannot be used."""


class AuditError(MedverifyError):
    """The audit database refused or failed an operation."""


class DatabaseUnavailableError(AuditError):
    """The audit database cannot be reached; nothing was recorded."""


class ProvenanceFailure(MedverifyError):
    """A :class:`~provenance.errors.ProvenanceError` (keys, trust, signing, watermark) reached the application."""


class DetectorsFailure(MedverifyError):
    """A :class:`~detectors.errors.DetectorsError` (images, corpora, generators, models) reached the application."""


@contextlib.contextmanager
def application_errors() -> Iterator[None]:
    """Re-raise the errors of ``provenance`` and ``detectors`` as the root's subclasses, with the same
    diagnostics and the original as the cause: the one place where the three packages' errors are joined."""
    try:
        yield
    except ProvenanceError as exc:
        raise ProvenanceFailure(exc.diagnostics()) from exc
    except DetectorsError as exc:
        raise DetectorsFailure(exc.diagnostics()) from exc


def is_contained_failure(exc: BaseException) -> bool:
    """Whether a check boundary turns ``exc`` into a MALFORMED result: every ``Exception``, and the panics of
    decoder plugins written in Rust (pyo3's ``PanicException`` derives from ``BaseException``, so that a panic
    is not caught by ``except Exception``; the fuzzer found RLE data that makes pylibjpeg-rle panic). Keyboard
    interrupts and exits still propagate."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"
