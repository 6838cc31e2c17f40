"""Corpora: splits by source that are stable and seeded, manifest round trip, build from folders, sample corpus."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import warnings
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest

from detectors.data import (
    MANIFEST_NAME,
    SPLITS,
    Corpus,
    ManifestEntry,
    assign_split,
    build_corpus,
    build_sample_corpus,
)
from detectors.errors import CorpusError


def _dicom_copy(src: Path, dst: Path, *, patient: str, study: str, sop: str, mark: int) -> Path:
    ds = pydicom.dcmread(src)
    pixels = ds.pixel_array.copy()
    pixels[0, :4] = mark  # distinct pixels: identical pixels would be skipped as duplicates
    ds.PixelData = pixels.tobytes()
    ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID = patient, study, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


def test_assign_split_is_stable_seeded_and_follows_fractions() -> None:
    sources = [f"patient:{i:04d}" for i in range(2000)]
    first = [assign_split(s, seed=3) for s in sources]
    assert first == [assign_split(s, seed=3) for s in sources]
    assert first != [assign_split(s, seed=4) for s in sources]
    counts = {split: first.count(split) for split in SPLITS}
    assert abs(counts["train"] / 2000 - 0.7) < 0.05 and abs(counts["test"] / 2000 - 0.15) < 0.05
    assert {assign_split(s, fractions=(0.0, 0.0, 1.0)) for s in sources[:50]} == {"test"}
    with pytest.raises(CorpusError):
        assign_split("x", fractions=(0.5, 0.5, 0.5))


@pytest.fixture
def tree(tmp_path: Path, dicom_sample: dict[str, Path]) -> Path:
    """A folder like a hospital export: DICOM without extensions, NIfTI, PNG, junk, a tiny and a broken file."""
    root = tmp_path / "export"
    mr, ct = dicom_sample["MR_small.dcm"], dicom_sample["CT_small.dcm"]
    for p in range(12):
        for i in range(2):
            src = mr if i == 0 else ct
            _dicom_copy(src, root / f"Patient {p}" / f"IM{i}", patient=f"P{p}", study=f"1.2.3.{p}",
                        sop=f"1.2.3.{p}.{i}", mark=10 * p + i)
    nib.save(nib.Nifti1Image(np.pad(np.ones((60, 60, 8), np.float32), ((2, 2), (2, 2), (0, 0))), np.eye(4)),
             root / "brain.nii.gz")
    cv2.imwrite(str(root / "xray.png"), np.tile(np.arange(80, dtype=np.uint16) * 500, (72, 1)))
    cv2.imwrite(str(root / "tiny.png"), np.zeros((8, 8), np.uint8))
    (root / "notes.txt").write_text("not an image")
    broken = root / "broken.dcm"
    broken.write_bytes(dicom_sample["MR_small.dcm"].read_bytes()[:4000])
    shutil.copy(root / "Patient 0" / "IM0", root / "copy-of-IM0")
    return root


def test_build_corpus_from_folders(tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "corpus"
    seen: list[tuple[int, int]] = []
    with caplog.at_level(logging.WARNING):
        report = build_corpus([tree], out, modality="MR", progress=lambda d, t: seen.append((d, t)))
    assert report.added == 26  # 24 DICOM + NIfTI + PNG
    assert report.skipped == {"duplicate": 1, "not an image": 1, "too small": 1, "unreadable": 1}
    assert "1 unreadable" in caplog.text
    assert seen[-1] == (report.scanned, report.scanned) == (30, 30)
    corpus = Corpus.load(out)
    assert len(corpus.entries) == 26
    # Files are content-addressed: no folder or file name (often a patient's) reaches the corpus.
    manifest_text = (out / MANIFEST_NAME).read_text()
    assert "Patient" not in manifest_text and "P1" not in manifest_text
    for entry in corpus.entries:
        assert (out / entry.path).is_file() and entry.sha256 in entry.path
    # Every image of one patient shares a split.
    by_source: dict[str, set[str]] = {}
    for entry in corpus.entries:
        by_source.setdefault(entry.source_id, set()).add(entry.split)
    assert all(len(splits) == 1 for splits in by_source.values())
    assert len([s for s in by_source if s.startswith("patient:")]) == 12
    assert {e.split for e in corpus.entries} == set(SPLITS)  # 12 patients at seed 0 reach every split
    nifti = next(e for e in corpus.entries if e.format == "nifti")
    assert nifti.modality == "MR" and nifti.shape == (8, 64, 64)
    png = next(e for e in corpus.entries if e.format == "png")
    assert png.shape == (1, 72, 80)


def test_build_is_stable_and_extends(tree: Path, tmp_path: Path) -> None:
    a = build_corpus([tree], tmp_path / "a").corpus
    b = build_corpus([tree], tmp_path / "b").corpus
    assert [(e.sha256, e.split) for e in a.entries] == [(e.sha256, e.split) for e in b.entries]
    again = build_corpus([tree], tmp_path / "a")
    assert again.added == 0 and len(again.corpus.entries) == len(a.entries)
    with pytest.raises(CorpusError, match="seed"):
        build_corpus([tree], tmp_path / "a", seed=1)


def test_manifest_round_trip_and_iteration(tree: Path, tmp_path: Path) -> None:
    built = build_corpus([tree], tmp_path / "c", modality="MR", slice_step=3).corpus
    loaded = Corpus.load(tmp_path / "c")
    assert sorted(loaded.entries, key=lambda e: e.path) == sorted(built.entries, key=lambda e: e.path)
    assert ManifestEntry.from_json(json.loads(json.dumps(loaded.entries[0].to_json()))) == loaded.entries[0]
    nifti = next(e for e in loaded.entries if e.format == "nifti")
    assert nifti.frame_indices == (0, 3, 6)
    total = 0
    for split in SPLITS:
        frames = list(loaded.iter_frames(split, normalized=True))
        total += len(frames)
        for frame in frames:
            assert frame.entry.split == split and frame.pixels.dtype == np.float32
            assert 0.0 <= float(frame.pixels.min()) and float(frame.pixels.max()) <= 1.0
    assert total == sum(e.n_frames for e in loaded.entries) == 24 + 3 + 1
    with pytest.raises(CorpusError):
        list(loaded.iter_entries("holdout"))  # type: ignore[arg-type]


def test_manifest_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not a corpus"):
        Corpus.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"version": 1, "entries": [
        {"path": "../../etc/passwd", "format": "dicom", "modality": "CT", "shape": [1, 64, 64],
         "source_id": "x", "split": "train", "sha256": "0"}]}))
    with pytest.raises(CorpusError, match="relative"):
        Corpus.load(tmp_path)
    with pytest.raises(CorpusError):
        build_corpus([tmp_path / "missing"], tmp_path / "out")


@pytest.mark.slow
def test_sample_corpus_builds_offline_with_several_modalities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sample corpus must not reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    report = build_sample_corpus(tmp_path / "sample")
    corpus = report.corpus
    modalities = {e.modality for e in corpus.entries}
    assert {"CT", "MR", "CR", "US"} <= modalities
    assert {e.format for e in corpus.entries} == {"dicom", "nifti"}
    assert len(corpus.entries) >= 12 and report.skipped_total == 0
    assert {e.split for e in corpus.entries} == set(SPLITS)
    origins = {e.origin.split(":")[1] for e in corpus.entries}
    assert not any(o.startswith(("SC_", "examples_")) or "truncated" in o for o in origins)
    # Real scans kept despite header faults, and nibabel's diffusion mosaic: each a patient of its own.
    kept = {"bad_sequence.dcm", "explicit_VR-UN.dcm", "J2K_pixelrep_mismatch.dcm", "0.dcm"}
    assert kept <= origins and "1.dcm" not in origins  # 1.dcm: the same series as 0.dcm
    by_origin = {e.origin.split(":")[1]: e for e in corpus.entries}
    assert len({by_origin[o].source_id for o in kept}) == len(kept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's remarks on these headers go to the debug log, not the user
        for entry in corpus.entries:
            corpus.read(entry)
    for name in ("bad_sequence.dcm", "explicit_VR-UN.dcm", "J2K_pixelrep_mismatch.dcm"):
        frames = corpus.read(by_origin[name]).frames
        assert by_origin[name].modality == "CT" and -2100 <= frames.min() < -900 and 900 < frames.max() < 4000
    for entry in corpus.entries:
        assert min(entry.shape[1:]) >= 64
    image = corpus.read(next(e for e in corpus.entries if e.format == "nifti"))
    assert image.n_frames < image.total_frames  # slices, not the whole volume


def test_csv_manifest_groups_by_patient_and_study_and_records_terms(
    dicom_sample: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    (root / "xr").mkdir(parents=True)
    rows = ["path,source,modality,patient_key,study_uid,license"]
    for i in range(6):
        image = (np.random.default_rng(i).random((80, 96)) * 255).astype(np.uint8)
        cv2.imwrite(str(root / "xr" / f"{i}.jpg"), image)
        rows.append(f"xr/{i}.jpg,chest,XR,ieee:{i // 2},,{'CC BY 4.0' if i else 'nan'}")
    # Two DICOM files of two patients that share a study: one group (a patient and a study link transitively).
    _dicom_copy(dicom_sample["MR_small.dcm"], root / "d" / "a", patient="PA", study="1.2.9", sop="1.2.9.1", mark=1)
    _dicom_copy(dicom_sample["MR_small.dcm"], root / "d" / "b", patient="PB", study="1.2.9", sop="1.2.9.2", mark=2)
    _dicom_copy(dicom_sample["CT_small.dcm"], root / "d" / "c", patient="PB", study="1.2.10", sop="1.2.10.1", mark=3)
    rows.append("d/a,dcm,MR,dcm:PA,1.2.9,see README")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    corpus = build_corpus([root], tmp_path / "corpus").corpus
    assert len(corpus.entries) == 9
    jpegs = [e for e in corpus.entries if e.format == "jpeg"]
    assert {e.modality for e in jpegs} == {"XR"} and {e.collection for e in jpegs} == {"chest"}
    assert all(e.lossy and e.form == "8bit" and e.bits_stored == 8 for e in jpegs)
    assert sorted(e.license for e in jpegs) == ["", "CC BY 4.0", "CC BY 4.0", "CC BY 4.0", "CC BY 4.0", "CC BY 4.0"]
    assert len({e.source_id for e in jpegs}) == 3  # one group per patient, two images each
    dicoms = [e for e in corpus.entries if e.format == "dicom"]
    assert len({e.source_id for e in dicoms}) == 1 and all(e.form == "native" for e in dicoms)
    assert all(not e.lossy for e in dicoms)
    text = (tmp_path / "corpus" / MANIFEST_NAME).read_text()
    assert "PA" not in text and "ieee:" not in text  # identifiers are pseudonymised
    # A new image linked to an existing group joins its split; existing entries keep theirs.
    before = {e.sha256: (e.source_id, e.split) for e in corpus.entries}
    _dicom_copy(dicom_sample["CT_small.dcm"], tmp_path / "more" / "e", patient="PB", study="1.2.11", sop="1.2.11.1",
                mark=4)
    grown = build_corpus([tmp_path / "more"], tmp_path / "corpus").corpus
    assert {e.sha256: (e.source_id, e.split) for e in grown.entries if e.sha256 in before} == before
    new = next(e for e in grown.entries if e.sha256 not in before)
    assert (new.source_id, new.split) == (dicoms[0].source_id, dicoms[0].split)


def test_scarce_modality_groups_get_more_real_crops_and_no_fakes(tree: Path, tmp_path: Path) -> None:
    from collections import Counter

    from detectors.models.views import real_views, scarce_group_reals

    corpus = build_corpus([tree], tmp_path / "c").corpus
    every = real_views(corpus, ["train"], view_size=32, max_per_frame=1)
    views = [v for v in every if v.group != "CT/native"] + [v for v in every if v.group == "CT/native"][:1]
    counts = Counter(v.group for v in views)
    floor = 2
    extra = scarce_group_reals(corpus, views, floor=floor, view_size=32, per_frame=3, seed=0)
    scarce = {g for g, n in counts.items() if n < floor}
    assert "CT/native" in scarce and scarce != set(counts)  # a group with enough views gets none
    assert {v.group for v in extra} == scarce
    assert all(v.is_real and v.split == "train" and v.method == "extra crop" and v.partner is None for v in extra)
    # Each frame of a CT (128 px) gives three crops, spread out: not the same pixels thrice.
    ct = [v for v in extra if v.group == "CT/native"]
    assert ct and set(Counter(v.source_id for v in ct).values()) == {3}
    first = [v for v in ct if v.source_id == ct[0].source_id]
    assert not np.array_equal(first[0].pixels, first[1].pixels)
    assert scarce_group_reals(corpus, views, floor=0, view_size=32, seed=0) == []
