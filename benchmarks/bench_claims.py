"""Claim audits: claims/s end to end, and the duplicate matcher's precision and recall with planted near-duplicates.

Run from the repository root: ``nice python benchmarks/bench_claims.py [--images 1000 --planted 100]``.

The image set: *distinct* images first from real sample data (pydicom's and pydicom-data's test files, nilearn's
MNI template): non-overlapping 160-pixel tiles of the large radiographs, MR, US and CT images and small images
whole (tiles without structure dropped: flat, or more than 15 % saturated), ultrasound cine frames 5 apart, and
MNI template slices 10 voxels apart in the three orientations (sagittal from one hemisphere only: the template is
symmetric, so a slice and its mirror are the same image); the rest are unpaired samples of the shipped VAE.
Neighbouring tiles and slices of one image look alike, which is what makes precision hard. ``--planted`` of them
get a reused copy made as in a fraud (:func:`verifier.claims.samples.transform_pixels`): windowed differently
(random percentile window, saturating), cropped to a central 60-80 % of each side (a few pixels off centre), resized
by :data:`RESIZE`, re-encoded as JPEG quality 70-90, in a new DICOM file with new UIDs and another patient.
Together ``--images`` files, in claims of ``--claim-size`` images (a copy never in its source's claim).

Two runs, each in a fresh SQLite audit database, both through :class:`verifier.claims.ClaimsAuditor` (the same code
as ``medverify claims audit``: parse, signature check, header facts, decode, fingerprint, audit records, index):

- ``batch``: all claims in one audit; a pair counts as found when a ``reused_image`` / ``duplicate_in_claim``
  finding links the two files;
- ``index``: the claims without copies audited first, then the claims with copies in a second audit, which can
  only find the sources in the database index (multi-index hash lookup + cross-correlation of stored thumbnails).

With ``--exports`` the copies are written as what claims receive instead of DICOM (issue #26), in turn: a JPEG
(quality 85) at half the copy's size, an 8-bit PNG, and a one-page PDF (its image stored as JPEG by Pillow); an
export names no patient, so "another patient" comes from the claim. Results then go to
``benchmarks/results/bench_claims_exports.json``.

Precision = planted pairs found / all pairs reported; recall = planted pairs found / planted. Target: recall and
precision >= 0.98. Prints the figures, saves ``benchmarks/results/bench_claims.json``, exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from detectors.data import read_image
from detectors.data.sample import _sample_dicom_candidates, _sample_nifti_candidates
from provenance.keys import KeyStore
from verifier.audit import AuditLog
from verifier.checker import Check, Checker
from verifier.claims import ClaimInfo, ClaimsAuditor
from verifier.claims.samples import _jpeg_dataset, pdf_with_images, transform_pixels

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_claims.json"
PASSPHRASE = b"bench-claims-passphrase"  # a throw-away key store made for this benchmark only
TARGETS = {"recall": 0.98, "precision": 0.98}
TILE = 160
#: Resize factors of the planted copies (after the crop); the images are small (tiles of 160 pixels), so copies
#: shrunk by half would be 50-pixel thumbnails.
RESIZE = (0.75, 1.25)


def _structured(tile: npt.NDArray[np.float32]) -> bool:
    """A tile with content: not flat, not mostly saturated (collimator borders, background, burnt-in text)."""
    lo, hi = np.percentile(tile, (1, 99))
    if not hi > lo:
        return False
    unit = np.clip((tile - lo) / (hi - lo), 0, 1)
    return float(unit.std()) > 0.12 and float(((unit < 0.03) | (unit > 0.97)).mean()) < 0.15


def distinct_images(limit: int, *, seed: int = 0) -> list[tuple[str, npt.NDArray[np.float32]]]:
    """``(origin, frame)`` of distinct images (see the module docstring), real ones first, VAE samples to fill."""
    out: list[tuple[str, npt.NDArray[np.float32]]] = []
    for cand in _sample_dicom_candidates():
        image = read_image(cand.path)
        mono1 = image.photometric.strip().upper() == "MONOCHROME1"
        cine = image.n_frames > 10
        for k in range(0, image.n_frames, 5 if cine else 1):
            frame = -image.frames[k] if mono1 else image.frames[k]
            h, w = frame.shape
            if cine or max(h, w) <= 2 * TILE:  # cine frames and small images: whole
                if min(h, w) >= 96 and _structured(frame):
                    out.append((f"{cand.origin}#f{k}", frame))
                continue
            for y in range(0, h - TILE + 1, TILE):
                for x in range(0, w - TILE + 1, TILE):
                    tile = frame[y : y + TILE, x : x + TILE]
                    if _structured(tile):
                        out.append((f"{cand.origin}#f{k}@{y},{x}", tile))
    for cand in _sample_nifti_candidates():
        if "mni" not in cand.origin:
            continue
        import nibabel as nib

        vol = np.asarray(nib.load(str(cand.path)).get_fdata(), dtype=np.float32)
        for axis in range(3):
            # The template is symmetric: a sagittal slice and its mirror across the midline are the same image.
            stop = vol.shape[0] // 2 - 1 if axis == 0 else vol.shape[axis] - 30
            for i in range(30, stop, 10):
                sl = np.ascontiguousarray(np.take(vol, i, axis=axis))
                if _structured(sl) or float(sl.std()) > 0:
                    out.append((f"{cand.origin}#a{axis}s{i}", sl))
    if len(out) < limit:
        out += _vae_samples(limit - len(out), seed=seed)
    random.Random(seed).shuffle(out)
    return out[:limit]


def _vae_samples(n: int, *, seed: int) -> list[tuple[str, npt.NDArray[np.float32]]]:
    """Unpaired samples of the shipped VAE (diverse: no two of 500 correlate above 0.8), 192 pixels."""
    import torch

    from detectors.generators.base import generator_class

    torch.set_num_threads(1)
    vae = generator_class("vae").load(ROOT / "detectors" / "checkpoints" / "vae")
    out = []
    for start in range(0, n, 32):  # small batches: a few MB of activations each
        batch = vae.sample(min(32, n - start), seed=seed + start, size=192)
        out += [(f"vae:seed{seed + start}#{i}", np.asarray(s, dtype=np.float32)) for i, s in enumerate(batch)]
    return out


def _dicom(pixels: npt.NDArray[np.float32], patient: str) -> Dataset:
    """An uncompressed 16-bit Secondary Capture of ``pixels`` (rescaled to 0..4095), for the patient."""
    lo, hi = float(pixels.min()), float(pixels.max())
    stored = np.round((pixels - lo) / (hi - lo or 1) * 4095).astype("<u2")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName, ds.StudyDate = "OT", patient, f"PATIENT^{patient}", "20240101"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.tobytes()
    return ds


def _export(pixels: npt.NDArray[np.uint8], base: Path, turn: int) -> tuple[Path, str]:
    """A reused copy written as an export: (the file, the label its finding names)."""
    import cv2

    if turn % 3 == 0:
        h, w = pixels.shape
        half = cv2.resize(pixels, (max(8, w // 2), max(8, h // 2)), interpolation=cv2.INTER_AREA)
        path = base.with_suffix(".jpg")
        cv2.imwrite(str(path), half, [cv2.IMWRITE_JPEG_QUALITY, 85])
        return path, str(path)
    if turn % 3 == 1:
        path = base.with_suffix(".png")
        cv2.imwrite(str(path), pixels)
        return path, str(path)
    path = pdf_with_images(base.with_suffix(".pdf"), [pixels])
    return path, f"{path}#page=1&image=1"


def build_set(
    directory: Path, n_images: int, n_planted: int, claim_size: int, seed: int, *, exports: bool = False
) -> dict[str, Any]:
    """Write the claim folders; return the claims, which file is a copy of which, and the set's description."""
    originals = distinct_images(n_images - n_planted)
    if len(originals) < n_images - n_planted:
        raise SystemExit(f"only {len(originals)} distinct sample images are installed; lower --images")
    rng = np.random.default_rng(seed)
    files: list[tuple[str, Path]] = []  # (kind, path)
    planted: dict[str, str] = {}  # copy (as its findings name it) -> source
    copy_source: dict[str, str] = {}  # copy file -> source
    chosen = set(rng.choice(len(originals), size=n_planted, replace=False).tolist())
    for i, (_origin, frame) in enumerate(originals):
        path = directory / "files" / f"img{i:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        _dicom(frame, f"P{i:05d}").save_as(path, enforce_file_format=True)
        files.append(("original", path))
        if i in chosen:
            copy = directory / "files" / f"img{i:05d}_reused.dcm"
            pixels = transform_pixels(frame, rng, resize=RESIZE)
            label = str(copy)
            if exports:
                copy, label = _export(pixels, copy, len(planted))
            else:
                _jpeg_dataset(pixels, {"PatientID": f"Q{i:05d}", "PatientName": f"OTHER^Q{i:05d}"}).save_as(
                    copy, enforce_file_format=True
                )
            files.append(("copy", copy))
            planted[label] = str(path)
            copy_source[str(copy)] = str(path)
    # Claims: originals first, shuffled into claims; copies into other claims.
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    claim_of: dict[str, str] = {}
    claims: dict[str, list[Path]] = {}
    n_claims = max(2, len(files) // claim_size)
    for rank, idx in enumerate(order):
        kind, path = files[idx]
        cid = f"CLM{rank % n_claims:04d}"
        if kind == "copy" and claim_of.get(copy_source[str(path)]) == cid:
            cid = f"CLM{(rank + 1) % n_claims:04d}"
        claims.setdefault(cid, []).append(path)
        claim_of[str(path)] = cid
    return {"claims": claims, "planted": planted, "copy_files": set(copy_source), "originals": len(originals)}


def _reported_pairs(result: Any) -> set[frozenset[str]]:
    pairs: set[frozenset[str]] = set()
    for claim in result.claims:
        for f in claim.findings:
            if f.kind in ("reused_image", "duplicate_in_claim") and f.evidence.get("other_path"):
                pairs.add(frozenset((f.files[0], str(f.evidence["other_path"]))))
    return pairs


def _scores(found: set[frozenset[str]], planted: dict[str, str]) -> dict[str, Any]:
    truth = {frozenset((c, s)) for c, s in planted.items()}
    tp = len(found & truth)
    return {
        "planted": len(truth),
        "reported_pairs": len(found),
        "true_positives": tp,
        "false_positives": len(found - truth),
        "missed": len(truth - found),
        "precision": tp / len(found) if found else 1.0,
        "recall": tp / len(truth) if truth else 1.0,
        "false_positive_examples": sorted(sorted(p) for p in found - truth)[:5],
        "missed_examples": sorted(sorted(p) for p in truth - found)[:5],
    }


def _auditor(db: Path, trust: Any) -> tuple[ClaimsAuditor, AuditLog]:
    log = AuditLog.open(f"sqlite:///{db}")
    return ClaimsAuditor(Checker(checks=frozenset({Check.SIGNATURE}), trust=trust), log=log), log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--planted", type=int, default=100)
    parser.add_argument("--claim-size", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exports", action="store_true", help="Write the copies as JPEG, PNG and PDF exports.")
    args = parser.parse_args(argv)
    results = RESULTS.with_name("bench_claims_exports.json") if args.exports else RESULTS
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="bench_claims_") as tmp:
        work = Path(tmp)
        store = KeyStore(work / "keys", lambda: PASSPHRASE)
        store.init()
        trust = store.trust_policy()
        t0 = time.perf_counter()
        built = build_set(work / "set", args.images, args.planted, args.claim_size, args.seed, exports=args.exports)
        build_s = time.perf_counter() - t0
        claims = [ClaimInfo(claim_id=cid, files=tuple(paths)) for cid, paths in sorted(built["claims"].items())]
        n_files = sum(len(c.files) for c in claims)
        print(f"set: {n_files} images ({built['originals']} distinct, {len(built['planted'])} planted copies) "
              f"in {len(claims)} claims, built in {build_s:.0f} s", flush=True)  # fmt: skip

        auditor, log = _auditor(work / "batch.db", trust)
        t0 = time.perf_counter()
        result = auditor.audit(claims)
        batch_s = time.perf_counter() - t0
        log.close()
        batch = _scores(_reported_pairs(result), built["planted"])
        batch.update(seconds=round(batch_s, 2), claims_per_s=round(len(claims) / batch_s, 2),
                     images_per_s=round(n_files / batch_s, 2))  # fmt: skip
        print(f"batch: {batch['claims_per_s']} claims/s ({batch['images_per_s']} images/s); "
              f"precision {batch['precision']:.3f} recall {batch['recall']:.3f} "
              f"(fp {batch['false_positives']}, missed {batch['missed']})", flush=True)  # fmt: skip

        copies = built["copy_files"]
        first = [c for c in claims if not any(str(p) in copies for p in c.files)]
        second = [c for c in claims if any(str(p) in copies for p in c.files)]
        auditor, log = _auditor(work / "index.db", trust)
        auditor.audit(first)
        t0 = time.perf_counter()
        later = auditor.audit(second)
        index_s = time.perf_counter() - t0
        log.close()
        found = _reported_pairs(later)
        # Only pairs that involve a copy can be judged in the second run; pairs inside it are batch pairs.
        index = _scores(found, built["planted"])
        n_second = sum(len(c.files) for c in second)
        index.update(indexed_before=later.indexed_before, claims=len(second), images=n_second,
                     seconds=round(index_s, 2), images_per_s=round(n_second / index_s, 2))  # fmt: skip
        print(f"index: {index['images']} images of {index['claims']} claims against {index['indexed_before']} "
              f"indexed; precision {index['precision']:.3f} recall {index['recall']:.3f} "
              f"(fp {index['false_positives']}, missed {index['missed']}); {index['images_per_s']} images/s",
              flush=True)  # fmt: skip

    ok = all(batch[k] >= v and index[k] >= v for k, v in TARGETS.items())
    out = {
        "benchmark": "bench_claims",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "args": vars(args),
        "set": {"images": n_files, "distinct": built["originals"], "planted": len(built["planted"]),
                "claims": len(claims)},
        "batch": batch,
        "index": index,
        "targets": TARGETS,
        "targets_met": ok,
    }  # fmt: skip
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(out, indent=2))
    print(f"saved {results.relative_to(ROOT)}; targets {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
