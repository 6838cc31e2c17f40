"""``cnn``: a timm backbone with one input channel on patches at native resolution.

Generation artefacts live in the highest frequencies, which a stride-2 stem followed by more down-sampling
throws away first; the stem's stride is therefore reduced (``stem_stride``, default 1), so the first layers see
every pixel. Weights start from scratch (nothing is downloaded). Two logits per patch: synthetic and tamper.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from detectors.models.base import (
    Detector,
    DetectorConfig,
    FitProgress,
    ModelError,
    PatchBatch,
    register_detector,
)

__all__ = ["CNNDetector", "PatchCNN"]

_BATCH = 64


def _first_conv(model: nn.Module) -> nn.Conv2d:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ModelError("backbone has no convolution")


class PatchCNN(nn.Module):
    """timm backbone (one input channel, two outputs) with a reduced stem stride."""

    def __init__(self, backbone: str, stem_stride: int, drop_rate: float) -> None:
        super().__init__()
        import timm

        try:
            self.net = timm.create_model(backbone, pretrained=False, in_chans=1, num_classes=2, drop_rate=drop_rate)
        except RuntimeError as exc:  # unknown model name
            raise ModelError(f"timm backbone {backbone!r}: {exc}") from exc
        _first_conv(self.net).stride = (stem_stride, stem_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x * 2.0 - 1.0)
        return out


@register_detector("cnn")
class CNNDetector(Detector):
    """Patch CNN trained with binary cross-entropy on both heads (tamper labels only where they apply)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "patch_size": 32,
            "max_patches": 8,
            "arch_args": {"backbone": "mobilenetv3_small_050", "stem_stride": 2, "lr": 2e-3, "drop_rate": 0.0},
        },
        "small": {
            "patch_size": 64,
            "max_patches": 32,
            "arch_args": {
                "backbone": "mobilenetv3_small_050",
                "stem_stride": 1,
                "lr": 2e-3,
                "drop_rate": 0.1,
                "tamper_pos_weight": 4.0,
            },
        },
    }

    def __init__(self, config: DetectorConfig, *, seed: int = 0) -> None:
        super().__init__(config, seed=seed)
        args = dict(config.arch_args)
        self.backbone = str(args.get("backbone", "mobilenetv3_small_050"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = PatchCNN(self.backbone, int(args.get("stem_stride", 1)), float(args.get("drop_rate", 0.0)))
        self.model.eval()

    def patch_logits(self, patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))[:, None]
        outs = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], _BATCH):
                outs.append(self.model(x[start : start + _BATCH]))
        return torch.cat(outs).numpy().astype(np.float32)

    def fit(
        self,
        batches: Iterator[PatchBatch],
        *,
        steps: int,
        seed: int = 0,
        progress: FitProgress | None = None,
    ) -> dict[str, float]:
        lr = float(self.config.arch_args.get("lr", 2e-3))
        # Tampered patches are about a tenth of a batch: weigh them up so that the head does not settle on the prior.
        tamper_weight = torch.tensor(float(self.config.arch_args.get("tamper_pos_weight", 1.0)))
        last: dict[str, float] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.15)
            self.model.train()
            run: dict[str, float] = {}
            try:
                for step in range(1, steps + 1):
                    batch = next(batches)
                    x = torch.from_numpy(batch.patches)[:, None]
                    y_syn = torch.from_numpy(batch.synthetic)
                    y_tam = torch.from_numpy(batch.tamper)
                    logits = self.model(x)
                    loss_syn = F.binary_cross_entropy_with_logits(logits[:, 0], y_syn)
                    loss_tam = F.binary_cross_entropy_with_logits(logits[:, 1], y_tam, pos_weight=tamper_weight)
                    loss = loss_syn + loss_tam
                    if not torch.isfinite(loss):
                        raise ModelError(f"training diverged at step {step}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    sched.step()
                    acc = ((logits[:, 0] > 0).float() == y_syn).float().mean().item()
                    for key, value in (("loss", loss.item()), ("syn_acc", acc), ("tamper_loss", loss_tam.item())):
                        run[key] = value if key not in run else 0.95 * run[key] + 0.05 * value
                    if progress is not None:
                        progress(step, steps, run)
                last = dict(run)
            finally:
                self.model.eval()
        return last

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {f"cnn.{k}": v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        state = {k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("cnn.")}
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"weights do not fit the {self.backbone} config: {str(exc)[:300]}") from exc
        self.model.eval()
