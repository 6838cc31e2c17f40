"""Model bundles: a directory with ``model.safetensors`` and ``config.json``.

``config.json`` holds the format, the :class:`~detectors.models.base.DetectorConfig` (architecture, preprocessing,
calibration, thresholds, training record) and ``digest``, the SHA-256 of the weights file. Loading checks the
digest on the very bytes it then parses with safetensors; no pickle is ever read (ARCHITECTURE.md, Detectors). The model
tag (:func:`bundle_tag`) is ``<arch>-<12 hex digits>`` of a SHA-256 over the weights' digest *and* everything in
the config that changes a score (preprocessing, member weights, calibration, thresholds), so a tag names one
behaviour: the same weights restacked or recalibrated get another tag. Bundles saved before this rule (their tag
was the weights' digest alone) keep the tag they were saved with.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from detectors.models.base import Detector, DetectorConfig, ModelError, detector_class
from detectors.weights import canonical

__all__ = [
    "BUNDLE_FORMAT", "CONFIG_FILE", "DEFAULT_BUNDLE", "WEIGHTS_FILE", "bundle_tag", "load_bundle", "save_bundle",
]

BUNDLE_FORMAT = "medverify-detector/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: The bundle that ships with the package and that ``medverify verify`` uses unless told otherwise.
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "checkpoints" / "detector"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # a model is not a secret; it ships as package data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def bundle_tag(arch: str, digest: str, config: Mapping[str, Any]) -> str:
    """``<arch>-<12 hex>``: the SHA-256 of the weights' ``digest`` and of ``config`` (a config's JSON form) without
    its tag and training record, so that two bundles share a tag only if they score every image alike."""
    behaviour = {k: v for k, v in config.items() if k not in ("tag", "training")}
    text = json.dumps(behaviour, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    combined = hashlib.sha256((digest + "\n" + text).encode()).hexdigest()
    return f"{arch}-{combined[:12]}"


def save_bundle(detector: Detector, directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``detector`` to ``directory``; sets its tag (:func:`bundle_tag`); returns the JSON written."""
    from safetensors.numpy import save

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in detector.state_arrays().items()}
    weights = canonical(save(arrays, metadata={"format": BUNDLE_FORMAT, "arch": detector.name}))
    digest = hashlib.sha256(weights).hexdigest()
    detector.with_config(tag=bundle_tag(detector.name, digest, detector.config.to_dict()))
    record = {
        "format": BUNDLE_FORMAT,
        "digest": digest,
        "parameters": int(sum(a.size for a in arrays.values())),
        "config": detector.config.to_dict(),
    }
    _atomic_write(target / WEIGHTS_FILE, weights)
    _atomic_write(target / CONFIG_FILE, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return record


def read_bundle_config(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], DetectorConfig]:
    """The bundle's JSON record and config, without loading weights."""
    path = Path(directory) / CONFIG_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{directory}: no {CONFIG_FILE}: not a detector bundle") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable bundle config: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != BUNDLE_FORMAT:
        found = record.get("format") if isinstance(record, dict) else "?"
        raise ModelError(f"{path}: unsupported bundle format {found!r}")
    config = DetectorConfig.from_dict(record.get("config", {}))
    return record, config


def load_bundle(directory: str | os.PathLike[str] | None = None) -> Detector:
    """Load a bundle (default: :data:`DEFAULT_BUNDLE`), refusing weights that do not match the digest."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    root = Path(directory) if directory is not None else DEFAULT_BUNDLE
    record, config = read_bundle_config(root)
    try:
        weights = (root / WEIGHTS_FILE).read_bytes()
    except OSError as exc:
        raise ModelError(f"{root}: cannot read {WEIGHTS_FILE}: {exc.strerror}") from exc
    digest = hashlib.sha256(weights).hexdigest()
    if digest != record.get("digest"):
        raise ModelError(f"{root}: the weights' SHA-256 {digest[:16]}… does not match the bundle's digest")
    try:
        arrays = load(weights)
    except (SafetensorError, ValueError) as exc:
        raise ModelError(f"{root}: unreadable weights: {exc}") from exc
    detector = detector_class(config.arch)(config, seed=0)
    detector.load_state_arrays(arrays)
    detector.config = config
    return detector
