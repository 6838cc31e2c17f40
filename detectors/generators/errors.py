"""Errors of the in-house generators (all :class:`detectors.errors.DetectorsError`)."""

from __future__ import annotations

from detectors.errors import DetectorsError

__all__ = ["CheckpointError", "GeneratorConfigError", "GeneratorError", "GeneratorInputError", "UnknownGeneratorError"]


class GeneratorError(DetectorsError):
    """Base class of every generator error."""


class UnknownGeneratorError(GeneratorError, KeyError):
    """No generator is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class GeneratorConfigError(GeneratorError, ValueError):
    """A generator configuration (preset name, field, value) is invalid."""


class GeneratorInputError(GeneratorError, ValueError):
    """An input array (training frame, real image) has the wrong shape, type or range."""


class CheckpointError(GeneratorError):
    """A checkpoint is missing, malformed, for another generator, or its weights do not match its digest."""
