"""What several benchmarks share (imported as a sibling module: the scripts run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from detectors.data import build_sample_corpus


@contextlib.contextmanager
def corpus_or_sample(corpus: Path | None) -> Iterator[Path]:
    """``corpus`` when given; else the sample corpus, built in a temporary directory removed on exit."""
    if corpus is not None:
        yield corpus
        return
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "corpus"
        build_sample_corpus(built)
        yield built
