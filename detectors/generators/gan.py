"""``gan``: a DCGAN-style generator on a spatial latent map.

The generator follows DCGAN (transposed 4x4 stride-2 convolutions, batch norm, ReLU, tanh) but starts from a
``z_channels`` x (S/16) x (S/16) noise map instead of a 1x1 vector, so it is fully convolutional (as in the
spatial GAN of Jetchev et al., 2016): larger samples come from a larger noise map. The discriminator is the
DCGAN one (strided convolutions, batch norm, LeakyReLU), trained with the non-saturating loss.

Paired fake (no GAN inversion): the real image's low frequencies (Gaussian blur, ``paired_sigma`` pixels) plus
the high-frequency residual of a GAN sample of the same size, rescaled to the real image's high-frequency
energy. The fake keeps the real anatomy and carries the generator's texture and up-sampling artefacts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.generators.base import Generator, register_generator
from detectors.generators.config import GeneratorConfig
from detectors.generators.errors import GeneratorConfigError

__all__ = ["DCGANDiscriminator", "DCGANGenerator", "GANConfig", "GANGenerator", "gaussian_blur"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANConfig(GeneratorConfig):
    """``width`` is the channel count of the last generator / first discriminator layer (x8 at the coarsest)."""

    width: int = 32
    z_channels: int = 64
    paired_sigma: float = 2.0
    beta1: float = 0.5
    steps: int = 8000
    batch_size: int = 32
    lr: float = 2e-4

    SIZE_MULTIPLE: ClassVar[int] = 16
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 32, "width": 8, "z_channels": 8, "steps": 8, "batch_size": 4},
        "small": {},
        "large": {"width": 64, "z_channels": 128, "steps": 100000, "batch_size": 64},
    }

    def validate(self) -> None:
        if min(self.width, self.z_channels) < 1 or self.paired_sigma <= 0 or not 0 <= self.beta1 < 1:
            raise GeneratorConfigError("width and z_channels must be >= 1, paired_sigma > 0, 0 <= beta1 < 1")


class DCGANGenerator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(
            nn.Conv2d(cfg.z_channels, 8 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(8 * w),
            nn.ReLU(True),
            *self._up(8 * w, 4 * w),
            *self._up(4 * w, 2 * w),
            *self._up(2 * w, w),
            nn.ConvTranspose2d(w, 1, 4, 2, 1),
            nn.Tanh(),
        )

    @staticmethod
    def _up(cin: int, cout: int) -> list[nn.Module]:
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(z)
        return out


class DCGANDiscriminator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        w = cfg.width
        layers: list[nn.Module] = [nn.Conv2d(1, w, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        # A 1x1 logit per (S/16)^2 location, averaged: works for any training size.
        layers.append(nn.Conv2d(8 * w, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x).mean(dim=(1, 2, 3))
        return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (N, 1, H, W) tensor with reflect padding."""
    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    h, w = x.shape[-2:]
    mode = "reflect" if radius < min(h, w) else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


@register_generator("gan")
class GANGenerator(Generator):
    """DCGAN-style GAN; paired fake = real low frequencies + GAN high-frequency residual."""

    config_class = GANConfig
    paired_method = (
        "real image low-pass (Gaussian, paired_sigma px) + high-pass residual of a GAN sample of the same size, "
        "scaled to the real image's high-frequency standard deviation"
    )
    config: GANConfig

    def _build(self) -> dict[str, nn.Module]:
        g, d = DCGANGenerator(self.config), DCGANDiscriminator(self.config)
        for module in (g, d):
            for m in module.modules():  # DCGAN initialisation
                if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.normal_(m.weight, 1.0, 0.02)
                    nn.init.zeros_(m.bias)
        return {"g": g, "d": d}

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (self.config.beta1, 0.999)
        return [
            torch.optim.Adam(self.modules["g"].parameters(), lr=self.config.lr, betas=betas),
            torch.optim.Adam(self.modules["d"].parameters(), lr=self.config.lr, betas=betas),
        ]

    def _noise(self, n: int, h: int, w: int, gen: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn((n, self.config.z_channels, -(-h // 16), -(-w // 16)), generator=gen)

    def _train_step(self, batch: torch.Tensor, step: int, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        opt_g, opt_d = optimizers
        g, d = self.modules["g"], self.modules["d"]
        n = batch.shape[0]
        fake = g(self._noise(n, self.config.image_size, self.config.image_size))
        d_loss = F.softplus(-d(batch)).mean() + F.softplus(d(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()  # type: ignore[no-untyped-call]
        opt_d.step()
        g_loss = F.softplus(-d(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()  # type: ignore[no-untyped-call]
        opt_g.step()
        return {"loss_d": d_loss.item(), "loss_g": g_loss.item()}

    def _sample(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        out: torch.Tensor = self.modules["g"](self._noise(n, size, size, gen))
        return out[..., :size, :size]

    def _paired(self, real: torch.Tensor, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        h, w = real.shape[-2:]
        sample: torch.Tensor = self.modules["g"](self._noise(1, h, w, gen))[..., :h, :w]
        sigma = self.config.paired_sigma
        low = gaussian_blur(real, sigma)
        real_high = real - low
        fake_high = sample - gaussian_blur(sample, sigma)
        scale = real_high.std() / fake_high.std().clamp_min(1e-6)
        return (low + fake_high * scale).clamp(-1.0, 1.0)
