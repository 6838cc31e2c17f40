"""Laundering: what a forger does to an image to hide its origin, used as training augmentation and as tests.

Every function takes and returns a 2-D float32 image in [0, 1]; a mask (tampered pixels) follows geometric
changes. :func:`launder` draws a random chain of them, the same for an aligned real/fake pair when given the same
seed.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["blur", "export_8bit", "jpeg", "launder", "noise", "resize"]

Image = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]


def export_8bit(image: Image, low: float = 0.0, high: float = 1.0) -> Image:
    """An 8-bit export through the window ``[low, high]`` (the window's range is stretched to [0, 1])."""
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    return np.asarray(np.round(scaled * 255.0) / 255.0, dtype=np.float32)


def jpeg(image: Image, quality: int = 75) -> Image:
    """8-bit JPEG at ``quality`` and back."""
    data = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", data, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a 2-D uint8 array
        return image
    decoded = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    return np.asarray(decoded, dtype=np.float32) / np.float32(255.0)


def resize(image: Image, factor: float, mask: Mask | None = None) -> tuple[Image, Mask | None]:
    """Resize by ``factor`` (area interpolation when shrinking); the mask follows (nearest)."""
    h, w = image.shape
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    method = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    out = np.clip(cv2.resize(image, size, interpolation=method), 0.0, 1.0).astype(np.float32)
    new_mask = None
    if mask is not None:
        new_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return out, new_mask


def noise(image: Image, sigma: float, rng: np.random.Generator) -> Image:
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0.0, 1.0).astype(np.float32)


def blur(image: Image, sigma: float) -> Image:
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigma), dtype=np.float32)


def launder(
    image: Image, mask: Mask | None, rng: np.random.Generator, *, strength: float = 1.0
) -> tuple[Image, Mask | None]:
    """A random chain of laundering steps; each is applied with probability ``0.25 * strength``."""
    p = 0.25 * strength
    out = image
    if rng.random() < p:
        factor = float(rng.uniform(0.5, 0.95))
        out, mask = resize(out, factor, mask)
    if rng.random() < p:
        out = blur(out, float(rng.uniform(0.3, 1.0)))
    if rng.random() < p:
        out = noise(out, float(rng.uniform(0.002, 0.02)), rng)
    if rng.random() < p:
        out = export_8bit(out, float(rng.uniform(0.0, 0.15)), float(rng.uniform(0.85, 1.0)))
    if rng.random() < p:
        out = jpeg(out, int(rng.integers(60, 96)))
    return out, mask
