"""Building a corpus: index real images into content-addressed copies and a manifest, grouped and split.

Files are recognised by content (DICOM with or without extension, NIfTI, PNG, JPEG). What a split keeps
together is a *group*: every image linked to another by a patient or a study, transitively (a patient with two
studies, a study whose files carry two spellings of the patient). The links of an image are

- from its DICOM header: Patient ID (when not blank) and Study Instance UID;
- from a CSV manifest beside the images (``manifest.csv`` with a ``path`` column, as the shared corpora have):
  its ``patient_key`` and ``study_uid``; the same file's ``modality`` (PNG and JPEG carry none), ``license``
  and ``source`` (the collection) are taken from it too;
- else the file itself.

Identifiers are pseudonymised (:func:`~detectors.data.reader.pseudonym`) before they reach the manifest. A group
is named after its smallest patient pseudonym (else study, else file), and its split is
:func:`~detectors.data.corpus.assign_split` of that name, so a rebuild gives the same splits. Extending a
corpus never moves an existing group: new images linked to it join its split.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from detectors.data.corpus import (
    DEFAULT_FRACTIONS,
    EXTENSIONS,
    MANIFEST_NAME,
    Corpus,
    ManifestEntry,
    assign_split,
    check_fractions,
)
from detectors.data.reader import pseudonym, read_image, sniff_format
from detectors.errors import CorpusError, ImageDecodeError, ImageTooLargeError

__all__ = [
    "CSV_MANIFEST_NAME",
    "LOSSY_SYNTAXES",
    "BuildReport",
    "Candidate",
    "ProgressCallback",
    "build_corpus",
    "ingest",
    "read_csv_manifest",
]

log = logging.getLogger(__name__)

#: Called as ``progress(done, total)`` while a corpus is built.
ProgressCallback = Callable[[int, int], None]

#: A CSV file beside the images that describes them (one row per file, its ``path`` relative to the CSV).
CSV_MANIFEST_NAME = "manifest.csv"
#: Transfer syntaxes whose pixels went through lossy compression.
LOSSY_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.203",  # HTJ2K
})
#: Patient IDs that say nothing about who the patient is; they link no images.
_BLANK_IDS = frozenset({"", "anonymous", "anon", "none", "unknown", "n/a", "na", "null"})


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


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A file to index, with what is known of it beyond its content."""

    path: Path
    modality: str | None = None  # for formats that carry none
    origin: str = ""
    slice_step: int = 1  # NIfTI: every k-th slice with content
    max_frames: int | None = None  # DICOM multi-frame: at most this many, evenly spaced
    collection: str = ""
    license: str = ""
    #: Raw patient / study identifiers from a CSV manifest, as ``("patient", key)`` or ``("study", uid)``.
    links: tuple[tuple[str, str], ...] = ()


# ------------------------------------------------------------------------------------------- CSV manifests


def read_csv_manifest(root: Path) -> dict[Path, dict[str, str]]:
    """The rows of ``root/manifest.csv`` by resolved file path; empty without one (or without a ``path`` column)."""
    path = root / CSV_MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                return {}
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CorpusError(f"{path}: unreadable CSV manifest: {exc}") from exc
    out: dict[Path, dict[str, str]] = {}
    for row in rows:
        relative = (row.get("path") or "").strip()
        if relative:
            out[(root / relative).resolve()] = {k: (v or "").strip() for k, v in row.items() if k}
    return out


def _clean_license(value: str) -> str:
    return "" if value.lower() in ("nan", "none") else value


def _candidate(path: Path, row: Mapping[str, str] | None, *, root: Path, modality: str | None, slice_step: int,
               max_frames: int | None) -> Candidate:
    if row is None:
        return Candidate(path=path, modality=modality, slice_step=slice_step, max_frames=max_frames)
    links = tuple((kind, row[column]) for kind, column in (("patient", "patient_key"), ("study", "study_uid"))
                  if row.get(column))
    return Candidate(
        path=path,
        modality=row.get("modality") or modality,
        slice_step=slice_step,
        max_frames=max_frames,
        collection=row.get("source") or root.name,
        license=_clean_license(row.get("license", "")),
        links=links,
    )


