"""In-house generators: VAE, GAN (DCGAN-style), diffusion (DDPM/DDIM), learned super-resolution and local tamper
(inject/remove/copy-move).

One registry and one factory::

    from detectors.generators import create_generator, list_generators

    gen = create_generator("diffusion", config="small", seed=0)
    gen.fit(frames)                       # iterable of 2-D float32 arrays in [0, 1]
    info = gen.save("checkpoints/diffusion")
    gen = create_generator("diffusion", checkpoint="checkpoints/diffusion")   # digest verified
    samples = gen.sample(4, seed=1, size=256)                                 # (4, 256, 256) float32 in [0, 1]
    fake = gen.paired_fake(real, seed=1)                                      # same shape as real

Generators return arrays only; the application signs, watermarks and labels whatever it writes.
"""

from __future__ import annotations

from detectors.generators import diffusion as _diffusion
from detectors.generators import gan as _gan
from detectors.generators import sr as _sr
from detectors.generators import tamper as _tamper
from detectors.generators import vae as _vae
from detectors.generators.base import (
    Generator,
    create_generator,
    generator_class,
    list_generators,
    register_generator,
)
from detectors.generators.checkpoint import CheckpointInfo, read_checkpoint, sha256_file
from detectors.generators.config import PRESET_NAMES, GeneratorConfig
from detectors.generators.diffusion import DiffusionConfig, DiffusionGenerator
from detectors.generators.errors import (
    CheckpointError,
    GeneratorConfigError,
    GeneratorError,
    GeneratorInputError,
    UnknownGeneratorError,
)
from detectors.generators.gan import GANConfig, GANGenerator
from detectors.generators.sr import SRConfig, SRGenerator
from detectors.generators.tamper import TamperConfig, TamperGenerator, TamperResult
from detectors.generators.training import PatchSampler, ProgressCallback, TrainingResult, TrainProgress
from detectors.generators.vae import VAEConfig, VAEGenerator

del _diffusion, _gan, _sr, _tamper, _vae

__all__ = [
    "PRESET_NAMES",
    "CheckpointError",
    "CheckpointInfo",
    "DiffusionConfig",
    "DiffusionGenerator",
    "GANConfig",
    "GANGenerator",
    "Generator",
    "GeneratorConfig",
    "GeneratorConfigError",
    "GeneratorError",
    "GeneratorInputError",
    "PatchSampler",
    "ProgressCallback",
    "SRConfig",
    "SRGenerator",
    "TamperConfig",
    "TamperGenerator",
    "TamperResult",
    "TrainProgress",
    "TrainingResult",
    "UnknownGeneratorError",
    "VAEConfig",
    "VAEGenerator",
    "create_generator",
    "generator_class",
    "list_generators",
    "read_checkpoint",
    "register_generator",
    "sha256_file",
]
