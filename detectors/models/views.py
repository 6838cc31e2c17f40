"""Training and evaluation data: real views (crops of corpus frames) and the fakes made from them.

A *view* is a crop of at most ``view_size`` x ``view_size`` of one normalised corpus frame, at native resolution,
placed where the frame has content. Real views come in the two forms real images come in (``form``): ``native``
(DICOM at its stored bit depth) and ``8bit`` (PNG/JPEG exports, with their ``codec``); with ``exports`` a share
of the native views also gets an 8-bit export twin (windowed, then PNG or JPEG at a drawn quality), and every fake
of it is exported the same way, so that format never stands in for the label. Each real view gets, per family of
:mod:`detectors.models.fakes`, an aligned fake stored like it; generator families add unconditional samples. Every
view keeps the ``source_id`` (patient group) and split of the image it came from, so training, calibration and
evaluation hold out whole patients.

Making fakes at native resolution costs seconds a view on a CPU; :func:`build_views` keeps what it made in a
cache folder (``cache``), keyed by everything that changes the views (corpus manifest, generator checkpoints,
sizes, seeds), so benchmarks and training runs reuse them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.data.corpus import Corpus, Split
from detectors.models.base import modality_group
from detectors.models.fakes import (
    FAMILIES,
    GENERATOR_OF,
    SAMPLING_FAMILIES,
    SYNTHETIC_FAMILIES,
    TAMPER_FAMILIES,
    encode,
    make_fake,
    make_sample,
    store_like,
    value_grid,
)

__all__ = [
    "FAMILIES",
    "SYNTHETIC_FAMILIES",
    "TAMPER_FAMILIES",
    "View",
    "build_views",
    "calibration_sources",
    "load_generators",
    "lossy_twins",
    "make_fakes",
    "modality_group",
    "real_views",
    "scarce_group_reals",
    "select",
    "source_folds",
    "split_calibration",
    "store_like",
    "value_grid",
]

_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
#: JPEG qualities drawn for exports and for fakes of JPEG sources (the quality of a JPEG is not recorded).
_JPEG_QUALITIES = (75, 85, 90, 95)
@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class View:
    """One image for a detector: pixels (H, W) in [0, 1], its family (``real`` or a fake family) and provenance.

    ``kind`` is ``real``, ``paired`` (an aligned fake of ``partner``) or ``sample`` (unconditional); ``form`` is
    ``native`` or ``8bit`` and ``codec`` the 8-bit codec (``png``, ``jpegNN``; ``""`` for native views)."""

    pixels: npt.NDArray[np.float32]
    family: str
    source_id: str
    modality: str
    split: str
    mask: npt.NDArray[np.bool_] | None = None
    #: The real view this fake was made from (an aligned pair), or None for real views and unpaired samples.
    partner: View | None = None
    kind: str = ""
    form: str = "native"
    codec: str = ""
    method: str = ""

    @property
    def is_synthetic(self) -> bool:
        return self.family in SYNTHETIC_FAMILIES

    @property
    def is_tamper(self) -> bool:
        return self.family in TAMPER_FAMILIES or self.family == "tamper"

    @property
    def is_real(self) -> bool:
        return self.family == "real"

    @property
    def group(self) -> str:
        """The modality group and form, e.g. ``MR/native`` or ``XR/8bit``: what calibration and the one-class
        member keep apart."""
        return f"{modality_group(self.modality)}/{self.form}"


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
    max_frames: int | None = 4,
    exports: float = 0.0,
    min_per_frame: int = 1,
) -> list[View]:
    """Crops of the normalised frames of ``splits`` (all when None): about one per 4 view areas, ``min_per_frame``
    to ``max_per_frame``, from at most ``max_frames`` evenly spaced frames of each image (a cine loop is one image,
    not 80); and for ``exports`` of the native views an 8-bit export twin (see the module docstring)."""
    wanted = set(splits) if splits is not None else None
    only = {m.upper() for m in modalities} if modalities is not None else None
    excluded = {m.upper() for m in exclude_modalities}
    views: list[View] = []
    for entry in corpus.iter_entries():
        if wanted is not None and entry.split not in wanted:
            continue
        modality = entry.modality.upper()
        if (only is not None and modality not in only) or modality in excluded:
            continue
        for frame in corpus.iter_entry_frames(entry, normalized=True, max_frames=max_frames):
            pixels = np.clip(np.nan_to_num(np.asarray(frame.pixels, np.float32)), 0.0, 1.0)
            h, w = pixels.shape
            if min(h, w) < 16 or pixels.std() < 0.01:
                continue
            crop_h, crop_w = min(view_size, h), min(view_size, w)
            count = int(np.clip(round(h * w / (4 * view_size * view_size)), min_per_frame, max_per_frame))
            rng = np.random.default_rng(_seed(seed, entry.sha256, frame.frame_index))
            form = entry.form
            codec = "" if form == "native" else ("jpeg" + str(int(rng.choice(_JPEG_QUALITIES))) if entry.lossy
                                                 and entry.format == "jpeg" else "png")
            for y, x in _positions(pixels, crop_h, crop_w, count, rng):
                crop = np.ascontiguousarray(pixels[y : y + crop_h, x : x + crop_w])
                views.append(View(pixels=crop, family="real", source_id=entry.source_id, modality=modality,
                                  split=entry.split, kind="real", form=form, codec=codec))
                if form == "native" and exports > 0 and rng.random() < exports:
                    twin = "png" if rng.random() < 0.3 else "jpeg" + str(int(rng.choice(_JPEG_QUALITIES)))
                    views.append(View(pixels=encode(crop, twin), family="real", source_id=entry.source_id,
                                      modality=modality, split=entry.split, kind="real", form="8bit", codec=twin,
                                      method="export"))
    return views


def scarce_group_reals(
    corpus: str | os.PathLike[str] | Corpus,
    views: Sequence[View],
    *,
    floor: int,
    splits: Iterable[Split] = ("train",),
    view_size: int = 256,
    per_frame: int = 4,
    seed: int = 0,
    exports: float = 0.0,
) -> list[View]:
    """More real crops (``per_frame`` of every frame, drawn anew) of the modality groups that have fewer than
    ``floor`` real views among ``views`` (CT, US, NM in a corpus where MR and chest X-rays dominate). They are
    real only, made without fakes: the one-class member needs enough real views of a group to model it on its
    own instead of on the pooled form, and calibration enough of them to give the group its own offset."""
    counts = Counter(v.group for v in views if v.is_real and not v.method)
    source = corpus if isinstance(corpus, Corpus) else Corpus.load(corpus)
    extra = real_views(source, splits, view_size=view_size, min_per_frame=per_frame, max_per_frame=per_frame,
                       seed=_seed(seed, "scarce"), exports=exports)
    return [dataclasses.replace(v, method=v.method or "extra crop") for v in extra if counts[v.group] < floor]


def lossy_twins(views: Sequence[View], *, fraction: float, seed: int = 0) -> list[View]:
    """For ``fraction`` of the native real views, a copy stored lossy-compressed at native precision (JPEG 2000 at
    a drawn rate, as PACS archives and some modalities store images): still a real image. Calibration needs
    such images among its reals, so that a lossy-stored real scan is not taken for a fake; no fake gets one."""
    import cv2

    out: list[View] = []
    for index, view in enumerate(views):
        if not (view.is_real and view.form == "native" and view.method == ""):
            continue
        rng = np.random.default_rng(_seed(seed, "lossy", index, view.source_id))
        if rng.random() >= fraction:
            continue
        rate = int(rng.choice([50, 100, 200, 400]))  # compression rate x 1000: 1:20 to 1:2.5 of 16 bits
        stored = np.round(np.clip(view.pixels, 0.0, 1.0) * 4095.0).astype(np.uint16)
        ok, data = cv2.imencode(".jp2", stored, [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, rate])
        if not ok:  # pragma: no cover - OpenCV encodes any 2-D uint16 array
            continue
        decoded_raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if decoded_raw is None:  # pragma: no cover - what OpenCV encoded it decodes
            continue
        decoded = decoded_raw.astype(np.float32) / np.float32(4095.0)
        out.append(dataclasses.replace(view, pixels=np.clip(decoded, 0.0, 1.0), method=f"lossy j2k {rate / 1000:g}"))
    return out


def load_generators(
    families: Sequence[str], *, diffusion_steps: int = 10, checkpoints: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The generators that ``families`` need, by generator name: the checkpoint in ``checkpoints`` (default the
    shipped ones) when there is one, else a fresh ``small`` model.

    Returns the generators and, per generator, what was used (checkpoint digest, or "untrained") for the bundle's
    training record. ``diffusion_steps`` sets the DDIM steps of the diffusion generator (speed).
    """
    from detectors.generators import create_generator

    root = Path(checkpoints) if checkpoints is not None else _CHECKPOINTS
    generators: dict[str, Any] = {}
    used: dict[str, dict[str, Any]] = {}
    for family in families:
        if family not in GENERATOR_OF and family != "tamper":
            raise ValueError(f"unknown fake family {family!r}; choose from {', '.join(FAMILIES)}")
        name = GENERATOR_OF.get(family, "tamper")
        if name in generators:
            continue
        directory = root / name
        if (directory / "checkpoint.json").is_file():
            gen = create_generator(name, checkpoint=directory)
            shown = f"detectors/checkpoints/{name}" if checkpoints is None else str(directory)
            used[name] = {"checkpoint": shown, "digest": gen.digest, "steps": gen.training_record.get("steps")}
        else:
            gen = create_generator(name, config="small", seed=0)
            used[name] = {"checkpoint": None, "note": "no checkpoint: small preset, untrained weights"}
        if name == "diffusion":
            gen.ddim_steps = diffusion_steps  # type: ignore[attr-defined]  # DiffusionGenerator's speed knob
            used[name]["ddim_steps"] = diffusion_steps
        generators[name] = gen
    return generators, used


