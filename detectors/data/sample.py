"""The sample corpus: real images that ship inside installed packages (pydicom, pydicom-data, nibabel, nilearn).

Nothing is downloaded. :func:`build_sample_corpus` indexes them like any folder (:mod:`detectors.data.build`);
``medverify corpus build`` adds the shared corpora beside them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

from detectors.data.build import LOSSY_SYNTAXES, BuildReport, Candidate, ProgressCallback, ingest
from detectors.data.corpus import DEFAULT_FRACTIONS, remarks_to_debug_log
from detectors.errors import CorpusError

__all__ = ["SAMPLE_MODALITIES", "build_sample_corpus", "package_dir", "sample_dicom_files"]

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
#: What the packages state about their test images (the model card lists it per collection).
_TERMS = {
    "pydicom": "pydicom test files (MIT-licensed package; images from public test sets)",
    "pydicom-data": "pydicom-data test files (MIT-licensed package; images from public test sets)",
    "nibabel": "nibabel test data (MIT-licensed package)",
    "nilearn": "MNI ICBM152 2009a template (nilearn; free use with acknowledgement)",
}


def package_dir(name: str) -> Path | None:
    """Where package ``name`` is installed, found without importing it (nilearn takes seconds to import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_dicom_files() -> list[tuple[str, Path]]:
    """``(package, path)`` of the DICOM test files installed with pydicom and pydicom-data.

    Listed from the package folders directly: :func:`pydicom.data.get_testdata_files` would try to download
    every file of pydicom's index that is missing here.
    """
    found: list[tuple[str, Path]] = []
    pydicom_dir = package_dir("pydicom")
    if pydicom_dir is not None:
        found += [("pydicom", p) for p in sorted((pydicom_dir / "data" / "test_files").glob("*.dcm"))]
    store = package_dir("data_store")  # the import name of pydicom-data
    if store is not None:
        found += [("pydicom-data", p) for p in sorted((store / "data").glob("*.dcm"))]
    return found


def _nibabel_dicom_files() -> list[tuple[str, Path]]:
    """nibabel's DICOM test files: two frames of one Siemens diffusion series, stored as 256 x 256 mosaics."""
    nibabel = package_dir("nibabel")
    if nibabel is None:
        return []
    return [("nibabel", p) for p in sorted((nibabel / "tests" / "data").glob("*.dcm"))]


def _sample_dicom_candidates() -> list[Candidate]:
    """One file per image from pydicom's and pydicom-data's test files: uncompressed, then lossless, then lossy.

    The packages hold the same image in several transfer syntaxes and frame counts, often with new UIDs: files
    with the same patient, study, modality and geometry are taken to be one image.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    groups: dict[tuple[str, ...], list[tuple[int, str, Path, str, str]]] = {}
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
        lossy = str(ds.get("LossyImageCompression", "")) == "01" or ts in LOSSY_SYNTAXES
        rank = 2 if lossy else (1 if ts is not None and UID(ts).is_compressed else 0)
        key = tuple(str(ds.get(k, "")) for k in ("PatientID", "StudyInstanceUID", "Modality", "Rows", "Columns"))
        groups.setdefault(key, []).append((rank, path.name, path, f"{package}:{path.name}", package))
    candidates: list[Candidate] = []
    for key in sorted(groups):
        _rank, _name, path, origin, package = min(groups[key])
        candidates.append(Candidate(path=path, origin=origin, max_frames=8, collection=package,
                                    license=_TERMS[package]))
    return candidates


def _sample_nifti_candidates() -> list[Candidate]:
    candidates: list[Candidate] = []
    nilearn = package_dir("nilearn")
    if nilearn is not None:
        mni = nilearn / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        if mni.is_file():
            candidates.append(Candidate(path=mni, modality="MR", origin=f"nilearn:{mni.name}", slice_step=12,
                                        collection="nilearn", license=_TERMS["nilearn"]))
    nibabel = package_dir("nibabel")
    if nibabel is not None:
        epi = nibabel / "tests" / "data" / "example4d.nii.gz"
        if epi.is_file():
            candidates.append(Candidate(path=epi, modality="MR", origin=f"nibabel:{epi.name}", slice_step=4,
                                        collection="nibabel", license=_TERMS["nibabel"]))
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
    if package_dir("nibabel") is None:
        raise CorpusError("the sample corpus needs the 'data' extra: pip install 'medverify[data]'")
    with remarks_to_debug_log("sample corpus"):  # the test files' header quirks: hashes as UIDs, a VR mismatch
        candidates = _sample_dicom_candidates() + _sample_nifti_candidates()
        if not candidates:
            raise CorpusError("no sample images found: is pydicom (and the 'data' extra) installed?")
        return ingest(candidates, Path(out_dir), mode=mode, seed=seed, fractions=fractions, min_size=64,
                      progress=progress, max_bytes=None)
