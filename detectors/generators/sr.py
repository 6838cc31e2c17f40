"""``sr``: learned super-resolution (x2, x4), VDSR-style, trained on the real images themselves.

A real image is shrunk (area) by 2 or 4 and brought back to its size by the network: bicubic up-sampling, then a
stack of ``depth`` 3 x 3 convolutions that predicts the residual the bicubic step misses. Training pairs come
from the real crops alone (shrunk input, original target; L1 loss), so nothing but real images is needed. The
paired fake of an image is its super-resolved shrunk copy: everything above the shrunk copy's Nyquist frequency
is the network's invention, as with the learned up-scalers that "enhance" scans (intra-modality translation).

Unpaired samples have nothing to start from: they are the network's x4 output from a band-limited random field,
which shows the textures it invents, not anatomy.
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
from detectors.generators.errors import GeneratorConfigError, GeneratorInputError
from detectors.generators.training import check_image

__all__ = ["SRConfig", "SRGenerator", "SRNet"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SRConfig(GeneratorConfig):
    """``depth`` convolutions of ``width`` channels; ``scales`` the shrink factors trained and drawn from."""

    width: int = 32
    depth: int = 8
    scales: tuple[int, ...] = (2, 4)
    steps: int = 3000
    batch_size: int = 16
    lr: float = 5e-4

    SIZE_MULTIPLE: ClassVar[int] = 4
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 32, "width": 8, "depth": 3, "steps": 8, "batch_size": 4},
        "small": {},
        "large": {"width": 64, "depth": 16, "steps": 40000, "batch_size": 32, "image_size": 96},
    }

    def validate(self) -> None:
        if self.width < 1 or self.depth < 2:
            raise GeneratorConfigError("width must be >= 1 and depth >= 2")
        if not self.scales or any(s not in (2, 3, 4) for s in self.scales):
            raise GeneratorConfigError(f"scales must be a non-empty list of 2, 3 or 4, got {self.scales}")


class SRNet(nn.Module):
    """Bicubic up-sampling plus a learned residual."""

    def __init__(self, cfg: SRConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, cfg.width, 3, padding=1), nn.ReLU()]
        for _ in range(cfg.depth - 2):
            layers += [nn.Conv2d(cfg.width, cfg.width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(cfg.width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, small: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        up = F.interpolate(small, size=size, mode="bicubic", align_corners=False)
        out: torch.Tensor = (up + self.body(up)).clamp(-1.0, 1.0)
        return out


def shrink(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Area down-sampling by ``scale`` (the edge rows and columns that do not fill a block are averaged in)."""
    h, w = x.shape[-2:]
    return F.adaptive_avg_pool2d(x, (max(1, round(h / scale)), max(1, round(w / scale))))


@register_generator("sr")
class SRGenerator(Generator):
    """Learned super-resolution; paired fake = the real image shrunk x2 or x4 and super-resolved back."""

    config_class = SRConfig
    paired_method = "learned super-resolution: the real image shrunk (area) x2 or x4, then up-scaled by the network"
    upsample_method = "the network's x4 output from a band-limited random field (texture, not anatomy)"
    config: SRConfig

    def _build(self) -> dict[str, nn.Module]:
        return {"net": SRNet(self.config)}

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.modules["net"].parameters(), lr=self.config.lr)]

    def _train_step(self, batch: torch.Tensor, step: int, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        scale = self.config.scales[step % len(self.config.scales)]
        out = self.modules["net"](shrink(batch, scale), batch.shape[-2:])
        loss = F.l1_loss(out, batch)
        optimizers[0].zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizers[0].step()
        return {"l1": loss.item()}

    def super_resolve(self, real: torch.Tensor, scale: int) -> torch.Tensor:
        """``real`` (N, 1, H, W) in [-1, 1] shrunk by ``scale`` and super-resolved back to H x W."""
        return self.modules["net"](shrink(real, scale), real.shape[-2:])  # type: ignore[no-any-return]

    def enhance(self, real: np.ndarray, *, scale: int, seed: int = 0) -> np.ndarray:
        """:meth:`paired_fake` at a chosen ``scale`` (2 or 4) instead of a seeded draw."""
        if scale not in (2, 3, 4):
            raise GeneratorInputError(f"scale must be 2, 3 or 4, got {scale}")
        image = check_image(real, "sr.enhance")
        with torch.no_grad():
            out = self.super_resolve(torch.from_numpy(image)[None, None] * 2 - 1, scale)
        return ((out[0, 0] + 1) * 0.5).numpy().astype(np.float32)

    def _paired(self, real: torch.Tensor, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        scale = int(self.config.scales[int(rng.integers(len(self.config.scales)))])
        return self.super_resolve(real, scale)

    def _sample(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        side = max(2, -(-size // 4))
        field = torch.randn((n, 1, side, side), generator=gen)
        field = F.avg_pool2d(F.pad(field, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        field = (field / field.std().clamp_min(1e-6) * 0.5).clamp(-1.0, 1.0)
        out: torch.Tensor = self.modules["net"](field, (side * 4, side * 4))
        return out[..., :size, :size]
