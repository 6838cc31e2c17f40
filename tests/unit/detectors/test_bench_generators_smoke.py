"""benchmarks/bench_generators.py: its realism figures separate what differs and not what does not; grids render."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_generators.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_generators", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_generators"] = module
    spec.loader.exec_module(module)
    return module


def _smooth(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 64, 64)).astype(np.float32)
    return np.stack([cv2.GaussianBlur(p, (0, 0), 3) for p in x]).astype(np.float32)


def test_figures_separate_noise_from_smooth_patches_but_not_two_draws(bench: ModuleType) -> None:
    a, b = _smooth(60, 1), _smooth(60, 2)
    noisy = np.clip(b + np.random.default_rng(3).normal(0, 0.05, b.shape), 0, 1).astype(np.float32)
    same = bench.measure(a, b, 0)
    different = bench.measure(a, noisy, 0)
    assert same["auc"] < 0.75
    assert different["auc"] > 0.95
    assert different["swd"] > 3 * same["swd"]
    assert bench.patch_features(a).shape == (60, len(bench.FEATURE_NAMES))


def test_tamper_windows_follow_the_mask(bench: ModuleType) -> None:
    real = _smooth(2, 4)
    masks = np.zeros((2, 64, 64), dtype=bool)
    masks[0, 50:60, 50:60] = True
    wr, _ = bench.tamper_windows(real, real, masks)
    assert wr.shape == (2, bench.TAMPER_WINDOW, bench.TAMPER_WINDOW)
    np.testing.assert_array_equal(wr[0], real[0, 32:64, 32:64])  # clamped inside the patch
    np.testing.assert_array_equal(wr[1], real[1, 16:48, 16:48])  # no edit: the centre


def test_grid_is_labelled_8_bit_bgr(bench: ModuleType) -> None:
    patches = _smooth(3, 5)
    masks = np.zeros((3, 64, 64), dtype=bool)
    masks[:, 20:30, 20:30] = True
    image = bench.grid([("real", patches, None), ("fake", patches, masks)], "title", (0.0, 1.0))
    assert image.dtype == np.uint8 and image.ndim == 3
    assert image.shape[0] == 40 + 2 * (128 + 4)
    assert (image[..., 2] > image[..., 1] + 100).any()  # the red mask outline
