"""Normalisation: fixed HU window for CT, DICOM window or percentiles elsewhere, MONOCHROME1 inverted."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.data.normalize import CT_HU_RANGE, normalization_range, normalize


def test_ct_uses_the_fixed_hu_window() -> None:
    hu = np.array([[[-2000.0, -1000.0, 500.0, 2000.0, 3000.0]]], np.float32)
    out = normalize(hu, "CT", window=(40.0, 80.0))  # the display window is ignored for CT
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert CT_HU_RANGE == (-1000.0, 2000.0)


def test_dicom_window_when_present_else_percentiles() -> None:
    frames = np.linspace(0, 1000, 101, dtype=np.float32).reshape(1, 1, 101)
    np.testing.assert_allclose(normalization_range(frames, "MR", window=(500.0, 200.0)), (400.0, 600.0))
    low, high = normalization_range(frames, "MR")
    assert low == pytest.approx(5.0) and high == pytest.approx(995.0)
    out = normalize(frames, "MR")
    assert out.dtype == np.float32 and out.shape == frames.shape
    assert out.min() == 0.0 and out.max() == 1.0


def test_monochrome1_is_inverted_and_constant_is_zero() -> None:
    frames = np.array([[[0.0, 100.0]]], np.float32)
    np.testing.assert_allclose(normalize(frames, "CR", window=(50.0, 100.0), photometric="MONOCHROME1")[0, 0],
                               [1.0, 0.0])
    assert not normalize(np.full((1, 4, 4), 7.0, np.float32), "US").any()


def test_deterministic_and_nan_safe() -> None:
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(2, 32, 32)).astype(np.float32)
    frames[0, 0, 0] = np.nan
    a, b = normalize(frames, "DX"), normalize(frames.copy(), "DX")
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all() and 0.0 <= a.min() and a.max() <= 1.0
