"""Training and evaluation data: real views (crops of corpus frames) and the fakes the in-house generators make.

A *view* is a crop of at most ``view_size`` x ``view_size`` of one normalised corpus frame, at native resolution,
placed where the frame has content. Each real view gets, per generator family, an aligned fake (the generator's
paired fake of the same crop: VAE reconstruction, GAN high-pass swap, diffusion SDEdit, local tamper with its
mask); unpaired generator samples are added as well. Every view keeps the ``source_id`` and split of the image it
came from, so training, calibration and evaluation hold out whole source images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.data.corpus import Corpus, Split

__all__ = [
    "FAMILIES",
    "SYNTHETIC_FAMILIES",
    "View",
    "build_views",
    "calibration_sources",
    "load_generators",
    "make_fakes",
    "real_views",
    "select",
    "source_folds",
    "split_calibration",
    "store_like",
    "value_grid",
]

#: Generator families a detector learns; ``tamper`` edits locally, the others make the whole image.
FAMILIES: tuple[str, ...] = ("vae", "gan", "diffusion", "tamper")
SYNTHETIC_FAMILIES = frozenset({"vae", "gan", "diffusion"})
_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class View:
    """One image for a detector: pixels (H, W) in [0, 1], its family (``real`` or a generator) and provenance."""

    pixels: npt.NDArray[np.float32]
    family: str
    source_id: str
    modality: str
    split: str
    mask: npt.NDArray[np.bool_] | None = None
    #: The real view this fake was made from (an aligned pair), or None for real views and unpaired samples.
    partner: View | None = None

    @property
    def is_synthetic(self) -> bool:
        return self.family in SYNTHETIC_FAMILIES

    @property
    def is_real(self) -> bool:
        return self.family == "real"


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def _positions(
    frame: npt.NDArray[np.float32], ch: int, cw: int, count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Up to ``count`` top-left corners of ``ch`` x ``cw`` crops with content (std >= 0.02), spread out."""
    h, w = frame.shape
    size = min(ch, cw)
    candidates = []
    for _ in range(count * 12):
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        crop = frame[y : y + ch, x : x + cw]
        if crop.std() >= 0.02:
            candidates.append((y, x))
        if len(candidates) >= count * 3:
            break
    if not candidates:
        return [((h - ch) // 2, (w - cw) // 2)]
    order = rng.permutation(len(candidates))
    chosen: list[tuple[int, int]] = []
    for i in order:  # greedy: prefer crops that overlap the chosen ones least
        y, x = candidates[int(i)]
        if all(abs(y - a) >= size // 2 or abs(x - b) >= size // 2 for a, b in chosen):
            chosen.append((y, x))
        if len(chosen) >= count:
            break
    return chosen


def real_views(
    corpus: Corpus,
    splits: Iterable[Split] | None,
    *,
    view_size: int = 128,
    max_per_frame: int = 6,
    seed: int = 0,
    modalities: Iterable[str] | None = None,
    exclude_modalities: Iterable[str] = (),
) -> list[View]:
    """Crops of the normalised frames of ``splits`` (all when None): about one per 4 view areas, 1..max."""
    wanted = set(splits) if splits is not None else None
    only = {m.upper() for m in modalities} if modalities is not None else None
    excluded = {m.upper() for m in exclude_modalities}
    views: list[View] = []
    for frame in corpus.iter_frames(None, normalized=True):
        entry = frame.entry
        if wanted is not None and entry.split not in wanted:
            continue
        modality = entry.modality.upper()
        if (only is not None and modality not in only) or modality in excluded:
            continue
        pixels = np.clip(np.nan_to_num(np.asarray(frame.pixels, np.float32)), 0.0, 1.0)
        h, w = pixels.shape
        if min(h, w) < 16 or pixels.std() < 0.01:
            continue
        crop_h, crop_w = min(view_size, h), min(view_size, w)
        count = int(np.clip(round(h * w / (4 * view_size * view_size)), 1, max_per_frame))
        rng = np.random.default_rng(_seed(seed, entry.sha256, frame.frame_index))
        for y, x in _positions(pixels, crop_h, crop_w, count, rng):
            crop = np.ascontiguousarray(pixels[y : y + crop_h, x : x + crop_w])
            views.append(View(pixels=crop, family="real", source_id=entry.source_id, modality=modality,
                              split=entry.split))
    return views


def load_generators(
    families: Sequence[str], *, diffusion_steps: int = 10, checkpoints: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The generators of ``families``: the shipped checkpoint when there is one, else a fresh ``small`` model.

    Returns the generators and, per family, what was used (checkpoint digest, or "untrained") for the bundle's
    training record. ``diffusion_steps`` sets the DDIM steps of the diffusion generator (speed).
    """
    from detectors.generators import create_generator

    root = Path(checkpoints) if checkpoints is not None else _CHECKPOINTS
    generators: dict[str, Any] = {}
    used: dict[str, dict[str, Any]] = {}
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"unknown generator family {family!r}; choose from {', '.join(FAMILIES)}")
        directory = root / family
        if (directory / "checkpoint.json").is_file():
            gen = create_generator(family, checkpoint=directory)
            shown = f"detectors/checkpoints/{family}" if checkpoints is None else str(directory)
            used[family] = {"checkpoint": shown, "digest": gen.digest,
                            "steps": gen.training_record.get("steps")}
        else:
            gen = create_generator(family, config="small", seed=0)
            used[family] = {"checkpoint": None, "note": "no shipped checkpoint: small preset, untrained weights"
                            if family != "tamper" else "small preset (parametric lesions, Telea inpainting)"}
        if family == "diffusion":
            gen.ddim_steps = diffusion_steps  # type: ignore[attr-defined]  # DiffusionGenerator's speed knob
            used[family]["ddim_steps"] = diffusion_steps
        generators[family] = gen
    return generators, used


def value_grid(pixels: npt.NDArray[np.floating[Any]]) -> tuple[float, float] | None:
    """The grid (step, one value on it) that the values of a normalised image lie on: stored integers mapped
    linearly to [0, 1] keep equal steps between levels. Read from the values strictly inside (0, 1), since the
    normalisation clips the rest; None when fewer than two such values exist."""
    levels = np.unique(np.asarray(pixels, np.float64))
    levels = levels[(levels > 0.0) & (levels < 1.0)]
    if levels.size < 2:
        return None
    return float(np.min(np.diff(levels))), float(levels[0])


def store_like(fake: npt.NDArray[np.floating[Any]], real: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """``fake`` stored the way the archive stores ``real``: rounded to the grid of ``real``'s values.

    A forger writes a fake into a DICOM file as integers of the scale of the image it replaces (CT-GAN writes
    Hounsfield units; ``medverify generate`` writes CT in Hounsfield units too), so its normalised values lie on
    the same grid as the real image's. Generators output floats: without this, detectors learn to tell fakes by
    values that no stored image holds (leave-one-generator-out models lost 0.05 to 0.19 AUC on stored fakes:
    ``benchmarks/bench_detection_storage.py``)."""
    grid = value_grid(real)
    out = np.asarray(fake, np.float64)
    if grid is not None:
        step, anchor = grid
        out = np.round((out - anchor) / step) * step + anchor
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def make_fakes(
    reals: Sequence[View],
    generators: dict[str, Any],
    *,
    seed: int = 0,
    unpaired_fraction: float = 0.25,
    progress: Callable[[int, int, str], None] | None = None,
    store_fakes: bool = True,
) -> list[View]:
    """Per family: the paired fake of every real view, plus unpaired samples (``unpaired_fraction`` of the
    real views, at their sizes, in their splits) for the families that sample images (not ``tamper``). Every
    fake is stored like the real view it replaces or is sized after (:func:`store_like`); with ``store_fakes``
    False it keeps the generator's floats (only to measure what storing changes)."""

    def stored(fake: npt.NDArray[np.floating[Any]], real: View) -> npt.NDArray[np.float32]:
        return store_like(fake, real.pixels) if store_fakes else np.asarray(fake, np.float32)

    fakes: list[View] = []
    total = len(reals) * len(generators)
    done = 0
    for family, gen in generators.items():
        for index, real in enumerate(reals):
            s = _seed(seed, family, index, real.source_id)
            if family == "tamper":
                fake, mask = gen.paired_fake_with_mask(real.pixels, seed=s % 2**31)
            else:
                fake, mask = gen.paired_fake(real.pixels, seed=s % 2**31), None
            fakes.append(View(pixels=stored(fake, real), family=family, source_id=real.source_id,
                              modality=real.modality, split=real.split, mask=mask, partner=real))
            done += 1
            if progress is not None and (done % 10 == 0 or done == total):
                progress(done, total, family)
        if family == "tamper" or unpaired_fraction <= 0:
            continue
        rng = np.random.default_rng(_seed(seed, family, "unpaired"))
        # Diffusion samples cost seconds each on a CPU: a third as many.
        count = round(len(reals) * unpaired_fraction / (3 if family == "diffusion" else 1))
        for k, i in enumerate(rng.choice(len(reals), size=min(count, len(reals)), replace=False)):
            real = reals[int(i)]
            size = max(16, min(real.pixels.shape))
            sample = gen.sample(1, seed=_seed(seed, family, "sample", k) % 2**31, size=size)[0]
            fakes.append(View(pixels=stored(sample, real), family=family,
                              source_id=f"unpaired:{family}:{k}", modality=real.modality, split=real.split))
    return fakes


def build_views(
    corpus_root: str | os.PathLike[str],
    *,
    families: Sequence[str] = FAMILIES,
    splits: Iterable[Split] | None = None,
    view_size: int = 128,
    max_per_frame: int = 6,
    seed: int = 0,
    unpaired_fraction: float = 0.25,
    diffusion_steps: int = 10,
    progress: Callable[[int, int, str], None] | None = None,
    checkpoints: str | os.PathLike[str] | None = None,
    store_fakes: bool = True,
) -> tuple[list[View], dict[str, Any]]:
    """Real views of ``splits`` and their fakes for ``families``, and a description for the training record.

    ``checkpoints`` is a folder of generator checkpoints (``<family>/``); default the shipped ones."""
    corpus = Corpus.load(corpus_root)
    reals = real_views(corpus, splits, view_size=view_size, max_per_frame=max_per_frame, seed=seed)
    if not reals:
        raise ValueError(f"{corpus_root}: no usable frames in the selected splits")
    generators, used = load_generators(families, diffusion_steps=diffusion_steps, checkpoints=checkpoints)
    fakes = make_fakes(reals, generators, seed=seed, unpaired_fraction=unpaired_fraction, progress=progress,
                       store_fakes=store_fakes)
    manifest = Path(corpus_root) / "manifest.json"
    description = {
        "corpus": Path(corpus_root).resolve().name,
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "splits": sorted(splits) if splits is not None else "all",
        "view_size": view_size,
        "real_views": len(reals),
        "sources": len({v.source_id for v in reals}),
        "modalities": sorted({v.modality for v in reals}),
        "generators": used,
        "seed": seed,
        "fakes_stored": store_fakes,
    }
    return reals + fakes, description


def select(
    views: Sequence[View],
    *,
    splits: Iterable[str] | None = None,
    families: Iterable[str] | None = None,
    exclude_modalities: Iterable[str] = (),
) -> list[View]:
    """The views of ``splits`` whose family is real or in ``families``, without ``exclude_modalities``."""
    wanted_splits = set(splits) if splits is not None else None
    wanted = set(families) if families is not None else None
    excluded = {m.upper() for m in exclude_modalities}
    return [
        v for v in views
        if (wanted_splits is None or v.split in wanted_splits)
        and (v.is_real or wanted is None or v.family in wanted)
        and v.modality not in excluded
    ]


def calibration_sources(views: Sequence[View], *, fraction: float = 0.25, seed: int = 0) -> set[str]:
    """About ``fraction`` of the sources of ``views`` (at least one), chosen by a seeded hash: the sources held
    out of fitting to calibrate the scores and choose the thresholds."""
    sources = sorted({v.source_id for v in views})
    if len(sources) < 2:
        raise ValueError("holding out calibration sources needs at least two sources")
    ranked = sorted(sources, key=lambda s: _seed("calibration", seed, s))
    return set(ranked[: max(1, round(fraction * len(sources)))])


def split_calibration(
    views: Sequence[View], *, fraction: float = 0.25, seed: int = 0
) -> tuple[list[View], list[View]]:
    """``(fit, calibration)``: the views of :func:`calibration_sources` go to calibration, whole sources."""
    held = calibration_sources([v for v in views if v.is_real], fraction=fraction, seed=seed)
    fit = [v for v in views if v.source_id not in held and not _unpaired_in(v, held, seed)]
    calib = [v for v in views if v.source_id in held or _unpaired_in(v, held, seed)]
    return fit, calib


def source_folds(views: Sequence[View], folds: int, *, seed: int = 0) -> list[list[View]]:
    """``views`` split into ``folds`` parts by whole source for cross-fitting: the sources of the real views are
    ranked by a seeded hash and dealt out in turn (so the folds differ in size by at most one source); a fake
    goes with its source, an unpaired sample (no source) to a fold chosen by its hash."""
    if folds < 2:
        raise ValueError("cross-fitting needs at least two folds")
    sources = sorted({v.source_id for v in views if v.is_real}, key=lambda s: _seed("folds", seed, s))
    if len(sources) < folds:
        raise ValueError(f"{folds} folds need at least {folds} real sources; the views have {len(sources)}")
    fold_of = {source: i % folds for i, source in enumerate(sources)}
    out: list[list[View]] = [[] for _ in range(folds)]
    for view in views:
        if view.source_id in fold_of:
            out[fold_of[view.source_id]].append(view)
        else:
            out[_seed("folds-unpaired", seed, view.source_id) % folds].append(view)
    return out


def _unpaired_in(view: View, held: set[str], seed: int) -> bool:
    """Unpaired samples (no source) go to calibration in the same proportion, by hash."""
    if not view.source_id.startswith("unpaired:"):
        return False
    return _seed("calibration-unpaired", seed, view.source_id) % 4 == 0
