"""``vae``: a convolutional VAE with a spatial latent map.

The latent is a ``latent_channels`` x (S/8) x (S/8) map, so both the encoder and decoder are fully
convolutional: a paired fake is the reconstruction of a real image at its native size (decoder of the posterior
mean). Unpaired samples decode a latent map drawn from a prior fitted to the encoded training crops after training
(:mod:`detectors.generators.latent_prior`: a mixture of stationary Gaussian fields, drawn at any size); a checkpoint
without one (trained before it existed) decodes standard-normal noise, which gives mottled blobs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.generators.base import Generator, pad_to_multiple, register_generator
from detectors.generators.config import GeneratorConfig
from detectors.generators.errors import GeneratorConfigError
from detectors.generators.gan import DCGANDiscriminator, GANConfig, diff_augment
from detectors.generators.latent_prior import LatentPrior, fit_field_mixture
from detectors.generators.training import PatchSampler

__all__ = ["VAE", "VAEConfig", "VAEGenerator"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig(GeneratorConfig):
    """``width`` channels at full resolution, doubled (up to ``max_width``) at each of three down-samplings.

    ``adv_weight`` > 0 adds a patch-GAN term (VQGAN-style; a spectrally normalised patch discriminator with the
    hinge loss on DiffAugment-ed inputs) from ``adv_start`` x the configured steps on: MSE alone averages
    texture and noise away. Its per-pixel weight is relative to the per-pixel MSE. 0 (the dataclass default,
    so that older checkpoints load) is the plain VAE.
    """

    width: int = 16
    max_width: int = 128
    latent_channels: int = 4
    blocks: int = 1
    beta: float = 0.5
    adv_weight: float = 0.0
    adv_start: float = 0.2
    #: The latent prior fitted after training: mixture components, covariance radius (latent pixels), and the
    #: training crops (of ``prior_crop`` pixels) it is fitted on. 0 components: no prior (standard normal).
    prior_components: int = 6
    prior_radius: int = 4
    prior_crops: int = 1024
    prior_crop: int = 128
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 32, "width": 8, "max_width": 16, "steps": 40, "batch_size": 4, "adv_weight": 0.01}
        | {"prior_components": 2, "prior_radius": 2, "prior_crops": 16, "prior_crop": 32},
        "small": {"adv_weight": 0.01},
        "large": {"width": 64, "max_width": 256, "blocks": 2, "steps": 60000, "batch_size": 64, "lr": 5e-4}
        | {"adv_weight": 0.01},
    }

    def validate(self) -> None:
        if min(self.width, self.max_width, self.latent_channels, self.blocks) < 1 or self.beta < 0:
            raise GeneratorConfigError("width, max_width, latent_channels, blocks must be >= 1 and beta >= 0")
        if self.adv_weight < 0 or not 0 <= self.adv_start <= 1:
            raise GeneratorConfigError("adv_weight must be >= 0 and adv_start in [0, 1]")
        if self.prior_components < 0 or self.prior_radius < 1 or self.prior_crop < 16 or self.prior_crop % 8:
            raise GeneratorConfigError("prior_components >= 0, prior_radius >= 1, prior_crop a multiple of 8, >= 16")
        small = self.prior_crops < self.prior_components or self.prior_crop // 8 <= self.prior_radius
        if self.prior_components and small:
            raise GeneratorConfigError("the prior needs more crops than components and crops wider than its radius")


class _Res(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x + self.body(x))


class VAE(nn.Module):
    """Encoder to (mu, logvar) maps at 1/8 resolution and a mirrored decoder with nearest-neighbour up-sampling."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        w = [min(cfg.width * 2**i, cfg.max_width) for i in range(4)]
        enc: list[nn.Module] = [nn.Conv2d(1, w[0], 3, padding=1), nn.SiLU()]
        for i in range(3):
            enc += [nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1), nn.SiLU()]
            enc += [_Res(w[i + 1]) for _ in range(cfg.blocks)]
        enc.append(nn.Conv2d(w[3], 2 * cfg.latent_channels, 3, padding=1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, w[3], 3, padding=1), nn.SiLU()]
        for i in range(3, 0, -1):
            dec += [_Res(w[i]) for _ in range(cfg.blocks)]
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w[i], w[i - 1], 3, padding=1), nn.SiLU()]
        dec += [nn.Conv2d(w[0], w[0], 3, padding=1), nn.SiLU(), nn.Conv2d(w[0], 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.latent_channels = cfg.latent_channels

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(z))


@register_generator("vae")
class VAEGenerator(Generator):
    """Variational auto-encoder; paired fake = reconstruction of the real image (decoder of the posterior mean)."""

    config_class = VAEConfig
    paired_method = "VAE reconstruction: decoder(encoder mean) of the real image at its native size"
    config: VAEConfig

    def _build(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"vae": VAE(self.config)}
        if self.config.prior_components:
            modules["prior"] = LatentPrior(self.config.latent_channels, self.config.prior_components,
                                           self.config.prior_radius)  # fmt: skip
        if self.config.adv_weight > 0:
            modules["d"] = DCGANDiscriminator(
                GANConfig(width=self.config.width, image_size=self.config.image_size, discriminator_norm="spectral")
            )
        return modules

    def sampling_modules(self) -> tuple[str, ...]:
        return ("vae",)

    def optional_modules(self) -> tuple[str, ...]:
        return ("prior",) if "prior" in self.modules else ()

    @property
    def prior(self) -> LatentPrior | None:
        module = self.modules.get("prior")
        return module if isinstance(module, LatentPrior) and module.is_fitted else None

    def _after_fit(self, sampler: PatchSampler, rng: np.random.Generator) -> dict[str, Any]:
        """Fit the latent prior to the posterior means of ``prior_crops`` training crops of ``prior_crop`` px."""
        module = self.modules.get("prior")
        cfg = self.config
        if not isinstance(module, LatentPrior):
            return {}
        crops = PatchSampler(sampler.frames, cfg.prior_crop, min_std=sampler.min_std, min_content=sampler.min_content,
                             background_margin=sampler.background_margin)  # fmt: skip
        latents = []
        with torch.no_grad():
            for start in range(0, cfg.prior_crops, 64):
                batch = crops.batch(min(64, cfg.prior_crops - start), rng)
                latents.append(self.vae.encode(batch)[0].numpy())
        weights, means, covariance = fit_field_mixture(
            np.concatenate(latents), components=cfg.prior_components, radius=cfg.prior_radius,
            seed=int(rng.integers(2**31)),
        )  # fmt: skip
        module.set(weights, means, covariance)
        return {"prior": {"kind": "mixture of stationary Gaussian fields", "components": cfg.prior_components,
                          "radius": cfg.prior_radius, "crops": cfg.prior_crops, "crop": cfg.prior_crop,
                          "weights": [round(float(w), 4) for w in weights]}}  # fmt: skip

    def _complete(self, missing: list[str]) -> None:
        """The discriminator of a sampling-only checkpoint restarts from its initialisation (init_seed)."""

    @property
    def vae(self) -> VAE:
        model = self.modules["vae"]
        assert isinstance(model, VAE)
        return model

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        opts: list[torch.optim.Optimizer] = [torch.optim.Adam(self.vae.parameters(), lr=self.config.lr)]
        if "d" in self.modules:
            opts.append(torch.optim.Adam(self.modules["d"].parameters(), lr=2e-4, betas=(0.0, 0.9)))
        return opts

    def _train_step(self, batch: torch.Tensor, step: int, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        opt = optimizers[0]
        mu, logvar = self.vae.encode(batch)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.vae.decode(z)
        n = batch.shape[0]
        pixels = batch[0].numel()
        rec = F.mse_loss(recon, batch, reduction="sum") / n
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum() / n
        # KL warm-up over the first 10 % of the configured steps avoids posterior collapse early on.
        warm = min(1.0, step / max(1.0, 0.1 * self.config.steps))
        loss = rec + self.config.beta * warm * kl
        d = self.modules.get("d")
        extra: dict[str, float] = {"adv_g": 0.0, "adv_d": 0.0} if d is not None else {}
        adversarial = isinstance(d, DCGANDiscriminator) and step > self.config.adv_start * self.config.steps
        if adversarial:
            assert isinstance(d, DCGANDiscriminator)
            d.requires_grad_(False)
            g_adv = -d.logits(diff_augment(recon)).mean()
            d.requires_grad_(True)
            loss = loss + self.config.adv_weight * pixels * g_adv
            extra["adv_g"] = g_adv.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 5.0)
        opt.step()
        if adversarial:
            assert isinstance(d, DCGANDiscriminator)
            fake = recon.detach()
            d_loss = F.relu(1 - d.logits(diff_augment(batch))).mean() + F.relu(1 + d.logits(diff_augment(fake))).mean()
            optimizers[1].zero_grad(set_to_none=True)
            d_loss.backward()  # type: ignore[no-untyped-call]
            optimizers[1].step()
            extra["adv_d"] = d_loss.item()
        return {"loss": loss.item() / pixels, "mse": rec.item() / pixels, "kl": kl.item() / pixels, **extra}

    def _sample(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        side = -(-size // 8)
        prior = self.prior
        if prior is not None:
            z = prior.sample(n, side, side, gen)
        else:
            z = torch.randn((n, self.config.latent_channels, side, side), generator=gen)
        return self.vae.decode(z)[..., :size, :size]

    def _paired(self, real: torch.Tensor, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(real, 8)
        mu, _ = self.vae.encode(x)
        return self.vae.decode(mu)[..., :h, :w]
