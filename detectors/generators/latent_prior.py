"""A learned prior for a VAE's spatial latent map: a mixture of stationary Gaussian fields.

A VAE trained on a few dozen frames does not make its aggregate posterior match the standard-normal prior: the
posterior means are spatially correlated, off-centre and of different spreads per channel, so decoding white
noise gives mottled blobs that look like no modality (the shipped VAE's unpaired samples did). Fitting a density
to the encoded training crops after training ("ex-post density estimation", Ghosh et al., ICLR 2020) fixes the
mismatch without retraining. Here the density is a mixture of ``K`` stationary Gaussian random fields: crops are
clustered on their latent statistics (k-means, so that a CR field and an ultrasound sector do not average into a
texture of neither), and each cluster keeps its channel means and the cross-covariance of the channels at every
offset up to ``radius`` latent pixels. A sample picks a cluster and draws a field of any size by circulant
embedding (FFT), so sampling stays fully convolutional like the rest of the VAE. Only second-order statistics are
kept: textures, edges and shading of the right scale and contrast, no memorised crop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = ["LatentPrior", "fit_field_mixture"]


class LatentPrior(nn.Module):
    """Buffers of a fitted mixture (``fitted`` is 0 until :meth:`set`); saved with the VAE's weights."""

    fitted: torch.Tensor
    weights: torch.Tensor
    means: torch.Tensor
    covariance: torch.Tensor

    def __init__(self, channels: int, components: int = 6, radius: int = 4) -> None:
        super().__init__()
        side = 2 * radius + 1
        self.register_buffer("fitted", torch.zeros((), dtype=torch.float32))
        self.register_buffer("weights", torch.full((components,), 1.0 / components))
        self.register_buffer("means", torch.zeros(components, channels))
        covariance = torch.zeros(components, channels, channels, side, side)
        covariance[:, :, :, radius, radius] = torch.eye(channels)
        self.register_buffer("covariance", covariance)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item() > 0)

    def set(self, weights: npt.ArrayLike, means: npt.ArrayLike, covariance: npt.ArrayLike) -> None:
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        m = torch.as_tensor(np.asarray(means), dtype=torch.float32)
        c = torch.as_tensor(np.asarray(covariance), dtype=torch.float32)
        if w.shape != self.weights.shape or m.shape != self.means.shape or c.shape != self.covariance.shape:
            raise ValueError("prior arrays do not match the prior's shape")
        self.weights.copy_(w / w.sum())
        self.means.copy_(m)
        self.covariance.copy_(c)
        self.fitted.fill_(1.0)

    def sample(self, n: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` latent maps (n, C, height, width) drawn from the mixture."""
        k, c, _, side, _ = self.covariance.shape
        radius = side // 2
        # Circulant embedding on a grid wide enough that the kernel does not wrap into the kept window.
        gh, gw = height + 2 * radius, width + 2 * radius
        picks = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        out = torch.empty(n, c, height, width)
        for comp in range(k):
            rows = (picks == comp).nonzero().flatten()
            if rows.numel() == 0:
                continue
            root = _spectral_root(self.covariance[comp], gh, gw)  # (gh, gw//2+1, C, C) complex
            noise = torch.randn(rows.numel(), c, gh, gw, generator=gen)
            spectrum = torch.fft.rfft2(noise)  # (m, C, gh, gw//2+1)
            mixed = torch.einsum("yxij,mjyx->miyx", root, spectrum)
            field = torch.fft.irfft2(mixed, s=(gh, gw))
            out[rows] = field[:, :, :height, :width] + self.means[comp][None, :, None, None]
        return out


def _spectral_root(covariance: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """The Hermitian square root of the cross-spectral density of ``covariance`` (C, C, 2R+1, 2R+1) on a
    ``gh`` x ``gw`` torus, negative eigenvalues (estimation noise) clipped to zero."""
    c, _, side, _ = covariance.shape
    radius = side // 2
    kernel = torch.zeros(c, c, gh, gw)
    # A Bartlett lag window: the truncated covariance need not be positive definite (its spectrum dips below zero,
    # and clipping that adds white noise); tapered, it is (nearly) so.
    taper = 1.0 - torch.arange(-radius, radius + 1).abs() / (radius + 1.0)
    tapered = covariance * (taper[:, None] * taper[None, :])
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            kernel[:, :, dy % gh, dx % gw] = tapered[:, :, dy + radius, dx + radius]
    # Conjugated: filtering white noise with H gives cross-spectra conj(H H^H), so H is the root of conj(S).
    density = torch.fft.rfft2(kernel).permute(2, 3, 0, 1).conj()  # (gh, gw//2+1, C, C), Hermitian per frequency
    density = 0.5 * (density + density.conj().transpose(-1, -2))
    values, vectors = torch.linalg.eigh(density)
    scaled = vectors * values.clamp(min=0.0).sqrt()[..., None, :]
    root: torch.Tensor = scaled @ vectors.conj().transpose(-1, -2)
    return root


def fit_field_mixture(
    latents: npt.NDArray[np.float32], *, components: int, radius: int, seed: int = 0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Mixture weights (K,), means (K, C) and cross-covariances (K, C, C, 2R+1, 2R+1) of latent maps (N, C, H, W).

    Crops are clustered with k-means on their per-channel mean and standard deviation; each cluster's covariance
    at offset (dy, dx) is the average over its crops of the product of channel i at p and channel j at p + (dy, dx),
    over every position where both lie inside the map.
    """
    from sklearn.cluster import KMeans

    z = np.asarray(latents, dtype=np.float64)
    n, c, h, w = z.shape
    if n < components or min(h, w) <= radius:
        raise ValueError(f"{n} latent maps of {h}x{w} cannot fit {components} components of radius {radius}")
    stats = np.concatenate([z.mean(axis=(2, 3)), z.std(axis=(2, 3))], axis=1)
    stats = (stats - stats.mean(axis=0)) / (stats.std(axis=0) + 1e-9)
    labels = KMeans(n_clusters=components, n_init=4, random_state=seed).fit_predict(stats)
    side = 2 * radius + 1
    weights = np.zeros(components)
    means = np.zeros((components, c))
    covariance = np.zeros((components, c, c, side, side))
    for k in range(components):
        part = z[labels == k]
        weights[k] = len(part)
        means[k] = part.mean(axis=(0, 2, 3))
        centred = part - means[k][None, :, None, None]
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                a = centred[:, :, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
                b = centred[:, :, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
                covariance[k, :, :, dy + radius, dx + radius] = np.einsum("nihw,njhw->ij", a, b) / (
                    a.shape[0] * a.shape[2] * a.shape[3]
                )
    return weights / weights.sum(), means, covariance