# ---------------------------------------------------------------------------------------------- grouping


class _Groups:
    """Union-find over link keys; each entry joins the keys it carries."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, keys: Sequence[str]) -> None:
        roots = [self.find(k) for k in keys]
        for other in roots[1:]:
            a, b = sorted((self.find(roots[0]), self.find(other)))
            self.parent[b] = a


def _group_name(keys: Iterable[str]) -> str:
    """A group's name: its smallest patient pseudonym, else study, else file (the key kinds sort that way)."""
    rank = {"patient": 0, "study": 1, "instance": 2, "file": 3}
    return min(keys, key=lambda k: (rank.get(k.split(":", 1)[0], 9), k))


def _assign_groups(
    entries: list[ManifestEntry], links: Sequence[tuple[str, ...]], existing: int, *, seed: int,
    fractions: tuple[float, float, float],
) -> list[ManifestEntry]:
    """Entries with ``source_id`` and ``split`` of their group; the first ``existing`` keep theirs."""
    groups = _Groups()
    for keys in links:
        groups.union(list(keys))
    members: dict[str, list[int]] = {}
    for i, keys in enumerate(links):
        members.setdefault(groups.find(keys[0]), []).append(i)
    out = list(entries)
    for indices in members.values():
        old = [out[i] for i in indices if i < existing]
        if old:
            source_id, split = old[0].source_id, old[0].split
            if len({(e.source_id, e.split) for e in old}) > 1:
                log.warning("new images link groups already in the corpus (%s); they keep their splits and the new "
                            "images join %s", ", ".join(sorted({e.source_id for e in old})), source_id)
        else:
            source_id = _group_name(k for i in indices for k in links[i])
            split = assign_split(source_id, seed=seed, fractions=fractions)
        for i in indices:
            if i >= existing:
                out[i] = dataclasses.replace(out[i], source_id=source_id, split=split)
    return out


