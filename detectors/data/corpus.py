"""Corpora of real images: a folder of content-addressed copies plus a JSON manifest, split by source.

A corpus directory holds ``manifest.json`` and ``images/<aa>/<sha256>.<ext>``. Each manifest entry is one image
file: its relative path, format, modality, shape ``(frames, rows, columns)``, pseudonymous ``source_id`` (the
group of images that a split keeps together: every image linked to another by a patient or a study, see
:mod:`detectors.data.build`), split, SHA-256, the frames (DICOM cine) or axial slices (NIfTI) that the corpus
uses, and where it came from: its ``collection``, the ``license`` its source states, its bit depth and whether it
was stored lossy-compressed.

The split of an entry is a function of its ``source_id`` and the corpus seed only (:func:`assign_split`): every
image of one patient, and every crop or slice of one image, lands in the same split, and adding images never moves
an existing source to another split. Copies are named by content, so no file name or folder name (which often
carry patient names in hospital exports) reaches the corpus.

Building a corpus is :mod:`detectors.data.build`; the sample corpus from installed packages is
:mod:`detectors.data.sample`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from detectors.data.normalize import normalize_image
from detectors.data.reader import ImageData, ImageFormat, read_image
from detectors.errors import CorpusError

__all__ = [
    "DEFAULT_FRACTIONS",
    "EXTENSIONS",
    "MANIFEST_NAME",
    "SPLITS",
    "Corpus",
    "CorpusFrame",
    "ManifestEntry",
    "Split",
    "assign_split",
    "check_fractions",
    "remarks_to_debug_log",
]

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
#: Fractions of sources in train, val and test.
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
EXTENSIONS: dict[ImageFormat, str] = {"dicom": ".dcm", "nifti": ".nii", "png": ".png", "jpeg": ".jpg"}

def assign_split(
    source_id: str, *, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> Split:
    """The split of ``source_id``: a seeded SHA-256 of the source mapped onto the cumulative ``fractions``."""
    check_fractions(fractions)
    digest = hashlib.sha256(f"medverify-split\x00{seed}\x00{source_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    train, val, _test = fractions
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise CorpusError(f"split fractions must be three non-negative numbers summing to 1, not {fractions}")


# ------------------------------------------------------------------------------------------------ manifest


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManifestEntry:
    """One image file of a corpus. ``frame_indices`` None means every frame/slice."""

    path: str
    format: ImageFormat
    modality: str
    shape: tuple[int, int, int]
    source_id: str
    split: Split
    sha256: str
    frame_indices: tuple[int, ...] | None = None
    is_color: bool = False
    origin: str = ""
    #: The collection the file came from (a folder of a shared corpus, a package), for the model card.
    collection: str = ""
    #: The terms its source states for it, verbatim ("" where none is known).
    license: str = ""
    #: Bits stored per sample (DICOM BitsStored; 8 or 16 for PNG/JPEG); None where unknown (float NIfTI).
    bits_stored: int | None = None
    #: Stored lossy-compressed (a JPEG file, a lossy DICOM transfer syntax or Lossy Image Compression 01): still
    #: a real image, which detectors must not take for a fake.
    lossy: bool = False
    #: Pseudonymised patient / study keys that tie this image to others (its group is their closure).
    links: tuple[str, ...] = ()
    #: SHA-256 of the decoded frames, so that a re-encoded copy of the same pixels is not added twice.
    pixels_sha256: str = ""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise CorpusError(f"{self.path}: unknown split {self.split!r}")
        if self.format not in EXTENSIONS:
            raise CorpusError(f"{self.path}: unknown format {self.format!r}")
        if Path(self.path).is_absolute() or ".." in Path(self.path).parts:
            raise CorpusError(f"{self.path}: manifest paths must be relative and inside the corpus")
        if len(self.shape) != 3 or min(self.shape) <= 0:
            raise CorpusError(f"{self.path}: bad shape {self.shape}")
        if self.frame_indices is not None and not all(0 <= i < self.shape[0] for i in self.frame_indices):
            raise CorpusError(f"{self.path}: frame index out of range")

    @property
    def n_frames(self) -> int:
        """How many frames of this entry the corpus uses."""
        return self.shape[0] if self.frame_indices is None else len(self.frame_indices)

    @property
    def form(self) -> Literal["native", "8bit"]:
        """``8bit`` for PNG/JPEG exports (and other files of at most 8 bits stored), ``native`` otherwise: the
        two forms real images come in, which evaluation reports apart."""
        if self.format in ("png", "jpeg") or (self.bits_stored is not None and self.bits_stored <= 8):
            return "8bit"
        return "native"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shape"] = list(self.shape)
        data["frame_indices"] = None if self.frame_indices is None else list(self.frame_indices)
        data["links"] = list(self.links)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestEntry:
        try:
            indices = data.get("frame_indices")
            return cls(
                path=str(data["path"]),
                format=cast(ImageFormat, str(data["format"])),
                modality=str(data["modality"]),
                shape=cast(tuple[int, int, int], tuple(int(v) for v in data["shape"])),
                source_id=str(data["source_id"]),
                split=cast(Split, str(data["split"])),
                sha256=str(data["sha256"]),
                frame_indices=None if indices is None else tuple(int(i) for i in indices),
                is_color=bool(data.get("is_color", False)),
                origin=str(data.get("origin", "")),
                collection=str(data.get("collection", "")),
                license=str(data.get("license", "")),
                bits_stored=None if data.get("bits_stored") is None else int(data["bits_stored"]),
                lossy=bool(data.get("lossy", False)),
                links=tuple(str(k) for k in data.get("links", ())),
                pixels_sha256=str(data.get("pixels_sha256", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorpusError(f"malformed manifest entry: {exc!r}") from exc


@contextlib.contextmanager
def remarks_to_debug_log(where: object) -> Iterator[None]:
    """Warnings raised inside (pydicom's remarks on a file's header, say) go to the debug log, not the user: an
    image in a corpus was accepted when the corpus was built, and its header's quirks are not the user's concern."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for remark in caught:
                log.debug("%s: %s: %s", where, remark.category.__name__, remark.message)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class CorpusFrame:
    """One frame of a corpus image: ``pixels`` (H, W) float32, physical units or normalised to [0, 1]."""

    entry: ManifestEntry
    frame_index: int
    pixels: npt.NDArray[np.float32]
    image: ImageData


