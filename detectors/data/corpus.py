"""Corpora of real images: a folder of content-addressed copies plus a JSON manifest, split by source.

A corpus directory holds ``manifest.json`` and ``images/<aa>/<sha256>.<ext>``. Each manifest entry is one image
file: its relative path, format, modality, shape ``(frames, rows, columns)``, pseudonymous ``source_id`` (patient,
else study, else instance, else file; see :mod:`detectors.data.reader`), split, SHA-256, and the frames (DICOM
cine) or axial slices (NIfTI) that the corpus uses.

The split of an entry is a function of its ``source_id`` and the corpus seed only (:func:`assign_split`): every
image of one patient, and every crop or slice of one image, lands in the same split, and adding images never moves
an existing source to another split. Copies are named by content, so no file name or folder name (which often
carry patient names in hospital exports) reaches the corpus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from detectors.data.normalize import normalize_image
from detectors.data.reader import ImageData, ImageFormat, read_image, sniff_format
from detectors.errors import CorpusError, ImageDecodeError, ImageTooLargeError

__all__ = [
    "DEFAULT_FRACTIONS",
    "MANIFEST_NAME",
    "SPLITS",
    "BuildReport",
    "Corpus",
    "CorpusFrame",
    "ManifestEntry",
    "Split",
    "assign_split",
    "build_corpus",
    "build_sample_corpus",
    "sample_dicom_files",
]

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
#: Fractions of sources in train, val and test.
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
_EXTENSIONS: dict[ImageFormat, str] = {"dicom": ".dcm", "nifti": ".nii", "png": ".png", "jpeg": ".jpg"}

#: Called as ``progress(done, total)`` while a corpus is built.
ProgressCallback = Callable[[int, int], None]


def assign_split(
    source_id: str, *, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> Split:
    """The split of ``source_id``: a seeded SHA-256 of the source mapped onto the cumulative ``fractions``."""
    _check_fractions(fractions)
    digest = hashlib.sha256(f"medverify-split\x00{seed}\x00{source_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    train, val, _test = fractions
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def _check_fractions(fractions: Sequence[float]) -> None:
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

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise CorpusError(f"{self.path}: unknown split {self.split!r}")
        if self.format not in _EXTENSIONS:
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

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shape"] = list(self.shape)
        data["frame_indices"] = None if self.frame_indices is None else list(self.frame_indices)
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorpusError(f"malformed manifest entry: {exc!r}") from exc


@contextlib.contextmanager
def _remarks_to_debug_log(where: object) -> Iterator[None]:
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
        _check_fractions(fractions)
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
        with _remarks_to_debug_log(entry.path):
            return read_image(self.root / entry.path, frame_indices=entry.frame_indices, modality=entry.modality,
                              max_bytes=max_bytes)

    def iter_images(self, split: Split | None = None) -> Iterator[tuple[ManifestEntry, ImageData]]:
        """``(entry, image)`` for each entry of ``split``."""
        for entry in self.iter_entries(split):
            yield entry, self.read(entry)

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildReport:
    """What a build did: the corpus, how many files it looked at and added, and why it skipped the rest."""

    corpus: Corpus
    scanned: int
    added: int
    skipped: dict[str, int]

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


# ---------------------------------------------------------------------------------------------------- build


@dataclasses.dataclass(frozen=True)
class _Candidate:
    path: Path
    modality: str | None = None  # for formats that carry none
    origin: str = ""
    slice_step: int = 1  # NIfTI: every k-th slice with content
    max_frames: int | None = None  # DICOM multi-frame: at most this many, evenly spaced


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_slices(frames: npt.NDArray[np.float32], step: int) -> list[int]:
    """Slices in which at least 5 % of the pixels are above 10 % of the volume's range, every ``step``-th."""
    low, high = float(frames.min()), float(frames.max())
    if not high > low:
        return []
    threshold = low + 0.1 * (high - low)
    fraction = (frames > threshold).mean(axis=(1, 2))
    with_content = [int(i) for i in np.flatnonzero(fraction >= 0.05)]
    return with_content[:: max(1, step)]


