"""The generator interface, its registry and factory.

Every generator is a :class:`Generator` subclass registered with :func:`register_generator` and built with
:func:`create_generator`; a contract test runs over :func:`list_generators`. All public methods take and return
numpy arrays in [0, 1]; tensors stay inside.
"""

from __future__ import annotations

import abc
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from detectors.generators.checkpoint import CheckpointInfo, read_checkpoint, write_checkpoint
from detectors.generators.config import GeneratorConfig
from detectors.generators.errors import (
    CheckpointError,
    GeneratorConfigError,
    GeneratorInputError,
    UnknownGeneratorError,
)
from detectors.generators.training import (
    PatchSampler,
    ProgressCallback,
    TrainingResult,
    TrainProgress,
    check_image,
)

__all__ = [
    "Generator",
    "create_generator",
    "generator_class",
    "list_generators",
    "register_generator",
]

_REGISTRY: dict[str, type[Generator]] = {}
G = TypeVar("G", bound="type[Generator]")

#: Largest side :meth:`Generator.sample` will produce (memory guard).
MAX_SAMPLE_SIZE = 2048


def register_generator(name: str) -> Callable[[G], G]:
    """Class decorator: register a :class:`Generator` subclass under ``name``."""

    def decorate(cls: G) -> G:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"generator {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_generators() -> list[str]:
    """The registered generator names, sorted."""
    return sorted(_REGISTRY)