@dataclasses.dataclass(frozen=True, kw_only=True)
class Corpus:
    """A loaded corpus: its root directory, split settings and entries."""

    root: Path
    entries: tuple[ManifestEntry, ...]
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Corpus:
        """Read ``root/manifest.json``."""
        directory = Path(root)
        manifest = directory / MANIFEST_NAME
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CorpusError(f"{directory}: no {MANIFEST_NAME}: not a corpus directory") from None
        except (OSError, ValueError) as exc:
            raise CorpusError(f"{manifest}: unreadable manifest: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            raise CorpusError(f"{manifest}: unsupported manifest version {data.get('version')!r}")
        fractions = tuple(float(f) for f in data.get("fractions", DEFAULT_FRACTIONS))
        check_fractions(fractions)
        entries = tuple(ManifestEntry.from_json(item) for item in data.get("entries", []))
        return cls(root=directory, entries=entries, seed=int(data.get("seed", 0)),
                   fractions=cast(tuple[float, float, float], fractions))

    def save(self) -> Path:
        """Write the manifest atomically; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        data = {
            "version": MANIFEST_VERSION,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "entries": [e.to_json() for e in sorted(self.entries, key=lambda e: e.path)],
        }
        target = self.root / MANIFEST_NAME
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".manifest-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.write("\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def iter_entries(self, split: Split | None = None) -> Iterator[ManifestEntry]:
        """Entries of ``split`` (all when None), in manifest order."""
        if split is not None and split not in SPLITS:
            raise CorpusError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return (e for e in self.entries if split is None or e.split == split)

    def read(self, entry: ManifestEntry, *, max_bytes: int | None = None) -> ImageData:
        """Decode the frames of ``entry`` that the corpus uses (pydicom's remarks on its header to the debug log)."""
        with remarks_to_debug_log(entry.path):
            return read_image(self.root / entry.path, frame_indices=entry.frame_indices, modality=entry.modality,
                              max_bytes=max_bytes)

    def iter_images(self, split: Split | None = None) -> Iterator[tuple[ManifestEntry, ImageData]]:
        """``(entry, image)`` for each entry of ``split``."""
        for entry in self.iter_entries(split):
            yield entry, self.read(entry)

    def iter_entry_frames(
        self, entry: ManifestEntry, *, normalized: bool = False, max_frames: int | None = None
    ) -> Iterator[CorpusFrame]:
        """The frames of one entry (at most ``max_frames`` of them, evenly spaced, decoding only those)."""
        indices = entry.frame_indices if entry.frame_indices is not None else tuple(range(entry.shape[0]))
        if max_frames is not None and len(indices) > max_frames:
            picks = sorted({round(float(i)) for i in np.linspace(0, len(indices) - 1, max_frames)})
            indices = tuple(indices[i] for i in picks)
        with remarks_to_debug_log(entry.path):
            image = read_image(self.root / entry.path, frame_indices=indices, modality=entry.modality)
        pixels = normalize_image(image) if normalized else image.frames
        for position, index in enumerate(image.frame_indices):
            yield CorpusFrame(entry=entry, frame_index=index, pixels=pixels[position], image=image)

    def iter_frames(self, split: Split | None = None, *, normalized: bool = False) -> Iterator[CorpusFrame]:
        """Every frame of ``split``; with ``normalized`` mapped to [0, 1] by :func:`normalize_image`."""
        for entry, image in self.iter_images(split):
            pixels = normalize_image(image) if normalized else image.frames
            for position, index in enumerate(image.frame_indices):
                yield CorpusFrame(entry=entry, frame_index=index, pixels=pixels[position], image=image)

    def summary(self) -> list[tuple[str, Split, int, int]]:
        """Rows ``(modality, split, images, frames)`` sorted by modality then split."""
        images: Counter[tuple[str, Split]] = Counter()
        frames: Counter[tuple[str, Split]] = Counter()
        for entry in self.entries:
            images[(entry.modality, entry.split)] += 1
            frames[(entry.modality, entry.split)] += entry.n_frames
        return [(m, s, images[(m, s)], frames[(m, s)])
                for m, s in sorted(images, key=lambda k: (k[0], SPLITS.index(k[1])))]


