"""Generating a signed synthetic image: the one use case behind ``medverify generate``, the demo and the benchmarks.

A generator's output becomes a file only here, and always the same way (:func:`verifier.synthetic.write_generated`):
declared synthetic, recorded in the audit log, watermarked with the record's id and signed by a generator key::

    model = load_generator("gan")
    keys = setup.open_generation_keys(settings)
    record_id = generate_signed_image(model, name="gan", seed=7, path=out / "gan.dcm", modality="MR", keys=keys)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from provenance.declaration import SyntheticDeclaration
from provenance.signature import SignerLike
from provenance.watermark import WatermarkKey
from verifier.errors import InputError
from verifier.synthetic import MODALITIES, usable_value_range, write_generated

if TYPE_CHECKING:  # torch is imported only when a generator is loaded, SQLAlchemy only when a record is written
    from detectors.generators import Generator
    from verifier.audit import AuditLog

__all__ = [
    "GenerationKeys",
    "PairedSource",
    "default_checkpoint",
    "generate_signed_image",
    "load_generator",
]

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationKeys:
    """What every generated image is written with: the generator key that signs it (and its name, recorded), the
    watermark key that marks its pixels, and the audit log that records it first."""

    signer: SignerLike
    key_name: str
    watermark_key: WatermarkKey
    log: AuditLog


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairedSource:
    """A real image that paired fakes are made from: its normalised frame, the stored range a fake takes from it,
    and the identity a fake's declaration names."""

    pixels: npt.NDArray[np.floating]
    value_range: tuple[float, float] | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> PairedSource:
        """A DICOM, NIfTI or PNG image as the detectors' normalisation reads it; a fake is stored on its scale."""
        from detectors.data.normalize import normalization_range, normalize_image
        from detectors.data.reader import read_image

        image = read_image(path)
        value_range = usable_value_range(normalization_range(image.frames, image.modality, window=image.window))
        sop_class_uid = None
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".nii", ".gz"):
            sop_instance_uid = _content_uid(path)
        else:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class_uid, sop_instance_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        return cls(
            pixels=normalize_image(image)[0],
            value_range=value_range,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            modality=image.modality if image.modality in MODALITIES else None,
        )


def _content_uid(path: Path) -> str:
    """A UID for a non-DICOM source image, derived from its content (UUID-derived 2.25 form, PS3.5 B.2)."""
    digest = hashlib.sha256(path.read_bytes()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def default_checkpoint(name: str) -> Path | None:
    """The checkpoint of generator ``name`` that ships with the package, if any."""
    import detectors

    path = Path(detectors.__file__).parent / "checkpoints" / name
    return path if (path / "checkpoint.json").is_file() else None


def load_generator(name: str, *, checkpoint: Path | None = None, seed: int = 0) -> Generator:
    """Generator ``name`` from ``checkpoint`` (default: the shipped one); the tamper generator needs none."""
    from detectors.generators import GeneratorError, create_generator, list_generators

    if not _NAME.match(name) or name not in list_generators():
        raise InputError(f"unknown generator {name!r}; available: {', '.join(list_generators())}")
    ckpt = checkpoint or default_checkpoint(name)
    try:
        if ckpt is not None:
            return create_generator(name, checkpoint=ckpt)
        if name == "tamper":
            return create_generator(name, seed=seed)
    except GeneratorError as exc:
        raise InputError(f"cannot load generator {name}: {exc}") from exc
    raise InputError(
        f"no trained checkpoint for {name}: train one with `medverify train generator {name} "
        f"--corpus DIR --out DIR` and pass --checkpoint DIR"
    )


def generate_signed_image(
    generator: Generator,
    *,
    name: str,
    seed: int,
    path: Path,
    modality: str,
    keys: GenerationKeys,
    source: PairedSource | None = None,
    size: int = 256,
    version: str | None = None,
) -> int:
    """Make one image with ``generator`` (a paired fake of ``source``, else a ``size`` x ``size`` sample), declare
    it, record it, mark it and sign it into ``path``; return its audit record id.

    ``version`` is the declared generator version (default: the generator's preset, else ``custom``).
    """
    if source is not None:
        pixels = generator.paired_fake(source.pixels, seed=seed)
    else:
        pixels = generator.sample(1, seed=seed, size=size)[0]
    declaration = SyntheticDeclaration(
        generator=name,
        generator_version=version or str(generator.config.to_dict().get("preset", "")) or "custom",
        model_sha256=generator.digest or hashlib.sha256(name.encode()).hexdigest(),
        seed=seed,
        generated_at=dt.datetime.now(dt.UTC),
        kind="paired" if source is not None else "sample",
        source_sop_class_uid=source.sop_class_uid if source is not None else None,
        source_sop_instance_uid=source.sop_instance_uid if source is not None else None,
    )
    return write_generated(
        np.asarray(pixels),
        path=path,
        modality=modality,
        declaration=declaration,
        signer=keys.signer,
        log=keys.log,
        key_name=keys.key_name,
        watermark_key=keys.watermark_key,
        value_range=source.value_range if source is not None else None,
    )
