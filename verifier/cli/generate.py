"""``medverify generate``: synthetic DICOM from the in-house generators, declared, audited and signed.

Each file leaves one audit record written *before* the file (so the file can name it in its declaration): the
record holds the SOP Instance UID, the generator, model digest, seed and the SHA-256 of the stored pixels.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from verifier.cli import _common, app
from verifier.errors import InputError

__all__ = ["default_checkpoint"]

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def default_checkpoint(name: str) -> Path | None:
    """The checkpoint of ``name`` that ships with the package, if any."""
    import detectors

    path = Path(detectors.__file__).parent / "checkpoints" / name
    return path if (path / "checkpoint.json").is_file() else None


@app.command(help="Generate synthetic DICOM images: declared synthetic, signed with the generator key, audited.")
def generate(
    generator: Annotated[str, typer.Argument(help="Generator: vae, gan, diffusion or tamper.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the DICOM files to.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=10000, help="Number of images.")] = 1,
    modality: Annotated[
        str | None, typer.Option("--modality", "-m", help="CT, MR or CR (default: the source's, else MR).")
    ] = None,
    size: Annotated[int, typer.Option("--size", min=8, max=4096, help="Image size in pixels (unpaired).")] = 256,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the first image; image i uses seed+i.")] = 0,
    source: Annotated[
        Path | None, typer.Option("--from", help="A real image to make paired fakes from (DICOM, NIfTI, PNG).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Generator checkpoint directory (default: the bundled one).")
    ] = None,
    key: Annotated[str, typer.Option("--key", help="Signing key (role generator).")] = "generator",
) -> int:
    """Write ``count`` signed synthetic DICOM files."""
    import numpy as np

    from detectors.data.normalize import normalization_range, normalize_image
    from detectors.data.reader import read_image
    from detectors.generators import GeneratorError, create_generator, list_generators
    from provenance.declaration import SyntheticDeclaration
    from provenance.keys import KeyRole
    from verifier.setup import open_audit_log, open_keystore
    from verifier.synthetic import MODALITIES, usable_value_range, write_generated

    if not _NAME.match(generator) or generator not in list_generators():
        raise InputError(f"unknown generator {generator!r}; available: {', '.join(list_generators())}")
    settings = _common.settings()
    store = open_keystore(settings)
    store.init()
    info = store.ensure(key, KeyRole.GENERATOR)
    if info.role is not KeyRole.GENERATOR:
        raise InputError(f"key {key!r} has role {info.role.value}; generated images are signed by a generator key")
    signer = store.load_signing_key(key)
    watermark_key = store.watermark_key()

    ckpt = checkpoint or default_checkpoint(generator)
    try:
        if ckpt is not None:
            model = create_generator(generator, checkpoint=ckpt)
        elif generator == "tamper":
            model = create_generator(generator, seed=seed)
        else:
            raise InputError(
                f"no trained checkpoint for {generator}: train one with `medverify train generator {generator} "
                f"--corpus DIR --out DIR` and pass --checkpoint DIR"
            )
    except GeneratorError as exc:
        raise InputError(f"cannot load generator {generator}: {exc}") from exc
    digest = model.digest or hashlib.sha256(generator.encode()).hexdigest()

    real = None
    source_ds = None
    source_uid: str | None = None
    value_range: tuple[float, float] | None = None
    if source is not None:
        image = read_image(source)
        real = normalize_image(image)[0]
        # A paired fake is stored on its source's scale, as the detectors' normalisation read it.
        value_range = usable_value_range(normalization_range(image.frames, image.modality, window=image.window))
        if source.suffix.lower() not in (".png", ".jpg", ".jpeg", ".nii", ".gz"):
            import pydicom

            source_ds = pydicom.dcmread(source, stop_before_pixels=True)
        modality = modality or (image.modality if image.modality in MODALITIES else None)
        source_uid = str(source_ds.SOPInstanceUID) if source_ds is not None else _content_uid(source)
    modality = (modality or "MR").upper()
    if modality not in MODALITIES:
        raise InputError(f"unsupported modality {modality!r}; choose one of {', '.join(MODALITIES)}")

    log = open_audit_log(settings)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with Progress(
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_common.err_console,
        transient=True,
        disable=not _common.err_console.is_terminal,
    ) as progress:
        task = progress.add_task("generate", total=count)
        for i in range(count):
            image_seed = seed + i
            try:
                if real is not None:
                    pixels = model.paired_fake(real, seed=image_seed)
                else:
                    pixels = model.sample(1, seed=image_seed, size=size)[0]
            except GeneratorError as exc:
                raise InputError(f"{generator} failed: {exc}") from exc
            declaration = SyntheticDeclaration(
                generator=generator,
                generator_version=str(model.config.to_dict().get("preset", "")) or "custom",
                model_sha256=digest,
                seed=image_seed,
                generated_at=dt.datetime.now(dt.UTC),
                kind="paired" if real is not None else "sample",
                source_sop_class_uid=str(source_ds.SOPClassUID) if source_ds is not None else None,
                source_sop_instance_uid=source_uid,
            )
            path = out / f"{generator}_{modality.lower()}_{image_seed:06d}.dcm"
            record_id = write_generated(
                np.asarray(pixels),
                path=path,
                modality=modality,
                declaration=declaration,
                signer=signer,
                log=log,
                key_name=key,
                watermark_key=watermark_key,
                value_range=value_range,
            )
            written += 1
            progress.advance(task)
            _common.console.print(f"wrote {escape(str(path))} (seed {image_seed}, audit #{record_id})", highlight=False)
    _common.err_console.print(f"{written} signed synthetic file(s) in {out}", highlight=False)
    return 0


def _content_uid(path: Path) -> str:
    """A UID for a non-DICOM source image, derived from its content (UUID-derived 2.25 form, PS3.5 B.2)."""
    digest = hashlib.sha256(path.read_bytes()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"
