"""``cnn``: a timm backbone with one input channel on patches at native resolution.

Generation artefacts live in the highest frequencies, which a stride-2 stem followed by more down-sampling
throws away first; the stem's stride is therefore reduced (``stem_stride``, default 1), so the first layers see
every pixel. Weights start from scratch (nothing is downloaded). Two logits per patch: synthetic and tamper.
"""

from __future__ import annotations

import copy
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
from detectors.models.torchfit import load_module_arrays, module_arrays, train_module

__all__ = ["CNNDetector", "PatchCNN", "inference_copy"]

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


#: Convolution -> batch norm pairs of timm's MobileNetV3 blocks, in forward order (nothing runs between the two).
_CONV_BN = {
    "MobileNetV3": (("conv_stem", "bn1"),),
    "ConvBnAct": (("conv", "bn1"),),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` for a CPU: each batch norm of the blocks in :data:`_CONV_BN` folded into the
    convolution before it (timm's ``BatchNormAct2d`` keeps its activation), in channels-last layout. The copy is
    checked against the original on a random batch and given up for a plain channels-last copy if it differs, so a
    timm whose blocks are built otherwise costs speed, never correctness."""
    from timm.layers.norm_act import BatchNormAct2d
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    reference = copy.deepcopy(model).eval()
    fast = copy.deepcopy(reference)
    for module in list(fast.modules()):
        for conv_name, norm_name in _CONV_BN.get(type(module).__name__, ()):
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, BatchNormAct2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_name, nn.Sequential(norm.drop, norm.act))
    probe = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        if not torch.allclose(fast(probe), reference(probe), rtol=1e-3, atol=1e-3):
            fast = reference
    return fast.to(memory_format=torch.channels_last)


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
        self._fast: nn.Module | None = None  # the folded, channels-last copy for inference, made when first needed

    def patch_logits(self, patches: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))[:, None]
        if self._fast is None:
            self._fast = inference_copy(self.model)
        outs = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], _BATCH):
                outs.append(self._fast(x[start : start + _BATCH].contiguous(memory_format=torch.channels_last)))
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

        def step_loss(step: int) -> tuple[torch.Tensor, dict[str, float]]:
            batch = next(batches)
            y_syn = torch.from_numpy(batch.synthetic)
            logits = self.model(torch.from_numpy(batch.patches)[:, None])
            loss_syn = F.binary_cross_entropy_with_logits(logits[:, 0], y_syn)
            loss_tam = F.binary_cross_entropy_with_logits(logits[:, 1], torch.from_numpy(batch.tamper),
                                                          pos_weight=tamper_weight)
            loss = loss_syn + loss_tam
            acc = ((logits[:, 0] > 0).float() == y_syn).float().mean().item()
            return loss, {"loss": loss.item(), "syn_acc": acc, "tamper_loss": loss_tam.item()}

        self._fast = None
        return train_module(self.model, step_loss, lr=lr, steps=steps, seed=seed, progress=progress)

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return module_arrays("cnn", self.model)

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        load_module_arrays("cnn", self.model, arrays, f"weights do not fit the {self.backbone} config")
        self._fast = None
