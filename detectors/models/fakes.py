"""The fakes a detector learns from and is judged on: aligned fakes of real views, unconditional samples, local
edits, each stored the way a forger stores it.

A *family* is one generator or edit (:data:`FAMILIES`). Most fakes are **aligned**: the real view passed through
the generator, so that content is shared and only the generator's traces differ (Rajan et al., ICLR 2025;
B-Free, CVPR 2025). Every family works at native resolution, on the whole view:

- ``vae``: the VAE's reconstruction;
- ``diffusion``: SDEdit regeneration, at a strength drawn from :data:`SDEDIT_STRENGTHS`;
- ``sr``: learned super-resolution of the view shrunk x2 or x4;
- ``gan``: the view's low frequencies under the GAN's fine texture;
- ``inpaint``: every pixel re-made by the learned inpainter, in two passes over a checkerboard of holes;
- ``inject``, ``remove``, ``copymove``: local edits (:mod:`detectors.generators.tamper`), each with its mask.

The generator families also give a share of **unconditional samples** (``kind="sample"``), sized like the real
views, one family among several. A fake is **stored like its source** (:func:`store_like`): on the grid of
values of the real view (its bit depth and scale), and through the same codec when the source was an 8-bit
export (a JPEG source gives a JPEG fake of about the same quality), so that format never stands in for the
label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "FAMILIES",
    "GENERATOR_OF",
    "SAMPLING_FAMILIES",
    "SDEDIT_STRENGTHS",
    "SYNTHETIC_FAMILIES",
    "TAMPER_FAMILIES",
    "Fake",
    "encode",
    "make_fake",
    "make_sample",
    "store_like",
    "value_grid",
]

Image = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

SYNTHETIC_FAMILIES: tuple[str, ...] = ("vae", "diffusion", "sr", "gan", "inpaint")
TAMPER_FAMILIES: tuple[str, ...] = ("inject", "remove", "copymove")
FAMILIES: tuple[str, ...] = SYNTHETIC_FAMILIES + TAMPER_FAMILIES
#: The generator checkpoint each family needs.
GENERATOR_OF: dict[str, str] = {
    "vae": "vae", "diffusion": "diffusion", "sr": "sr", "gan": "gan", "inpaint": "tamper",
    "inject": "tamper", "remove": "tamper", "copymove": "tamper",
}
#: Families that also draw unconditional samples (the rest have no meaningful ones).
SAMPLING_FAMILIES: frozenset[str] = frozenset({"vae", "diffusion", "gan"})
#: SDEdit strengths of the ``diffusion`` family: a light touch to a heavy regeneration.
SDEDIT_STRENGTHS: tuple[float, ...] = (0.1, 0.2, 0.35)


@dataclasses.dataclass(frozen=True)
class Fake:
    """A fake view before storage: its pixels in [0, 1], the edited pixels (None: all) and how it was made."""

    pixels: Image
    mask: Mask | None
    method: str


def value_grid(pixels: npt.NDArray[np.floating[Any]]) -> tuple[float, float] | None:
    """The grid (step, one value on it) that the values of a normalised image lie on: stored integers mapped
    linearly to [0, 1] keep equal steps between levels. Read from the values strictly inside (0, 1), since the
    normalisation clips the rest; None when fewer than two such values exist."""
    levels = np.unique(np.asarray(pixels, np.float64))
    levels = levels[(levels > 0.0) & (levels < 1.0)]
    if levels.size < 2:
        return None
    return float(np.min(np.diff(levels))), float(levels[0])


def encode(pixels: Image, codec: str) -> Image:
    """``pixels`` through an 8-bit codec and back: ``png`` (8-bit, lossless) or ``jpegNN`` (quality NN); ``""``
    leaves them as they are."""
    if not codec:
        return pixels
    data = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    if codec == "png":
        return np.asarray(data, np.float32) / np.float32(255.0)
    if not codec.startswith("jpeg"):
        raise ValueError(f"unknown codec {codec!r}")
    ok, encoded = cv2.imencode(".jpg", data, [cv2.IMWRITE_JPEG_QUALITY, int(codec[4:])])
    if not ok:  # pragma: no cover - OpenCV always encodes a 2-D uint8 array
        raise ValueError("JPEG encoding failed")
    return np.asarray(cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE), np.float32) / np.float32(255.0)


def store_like(
    fake: npt.NDArray[np.floating[Any]], real: npt.NDArray[np.floating[Any]], codec: str = ""
) -> Image:
    """``fake`` stored the way the archive stores ``real``: rounded to the grid of ``real``'s values, then through
    ``real``'s codec (an 8-bit export's PNG or JPEG).

    A forger writes a fake into a DICOM file as integers of the scale of the image it replaces (CT-GAN writes
    Hounsfield units), so its normalised values lie on the same grid as the real image's; an exported image is
    saved as the source was. Generators output floats: without this, detectors learn to tell fakes by values
    that no stored image holds."""
    grid = value_grid(real)
    out = np.asarray(fake, np.float64)
    if grid is not None:
        step, anchor = grid
        out = np.round((out - anchor) / step) * step + anchor
    return encode(np.clip(out, 0.0, 1.0).astype(np.float32), codec)


# ---------------------------------------------------------------------------------------------- families


def _checker_holes(shape: tuple[int, int], block: int, phase: int) -> Mask:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.asarray(((yy // block) + (xx // block)) % 2 == phase, dtype=bool)


def _inpaint_all(gen: Any, real: Image, rng: np.random.Generator) -> Image:
    """Every pixel re-made by the inpainter: the holes of a checkerboard (random block size and offset), then
    the complementary holes of the result."""
    import torch

    from detectors.generators.base import pad_to_multiple

    block = int(rng.choice([8, 12, 16]))
    dy, dx = (int(v) for v in rng.integers(0, block, size=2))
    net = gen.modules["inpainter"]
    out = real
    for phase in (0, 1):
        holes = np.roll(np.roll(_checker_holes(real.shape, block, phase), dy, axis=0), dx, axis=1)
        x, (h, w) = pad_to_multiple(torch.from_numpy(out.copy())[None, None] * 2 - 1, 4)
        m, _ = pad_to_multiple(torch.from_numpy(holes.astype(np.float32))[None, None], 4)
        with torch.no_grad():
            pred = net(x, m)[0, 0, :h, :w]
        filled = ((pred.clamp(-1, 1) + 1) * 0.5).numpy().astype(np.float32)
        out = np.where(holes, filled, out).astype(np.float32)
    return out


def make_fake(family: str, real: Image, generators: dict[str, Any], *, seed: int) -> Fake:
    """The aligned fake of ``real`` ((H, W) in [0, 1]) by ``family``, with the generators by name."""
    rng = np.random.default_rng(seed)
    gen = generators[GENERATOR_OF[family]]
    s = seed % 2**31
    if family == "vae":
        return Fake(gen.paired_fake(real, seed=s), None, "vae reconstruction")
    if family == "diffusion":
        strength = float(rng.choice(SDEDIT_STRENGTHS))
        return Fake(gen.sdedit(real, strength=strength, seed=s), None, f"sdedit {strength:g}")
    if family == "sr":
        scale = int(rng.choice([2, 4]))
        return Fake(gen.enhance(real, scale=scale, seed=s), None, f"super-resolution x{scale}")
    if family == "gan":
        return Fake(gen.paired_fake(real, seed=s), None, "gan texture")
    if family == "inpaint":
        return Fake(_inpaint_all(gen, real, rng), None, "inpainted throughout")
    if family in TAMPER_FAMILIES:
        result = gen.tamper(real, seed=s, mode=family)
        return Fake(result.image, result.mask, family)
    raise ValueError(f"unknown fake family {family!r}; choose from {', '.join(FAMILIES)}")


def make_sample(family: str, shape: tuple[int, int], generators: dict[str, Any], *, seed: int) -> Fake:
    """An unconditional sample of ``family``'s generator, cropped to ``shape``."""
    if family not in SAMPLING_FAMILIES:
        raise ValueError(f"{family} draws no unconditional samples")
    h, w = shape
    sample = generators[GENERATOR_OF[family]].sample(1, seed=seed % 2**31, size=max(16, h, w))[0]
    return Fake(np.ascontiguousarray(sample[:h, :w], dtype=np.float32), None, f"{family} sample")


#: A progress callback: ``progress(done, total, what)``.
Progress = Callable[[int, int, str], None]