def _evenly(total: int, count: int | None) -> list[int] | None:
    if count is None or total <= count:
        return None
    return sorted({round(float(i)) for i in np.linspace(0, total - 1, count)})


def _place(source: Path, out_dir: Path, relative: str, mode: str) -> None:
    target = out_dir / relative
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        target.symlink_to(source.resolve())
        return
    if mode == "link":
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system: copy instead
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _ingest(
    candidates: Sequence[_Candidate],
    out_dir: Path,
    *,
    mode: str,
    seed: int,
    fractions: tuple[float, float, float],
    min_size: int,
    progress: ProgressCallback | None,
    max_bytes: int | None,
) -> BuildReport:
    if mode not in ("copy", "link", "symlink"):
        raise CorpusError(f"unknown mode {mode!r}; choose copy, link or symlink")
    _check_fractions(fractions)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing: tuple[ManifestEntry, ...] = ()
    if (out_dir / MANIFEST_NAME).exists():
        previous = Corpus.load(out_dir)
        if previous.seed != seed or tuple(previous.fractions) != tuple(fractions):
            raise CorpusError(f"{out_dir}: existing corpus has seed {previous.seed} and fractions "
                              f"{previous.fractions}; use the same to add to it")
        existing = previous.entries
    known = {e.sha256 for e in existing}
    entries = list(existing)
    skipped: Counter[str] = Counter()
    added = 0
    total = len(candidates)
    for done, candidate in enumerate(candidates, start=1):
        reason = _ingest_one(candidate, out_dir, mode=mode, seed=seed, fractions=fractions, min_size=min_size,
                             known=known, entries=entries, max_bytes=max_bytes)
        if reason is None:
            added += 1
        else:
            skipped[reason] += 1
        if progress is not None:
            progress(done, total)
    corpus = Corpus(root=out_dir, entries=tuple(entries), seed=seed, fractions=fractions)
    corpus.save()
    problems = {k: v for k, v in skipped.items() if k in ("unreadable", "too large")}
    if problems:
        log.warning("skipped %s", ", ".join(f"{v} {k}" for k, v in sorted(problems.items())))
    return BuildReport(corpus=corpus, scanned=total, added=added, skipped=dict(sorted(skipped.items())))


def _ingest_one(
    candidate: _Candidate,
    out_dir: Path,
    *,
    mode: str,
    seed: int,
    fractions: tuple[float, float, float],
    min_size: int,
    known: set[str],
    entries: list[ManifestEntry],
    max_bytes: int | None,
) -> str | None:
    """Add one file; the reason it was skipped, or None."""
    path = candidate.path
    fmt = sniff_format(path)
    if fmt is None:
        return "not an image"
    try:
        sha = _sha256(path)
    except OSError:
        return "unreadable"
    if sha in known:
        return "duplicate"
    try:
        image = read_image(path, modality=candidate.modality, max_bytes=max_bytes,
                           frame_indices=None if fmt != "dicom" else _dicom_indices(path, candidate))
    except ImageTooLargeError as exc:
        log.warning("%s", exc.diagnostics())
        return "too large"
    except ImageDecodeError as exc:
        log.info("%s", exc.diagnostics())
        return "no pixel data" if "no pixel data" in str(exc) else "unreadable"
    rows, columns = image.shape
    if min(rows, columns) < min_size:
        return "too small"
    pixels = hashlib.sha256(image.frames.tobytes()).hexdigest()
    if pixels in known:
        return "duplicate"  # the same pixels in another file (another transfer syntax, a re-export)
    indices: tuple[int, ...] | None = None
    if fmt == "nifti":
        chosen = _content_slices(image.frames, candidate.slice_step)
        if not chosen:
            return "no content"
        indices = tuple(chosen) if len(chosen) < image.total_frames else None
    elif len(image.frame_indices) < image.total_frames:
        indices = image.frame_indices
    suffix = ".nii.gz" if fmt == "nifti" and path.name.lower().endswith(".gz") else _EXTENSIONS[fmt]
    relative = f"images/{sha[:2]}/{sha}{suffix}"
    _place(path, out_dir, relative, mode)
    entries.append(ManifestEntry(
        path=relative,
        format=fmt,
        modality=image.modality,
        shape=(image.total_frames, rows, columns),
        source_id=image.source_id,
        split=assign_split(image.source_id, seed=seed, fractions=fractions),
        sha256=sha,
        frame_indices=indices,
        is_color=image.is_color,
        origin=candidate.origin,
    ))
    known.update((sha, pixels))
    return None


