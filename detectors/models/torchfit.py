"""What the torch members (``cnn``, ``segment``) share: the seeded training loop and their weights as arrays."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from detectors.models.base import FitProgress, ModelError

__all__ = ["load_module_arrays", "module_arrays", "train_module"]


def train_module(
    model: nn.Module,
    step_loss: Callable[[int], tuple[torch.Tensor, Mapping[str, float]]],
    *,
    lr: float,
    steps: int,
    seed: int,
    progress: FitProgress | None = None,
) -> dict[str, float]:
    """``steps`` AdamW steps (weight decay 1e-4) under a one-cycle schedule peaking at ``lr``, with torch's random
    state seeded by ``seed`` and restored afterwards; ``step_loss(step)`` draws a batch and returns its loss and
    metrics. Returns the metrics as running means; the model is left in eval mode, also after an error."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.15)
        model.train()
        run: dict[str, float] = {}
        try:
            for step in range(1, steps + 1):
                loss, values = step_loss(step)
                if not torch.isfinite(loss):
                    raise ModelError(f"training diverged at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                for key, value in values.items():
                    run[key] = value if key not in run else 0.95 * run[key] + 0.05 * value
                if progress is not None:
                    progress(step, steps, run)
        finally:
            model.eval()
    return dict(run)


def module_arrays(prefix: str, model: nn.Module) -> dict[str, npt.NDArray[Any]]:
    """The module's state as numpy arrays named ``<prefix>.<parameter>``."""
    return {f"{prefix}.{k}": v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_module_arrays(prefix: str, model: nn.Module, arrays: Mapping[str, npt.NDArray[Any]], what: str) -> None:
    """Load what :func:`module_arrays` wrote (all of it, nothing else); :class:`ModelError` naming ``what``
    when the arrays do not fit the module."""
    start = len(prefix) + 1
    state = {k[start:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(f"{prefix}.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{what}: {str(exc)[:300]}") from exc
    model.eval()