def make_fakes(
    reals: Sequence[View],
    generators: dict[str, Any],
    *,
    families: Sequence[str] | None = None,
    seed: int = 0,
    unpaired_fraction: float = 0.25,
    progress: Callable[[int, int, str], None] | None = None,
    store_fakes: bool = True,
) -> list[View]:
    """Per family, the aligned fake of every real view, plus unconditional samples (``unpaired_fraction`` of the
    real views, at their sizes, in their splits) for the families that sample. ``generators`` are by generator
    name (:data:`~detectors.models.fakes.GENERATOR_OF`); ``families`` default to those they serve. Every fake is
    stored like the real view it replaces or is sized after (grid and codec); with ``store_fakes`` False it keeps
    the generator's floats (only to measure what storing changes). An export twin's fake is its native partner's
    fake exported the same way (the generator runs once)."""
    chosen = [f for f in (families or FAMILIES) if GENERATOR_OF.get(f) in generators]

    def stored(fake: npt.NDArray[np.floating[Any]], real: View) -> npt.NDArray[np.float32]:
        return store_like(fake, real.pixels, real.codec) if store_fakes else np.asarray(fake, np.float32)

    natives = [v for v in reals if v.method != "export"]
    twins = [v for v in reals if v.method == "export"]
    twin_of: dict[int, View] = {}
    for twin in twins:  # an export twin follows its native view in the list
        index = reals.index(twin)
        if index > 0:
            twin_of[id(reals[index - 1])] = twin
    fakes: list[View] = []
    total = len(natives) * len(chosen)
    done = 0
    for family in chosen:
        for index, real in enumerate(natives):
            fake = make_fake(family, real.pixels, generators, seed=_seed(seed, family, index, real.source_id))
            fakes.append(View(pixels=stored(fake.pixels, real), family=family, source_id=real.source_id,
                              modality=real.modality, split=real.split, mask=fake.mask, partner=real, kind="paired",
                              form=real.form, codec=real.codec, method=fake.method))
            exported = twin_of.get(id(real))
            if exported is not None:
                native = store_like(fake.pixels, real.pixels) if store_fakes else fake.pixels
                fakes.append(View(pixels=encode(native, exported.codec), family=family, source_id=real.source_id,
                                  modality=real.modality, split=real.split, mask=fake.mask, partner=exported,
                                  kind="paired", form="8bit", codec=exported.codec, method=fake.method + ", exported"))
            done += 1
            if progress is not None and (done % 10 == 0 or done == total):
                progress(done, total, family)
        if family not in SAMPLING_FAMILIES or unpaired_fraction <= 0:
            continue
        rng = np.random.default_rng(_seed(seed, family, "unpaired"))
        # Diffusion samples cost seconds each on a CPU: a third as many.
        count = round(len(reals) * unpaired_fraction / (3 if family == "diffusion" else 1))
        for k, i in enumerate(rng.choice(len(reals), size=min(count, len(reals)), replace=False)):
            real = reals[int(i)]
            sample = make_sample(family, real.pixels.shape, generators, seed=_seed(seed, family, "sample", k))
            fakes.append(View(pixels=stored(sample.pixels, real), family=family, source_id=f"unpaired:{family}:{k}",
                              modality=real.modality, split=real.split, kind="sample", form=real.form,
                              codec=real.codec, method=sample.method))
    return fakes