def generator_class(name: str) -> type[Generator]:
    """The class registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownGeneratorError(
            f"unknown generator {name!r}; registered: {', '.join(list_generators()) or 'none'}"
        ) from None


def create_generator(
    name: str,
    *,
    config: str | GeneratorConfig | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    seed: int = 0,
    **overrides: Any,
) -> Generator:
    """Build the generator ``name``.

    With ``checkpoint`` (a directory written by :meth:`Generator.save`), its config and verified weights are
    loaded, and ``config``/``overrides`` are refused. Otherwise ``config`` is a preset name (default ``small``)
    or a config object, ``overrides`` replace fields of a preset, and the weights are freshly initialised from
    ``seed``.
    """
    cls = generator_class(name)
    if checkpoint is not None:
        if config is not None or overrides:
            raise GeneratorConfigError("pass either a checkpoint or a config/overrides, not both")
        return cls.load(checkpoint)
    if config is None or isinstance(config, str):
        cfg = cls.config_class.preset(config or "small", **overrides)
    elif isinstance(config, cls.config_class):
        if overrides:
            raise GeneratorConfigError("overrides apply to a preset name, not to a config object")
        cfg = config
    else:
        raise GeneratorConfigError(f"{name} needs a {cls.config_class.__name__}, got {type(config).__name__}")
    return cls(cfg, seed=seed)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator inside the block and restore its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Generator(abc.ABC):
    """A trainable image generator working on single-channel images in [0, 1].

    Subclasses define :attr:`config_class`, build their modules in :meth:`_build`, and implement the training
    step, unpaired sampling at the model's native latent size and the paired fake.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig
    #: One sentence on how a paired fake is made (recorded with outputs, shown by the CLI).
    paired_method: ClassVar[str] = ""
    #: How :meth:`sample` reaches sizes other than ``config.image_size``.
    upsample_method: ClassVar[str] = (
        "fully convolutional: the network runs on a larger latent/noise map; content is locally realistic but has "
        "no structure larger than the receptive field learned on training patches"
    )

    def __init__(self, config: GeneratorConfig, *, seed: int = 0) -> None:
        if not isinstance(config, self.config_class):
            raise GeneratorConfigError(f"{self.name} needs a {self.config_class.__name__}")
        self.config = config
        self.init_seed = seed
        with _seeded(seed):
            self.modules: dict[str, nn.Module] = self._build()
        for module in self.modules.values():
            module.eval()
        self.checkpoint_info: CheckpointInfo | None = None
        self.training_record: dict[str, Any] = {"trained": False, "init_seed": seed}

    # ------------------------------------------------------------------ to implement

    @abc.abstractmethod
    def _build(self) -> dict[str, nn.Module]:
        """Create the modules (saved under their dictionary key)."""

    @abc.abstractmethod
    def _optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers for :meth:`fit` (built after the modules)."""

    @abc.abstractmethod
    def _train_step(self, batch: torch.Tensor, step: int, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """One optimisation step on a (B, 1, S, S) batch in [-1, 1]; returns named losses."""

    @abc.abstractmethod
    def _sample(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` unpaired samples (n, 1, size, size) in [-1, 1]."""

    @abc.abstractmethod
    def _paired(self, real: torch.Tensor, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        """A paired fake of ``real`` (1, 1, H, W) in [-1, 1], same shape."""

    # ------------------------------------------------------------------ public API

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for m in self.modules.values() for p in m.parameters())

    @property
    def digest(self) -> str | None:
        """SHA-256 of the weights file this generator was saved to or loaded from (``None`` before)."""
        return self.checkpoint_info.digest if self.checkpoint_info else None

    def fit(
        self,
        frames: Iterable[npt.NDArray[np.floating]] | PatchSampler,
        *,
        steps: int | None = None,
        seed: int = 0,
        progress: ProgressCallback | None = None,
        progress_every: int = 10,
        data_description: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        time_limit_s: float | None = None,
    ) -> TrainingResult:
        """Train on random patches of ``frames`` (2-D arrays in [0, 1]) for ``steps`` (default: the config's).

        Reproducible: the patches come from ``numpy.random.default_rng(seed)`` and torch is seeded with ``seed``
        (same seed, data and thread count give the same weights on the CPU). ``progress`` is called every
        ``progress_every`` steps and at the end. ``device`` (e.g. ``"cuda"``) trains there: patches are still
        drawn on the CPU, the modules go back to the CPU afterwards (GPU kernels are not bit-reproducible).
        ``time_limit_s`` stops after the first step that ends past that many seconds (the record and the result
        then give the steps done).
        """
        sampler = frames if isinstance(frames, PatchSampler) else PatchSampler(frames, self.config.image_size)
        if sampler.size != self.config.image_size:
            raise GeneratorInputError(f"patch size {sampler.size} != image_size {self.config.image_size}")
        total = self.config.steps if steps is None else steps
        if total < 0 or progress_every < 1:
            raise GeneratorInputError("steps must be >= 0 and progress_every >= 1")
        if time_limit_s is not None and not time_limit_s > 0:
            raise GeneratorInputError(f"time_limit_s must be positive, got {time_limit_s}")
        done = 0
        target = torch.device(device) if device is not None else torch.device("cpu")
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        sums: dict[str, float] = {}
        count = 0
        last: dict[str, float] = {}
        with _seeded(seed):
            if target.type == "cuda":
                torch.cuda.manual_seed_all(seed)
            for module in self.modules.values():
                module.to(target)
            optimizers = self._optimizers()
            for module in self.modules.values():
                module.train()
            try:
                for step in range(1, total + 1):
                    batch = sampler.batch(self.config.batch_size, rng).to(target, non_blocking=True)
                    losses = self._train_step(batch, step, optimizers)
                    for key, value in losses.items():
                        if not np.isfinite(value):
                            raise GeneratorInputError(f"training diverged at step {step}: {key} = {value}")
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
                    done = step
                    elapsed = time.perf_counter() - start
                    stop = time_limit_s is not None and elapsed >= time_limit_s
                    if step % progress_every == 0 or step == total or stop:
                        last = {k: v / count for k, v in sums.items()}
                        sums, count = {}, 0
                        if progress is not None:
                            shown = step if stop else total
                            progress(TrainProgress(step, shown, last, elapsed, step / max(elapsed, 1e-9)))
                    if stop:
                        break
            finally:
                for module in self.modules.values():
                    module.eval()
                    module.to("cpu")
        elapsed = time.perf_counter() - start
        after = self._after_fit(sampler, rng)
        previous = int(self.training_record.get("steps", 0))
        if done == 0 and previous:  # nothing optimised (steps=0 on a loaded checkpoint): only the post-fit part
            self.training_record = {**self.training_record, **after}
            self.checkpoint_info = None
            return TrainingResult(0, seed, elapsed, {}, len(sampler))
        earlier = list(self.training_record.get("earlier_runs", []))
        if previous:  # a continued run: keep what the earlier runs were
            keys = ("steps", "seed", "elapsed_s", "device", "threads", "torch", "metrics")
            earlier.append({k: self.training_record[k] for k in keys if k in self.training_record})
        self.training_record = {
            "trained": done > 0 or previous > 0,
            "init_seed": self.init_seed,
            "seed": seed,
            "steps": previous + done,
            "elapsed_s": round(elapsed, 2),
            "metrics": {k: round(v, 6) for k, v in last.items()},
            "frames": len(sampler),
            "patch_size": sampler.size,
            "sampler": sampler.description,
            "data": dict(data_description or {}),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": _device_name(target),
            **({"earlier_runs": earlier} if earlier else {}),
            **after,
        }
        self.checkpoint_info = None  # the weights changed
        return TrainingResult(done, seed, elapsed, last, len(sampler))

    def sample(self, n: int, *, seed: int = 0, size: int | None = None) -> npt.NDArray[np.float32]:
        """``n`` unpaired samples, shape (n, size, size) float32 in [0, 1]; ``size`` defaults to the model's.

        Sizes other than ``config.image_size`` use :attr:`upsample_method`.
        """
        size = self.config.image_size if size is None else size
        if n < 0:
            raise GeneratorInputError(f"n must be >= 0, got {n}")
        if size < 8 or size > MAX_SAMPLE_SIZE:
            raise GeneratorInputError(f"size must be in [8, {MAX_SAMPLE_SIZE}], got {size}")
        if n == 0:
            return np.zeros((0, size, size), dtype=np.float32)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            out = self._sample(n, size, gen)
        return _to_numpy(out)[:, 0]

    def paired_fake(self, real: npt.NDArray[np.floating], *, seed: int = 0) -> npt.NDArray[np.float32]:
        """A fake made from ``real`` (2-D, [0, 1]) that shares its content: same shape, float32 in [0, 1]."""
        return self.paired_fake_with_mask(real, seed=seed)[0]

    def paired_fake_with_mask(
        self, real: npt.NDArray[np.floating], *, seed: int = 0
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """The paired fake and a boolean mask of the pixels the generator replaced (all of them, by default)."""
        arr = check_image(real, f"{self.name}.paired_fake")
        gen = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        x = torch.from_numpy(arr)[None, None] * 2.0 - 1.0
        with torch.no_grad():
            out = self._paired(x, gen, rng)
        return _to_numpy(out)[0, 0], np.ones(arr.shape, dtype=bool)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer, keyed ``<module>.<name>``."""
        return {f"{key}.{k}": v for key, m in self.modules.items() for k, v in m.state_dict().items()}

    def save(self, directory: str | os.PathLike[str], *, sampling_only: bool = False) -> CheckpointInfo:
        """Write a checkpoint (safetensors + JSON with digest) and return its info.

        ``sampling_only`` keeps only :meth:`sampling_modules` (e.g. the EMA weights, not the training copy or the
        discriminator): half the size, enough to sample and make paired fakes; loading fills the other modules
        from them (see :meth:`_complete`), so further training starts from the sampling weights.
        """
        keep = set(self.sampling_modules()) | set(self.optional_modules()) if sampling_only else set(self.modules)
        training = dict(self.training_record)
        training["parameters"] = self.parameter_count
        training["paired_method"] = self.paired_method
        training["upsample_method"] = self.upsample_method
        if sampling_only:
            training["saved_modules"] = sorted(keep)
        tensors = {k: v for k, v in self.state_tensors().items() if k.split(".", 1)[0] in keep}
        self.checkpoint_info = write_checkpoint(
            directory, name=self.name, tensors=tensors, config=self.config.to_dict(), training=training
        )
        return self.checkpoint_info

    def sampling_modules(self) -> tuple[str, ...]:
        """The modules that sampling and paired fakes use (all of them unless a subclass says otherwise)."""
        return tuple(self.modules)

    def optional_modules(self) -> tuple[str, ...]:
        """Modules saved with every checkpoint (also sampling-only) that older checkpoints may lack; a load
        without them keeps their initial state (e.g. the VAE's latent prior, fitted after training)."""
        return ()

    def _after_fit(self, sampler: PatchSampler, rng: np.random.Generator) -> dict[str, Any]:
        """Fitting that follows the optimisation (e.g. a latent prior); returns what goes into the record."""
        return {}

    def _complete(self, missing: list[str]) -> None:
        """Fill ``missing`` modules of a sampling-only checkpoint from the loaded ones; the default refuses."""
        raise CheckpointError(f"checkpoint lacks the {', '.join(missing)} weights")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Generator:
        """Load a checkpoint written by :meth:`save`, refusing weights that do not match the digest."""
        info, tensors = read_checkpoint(directory, expected_name=cls.name)
        try:
            config = cls.config_class.from_dict(info.config)
        except GeneratorConfigError as exc:
            raise CheckpointError(f"checkpoint config is invalid: {exc}") from exc
        init_seed = info.training.get("init_seed", 0)
        self = cls(config, seed=init_seed if isinstance(init_seed, int) else 0)
        present = {k.split(".", 1)[0] for k in tensors}
        optional = set(self.optional_modules())
        missing = [key for key in self.modules if key not in present and key not in optional]
        sampling = set(self.sampling_modules())
        if missing and not (sampling <= present and all(key not in sampling for key in missing)):
            raise CheckpointError(f"checkpoint lacks the {', '.join(missing)} weights")
        for key, module in self.modules.items():
            if key in missing or key not in present:
                continue
            prefix = f"{key}."
            part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(part, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"weights do not fit the {cls.name} config ({key}): {exc}") from exc
        extra = [k for k in tensors if k.split(".", 1)[0] not in self.modules]
        if extra:
            raise CheckpointError(f"unexpected tensors in checkpoint: {', '.join(sorted(extra)[:5])}")
        if missing:
            self._complete(missing)
        self.training_record = {
            k: v
            for k, v in info.training.items()
            if k not in ("parameters", "paired_method", "upsample_method", "saved_modules")
        }
        self.checkpoint_info = info
        return self


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _to_numpy(x: torch.Tensor) -> npt.NDArray[np.float32]:
    return ((x.clamp(-1.0, 1.0) + 1.0) * 0.5).to(torch.float32).cpu().numpy().astype(np.float32, copy=False)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (replicate) the bottom/right of an (N, C, H, W) tensor to a multiple; returns it and the original size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)
