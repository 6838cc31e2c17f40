"""Frozen configurations shared by every generator.

A generator's config carries everything needed to rebuild it: the architecture arguments, the training image
(patch) size and the training hyper-parameters. Each generator subclasses :class:`GeneratorConfig` and declares
its presets (``tiny`` for tests, ``small`` for a CPU run under 30 minutes, ``large`` for users with more time).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from detectors.generators.errors import GeneratorConfigError

__all__ = ["PRESET_NAMES", "GeneratorConfig", "parse_overrides"]

#: The preset names every generator defines.
PRESET_NAMES: tuple[str, ...] = ("tiny", "small", "large")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Fields common to every generator.

    ``image_size`` is the side of the square training patches (random crops of normalised frames, upsampled
    first when a frame is smaller). ``steps``/``batch_size``/``lr`` drive :meth:`Generator.fit`.
    """

    image_size: int = 64
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-4

    #: Overrides per preset name; the dataclass defaults are the ``small`` preset unless overridden.
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: Multiple the image size must be divisible by (the network's total down-sampling).
    SIZE_MULTIPLE: ClassVar[int] = 8

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):  # from JSON
                object.__setattr__(self, field.name, tuple(value))
        if self.image_size < 16 or self.image_size % self.SIZE_MULTIPLE:
            raise GeneratorConfigError(
                f"image_size must be >= 16 and a multiple of {self.SIZE_MULTIPLE}, got {self.image_size}"
            )
        if self.steps < 0 or self.batch_size < 1:
            raise GeneratorConfigError("steps must be >= 0 and batch_size >= 1")
        if not self.lr > 0:
            raise GeneratorConfigError(f"lr must be positive, got {self.lr}")
        self.validate()

    def validate(self) -> None:
        """Generator-specific checks; raise :class:`GeneratorConfigError`."""

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """The named preset (``tiny``, ``small``, ``large``) with ``overrides`` applied."""
        if name not in cls.PRESETS:
            raise GeneratorConfigError(f"unknown preset {name!r}; choose one of {', '.join(cls.PRESETS)}")
        return cls.from_dict({**cls.PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build from a mapping (e.g. a checkpoint's JSON), refusing unknown fields and wrong types."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise GeneratorConfigError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        checked: dict[str, Any] = {}
        for key, value in values.items():
            checked[key] = _coerce(key, hints[key], value)
        try:
            return cls(**checked)
        except TypeError as exc:
            raise GeneratorConfigError(f"invalid {cls.__name__}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable mapping (tuples become lists)."""
        return dataclasses.asdict(self)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise GeneratorConfigError(f"{key} must be a boolean, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise GeneratorConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GeneratorConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise GeneratorConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise GeneratorConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(key, item, v) if item is not Any else v for v in value)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise GeneratorConfigError(f"{key} must be one of {typing.get_args(hint)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    return value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Config overrides from ``FIELD=VALUE`` strings; VALUE is JSON where it parses (``width=48``,
    ``radius_px=[4,12]``), else a string (``inpaint_method=learned``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GeneratorConfigError(f"an override takes FIELD=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
