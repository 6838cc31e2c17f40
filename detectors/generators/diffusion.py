"""``diffusion``: a DDPM (epsilon prediction, cosine schedule) with a small UNet, sampled with DDIM.

The UNet has no attention and no fixed-size layers, so it runs fully convolutionally: :meth:`sample` at a
larger size denoises a larger noise map. The paired fake is SDEdit (Meng et al., 2022): the real image is
noised to step ``t = strength * T`` and denoised back to step 0 with deterministic DDIM, so it keeps the real
image's layout and carries the model's texture. Sampling uses an exponential moving average of the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from detectors.generators.base import Generator, pad_to_multiple, register_generator
from detectors.generators.config import GeneratorConfig
from detectors.generators.errors import GeneratorConfigError, GeneratorInputError
from detectors.generators.training import check_image

__all__ = ["DiffusionConfig", "DiffusionGenerator", "UNet", "cosine_alpha_bar"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffusionConfig(GeneratorConfig):
    """UNet ``width`` x ``channel_mult`` channels per level, ``blocks`` residual blocks per level."""

    width: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    blocks: int = 1
    timesteps: int = 1000
    sample_steps: int = 50
    strength: float = 0.35
    ema_decay: float = 0.995
    steps: int = 1500
    batch_size: int = 16
    lr: float = 5e-4

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "image_size": 32,
            "width": 8,
            "channel_mult": (1, 2),
            "sample_steps": 3,
            "steps": 8,
            "batch_size": 4,
            "ema_decay": 0.5,
        },
        "small": {},
        "large": {
            "width": 64,
            "channel_mult": (1, 2, 2, 2),
            "blocks": 2,
            "steps": 200000,
            "batch_size": 64,
            "lr": 2e-4,
            "ema_decay": 0.9999,
            "sample_steps": 100,
        },
    }

    def validate(self) -> None:
        if self.width < 8 or self.width % 8 or not self.channel_mult or min(self.channel_mult) < 1:
            raise GeneratorConfigError("width must be a multiple of 8 and channel_mult positive")
        if self.blocks < 1 or self.timesteps < 2 or not 1 <= self.sample_steps <= self.timesteps:
            raise GeneratorConfigError("blocks >= 1, timesteps >= 2 and 1 <= sample_steps <= timesteps")
        if not 0 < self.strength <= 1 or not 0 <= self.ema_decay < 1:
            raise GeneratorConfigError("strength must be in (0, 1] and ema_decay in [0, 1)")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise GeneratorConfigError("image_size must be divisible by 2**(len(channel_mult) - 1)")


def cosine_alpha_bar(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Cumulative signal fraction per step (Nichol & Dhariwal, 2021), clipped to avoid a singular last step."""
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0).to(torch.float32)


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        out: torch.Tensor = self.skip(x) + h
        return out


