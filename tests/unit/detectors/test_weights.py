"""Weights files are byte-stable: the same arrays and metadata give the same bytes, whatever order safetensors
wrote the metadata in."""

from __future__ import annotations

import json
import struct

import numpy as np
from safetensors.numpy import load, save

from detectors.weights import canonical


def _with_metadata_order(blob: bytes, keys: list[str]) -> bytes:
    """The same file with its metadata keys written in the order ``keys`` (as another safetensors call may)."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    metadata = header.pop("__metadata__")
    text = json.dumps({"__metadata__": {k: metadata[k] for k in keys}} | header, separators=(",", ":")).encode()
    text += b" " * (length - len(text))
    assert len(text) == length
    return blob[:8] + text + blob[8 + length :]


def test_metadata_order_does_not_change_the_bytes() -> None:
    arrays = {"b.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.ones(3, dtype=np.float64)}
    blob = save(arrays, metadata={"format": "medverify-detector/1", "arch": "ensemble"})
    one = _with_metadata_order(blob, ["arch", "format"])
    other = _with_metadata_order(blob, ["format", "arch"])
    assert one != other  # what two training runs wrote
    assert canonical(one) == canonical(other) == canonical(canonical(one))
    loaded = load(canonical(other))
    assert set(loaded) == set(arrays) and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
    assert canonical(save(arrays)) == save(arrays)  # no metadata: nothing to order
