"""``tamper``: CT-GAN-style local edits of a real image — inject a lesion, remove one, or copy one elsewhere.

*Inject* draws a lesion from a parametric model (a soft ellipse of random size, elongation, orientation and edge
sharpness, modulated by a band-limited Gaussian texture; its contrast is a multiple of the local standard
deviation, hyper- or hypo-dense at random) and adds it where the image has tissue; the image's own noise stays
under it. *Remove* cuts an ellipse out of a structured region and fills it with the learned inpainter (a small
convolutional encoder-decoder trained here on random elliptical holes in real patches, ``inpaint_method=
"learned"``) or OpenCV's Telea inpainting; with ``match_noise`` the fill then gets the image's own noise: the
fine-scale residual of a donor region of the same image at a similar grey level, so that the hole is not
smoother than its surroundings. *Copy-move* copies a structured region of the image onto another place of it
and blends it in by Poisson editing (the copy's gradients, the target's boundary), as forgers do with a real
lesion.

Every edit changes pixels only inside the returned mask. Radii are in native pixels (about 3 to 10 mm at typical
CT spacing), so the edit and the inpainter work at the image's own resolution.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from detectors.generators.base import Generator, pad_to_multiple, register_generator
from detectors.generators.config import GeneratorConfig
from detectors.generators.errors import GeneratorConfigError, GeneratorInputError
from detectors.generators.training import check_image

__all__ = ["TAMPER_MODES", "Inpainter", "TamperConfig", "TamperGenerator", "TamperResult", "poisson_blend"]

TamperMode = Literal["inject", "remove", "copymove"]
#: Every kind of local edit, in the order of :attr:`TamperConfig.mode_weights`.
TAMPER_MODES: tuple[TamperMode, ...] = ("inject", "remove", "copymove")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TamperConfig(GeneratorConfig):
    """Inpainter ``width``; lesion radius range in pixels; contrast range in multiples of the local std."""

    width: int = 24
    radius_px: tuple[float, float] = (4.0, 14.0)
    contrast: tuple[float, float] = (1.5, 4.0)
    min_amplitude: float = 0.04
    inject_probability: float = 0.5
    #: Probability of a copy-move when no mode is asked for; the rest splits by ``inject_probability``.
    copymove_probability: float = 1.0 / 3.0
    #: Give an inpainted fill the image's own fine-scale noise (see the module docstring).
    match_noise: bool = True
    #: ``telea`` by default: the learned inpainter trained on the 27-frame sample corpus fills held-out holes worse
    #: (mean hole L1 0.21 vs 0.09 on val) because most training patches are empty background; train it on a
    #: content-rich corpus and set ``learned``.
    inpaint_method: Literal["learned", "telea"] = "telea"
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3

    SIZE_MULTIPLE: ClassVar[int] = 8
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "image_size": 32,
            "width": 8,
            "radius_px": (3.0, 6.0),
            "steps": 8,
            "batch_size": 4,
            "inpaint_method": "learned",
        },
        "small": {},
        "large": {"inpaint_method": "learned", "width": 48, "steps": 40000, "batch_size": 32, "lr": 5e-4},
    }

    def validate(self) -> None:
        lo, hi = self.radius_px
        if self.width < 1 or not 1.5 <= lo <= hi or hi > self.image_size / 3:
            raise GeneratorConfigError("width >= 1 and 1.5 <= radius_px[0] <= radius_px[1] <= image_size / 3")
        if not 0 < self.contrast[0] <= self.contrast[1] or self.min_amplitude < 0:
            raise GeneratorConfigError("contrast must be a positive increasing pair, min_amplitude >= 0")
        if not 0 <= self.inject_probability <= 1 or not 0 <= self.copymove_probability <= 1:
            raise GeneratorConfigError("inject_probability and copymove_probability must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class TamperResult:
    """A tampered copy of a real image and the mask of every changed pixel."""

    image: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]
    mode: TamperMode
    center: tuple[int, int]
    radius: float


class Inpainter(nn.Module):
    """Encoder-decoder with skips and a dilated bottleneck; input (masked image, mask), output the full image."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        act = nn.LeakyReLU(0.2)
        self.e1 = nn.Sequential(nn.Conv2d(2, w, 5, padding=2), act)
        self.e2 = nn.Sequential(nn.Conv2d(w, 2 * w, 4, 2, 1), act, nn.Conv2d(2 * w, 2 * w, 3, padding=1), act)
        self.e3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 4, 2, 1), act)
        self.mid = nn.Sequential(
            *[m for d in (2, 4, 8, 1) for m in (nn.Conv2d(4 * w, 4 * w, 3, padding=d, dilation=d), act)]
        )
        self.d2 = nn.Sequential(nn.Conv2d(4 * w + 2 * w, 2 * w, 3, padding=1), act)
        self.d1 = nn.Sequential(nn.Conv2d(2 * w + w, w, 3, padding=1), act, nn.Conv2d(w, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (N, 1, H, W) in [-1, 1], ``mask`` 1 inside the hole; H and W divisible by 4."""
        h1 = self.e1(torch.cat([x * (1 - mask), mask], dim=1))
        h2 = self.e2(h1)
        h = self.mid(self.e3(h2))
        h = self.d2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h2], dim=1))
        out = self.d1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], dim=1))
        return torch.tanh(out)


def _donor_noise(
    image: npt.NDArray[np.float32], filled: npt.NDArray[np.float32], hole: npt.NDArray[np.bool_],
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """The fine-scale residual (image minus its Gaussian blur, sigma 1) of a donor region of ``image`` outside
    ``hole``, at the grey level closest to the fill's, laid over the hole (zero elsewhere)."""
    h, w = image.shape
    ys, xs = np.nonzero(hole)
    top, left, bottom, right = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    bh, bw = bottom - top, right - left
    residual = image - cv2.GaussianBlur(image, (0, 0), 1.0)
    level = float(filled[hole].mean())
    best: tuple[float, int, int] | None = None
    for _ in range(32):
        y = int(rng.integers(0, max(1, h - bh + 1)))
        x = int(rng.integers(0, max(1, w - bw + 1)))
        if hole[y : y + bh, x : x + bw].any():
            continue
        cost = abs(float(image[y : y + bh, x : x + bw].mean()) - level)
        if best is None or cost < best[0]:
            best = (cost, y, x)
    out = np.zeros_like(image)
    if best is not None:
        _, y, x = best
        out[top:bottom, left:right] = residual[y : y + bh, x : x + bw]
    return np.where(hole, out, 0.0).astype(np.float32)


def poisson_blend(
    image: npt.NDArray[np.float32], source: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float32]:
    """Poisson image editing: inside ``mask`` the result has the Laplacian of ``source`` and meets ``image`` on
    the mask's boundary (a sparse linear system over the masked pixels); outside it is ``image``. ``mask`` must
    not touch the border."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return image.copy()
    index = -np.ones(image.shape, dtype=np.int64)
    index[ys, xs] = np.arange(ys.size)
    rows, cols, vals = [np.arange(ys.size)], [np.arange(ys.size)], [np.full(ys.size, 4.0)]
    rhs = np.zeros(ys.size)
    src = source.astype(np.float64)
    dst = image.astype(np.float64)
    for oy, ox in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + oy, xs + ox
        rhs += src[ys, xs] - src[ny, nx]
        inside = index[ny, nx] >= 0
        rows.append(np.flatnonzero(inside))
        cols.append(index[ny[inside], nx[inside]])
        vals.append(-np.ones(int(inside.sum())))
        rhs[~inside] += dst[ny[~inside], nx[~inside]]
    matrix = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(ys.size, ys.size)).tocsr()
    out = image.copy()
    out[ys, xs] = np.clip(spsolve(matrix, rhs), 0.0, 1.0)
    return out


def _ellipses(n: int, size: int, radius: tuple[float, float], gen: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random filled ellipses (n, 1, size, size) in {0, 1}, centred away from the border."""
    lo, hi = radius
    r = lo + (hi - lo) * torch.rand(n, generator=gen)
    ratio = 0.6 + 0.8 * torch.rand(n, generator=gen)
    angle = math.pi * torch.rand(n, generator=gen)
    cy = r + (size - 2 * r) * torch.rand(n, generator=gen)
    cx = r + (size - 2 * r) * torch.rand(n, generator=gen)
    axis = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    a, b = r[:, None, None] * ratio.sqrt()[:, None, None], r[:, None, None] / ratio.sqrt()[:, None, None]
    return ((u / a) ** 2 + (v / b) ** 2 <= 1.0).float()[:, None]


@register_generator("tamper")
class TamperGenerator(Generator):
    """Local edits: lesion injection (parametric lesion model), removal (learned inpainter) and copy-move."""

    config_class = TamperConfig
    paired_method = (
        "local edit: inject a textured soft-ellipse lesion, remove an elliptical region with the learned "
        "inpainter and the image's own noise, or copy a region elsewhere with Poisson blending; pixels change "
        "only inside the returned mask"
    )
    upsample_method = "lesion model drawn directly at the requested size (it is parametric)"
    config: TamperConfig

    def _build(self) -> dict[str, nn.Module]:
        return {"inpainter": Inpainter(self.config.width)}

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.modules["inpainter"].parameters(), lr=self.config.lr)]

    def _train_step(self, batch: torch.Tensor, step: int, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        (opt,) = optimizers
        mask = _ellipses(batch.shape[0], batch.shape[-1], self.config.radius_px)
        pred = self.modules["inpainter"](batch, mask)
        err = (pred - batch).abs()
        hole = (err * mask).sum() / mask.sum().clamp_min(1.0)
        loss = hole + 0.1 * err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "hole_l1": hole.item()}

    # ------------------------------------------------------------------ lesion model

    def _lesion(
        self, shape: tuple[int, int], center: tuple[float, float], radius: float, rng: np.random.Generator
    ) -> npt.NDArray[np.float32]:
        """A unit-amplitude lesion profile (H, W) >= 0: soft ellipse x (1 + band-limited texture)."""
        h, w = shape
        ratio = rng.uniform(0.6, 1.4)
        angle = rng.uniform(0, math.pi)
        sharp = rng.uniform(2.0, 6.0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dy, dx = yy - center[0], xx - center[1]
        c, s = math.cos(angle), math.sin(angle)
        u, v = (c * dx + s * dy) / (radius * math.sqrt(ratio)), (-s * dx + c * dy) * math.sqrt(ratio) / radius
        d = np.sqrt(u * u + v * v)
        profile = np.exp(-(d**sharp))
        white = rng.standard_normal((h, w)).astype(np.float32)
        noise = np.asarray(cv2.GaussianBlur(white, (0, 0), max(0.8, radius / 4)), dtype=np.float32)
        noise /= max(float(noise.std()), 1e-6)
        lesion = np.asarray(profile * (1.0 + 0.25 * noise), dtype=np.float32)
        lesion[d > 2.0] = 0.0  # exact support: nothing changes outside the mask
        return np.clip(lesion, 0.0, None).astype(np.float32)

    def _radius(self, shape: tuple[int, int], rng: np.random.Generator) -> float:
        lo, hi = self.config.radius_px
        cap = max(1.5, min(shape) / 6)
        return float(min(rng.uniform(lo, hi), cap))

    def _pick_center(
        self, image: npt.NDArray[np.float32], radius: float, rng: np.random.Generator, *, structured: bool
    ) -> tuple[int, int]:
        """Among random candidates, the one with most tissue (inject) or most local structure (remove)."""
        h, w = image.shape
        m = math.ceil(2 * radius) + 1
        ys = rng.integers(min(m, h // 2), max(h - m, h // 2 + 1), size=24)
        xs = rng.integers(min(m, w // 2), max(w - m, w // 2 + 1), size=24)
        k = max(3, int(2 * radius) | 1)
        mean = cv2.blur(image, (k, k))
        std = np.sqrt(np.maximum(cv2.blur(image * image, (k, k)) - mean * mean, 0.0))
        score = std[ys, xs] if structured else mean[ys, xs] - 2.0 * std[ys, xs]
        best = int(np.argmax(score + 1e-6 * rng.random(24)))
        return int(ys[best]), int(xs[best])

    def _local_std(self, image: npt.NDArray[np.float32], center: tuple[int, int], radius: float) -> float:
        y, x = center
        r = int(3 * radius) + 2
        win = image[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
        return float(win.std())

    # ------------------------------------------------------------------ edits

    def tamper(self, real: npt.NDArray[np.floating], *, seed: int = 0, mode: TamperMode | None = None) -> TamperResult:
        """A tampered copy of ``real`` (2-D, [0, 1]); ``mode`` defaults to a seeded draw (copy-move with
        ``copymove_probability``, else inject with ``inject_probability``, else remove).

        The mask is the edited region: the lesion's support (where it changes the image by at least half a 12-bit
        step), the inpainted hole or the pasted region; no pixel outside it changes.
        """
        image = check_image(real, "tamper")
        rng = np.random.default_rng(seed)
        u = rng.random()
        if u < self.config.copymove_probability:
            draw: TamperMode = "copymove"
        else:
            rest = (u - self.config.copymove_probability) / max(1e-9, 1.0 - self.config.copymove_probability)
            draw = "inject" if rest < self.config.inject_probability else "remove"
        chosen = mode or draw
        if chosen not in TAMPER_MODES:
            raise GeneratorInputError(f"mode must be one of {', '.join(TAMPER_MODES)}, got {mode!r}")
        radius = self._radius(image.shape, rng)
        if chosen == "inject":
            center = self._pick_center(image, radius, rng, structured=False)
            lesion = self._lesion(image.shape, center, radius, rng)
            lo, hi = self.config.contrast
            amplitude = max(rng.uniform(lo, hi) * self._local_std(image, center, radius), self.config.min_amplitude)
            sign = 1.0 if rng.random() < 0.5 else -1.0
            local = float(image[center])
            if local + amplitude > 1.0:
                sign = -1.0
            if local - amplitude < 0.0:
                sign = 1.0
            # Below half a 12-bit step the change would vanish when the app writes the image: not part of the edit.
            lesion[amplitude * lesion < 0.5 / 4096] = 0.0
            mask = lesion > 0
            out = np.clip(image + sign * amplitude * lesion, 0.0, 1.0).astype(np.float32)
        elif chosen == "remove":
            center = self._pick_center(image, radius, rng, structured=True)
            hole = self._lesion(image.shape, center, radius, np.random.default_rng(rng.integers(2**63))) > 0.05
            hole = cv2.dilate(hole.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            out = self._inpaint(image, hole, center)
            if self.config.match_noise:
                out = np.where(hole, np.clip(out + _donor_noise(image, out, hole, rng), 0.0, 1.0), image)
            mask = hole
        else:
            center, out, mask = self._copy_move(image, radius, rng)
        return TamperResult(out.astype(np.float32), mask, chosen, center, radius)

    def _copy_move(
        self, image: npt.NDArray[np.float32], radius: float, rng: np.random.Generator
    ) -> tuple[tuple[int, int], npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Copy a structured region onto another place at least three radii away, Poisson-blended."""
        h, w = image.shape
        source = self._pick_center(image, radius, rng, structured=True)
        shape = self._lesion(image.shape, source, radius, np.random.default_rng(rng.integers(2**63))) > 0.05
        m = math.ceil(2 * radius) + 2
        far = []
        for _ in range(48):
            y = int(rng.integers(min(m, h // 2), max(h - m, h // 2 + 1)))
            x = int(rng.integers(min(m, w // 2), max(w - m, w // 2 + 1)))
            if math.hypot(y - source[0], x - source[1]) >= 3 * radius:
                far.append((y, x))
        if not far:  # an image too small for a distant copy: the farthest corner region
            far = [(h - 1 - source[0], w - 1 - source[1])]
        mean = cv2.blur(image, (2 * m + 1, 2 * m + 1))
        target = min(far, key=lambda p: abs(float(mean[p]) - float(mean[source])) + 1e-6 * rng.random())
        dy, dx = target[0] - source[0], target[1] - source[1]
        ys, xs = np.nonzero(shape)
        keep = (ys + dy >= 1) & (ys + dy < h - 1) & (xs + dx >= 1) & (xs + dx < w - 1)
        ys, xs = ys[keep], xs[keep]
        mask = np.zeros_like(shape)
        mask[ys + dy, xs + dx] = True
        pasted = np.zeros_like(image)
        pasted[ys + dy, xs + dx] = image[ys, xs]
        # The copy's own neighbourhood gives its gradients at the region's edge.
        shifted = np.roll(np.roll(image, dy, axis=0), dx, axis=1)
        out = poisson_blend(image, np.where(mask, pasted, shifted), mask)
        return target, out, mask

    def _inpaint(
        self, image: npt.NDArray[np.float32], hole: npt.NDArray[np.bool_], center: tuple[int, int]
    ) -> npt.NDArray[np.float32]:
        if self.config.inpaint_method == "telea":
            # 16-bit input: OpenCV's float32 path of cv2.inpaint returns garbage (4.14, checked by a test).
            src = np.round(image * 65535.0).astype(np.uint16)
            filled = cv2.inpaint(src, hole.astype(np.uint8), 5, cv2.INPAINT_TELEA).astype(np.float32) / 65535.0
        else:
            # Run the inpainter on a window of about twice the training size around the hole (fully convolutional).
            h, w = image.shape
            half = self.config.image_size
            y0, x0 = max(0, center[0] - half), max(0, center[1] - half)
            y1, x1 = min(h, center[0] + half), min(w, center[1] + half)
            crop = torch.from_numpy(image[y0:y1, x0:x1].copy())[None, None] * 2 - 1
            m = torch.from_numpy(hole[y0:y1, x0:x1].astype(np.float32))[None, None]
            crop_p, (ch, cw) = pad_to_multiple(crop, 4)
            m_p, _ = pad_to_multiple(m, 4)
            with torch.no_grad():
                pred = self.modules["inpainter"](crop_p, m_p)[0, 0, :ch, :cw]
            filled = image.copy()
            filled[y0:y1, x0:x1] = ((pred.clamp(-1, 1) + 1) * 0.5).numpy()
        return np.where(hole, np.clip(filled, 0.0, 1.0), image).astype(np.float32)

    def paired_fake_with_mask(
        self, real: npt.NDArray[np.floating], *, seed: int = 0
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        result = self.tamper(real, seed=seed)
        return result.image, result.mask

    def _paired(self, real: torch.Tensor, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        image = self.tamper(((real[0, 0] + 1) * 0.5).numpy(), seed=int(rng.integers(2**31))).image
        return torch.from_numpy(image)[None, None] * 2 - 1

    def _sample(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        """The lesion model's draws on a flat mid-grey background (what ``inject`` adds), in [-1, 1]."""
        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
        out = np.full((n, 1, size, size), 0.5, dtype=np.float32)
        for i in range(n):
            radius = rng.uniform(0.15, 0.3) * size
            lesion = self._lesion((size, size), ((size - 1) / 2, (size - 1) / 2), radius, rng)
            out[i, 0] += (1.0 if rng.random() < 0.5 else -1.0) * 0.3 * np.minimum(lesion, 1.5)
        return torch.from_numpy(np.clip(out, 0.0, 1.0) * 2 - 1)