class UNet(nn.Module):
    """A small DDPM UNet (Ho et al., 2020) without attention: residual blocks, strided down, nearest up."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        w = cfg.width
        tdim = 4 * w
        self.width = w
        self.time = nn.Sequential(nn.Linear(w, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.conv_in = nn.Conv2d(1, w, 3, padding=1)
        chans = [w * m for m in cfg.channel_mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [w]
        ch = w
        for level, cout in enumerate(chans):
            for _ in range(cfg.blocks):
                self.down.append(_ResBlock(ch, cout, tdim))
                ch = cout
                skips.append(ch)
            if level < len(chans) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([_ResBlock(ch, ch, tdim), _ResBlock(ch, ch, tdim)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(chans))):
            for _ in range(cfg.blocks + 1):
                self.up.append(_ResBlock(ch + skips.pop(), chans[level], tdim))
                ch = chans[level]
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(8, ch)
        self.conv_out = nn.Conv2d(ch, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        if self.conv_out.bias is not None:
            nn.init.zeros_(self.conv_out.bias)
        self.levels = len(chans)
        self.blocks = cfg.blocks

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time(_timestep_embedding(t, self.width))
        h = self.conv_in(x)
        hs = [h]
        blocks = iter(self.down)
        for level in range(self.levels):
            for _ in range(self.blocks):
                h = next(blocks)(h, temb)
                hs.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                hs.append(h)
        for block in self.mid:
            h = block(h, temb)
        ups = iter(self.up)
        for i, level in enumerate(reversed(range(self.levels))):
            for _ in range(self.blocks + 1):
                h = next(ups)(torch.cat([h, hs.pop()], dim=1), temb)
            if level > 0:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out: torch.Tensor = self.conv_out(F.silu(self.norm_out(h)))
        return out


@register_generator("diffusion")
class DiffusionGenerator(Generator):
    """DDPM trained here, DDIM sampling; paired fake = SDEdit partial regeneration."""

    config_class = DiffusionConfig
    paired_method = "SDEdit: noise the real image to t = strength*T, denoise to 0 with deterministic DDIM (EMA UNet)"
    config: DiffusionConfig

    #: DDIM steps for a full sample (default ``config.sample_steps``); set it to trade quality for speed, also on a
    #: generator loaded from a checkpoint. SDEdit uses ``ceil(strength * ddim_steps) + 1`` steps.
    ddim_steps: int | None = None

    def _steps(self) -> int:
        steps = self.config.sample_steps if self.ddim_steps is None else self.ddim_steps
        if not 2 <= steps <= self.config.timesteps:
            raise GeneratorInputError(f"ddim_steps must be in [2, {self.config.timesteps}], got {steps}")
        return steps

    def _build(self) -> dict[str, nn.Module]:
        unet = UNet(self.config)
        ema = copy.deepcopy(unet)
        ema.requires_grad_(False)
        return {"unet": unet, "ema": ema}

    def sampling_modules(self) -> tuple[str, ...]:
        return ("ema",)

    def _complete(self, missing: list[str]) -> None:
        # A sampling-only checkpoint: the training UNet restarts from the EMA weights.
        self.modules["unet"].load_state_dict(self.modules["ema"].state_dict())

    @property
    def _alpha_bar(self) -> torch.Tensor:
        return cosine_alpha_bar(self.config.timesteps)

    @property
    def _multiple(self) -> int:
        return int(2 ** (len(self.config.channel_mult) - 1))

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.AdamW(self.modules["unet"].parameters(), lr=self.config.lr, weight_decay=0.0)]

    def _train_step(self, batch: torch.Tensor, step: int, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        (opt,) = optimizers
        unet, ema = self.modules["unet"], self.modules["ema"]
        ab = self._alpha_bar.to(batch.device)
        t = torch.randint(0, self.config.timesteps, (batch.shape[0],), device=batch.device)
        noise = torch.randn_like(batch)
        a = ab[t][:, None, None, None]
        x_t = a.sqrt() * batch + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(x_t, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        # EMA with a warm-up so that short runs are not dominated by the initial weights.
        decay = min(self.config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1 - decay)
        return {"loss": loss.item()}

    def _ddim(self, x: torch.Tensor, t_start: int, steps: int) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from step ``t_start`` down to a clean image."""
        ab = self._alpha_bar
        ts = np.unique(np.round(np.linspace(0, t_start, steps)).astype(np.int64))[::-1]
        model = self.modules["ema"]
        for i, t in enumerate(ts):
            a = ab[t]
            eps: torch.Tensor = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1.0, 1.0)
            if i == len(ts) - 1:
                return x0
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            a_prev = ab[ts[i + 1]]
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x

    def _sample(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        side = -(-size // self._multiple) * self._multiple
        x = torch.randn((n, 1, side, side), generator=gen)
        return self._ddim(x, self.config.timesteps - 1, self._steps())[..., :size, :size]

    def _paired(self, real: torch.Tensor, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        return self.regenerate(real, strength=self.config.strength, gen=gen)

    def sdedit(
        self, real: npt.NDArray[np.floating], *, strength: float | None = None, seed: int = 0
    ) -> npt.NDArray[np.float32]:
        """:meth:`paired_fake` at another ``strength`` (fraction of the diffusion run redone; default the config's)."""
        image = check_image(real, "diffusion.sdedit")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            out = self.regenerate(
                torch.from_numpy(image)[None, None] * 2 - 1, strength=strength or self.config.strength, gen=gen
            )
        return ((out.clamp(-1, 1)[0, 0] + 1) * 0.5).numpy().astype(np.float32)

    def regenerate(self, real: torch.Tensor, *, strength: float, gen: torch.Generator) -> torch.Tensor:
        """SDEdit of an (N, 1, H, W) tensor in [-1, 1] at ``strength`` in (0, 1]."""
        if not 0 < strength <= 1:
            raise GeneratorInputError(f"strength must be in (0, 1], got {strength}")
        x, (h, w) = pad_to_multiple(real, self._multiple)
        t0 = max(1, round(strength * (self.config.timesteps - 1)))
        a = self._alpha_bar[t0]
        x_t = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=gen)
        steps = max(2, math.ceil(strength * self._steps()) + 1)
        return self._ddim(x_t, t0, steps)[..., :h, :w]