def _dicom_indices(path: Path, candidate: _Candidate) -> list[int] | None:
    if candidate.max_frames is None:
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        total = int(ds.get("NumberOfFrames", 1) or 1)
    except (ValueError, TypeError, OSError, InvalidDicomError):
        return None  # read_image will report it
    return _evenly(total, candidate.max_frames)


def _walk(paths: Iterable[str | os.PathLike[str]], exclude: Path) -> list[Path]:
    found: list[Path] = []
    for item in paths:
        root = Path(item)
        if not root.exists():
            raise CorpusError(f"{root}: no such file or directory")
        if root.is_file():
            found.append(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() != exclude)
            found.extend(here / name for name in sorted(filenames) if not name.startswith("."))
    return found


def build_corpus(
    from_paths: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    mode: Literal["copy", "link", "symlink"] = "copy",
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    min_size: int = 64,
    modality: str | None = None,
    slice_step: int = 1,
    max_frames: int | None = None,
    max_bytes: int | None = None,
    progress: ProgressCallback | None = None,
) -> BuildReport:
    """Index the real images under ``from_paths`` into the corpus at ``out_dir`` (created or extended).

    Files are recognised by content (DICOM with or without extension, NIfTI, PNG, JPEG); anything else, and
    files that cannot be decoded, are skipped and counted in :attr:`BuildReport.skipped` (unreadable ones with a
    warning). ``modality`` labels NIfTI/PNG/JPEG files, which carry none. NIfTI volumes contribute every
    ``slice_step``-th axial slice with content; DICOM multi-frame images at most ``max_frames`` evenly spaced
    frames. ``mode`` copies (default), hard-links or symlinks the files.
    """
    out = Path(out_dir)
    files = _walk(from_paths, out.resolve())
    candidates = [_Candidate(path=p, modality=modality, slice_step=slice_step, max_frames=max_frames) for p in files]
    return _ingest(candidates, out, mode=mode, seed=seed, fractions=fractions, min_size=min_size,
                   progress=progress, max_bytes=max_bytes)


# ------------------------------------------------------------------------------------------- sample corpus

#: Modalities of clinical images; other objects in the packages (SEG, RTDOSE, OT secondary captures that are
#: test patterns) are left out of the sample corpus.
SAMPLE_MODALITIES = frozenset({"CT", "MR", "CR", "DX", "MG", "US", "NM", "PT", "XA", "RF"})
#: Files of pydicom / pydicom-data that are deliberately malformed or are derived copies of other files.
#: Three CT test files with header faults are kept: ``bad_sequence.dcm`` (a neck), ``J2K_pixelrep_mismatch.dcm``
#: (a head) and ``explicit_VR-UN.dcm`` (an abdomen) are each a different patient's real scan whose pixels the
#: reader decodes, and real sources are what the detectors lack most.
_SAMPLE_DENY = frozenset({
    "MR_truncated.dcm",
    "MR_small_padded.dcm",
    "emri_small_jpeg_2k_lossless_too_short.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "JPEG-lossy.dcm",
})
_SAMPLE_DENY_PREFIXES = ("examples_",)  # pydicom's documentation copies (cropped) of other test files
_LOSSY_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.203",  # HTJ2K
})


def sample_dicom_files() -> list[tuple[str, Path]]:
    """``(package, path)`` of the DICOM test files installed with pydicom and pydicom-data.

    Listed from the package folders directly: :func:`pydicom.data.get_testdata_files` would try to download
    every file of pydicom's index that is missing here.
    """
    found: list[tuple[str, Path]] = []
    pydicom_dir = _package_dir("pydicom")
    if pydicom_dir is not None:
        found += [("pydicom", p) for p in sorted((pydicom_dir / "data" / "test_files").glob("*.dcm"))]
    store = _package_dir("data_store")  # the import name of pydicom-data
    if store is not None:
        found += [("pydicom-data", p) for p in sorted((store / "data").glob("*.dcm"))]
    return found


