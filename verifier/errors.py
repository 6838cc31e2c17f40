"""The one error base of the application layer.

The CLI catches :class:`MedverifyError` (and :class:`provenance.errors.ProvenanceError`) in one place and maps
them to exit code 2 with the diagnostics on stderr.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "ConfigError",
    "DatabaseUnavailableError",
    "InputError",
    "MedverifyError",
    "is_contained_failure",
]


class MedverifyError(Exception):
    """Base class of every application error."""

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


def is_contained_failure(exc: BaseException) -> bool:
    """Whether a check boundary turns ``exc`` into a MALFORMED result: every ``Exception``, and the panics of
    decoder plugins written in Rust (pyo3's ``PanicException`` derives from ``BaseException``, so that a panic
    is not caught by ``except Exception``; the fuzzer found RLE data that makes pylibjpeg-rle panic). Keyboard
    interrupts and exits still propagate."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"
