"""Checkpoints: safetensors weights plus a JSON description with the weights' SHA-256 digest.

A checkpoint is a directory with two files:

``model.safetensors``
    every tensor of the generator's modules (``<module>.<parameter>``); never a pickle.
``checkpoint.json``
    the generator name, its config (architecture and training hyper-parameters), the training record (seed,
    steps done, data description, metrics, time) and ``digest``, the SHA-256 of ``model.safetensors``.

:func:`read_checkpoint` verifies the digest on the bytes it then loads, so a changed weights file is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from detectors.generators.errors import CheckpointError
from detectors.weights import canonical

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CheckpointInfo",
    "read_checkpoint",
    "sha256_file",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "medverify-generator/1"
CONFIG_FILE = "checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
_MAX_JSON_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself; ``digest`` is the SHA-256 (hex) of its weights file."""

    name: str
    digest: str
    config: Mapping[str, Any]
    training: Mapping[str, Any]
    format: str = CHECKPOINT_FORMAT

    @property
    def seed(self) -> int | None:
        """The training seed, if the weights were trained (``None`` for an untrained initialisation)."""
        seed = self.training.get("seed")
        return int(seed) if isinstance(seed, int) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "digest": self.digest,
            "digest_algorithm": "sha256",
            "weights_file": WEIGHTS_FILE,
            "config": dict(self.config),
            "training": dict(self.training),
        }


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint(
    directory: str | os.PathLike[str],
    *,
    name: str,
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    training: Mapping[str, Any],
) -> CheckpointInfo:
    """Write ``model.safetensors`` and ``checkpoint.json`` into ``directory`` (created) and return the info."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    blob = canonical(st_save(
        {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
        metadata={"format": CHECKPOINT_FORMAT, "generator": name},
    ))
    info = CheckpointInfo(
        name=name, digest=hashlib.sha256(blob).hexdigest(), config=dict(config), training=dict(training)
    )
    _atomic_write(out / WEIGHTS_FILE, blob)
    _atomic_write(out / CONFIG_FILE, (json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return info


def read_checkpoint(
    directory: str | os.PathLike[str], *, expected_name: str | None = None
) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Read and verify a checkpoint directory: JSON first, then the weights, checked against the digest."""
    root = Path(directory)
    config_path = root / CONFIG_FILE
    try:
        raw = config_path.read_bytes()[: _MAX_JSON_BYTES + 1]
    except OSError as exc:
        raise CheckpointError(f"cannot read {config_path}: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_JSON_BYTES:
        raise CheckpointError(f"{config_path} is larger than {_MAX_JSON_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{config_path} is not a {CHECKPOINT_FORMAT} checkpoint")
    name, digest = doc.get("name"), doc.get("digest")
    config, training = doc.get("config"), doc.get("training", {})
    if not (isinstance(name, str) and isinstance(digest, str) and isinstance(config, dict)):
        raise CheckpointError(f"{config_path} lacks name, digest or config")
    if not isinstance(training, dict):
        raise CheckpointError(f"{config_path}: 'training' must be an object")
    if expected_name is not None and name != expected_name:
        raise CheckpointError(f"checkpoint is for generator {name!r}, not {expected_name!r}")
    weights_path = root / WEIGHTS_FILE
    try:
        blob = weights_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {weights_path}: {exc.strerror or exc}") from exc
    actual = hashlib.sha256(blob).hexdigest()
    if actual != digest.lower():
        raise CheckpointError(
            f"{weights_path} does not match the checkpoint digest (expected sha256 {digest}, got {actual}); "
            "refusing to load"
        )
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{weights_path} is not a valid safetensors file: {exc}") from exc
    return CheckpointInfo(name=name, digest=actual, config=config, training=training), tensors


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # weights are not secret; mkstemp's 0600 would hide them from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
