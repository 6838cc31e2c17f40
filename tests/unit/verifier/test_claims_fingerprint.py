"""Fingerprints and the duplicate matcher on real sample images; manifests and header facts."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import pytest

from detectors.data import read_image, sample_dicom_files
from verifier.claims import load_claims
from verifier.claims.fingerprint import SIMHASH_OFFSET, band_values, fingerprint_frame, hamming, tied_fraction
from verifier.claims.headers import age_years, normalise_body_part
from verifier.claims.matcher import BatchIndex, confirm
from verifier.claims.samples import transform_pixels
from verifier.errors import InputError


def _frame(name: str) -> np.ndarray:
    found = {p.name: p for _pkg, p in sample_dicom_files()}
    if name not in found:
        pytest.skip(f"sample image {name} is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = read_image(found[name], frame_indices=[0])
    frame = image.frames[0]
    return -frame if image.photometric.strip().upper() == "MONOCHROME1" else frame


def test_window_level_changes_leave_the_hashes_close() -> None:
    frame = _frame("MR2_UNCR.dcm")
    a = fingerprint_frame(frame)
    # A linear change (rescale slope/intercept, window/level without clipping) gives the same hashes, up to a bit
    # where float rounding breaks a near-tie.
    linear = fingerprint_frame(frame * 0.25 - 1000.0)
    assert max(hamming(x, y) for x, y in zip(a.phashes, linear.phashes, strict=True)) <= 2
    # Non-linear monotone ones (gamma, a narrower window that saturates) move them little.
    lo, hi = np.percentile(frame, (10, 90))
    for other in (np.sqrt(frame - frame.min()), np.clip(frame, lo, hi)):
        b = fingerprint_frame(other)
        assert hamming(a.phashes[0], b.phashes[0]) <= 8
        assert confirm(b.slots(), b.match_view, a.slots(), a.match_view).confirmed


@pytest.mark.parametrize("name", ["MR2_UNCR.dcm", "RG1_UNCR.dcm", "693_UNCR.dcm", "US1_UNCR.dcm"])
def test_reused_copies_are_confirmed(name: str) -> None:
    frame = _frame(name)
    original = fingerprint_frame(frame)
    for seed in range(3):
        copy = fingerprint_frame(transform_pixels(frame, np.random.default_rng(seed)).astype(np.float32))
        c = confirm(copy.slots(), copy.match_view, original.slots(), original.match_view)
        assert c.confirmed, (name, seed, c)
        assert 0.55 <= c.other_scale <= 0.85  # the copy (scale 1) is a central 60-80 % crop of the original


def test_different_images_are_not_confirmed() -> None:
    names = ["MR2_UNCR.dcm", "RG1_UNCR.dcm", "693_UNCR.dcm", "US1_UNCR.dcm", "RG3_UNCR.dcm"]
    prints = [fingerprint_frame(_frame(n)) for n in names]
    for i, a in enumerate(prints):
        for b in prints[i + 1 :]:
            c = confirm(a.slots(), a.match_view, b.slots(), b.match_view)
            assert not c.confirmed, c


def _mni_slice(axis: int, index: int) -> np.ndarray:
    nib = pytest.importorskip("nibabel")
    from detectors.data.sample import _sample_nifti_candidates

    found = [c for c in _sample_nifti_candidates() if "mni" in c.origin]
    if not found:
        pytest.skip("nilearn's MNI template is not installed")
    volume = np.asarray(nib.load(str(found[0].path)).get_fdata(), dtype=np.float32)
    return np.ascontiguousarray(np.take(volume, index, axis=axis))


def _saturated_copy(frame: np.ndarray, *, top_percentile: float) -> np.ndarray:
    """A reuse that windows the slice so that its brightest pixels saturate, crops 70 %, enlarges, JPEG 80."""
    import cv2

    lo, hi = np.percentile(frame, (0, top_percentile))
    view = np.clip((frame - lo) / (hi - lo), 0, 1) * 255
    h, w = view.shape
    ch, cw = int(h * 0.7), int(w * 0.7)
    view = view[(h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]
    view = cv2.resize(view, (int(cw * 1.1), int(ch * 1.1)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", view.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32)


@pytest.mark.parametrize(("axis", "index"), [(1, 170), (1, 160)])
def test_saturated_copies_of_a_slice_on_black_are_found_by_the_simhash(axis: int, index: int) -> None:
    """The benchmark's misses before SimHashes: a brain slice (mostly black background) reused with a window
    that saturates its white matter. Its pHashes are more than MAX_HAMMING bits from every scale of the
    source's, so the pHash index never proposes it; the SimHash does, and the masked correlation confirms it,
    while the neighbouring slice 10 mm away is not confirmed."""
    from verifier.claims.matcher import MAX_HAMMING

    source = fingerprint_frame(_mni_slice(axis, index))
    copy = fingerprint_frame(_saturated_copy(_mni_slice(axis, index), top_percentile=88))
    assert tied_fraction(source.match_view) >= 0.25
    assert min(hamming(x, y) for x in source.phashes for y in copy.phashes) > MAX_HAMMING
    index_ = BatchIndex()
    index_.add(1, source.slots())
    assert 1 in index_.near(copy.slots())
    c = confirm(copy.slots(), copy.match_view, source.slots(), source.match_view)
    assert c.confirmed and c.hash_kind == "simhash", c
    neighbour = fingerprint_frame(_mni_slice(axis, index + 10))
    assert not confirm(neighbour.slots(), neighbour.match_view, source.slots(), source.match_view).confirmed


def test_blank_images_have_no_perceptual_hash() -> None:
    fp = fingerprint_frame(np.full((64, 64), 100.0, dtype=np.float32))
    assert fp.blank and fp.phashes == () and fp.phash is None and fp.slots() == {}


def test_multi_index_finds_every_hash_within_seven_bits() -> None:
    rng = np.random.default_rng(1)
    index = BatchIndex()
    stored = [int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)) for _ in range(500)]
    for key, h in enumerate(stored):
        index.add(key, {0: h})
    for key, h in enumerate(stored[:100]):
        flipped = h
        for bit in rng.choice(64, size=7, replace=False):
            flipped ^= 1 << int(bit)
        assert hamming(h, flipped) == 7
        assert key in index.near({0: flipped})
        # Families are kept apart: the same bits as a SimHash are not a candidate for a pHash.
        assert key not in index.near({SIMHASH_OFFSET: flipped})
    assert band_values(0xFFFF_0000_1234_ABCD) == (0xABCD, 0x1234, 0x0000, 0xFFFF)


def test_claims_from_subfolders_and_manifest(tmp_path: Path) -> None:
    found = {p.name: p for _pkg, p in sample_dicom_files()}
    src = found.get("CT_small.dcm")
    if src is None:
        pytest.skip("pydicom test files missing")
    for claim in ("A-1", "B-2"):
        (tmp_path / claim).mkdir()
        (tmp_path / claim / "x.dcm").write_bytes(src.read_bytes())
    (tmp_path / "B-2" / "notes.txt").write_text("not an image")
    claims = load_claims(tmp_path)
    assert [(c.claim_id, [p.name for p in c.files]) for c in claims] == [("A-1", ["x.dcm"]), ("B-2", ["x.dcm"])]

    manifest = tmp_path / "claims.csv"
    manifest.write_text(
        "Claim_ID,File,Patient_ID,Claim_Date,Body_Part\n"
        "C1,A-1/x.dcm,P1,2024-03-01,Chest\n"
        "C1,B-2/x.dcm,P1,,\n"
    )
    (c1,) = load_claims(tmp_path, manifest)
    assert c1.claim_id == "C1" and len(c1.files) == 2
    assert c1.claim_date == dt.date(2024, 3, 1) and c1.body_part == "Chest" and c1.patient_id == "P1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("claim_id,file,colour\nC1,a.dcm,red\n", "unknown column"),
        ("claim_id,patient_id\nC1,P1\n", "needs the columns"),
        ("claim_id,file\nC1,../outside.dcm\n", "outside"),
        ("claim_id,file,patient_id\nC1,a.dcm,P1\nC1,b.dcm,P2\n", "two values for patient_id"),
        ("claim_id,file,claim_date\nC1,a.dcm,yesterday\n", "not a date"),
        ("claim_id,file\n", "lists no files"),
    ],
)
def test_bad_manifests_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    (tmp_path / "root").mkdir()
    with pytest.raises(InputError, match=message):
        load_claims(tmp_path / "root", manifest)


def test_header_helpers() -> None:
    assert normalise_body_part(" thorax ") == normalise_body_part("CHEST") == "CHEST"
    assert normalise_body_part("") is None
    assert age_years("045Y") == 45 and age_years("006M") == 0.5 and age_years("bad") is None
