"""The pixel watermark on real images: round trip, attacks, unmarked and wrong-key images, PSNR, the report."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.data import get_testdata_file

from provenance.watermark import (
    WatermarkError,
    WatermarkKey,
    WatermarkReport,
    WatermarkStatus,
    _ecc,
    detect,
    display_window,
    embed,
)

KEY = WatermarkKey(bytes(range(32)), "test-1")
OTHER = WatermarkKey(bytes(range(1, 33)), 7)
PAYLOAD = 0xFEDC_BA98_7654_3210


def _pixels(name: str) -> tuple[npt.NDArray[Any], int]:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} needs pydicom-data (the 'data' extra)")
    ds = pydicom.dcmread(path)
    return ds.pixel_array, int(ds.BitsStored)


@pytest.fixture(scope="module")
def ct() -> tuple[npt.NDArray[Any], npt.NDArray[Any], int]:
    """A 512x512 signed CT (14 bits stored) and its marked copy."""
    pixels, bits = _pixels("693_UNCR.dcm")
    return pixels, embed(pixels, KEY, PAYLOAD, bits_stored=bits), bits


@pytest.fixture(scope="module")
def mr() -> tuple[npt.NDArray[Any], npt.NDArray[Any], int]:
    """A 1024x1024 12-bit unsigned MR and its marked copy."""
    pixels, bits = _pixels("MR2_UNCR.dcm")
    return pixels, embed(pixels, KEY, PAYLOAD, bits_stored=bits), bits


def _psnr(a: npt.NDArray[Any], b: npt.NDArray[Any], peak: float) -> float:
    return float(10 * np.log10(peak**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def _window8(x: npt.NDArray[Any], lo: float, hi: float) -> npt.NDArray[np.uint8]:
    return np.clip((x.astype(np.float64) - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8)


def _assert_found(pixels: npt.NDArray[Any], payload: int = PAYLOAD) -> WatermarkReport:
    report = detect(pixels, [OTHER, KEY])
    assert report.status is WatermarkStatus.PRESENT, report
    assert report.payload == payload
    assert report.key_id == "test-1"
    assert report.false_alarm_probability <= 1e-9
    return report


def test_round_trip_keeps_type_range_and_psnr(ct: Any, mr: Any) -> None:
    for pixels, marked, bits in (ct, mr):
        assert marked.dtype == pixels.dtype and marked.shape == pixels.shape
        assert not np.array_equal(marked, pixels)
        assert _psnr(pixels, marked, 2.0**bits - 1) >= 50.0
        _assert_found(marked)
    assert ct[1].min() >= -(2**13) and ct[1].max() < 2**13
    assert mr[1].max() < 2**12


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_small_images_keep_type_range_and_psnr(name: str) -> None:
    pixels, bits = _pixels(name)
    marked = embed(pixels, KEY, PAYLOAD, bits_stored=bits)
    assert marked.dtype == pixels.dtype and marked.shape == pixels.shape
    assert _psnr(pixels, marked, 2.0**bits - 1) >= 50.0
    report = detect(pixels, [KEY])
    assert report.status is not WatermarkStatus.PRESENT and report.payload is None and report.key_id is None


def test_images_under_the_minimum_size_are_too_small(mr: Any) -> None:
    """Below one tile (128 px a side) detect says so instead of guessing; one tile is enough to look."""
    small, _ = _pixels("MR_small.dcm")  # 64x64
    report = detect(small, [KEY])
    assert report.status is WatermarkStatus.TOO_SMALL and report.false_alarm_probability == 1.0
    assert report.payload is None and "128x128" in report.details["reason"]
    assert detect(mr[1][:127, :500], [KEY]).status is WatermarkStatus.TOO_SMALL
    assert detect(mr[1][300:428, 300:428], [KEY]).status is not WatermarkStatus.TOO_SMALL  # one tile is tested
    _assert_found(mr[1][301:557, 299:555])  # two tiles a side, at any offset: the payload too


def test_display_window_from_the_dataset() -> None:
    path = get_testdata_file("MR_small.dcm")
    assert path is not None
    assert display_window(pydicom.dcmread(path)) == (-200.0, 1400.0)  # WindowCenter 600, WindowWidth 1600
    path = get_testdata_file("eCT_Supplemental.dcm")
    assert path is not None
    # Enhanced CT: C49/W102 in the shared functional groups, taken back through the intercept -1024.
    assert display_window(pydicom.dcmread(path)) == (1022.0, 1124.0)
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    assert display_window(pydicom.dcmread(path)) is None
    with pytest.raises(WatermarkError):
        embed(np.zeros((128, 128), np.uint16), KEY, 1, window=(5.0, 5.0))


def test_export_through_the_files_window_keeps_the_mark() -> None:
    """A smooth MR whose own window shows the tissue: the mark is told the window and survives the export."""
    path = get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    window = display_window(ds)
    assert window is not None
    marked = embed(ds.pixel_array, KEY, PAYLOAD, bits_stored=int(ds.BitsStored), window=window)
    _ok, jpeg = cv2.imencode(".jpg", _window8(marked, *window), [cv2.IMWRITE_JPEG_QUALITY, 75])
    _assert_found(cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED))


def test_8bit_and_float_images() -> None:
    pixels, _ = _pixels("JPGLosslessP14SV1_1s_1f_8b.dcm")
    marked = embed(pixels, KEY, 1)
    assert marked.dtype == np.uint8 and _psnr(pixels, marked, 255) >= 50.0
    assert detect(marked, [KEY]).payload == 1
    as_float = pixels.astype(np.float32) / 255
    marked_float = embed(as_float, KEY, 2)
    assert marked_float.dtype == np.float32
    assert detect(marked_float, [KEY]).payload == 2


def test_attacks_ct(ct: Any) -> None:
    _pixels_ct, marked, _bits = ct
    lo, hi = (40 - 200 + 1024), (40 + 200 + 1024)  # CT W400/L40 in stored units (intercept -1024)
    exported = _window8(marked, lo, hi)
    _ok, png = cv2.imencode(".png", exported)
    _assert_found(cv2.imdecode(png, cv2.IMREAD_UNCHANGED))
    _ok, jpeg = cv2.imencode(".jpg", exported, [cv2.IMWRITE_JPEG_QUALITY, 75])
    _assert_found(cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED))
    h, w = marked.shape
    _assert_found(cv2.resize(marked.astype(np.float32), (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    _assert_found(cv2.resize(marked.astype(np.float32), (w * 2, h * 2), interpolation=cv2.INTER_LINEAR))
    _assert_found(marked[round(h * 0.2) : round(h * 0.8), round(w * 0.2) : round(w * 0.8)])
    noisy = marked + np.random.default_rng(0).normal(0, 4, marked.shape)  # about the image's own noise
    _assert_found(noisy)


def test_attacks_mr(mr: Any) -> None:
    pixels, marked, _bits = mr
    lo, hi = np.percentile(pixels, [1, 99])
    _ok, jpeg = cv2.imencode(".jpg", _window8(marked, lo, hi), [cv2.IMWRITE_JPEG_QUALITY, 75])
    _assert_found(cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED))
    _assert_found(marked[205:819, 205:819])  # central 60%
    _assert_found(cv2.resize(marked, (512, 512), interpolation=cv2.INTER_AREA))
    # An inverted export (MONOCHROME1 display) is found too, with a negative score.
    report = _assert_found(_window8(marked, hi, lo))
    assert report.score < 0 and report.details["inverted"] is True


def test_unmarked_and_wrong_key_are_absent(ct: Any, mr: Any) -> None:
    for pixels, marked, _ in (ct, mr):
        cases = ((pixels, [KEY]), (marked, [OTHER]), (pixels[100:400, 50:350], [KEY, OTHER]), (marked[:200], [OTHER]))
        for image, keys in cases:
            report = detect(image, keys)
            assert report.status is WatermarkStatus.ABSENT
            assert report.payload is None and report.key_id is None
            assert report.false_alarm_probability > 1e-9


def test_false_alarm_bound_accounts_for_the_search(ct: Any) -> None:
    report = _assert_found(ct[1])
    assert report.details["hypotheses"] == 2 * 3 * 2 * 128 * 128  # keys x scales x signs x offsets
    strict = detect(ct[1], [KEY], threshold_pfa=1e-300)
    assert strict.status is WatermarkStatus.ABSENT and strict.payload is None


def test_report_has_no_truth_value_and_serialises(ct: Any) -> None:
    report = detect(ct[1], [KEY])
    with pytest.raises(TypeError):
        bool(report)
    data = report.to_dict()
    assert data["present"] is True and data["payload"] == PAYLOAD and data["key_id"] == "test-1"
    assert set(data) >= {"status", "false_alarm_probability", "score", "details"}
    with pytest.raises(ValueError):
        WatermarkReport(status=WatermarkStatus.ABSENT, false_alarm_probability=1.0, payload=3, key_id=None, score=0)


def test_key_serialisation_and_secrecy() -> None:
    key = WatermarkKey.generate("2024-rotation")
    again = WatermarkKey.from_bytes(key.to_bytes())
    assert again == key and again.key_id == "2024-rotation"
    assert WatermarkKey.from_bytes(OTHER.to_bytes()).key_id == 7
    assert bytes(range(32)).hex() not in repr(KEY) and "test-1" in repr(KEY)
    for bad in (b"", b"MVWK\x01\x00\x03abc", key.to_bytes()[:-1], b"XXXX" + key.to_bytes()[4:]):
        with pytest.raises(WatermarkError):
            WatermarkKey.from_bytes(bad)
    with pytest.raises(WatermarkError):
        WatermarkKey(b"short", "x")


def test_bad_input() -> None:
    with pytest.raises(WatermarkError):
        embed(np.zeros((4, 4, 3), np.uint8), KEY, 1)
    with pytest.raises(WatermarkError):
        embed(np.zeros((64, 64), np.uint16), KEY, 2**64)
    with pytest.raises(WatermarkError):
        detect(np.zeros((64, 64), np.uint16), [])
    nan = np.zeros((256, 256), np.float32)
    nan[5, 5] = np.nan
    for call in (lambda: embed(nan, KEY, 1), lambda: detect(nan, [KEY])):
        with pytest.raises(WatermarkError, match="non-finite"):
            call()


def test_code_corrects_errors_and_checks() -> None:
    rng = np.random.default_rng(1)
    coded = _ecc.encode(PAYLOAD)
    soft = 1.0 - 2.0 * coded
    flipped = soft.copy()
    flipped[rng.choice(coded.size, 20, replace=False)] *= -1
    assert _ecc.decode(flipped) == PAYLOAD
    # Noise decodes to a uniform word, which the 16-bit check code passes with probability 2**-16: 0.003 of
    # 200 expected, two or more has probability 5e-6.
    assert sum(_ecc.decode(rng.normal(size=coded.size)) is not None for _ in range(200)) <= 1
