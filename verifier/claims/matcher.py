"""Near-duplicate matching: hash candidates from a multi-index, confirmed by cross-correlation.

The same two steps run for images of one batch (:class:`BatchIndex`, in memory) and for images of earlier audits
(:meth:`verifier.claims.store.ImageStore.near`): candidates are pairs with a pHash, at any pair of crop scales,
within :data:`MAX_HAMMING` bits; a candidate becomes a match only if :func:`confirm` finds a normalised
cross-correlation of at least :data:`MIN_CORRELATION` between the aligned regions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from verifier.claims.fingerprint import SCALES, band_values, similarity
from verifier.claims.store import _probes

__all__ = ["MAX_HAMMING", "MIN_CORRELATION", "BatchIndex", "Confirmation", "confirm"]

#: pHash distance (bits of 64) under which two images are candidates.
MAX_HAMMING = 10
#: Cross-correlation (of the high-passed regions) at or above which a candidate pair is the same image.
MIN_CORRELATION = 0.65
#: How many of a pair's closest scale combinations are tried by the finer check.
_TRIES = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class Confirmation:
    """The evidence for one near-duplicate pair."""

    hamming: int
    correlation: float
    #: Central-crop scales at which the pair's hashes agreed (this image, the other one).
    scale: float
    other_scale: float
    confirmed: bool


class BatchIndex:
    """An in-memory multi-index over the pHashes of a batch of images (four 16-bit bands, radius-1 probes)."""

    def __init__(self) -> None:
        self._bands: list[dict[int, list[tuple[int, int]]]] = [{}, {}, {}, {}]
        self._hashes: dict[int, Sequence[int]] = {}

    def add(self, key: int, phashes: Sequence[int]) -> None:
        self._hashes[key] = tuple(phashes)
        for scale_index, h in enumerate(phashes):
            for band, value in enumerate(band_values(h)):
                self._bands[band].setdefault(value, []).append((key, scale_index))

    def near(self, phashes: Sequence[int], *, max_distance: int = MAX_HAMMING) -> dict[int, dict[int, int]]:
        """Keys with a pHash within ``max_distance`` of one of ``phashes``: key -> {scale index: hash}."""
        seen: set[tuple[int, int]] = set()
        for h in phashes:
            for band, value in enumerate(band_values(h)):
                table = self._bands[band]
                for probe in _probes(value):
                    seen.update(table.get(probe, ()))
        out: dict[int, dict[int, int]] = {}
        for key, scale_index in seen:
            value = self._hashes[key][scale_index]
            if min((value ^ h).bit_count() for h in phashes) <= max_distance:
                out.setdefault(key, {})[scale_index] = value
        return out


def confirm(
    phashes: Sequence[int],
    view: npt.NDArray[np.uint8],
    other_hashes: Mapping[int, int],
    other_view: npt.NDArray[np.uint8] | None,
    *,
    min_correlation: float = MIN_CORRELATION,
) -> Confirmation:
    """Check a candidate pair: the closest scale combinations by Hamming distance, then cross-correlation."""
    pairs = sorted(((h ^ o).bit_count(), i, j) for i, h in enumerate(phashes) for j, o in other_hashes.items())
    if not pairs:
        return Confirmation(hamming=64, correlation=-1.0, scale=1.0, other_scale=1.0, confirmed=False)
    best = (-1.0, pairs[0])
    if other_view is not None:
        for pair in pairs[:_TRIES]:
            _d, i, j = pair
            score = similarity(view, other_view, scale_a=SCALES[i], scale_b=SCALES[j])
            if score > best[0]:
                best = (score, pair)
            if score >= min_correlation:
                break
    score, (d, i, j) = best
    return Confirmation(
        hamming=d,
        correlation=round(score, 4),
        scale=SCALES[i],
        other_scale=SCALES[j],
        confirmed=other_view is not None and score >= min_correlation,
    )
