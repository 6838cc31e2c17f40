"""``medverify generate``: synthetic DICOM from the in-house generators, declared, audited and signed.

Each file leaves one audit record written *before* the file (so the file can name it in its declaration): the
record holds the SOP Instance UID, the generator, model digest, seed and the SHA-256 of the stored pixels. The use
case itself is :func:`verifier.generation.generate_signed_image`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from verifier import setup
from verifier.cli import _common, app
from verifier.errors import InputError

__all__: list[str] = []


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
    from verifier.generation import PairedSource, generate_signed_image, load_generator
    from verifier.synthetic import MODALITIES

    model = load_generator(generator, checkpoint=checkpoint, seed=seed)
    keys = setup.open_generation_keys(_common.settings(), key, notify=_common.note)
    paired = PairedSource.from_file(source) if source is not None else None
    modality = (modality or (paired.modality if paired is not None else None) or "MR").upper()
    if modality not in MODALITIES:
        raise InputError(f"unsupported modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    out.mkdir(parents=True, exist_ok=True)
    with _progress() as progress:
        task = progress.add_task("generate", total=count)
        for image_seed in range(seed, seed + count):
            path = out / f"{generator}_{modality.lower()}_{image_seed:06d}.dcm"
            record_id = generate_signed_image(
                model, name=generator, seed=image_seed, path=path, modality=modality, keys=keys, source=paired,
                size=size,
            )  # fmt: skip
            progress.advance(task)
            _common.console.print(f"wrote {escape(str(path))} (seed {image_seed}, audit #{record_id})", highlight=False)
    _common.err_console.print(f"{count} signed synthetic file(s) in {out}", highlight=False)
    return 0


def _progress() -> Progress:
    return Progress(
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_common.err_console,
        transient=True,
        disable=not _common.err_console.is_terminal,
    )