def _dicom_header(path: Path) -> tuple[list[str], bool, int | None]:
    """``(link keys, lossy, frames)`` of a DICOM file: its pseudonymised Patient ID and Study Instance UID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, ValueError, TypeError, OSError, AttributeError, KeyError):
        return [], False, None
    keys = []
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient.lower() not in _BLANK_IDS and patient.strip("*0 ") != "":
        keys.append(pseudonym("patient", patient))
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    if study:
        keys.append(pseudonym("study", study))
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    lossy = ts in LOSSY_SYNTAXES or str(ds.get("LossyImageCompression", "")) == "01"
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = None
    return keys, lossy, frames


# ------------------------------------------------------------------------------------------------- ingest


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


def _evenly(total: int | None, count: int | None) -> list[int] | None:
    if count is None or total is None or total <= count:
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


def ingest(
    candidates: Sequence[Candidate],
    out_dir: Path,
    *,
    mode: str,
    seed: int,
    fractions: tuple[float, float, float],
    min_size: int,
    progress: ProgressCallback | None,
    max_bytes: int | None,
) -> BuildReport:
    """Add ``candidates`` to the corpus at ``out_dir`` (created or extended), grouped and split."""
    if mode not in ("copy", "link", "symlink"):
        raise CorpusError(f"unknown mode {mode!r}; choose copy, link or symlink")
    check_fractions(fractions)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing: tuple[ManifestEntry, ...] = ()
    if (out_dir / MANIFEST_NAME).exists():
        previous = Corpus.load(out_dir)
        if previous.seed != seed or tuple(previous.fractions) != tuple(fractions):
            raise CorpusError(f"{out_dir}: existing corpus has seed {previous.seed} and fractions "
                              f"{previous.fractions}; use the same to add to it")
        existing = previous.entries
    known = {e.sha256 for e in existing} | {e.pixels_sha256 for e in existing if e.pixels_sha256}
    entries = list(existing)
    links: list[tuple[str, ...]] = [e.links or (e.source_id,) for e in existing]
    skipped: Counter[str] = Counter()
    added = 0
    total = len(candidates)
    for done, candidate in enumerate(candidates, start=1):
        result = _ingest_one(candidate, out_dir, mode=mode, min_size=min_size, known=known, max_bytes=max_bytes)
        if isinstance(result, str):
            skipped[result] += 1
        else:
            entry, keys = result
            entries.append(entry)
            links.append(keys)
            added += 1
        if progress is not None:
            progress(done, total)
    entries = _assign_groups(entries, links, len(existing), seed=seed, fractions=fractions)
    corpus = Corpus(root=out_dir, entries=tuple(entries), seed=seed, fractions=fractions)
    corpus.save()
    problems = {k: v for k, v in skipped.items() if k in ("unreadable", "too large")}
    if problems:
        log.warning("skipped %s", ", ".join(f"{v} {k}" for k, v in sorted(problems.items())))
    return BuildReport(corpus=corpus, scanned=total, added=added, skipped=dict(sorted(skipped.items())))


def _ingest_one(
    candidate: Candidate,
    out_dir: Path,
    *,
    mode: str,
    min_size: int,
    known: set[str],
    max_bytes: int | None,
) -> tuple[ManifestEntry, tuple[str, ...]] | str:
    """The entry of one file and its link keys, or the reason it was skipped."""
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
    keys: list[str] = [pseudonym(kind, value) for kind, value in candidate.links]
    lossy = fmt == "jpeg"
    indices_wanted: list[int] | None = None
    if fmt == "dicom":
        header_keys, lossy, total_frames = _dicom_header(path)
        keys += header_keys
        indices_wanted = _evenly(total_frames, candidate.max_frames)
    try:
        image = read_image(path, modality=candidate.modality, max_bytes=max_bytes, frame_indices=indices_wanted)
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
    suffix = ".nii.gz" if fmt == "nifti" and path.name.lower().endswith(".gz") else EXTENSIONS[fmt]
    relative = f"images/{sha[:2]}/{sha}{suffix}"
    _place(path, out_dir, relative, mode)
    keys = sorted(set(keys)) or [image.source_id if fmt == "dicom" else f"file:{sha[:16]}"]
    entry = ManifestEntry(
        path=relative,
        format=fmt,
        modality=image.modality,
        shape=(image.total_frames, rows, columns),
        source_id=keys[0],  # replaced by the group's name
        split="train",  # replaced by the group's split
        sha256=sha,
        frame_indices=indices,
        is_color=image.is_color,
        origin=candidate.origin,
        collection=candidate.collection,
        license=candidate.license,
        bits_stored=image.bits_stored,
        lossy=lossy,
        links=tuple(keys),
        pixels_sha256=pixels,
    )
    known.update((sha, pixels))
    return entry, tuple(keys)


def _walk(paths: Iterable[str | os.PathLike[str]], exclude: Path) -> list[tuple[Path, Path]]:
    """``(file, the --from root it was found under)`` for every file under ``paths``."""
    found: list[tuple[Path, Path]] = []
    for item in paths:
        root = Path(item)
        if not root.exists():
            raise CorpusError(f"{root}: no such file or directory")
        if root.is_file():
            found.append((root, root.parent))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() != exclude)
            found.extend((here / name, root) for name in sorted(filenames)
                         if not name.startswith(".") and name != CSV_MANIFEST_NAME)
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
    warning). A ``manifest.csv`` in a ``--from`` folder describes its files (see the module docstring).
    ``modality`` labels NIfTI/PNG/JPEG files that no CSV manifest describes. NIfTI volumes contribute every
    ``slice_step``-th axial slice with content; DICOM multi-frame images at most ``max_frames`` evenly spaced
    frames. ``mode`` copies (default), hard-links or symlinks the files.
    """
    out = Path(out_dir)
    files = _walk(from_paths, out.resolve())
    manifests: dict[Path, dict[Path, dict[str, str]]] = {}
    candidates = []
    for path, root in files:
        if root not in manifests:
            manifests[root] = read_csv_manifest(root)
        row = manifests[root].get(path.resolve())
        candidates.append(_candidate(path, row, root=root, modality=modality, slice_step=slice_step,
                                     max_frames=max_frames))
    return ingest(candidates, out, mode=mode, seed=seed, fractions=fractions, min_size=min_size,
                  progress=progress, max_bytes=max_bytes)
