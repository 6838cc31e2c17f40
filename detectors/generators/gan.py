"""``gan``: a DCGAN-style generator on a spatial latent map.

The generator starts from a ``z_channels`` x (S/16) x (S/16) noise map instead of a 1x1 vector, so it is fully
convolutional (as in the spatial GAN of Jetchev et al., 2016): larger samples come from a larger noise map. The
presets use bilinear resize + 3x3 convolutions to up-sample (the transposed 4x4 stride-2 convolutions of DCGAN
leave a checkerboard, nearest-neighbour resizing leaves blocks the size of a noise-map cell), per-pixel noise
inputs (StyleGAN) for noise and speckle, a spectrally normalised patch discriminator trained with the hinge loss
on DiffAugment-ed inputs (translation + cutout; with a few dozen frames an unaugmented discriminator memorises
them and wins), and an EMA of the generator weights for sampling. The dataclass defaults are the original DCGAN,
so that checkpoints written before these options still load.

Paired fake (no GAN inversion): the real image's low frequencies (Gaussian blur, ``paired_sigma`` pixels) plus
the high-frequency residual of a GAN sample of the same size, rescaled to the real image's high-frequency
energy. The fake keeps the real anatomy and carries the generator's texture and up-sampling artefacts.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.generators.base import Generator, register_generator
from detectors.generators.config import GeneratorConfig
from detectors.generators.errors import GeneratorConfigError

__all__ = ["DCGANDiscriminator", "DCGANGenerator", "GANConfig", "GANGenerator", "diff_augment", "gaussian_blur"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANConfig(GeneratorConfig):
    """``width`` is the channel count of the last generator / first discriminator layer (x8 at the coarsest).

    The dataclass defaults are the original DCGAN (transposed convolutions, batch-norm discriminator,
    non-saturating loss, no EMA) so that checkpoints written before these fields existed still load; the
    presets use the stabilised variant: bilinear resize + 3x3 convolution up-sampling (no checkerboard, no
    blocks), per-pixel noise inputs (for sensor-like noise and speckle), a spectrally normalised
    discriminator with the hinge loss, differentiable augmentation of both real and fake discriminator inputs
    (random translation and cutout; the discriminator otherwise memorises a small corpus) and an exponential
    moving average of the generator weights for sampling.
    """

    width: int = 32
    z_channels: int = 64
    paired_sigma: float = 2.0
    beta1: float = 0.5
    beta2: float = 0.999
    upsample: Literal["transposed", "resize"] = "transposed"
    noise_inputs: bool = False
    discriminator_norm: Literal["batch", "spectral"] = "batch"
    loss: Literal["nonsaturating", "hinge"] = "nonsaturating"
    augment: bool = False
    ema_decay: float = 0.0
    steps: int = 8000
    batch_size: int = 32
    lr: float = 2e-4

    SIZE_MULTIPLE: ClassVar[int] = 16
    STABLE: ClassVar[dict[str, Any]] = {
        "upsample": "resize",
        "noise_inputs": True,
        "discriminator_norm": "spectral",
        "loss": "hinge",
        "augment": True,
        "ema_decay": 0.999,
        "beta1": 0.0,
        "beta2": 0.9,
    }
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {**STABLE, "image_size": 32, "width": 8, "z_channels": 8, "steps": 8, "batch_size": 4}
        | {"ema_decay": 0.5},
        "small": {**STABLE, "steps": 5000},
        "large": {**STABLE, "width": 64, "z_channels": 128, "steps": 100000, "batch_size": 64, "ema_decay": 0.9999},
    }

    def validate(self) -> None:
        if min(self.width, self.z_channels) < 1 or self.paired_sigma <= 0:
            raise GeneratorConfigError("width and z_channels must be >= 1 and paired_sigma > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and 0 <= self.ema_decay < 1):
            raise GeneratorConfigError("beta1, beta2 and ema_decay must be in [0, 1)")


class _NoiseInput(nn.Module):
    """Adds per-pixel Gaussian noise scaled by a learned per-channel weight (StyleGAN's noise inputs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gen: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.gen, device=x.device, dtype=x.dtype)
        return x + self.weight * noise


class DCGANGenerator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        w = cfg.width
        self.resize = cfg.upsample == "resize"
        self.noise = cfg.noise_inputs
        layers: list[nn.Module] = [nn.Conv2d(cfg.z_channels, 8 * w, 3, padding=1, bias=False)]
        layers += [_NoiseInput(8 * w)] if self.noise else []
        layers += [nn.BatchNorm2d(8 * w), nn.ReLU(True)]
        for cin, cout in ((8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w)):
            layers += self._up(cin, cout)
        if self.resize:
            # The full-resolution layer is the costly one: noise then a single 3x3 convolution to the image.
            layers += [nn.Upsample(scale_factor=2, mode="bilinear")]
            layers += [_NoiseInput(w)] if self.noise else []
            layers += [nn.Conv2d(w, 1, 3, padding=1)]
        else:
            layers.append(nn.ConvTranspose2d(w, 1, 4, 2, 1))
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def _up(self, cin: int, cout: int) -> list[nn.Module]:
        if self.resize:
            up: list[nn.Module] = [
                nn.Upsample(scale_factor=2, mode="bilinear"),
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            ]
        else:
            up = [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)]
        noise: list[nn.Module] = [_NoiseInput(cout)] if self.noise else []
        return [*up, *noise, nn.BatchNorm2d(cout), nn.ReLU(True)]

    def forward(self, z: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """The image for noise map ``z``; ``gen`` seeds the per-pixel noise inputs (global RNG when ``None``)."""
        for m in self.net:
            if isinstance(m, _NoiseInput):
                m.gen = gen
        try:
            out: torch.Tensor = self.net(z)
        finally:
            for m in self.net:
                if isinstance(m, _NoiseInput):
                    m.gen = None
        return out


class DCGANDiscriminator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        w = cfg.width
        spectral = cfg.discriminator_norm == "spectral"

        def conv(cin: int, cout: int, k: int, s: int, p: int, bias: bool) -> nn.Module:
            c = nn.Conv2d(cin, cout, k, s, p, bias=bias or spectral)
            return nn.utils.parametrizations.spectral_norm(c) if spectral else c

        layers: list[nn.Module] = [conv(1, w, 4, 2, 1, True), nn.LeakyReLU(0.2, True)]
        for cin, cout in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):
            layers += [conv(cin, cout, 4, 2, 1, False)]
            layers += [] if spectral else [nn.BatchNorm2d(cout)]
            layers += [nn.LeakyReLU(0.2, True)]
        # A 1x1 logit per (S/16)^2 location: works for any training size.
        layers.append(conv(8 * w, 1, 3, 1, 1, True))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 1, S/16, S/16) map of logits."""
        out: torch.Tensor = self.net(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).mean(dim=(1, 2, 3))


def diff_augment(x: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment (Zhao et al., 2020) for a discriminator input: a random translation by up to 1/8 of the side
    (zero fill, as the background) and a random cutout of a quarter-side square, per image; differentiable."""
    n, _, h, w = x.shape
    dev = x.device
    shift = max(1, h // 8)
    ty = torch.randint(-shift, shift + 1, (n, 1, 1), generator=rng).to(dev)
    tx = torch.randint(-shift, shift + 1, (n, 1, 1), generator=rng).to(dev)
    yy = torch.arange(h, device=dev)[None, :, None] - ty
    xx = torch.arange(w, device=dev)[None, None, :] - tx
    inside = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))[:, None]
    idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(n, 1, h * w)
    moved = x.reshape(n, 1, h * w).gather(2, idx).reshape(n, 1, h, w)
    moved = torch.where(inside, moved, torch.full_like(moved, -1.0))
    ch, cw = h // 4, w // 4
    cy = torch.randint(0, h - ch + 1, (n, 1, 1), generator=rng).to(dev)
    cx = torch.randint(0, w - cw + 1, (n, 1, 1), generator=rng).to(dev)
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    cut = ((ys >= cy) & (ys < cy + ch) & (xs >= cx) & (xs < cx + cw))[:, None]
    return torch.where(cut, torch.full_like(moved, -1.0), moved)


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
            for m in module.modules():  # DCGAN initialisation (spectrally normalised layers keep PyTorch's)
                if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and not hasattr(m, "parametrizations"):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.normal_(m.weight, 1.0, 0.02)
                    nn.init.zeros_(m.bias)
        modules: dict[str, nn.Module] = {"g": g, "d": d}
        if self.config.ema_decay > 0:
            ema = copy.deepcopy(g)
            ema.requires_grad_(False)
            modules["g_ema"] = ema
        return modules

    def sampling_modules(self) -> tuple[str, ...]:
        return ("g_ema",) if "g_ema" in self.modules else ("g",)

    def _complete(self, missing: list[str]) -> None:
        # A sampling-only checkpoint: the generator restarts from the EMA weights, the discriminator from its
        # initialisation (init_seed).
        if "g" in missing:
            self.modules["g"].load_state_dict(self.modules["g_ema"].state_dict())

    @property
    def _sampler(self) -> nn.Module:
        """The generator used for samples and paired fakes: the EMA copy when the config keeps one."""
        return self.modules.get("g_ema", self.modules["g"])

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        return [
            torch.optim.Adam(self.modules["g"].parameters(), lr=self.config.lr, betas=betas),
            torch.optim.Adam(self.modules["d"].parameters(), lr=self.config.lr, betas=betas),
        ]

    def _noise(self, n: int, h: int, w: int, gen: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn((n, self.config.z_channels, -(-h // 16), -(-w // 16)), generator=gen)

    def _train_step(self, batch: torch.Tensor, step: int, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        opt_g, opt_d = optimizers
        g, d = self.modules["g"], self.modules["d"]
        assert isinstance(d, DCGANDiscriminator)
        cfg = self.config
        n = batch.shape[0]
        fake = g(self._noise(n, cfg.image_size, cfg.image_size).to(batch.device))

        def critic(x: torch.Tensor) -> torch.Tensor:
            return d.logits(diff_augment(x) if cfg.augment else x)

        if cfg.loss == "hinge":
            d_loss = F.relu(1 - critic(batch)).mean() + F.relu(1 + critic(fake.detach())).mean()
        else:
            d_loss = F.softplus(-critic(batch).mean(dim=(1, 2, 3))).mean()
            d_loss = d_loss + F.softplus(critic(fake.detach()).mean(dim=(1, 2, 3))).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()  # type: ignore[no-untyped-call]
        opt_d.step()
        if cfg.loss == "hinge":
            g_loss = -critic(fake).mean()
        else:
            g_loss = F.softplus(-critic(fake).mean(dim=(1, 2, 3))).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()  # type: ignore[no-untyped-call]
        opt_g.step()
        ema = self.modules.get("g_ema")
        if ema is not None:
            # Warm-up as in the diffusion EMA, so that short runs are not dominated by the initial weights.
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(g.parameters()), 1 - decay)
                for be, b in zip(ema.buffers(), g.buffers(), strict=True):
                    be.copy_(b)
        return {"loss_d": d_loss.item(), "loss_g": g_loss.item()}

    def _sample(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        out: torch.Tensor = self._sampler(self._noise(n, size, size, gen), gen)
        return out[..., :size, :size]

    def _paired(self, real: torch.Tensor, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        h, w = real.shape[-2:]
        sample: torch.Tensor = self._sampler(self._noise(1, h, w, gen), gen)[..., :h, :w]
        sigma = self.config.paired_sigma
        low = gaussian_blur(real, sigma)
        real_high = real - low
        fake_high = sample - gaussian_blur(sample, sigma)
        scale = real_high.std() / fake_high.std().clamp_min(1e-6)
        return (low + fake_high * scale).clamp(-1.0, 1.0)
