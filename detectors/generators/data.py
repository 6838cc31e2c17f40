"""Training frames from a :mod:`detectors.data` corpus (the train split by default, normalised to [0, 1])."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.data.corpus import MANIFEST_NAME, Corpus, Split
from detectors.errors import CorpusError

__all__ = ["corpus_frames"]


def corpus_frames(
    root: str | os.PathLike[str], *, split: Split | None = "train", max_frames: int | None = None
) -> tuple[list[npt.NDArray[np.float32]], dict[str, Any]]:
    """The normalised frames of ``split`` and a description of them for the checkpoint's training record.

    Only the train split is used by default, so that detectors evaluated on the test split never see a source
    whose images also trained the generator. ``max_frames`` keeps the first frames in manifest order.
    """
    corpus = Corpus.load(root)
    frames: list[npt.NDArray[np.float32]] = []
    modalities: Counter[str] = Counter()
    sources: set[str] = set()
    for frame in corpus.iter_frames(split, normalized=True):
        if max_frames is not None and len(frames) >= max_frames:
            break
        pixels = np.asarray(frame.pixels, dtype=np.float32)
        if pixels.ndim != 2 or min(pixels.shape) < 8 or not np.isfinite(pixels).all():
            continue
        frames.append(np.clip(pixels, 0.0, 1.0))
        modalities[frame.entry.modality] += 1
        sources.add(frame.entry.source_id)
    if not frames:
        raise CorpusError(f"{root}: no usable frames in split {split or 'all'}")
    manifest = Path(root) / MANIFEST_NAME
    description = {
        "corpus": Path(root).resolve().name,
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "split": split or "all",
        "frames": len(frames),
        "sources": len(sources),
        "modalities": dict(sorted(modalities.items())),
        "corpus_seed": corpus.seed,
    }
    return frames, description