# -------------------------------------------------------------------------------------------------- cache

_CACHE_FORMAT = "medverify-views/2"
_FIELDS = ("family", "source_id", "modality", "split", "kind", "form", "codec", "method")


def _save_views(directory: Path, views: Sequence[View], description: dict[str, Any]) -> None:
    """Views as 16-bit arrays (the detectors quantise to 12 bits) plus a JSON index, written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    position = {id(v): i for i, v in enumerate(views)}
    index = []
    arrays: dict[str, npt.NDArray[Any]] = {}
    for i, view in enumerate(views):
        arrays[f"p{i}"] = np.round(np.clip(view.pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
        if view.mask is not None:
            arrays[f"m{i}"] = np.packbits(view.mask, axis=None)
        item = {k: getattr(view, k) for k in _FIELDS}
        item["partner"] = None if view.partner is None else position[id(view.partner)]
        item["shape"] = list(view.pixels.shape)
        index.append(item)
    tmp = directory / ".views.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, directory / "views.npz")
    text = json.dumps({"format": _CACHE_FORMAT, "description": description, "views": index})
    (directory / ".index.json.tmp").write_text(text, encoding="utf-8")
    os.replace(directory / ".index.json.tmp", directory / "index.json")


def _load_views(directory: Path) -> tuple[list[View], dict[str, Any]] | None:
    try:
        meta = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        if meta.get("format") != _CACHE_FORMAT:
            return None
        views: list[View] = []
        with np.load(directory / "views.npz", allow_pickle=False) as data:
            for i, item in enumerate(meta["views"]):
                pixels = data[f"p{i}"].astype(np.float32) / np.float32(65535.0)
                mask = None
                if f"m{i}" in data.files:
                    shape = tuple(item["shape"])
                    mask = np.unpackbits(data[f"m{i}"], count=int(np.prod(shape))).reshape(shape).astype(bool)
                partner = None if item["partner"] is None else views[int(item["partner"])]
                views.append(View(pixels=pixels, mask=mask, partner=partner, **{k: item[k] for k in _FIELDS}))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return views, dict(meta.get("description", {}))


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
    exports: float = 0.0,
    max_frames: int | None = 4,
    cache: str | os.PathLike[str] | None = None,
) -> tuple[list[View], dict[str, Any]]:
    """Real views of ``splits`` and their fakes for ``families``, and a description for the training record.

    ``checkpoints`` is a folder of generator checkpoints (``<generator>/``); default the shipped ones. With
    ``cache`` (a folder), views made before with the same inputs are loaded instead of made again."""
    manifest = Path(corpus_root) / "manifest.json"
    generators_used: dict[str, Any] | None = None
    key_parts: dict[str, Any] = {
        "manifest": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else "",
        "families": list(families), "splits": sorted(splits) if splits is not None else "all",
        "view_size": view_size, "max_per_frame": max_per_frame, "seed": seed, "unpaired": unpaired_fraction,
        "ddim": diffusion_steps, "stored": store_fakes, "exports": exports, "max_frames": max_frames,
        "checkpoints": _checkpoint_digests(families, checkpoints),
    }
    slot: Path | None = None
    if cache is not None:
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:20]
        slot = Path(cache) / key
        loaded = _load_views(slot)
        if loaded is not None:
            return loaded
    corpus = Corpus.load(corpus_root)
    reals = real_views(corpus, splits, view_size=view_size, max_per_frame=max_per_frame, seed=seed,
                       max_frames=max_frames, exports=exports)
    if not reals:
        raise ValueError(f"{corpus_root}: no usable frames in the selected splits")
    generators, generators_used = load_generators(families, diffusion_steps=diffusion_steps, checkpoints=checkpoints)
    fakes = make_fakes(reals, generators, families=families, seed=seed, unpaired_fraction=unpaired_fraction,
                       progress=progress, store_fakes=store_fakes)
    description = {
        "corpus": Path(corpus_root).resolve().name,
        "manifest_sha256": key_parts["manifest"],
        "splits": key_parts["splits"],
        "view_size": view_size,
        "real_views": len(reals),
        "sources": len({v.source_id for v in reals}),
        "modalities": sorted({v.modality for v in reals}),
        "forms": {form: sum(v.form == form for v in reals) for form in ("native", "8bit")},
        "generators": generators_used,
        "seed": seed,
        "fakes_stored": store_fakes,
        "exports": exports,
    }
    views = reals + fakes
    if slot is not None:
        _save_views(slot, views, description)
    return views, description


def _checkpoint_digests(families: Sequence[str], checkpoints: str | os.PathLike[str] | None) -> dict[str, str]:
    """The weights digest of each generator checkpoint ``families`` use (what makes cached views stale)."""
    root = Path(checkpoints) if checkpoints is not None else _CHECKPOINTS
    out: dict[str, str] = {}
    for family in families:
        name = GENERATOR_OF.get(family, "tamper")
        info = root / name / "checkpoint.json"
        try:
            out[name] = str(json.loads(info.read_text(encoding="utf-8")).get("digest", ""))
        except (OSError, ValueError):
            out[name] = "untrained"
    return out


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