def _nibabel_dicom_files() -> list[tuple[str, Path]]:
    """nibabel's DICOM test files: two frames of one Siemens diffusion series, stored as 256 x 256 mosaics."""
    nibabel = _package_dir("nibabel")
    if nibabel is None:
        return []
    return [("nibabel", p) for p in sorted((nibabel / "tests" / "data").glob("*.dcm"))]


def _sample_dicom_candidates() -> list[_Candidate]:
    """One file per image from pydicom's and pydicom-data's test files: uncompressed, then lossless, then lossy.

    The packages hold the same image in several transfer syntaxes and frame counts, often with new UIDs: files
    with the same patient, study, modality and geometry are taken to be one image.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    groups: dict[tuple[str, ...], list[tuple[int, str, Path, str]]] = {}
    for package, path in sample_dicom_files() + _nibabel_dicom_files():
        if path.name in _SAMPLE_DENY or path.name.startswith(_SAMPLE_DENY_PREFIXES) or not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, ValueError, TypeError, OSError, AttributeError, KeyError):
            continue
        if str(ds.get("Modality", "")).upper() not in SAMPLE_MODALITIES:
            continue
        if min(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) < 64:
            continue
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        lossy = str(ds.get("LossyImageCompression", "")) == "01" or ts in _LOSSY_SYNTAXES
        rank = 2 if lossy else (1 if ts is not None and UID(ts).is_compressed else 0)
        key = tuple(str(ds.get(k, "")) for k in ("PatientID", "StudyInstanceUID", "Modality", "Rows", "Columns"))
        groups.setdefault(key, []).append((rank, path.name, path, f"{package}:{path.name}"))
    candidates: list[_Candidate] = []
    for key in sorted(groups):
        _rank, _name, path, origin = min(groups[key])
        candidates.append(_Candidate(path=path, origin=origin, max_frames=8))
    return candidates


def _package_dir(name: str) -> Path | None:
    """Where package ``name`` is installed, found without importing it (nilearn takes seconds to import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _sample_nifti_candidates() -> list[_Candidate]:
    candidates: list[_Candidate] = []
    nilearn = _package_dir("nilearn")
    if nilearn is not None:
        mni = nilearn / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        if mni.is_file():
            candidates.append(_Candidate(path=mni, modality="MR", origin=f"nilearn:{mni.name}", slice_step=12))
    nibabel = _package_dir("nibabel")
    if nibabel is not None:
        epi = nibabel / "tests" / "data" / "example4d.nii.gz"
        if epi.is_file():
            candidates.append(_Candidate(path=epi, modality="MR", origin=f"nibabel:{epi.name}", slice_step=4))
    return candidates


def build_sample_corpus(
    out_dir: str | os.PathLike[str],
    *,
    mode: Literal["copy", "link", "symlink"] = "copy",
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    progress: ProgressCallback | None = None,
) -> BuildReport:
    """Build the sample corpus from images that ship inside installed packages; nothing is downloaded.

    Sources: pydicom's, pydicom-data's and nibabel's DICOM test files (CT, MR, CR radiographs, NM, ultrasound)
    restricted to clinical modalities, at least 64 px, decodable, one file per image (uncompressed or lossless
    first), without the malformed files that hold no distinct image and the documentation copies; multi-frame
    files contribute at most 8 frames. NIfTI: nilearn's MNI152 T1 template (every 12th axial slice with content)
    and nibabel's example 4-D EPI (first volume, every 4th slice). Requires the ``data`` extra.
    """
    if _package_dir("nibabel") is None:
        raise CorpusError("the sample corpus needs the 'data' extra: pip install 'medverify[data]'")
    with _remarks_to_debug_log("sample corpus"):  # the test files' header quirks: hashes as UIDs, a VR mismatch
        candidates = _sample_dicom_candidates() + _sample_nifti_candidates()
        if not candidates:
            raise CorpusError("no sample images found: is pydicom (and the 'data' extra) installed?")
        return _ingest(candidates, Path(out_dir), mode=mode, seed=seed, fractions=fractions, min_size=64,
                       progress=progress, max_bytes=None)

