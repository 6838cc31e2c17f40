"""Byte-stable safetensors: the same arrays and metadata always give the same file, hence the same digest.

The digest of a weights file names it (a generator checkpoint's digest, and with its config a detector bundle's
tag), so two runs of one training command that produce the same arrays must produce the same bytes. safetensors
writes the ``__metadata__`` map in an order that changes from one call to the next (a hash map on the Rust
side): the same weights got tags ``ensemble-ccbc5d977002`` and ``ensemble-d90da54c7e08`` in two runs.
:func:`canonical` rewrites the header with the metadata keys sorted; tensors, offsets and data stay as they are.
"""

from __future__ import annotations

import json
import struct

__all__ = ["canonical"]


def canonical(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its metadata keys in sorted order; the same length, the same tensors."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    metadata = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(metadata.items()))} if metadata else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to a multiple of 8 bytes
    return struct.pack("<Q", len(text)) + text + blob[8 + length :]
