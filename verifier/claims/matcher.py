"""Near-duplicate matching: hash candidates from a multi-index, confirmed by cross-correlation.

The same two steps run for images of one batch (:class:`BatchIndex`, in memory) and for images of earlier audits
(:meth:`verifier.claims.store.ImageStore.near`): candidates are pairs with a hash of one family (pHash or SimHash,
see :mod:`verifier.claims.fingerprint`), at any pair of crop scales, within that family's distance
(:data:`MAX_HAMMING`, :data:`MAX_SIMHASH`); a candidate becomes a match only if :func:`confirm` finds a normalised
cross-correlation of at least :data:`MIN_CORRELATION` between the aligned regions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from verifier.claims.fingerprint import (
    band_probes,
    band_values,
    masked_similarity,
    similarity,
    slot_is_simhash,
    slot_scale,
    tied_fraction,
)

__all__ = [
    "MAX_HAMMING",
    "MAX_SIMHASH",
    "MIN_CORRELATION",
    "MIN_MASKED_CORRELATION",
    "MIN_TIED",
    "BatchIndex",
    "Confirmation",
    "confirm",
    "max_distance",
    "within_radius",
]

#: pHash distance (bits of 64) under which two images are candidates.
MAX_HAMMING = 10
#: SimHash distance under which two images are candidates. SimHashes of unrelated images are closer than their
#: pHashes (their bits are correlated), so the radius is smaller; copies in the benchmark are 0-4 bits away.
MAX_SIMHASH = 4
#: Cross-correlation (of the high-passed regions) at or above which a candidate pair is the same image.
MIN_CORRELATION = 0.65
#: When one of the two thumbnails is at least this share tied (uniform background, or a window that saturated much
#: of the image: where the pHash is unreliable and the high-passed correlation is fooled by the outline), the pair
#: is proposed by either hash family and decided by :func:`masked_similarity`, which must reach
#: :data:`MIN_MASKED_CORRELATION`. Elsewhere only the pHash proposes pairs: the SimHash also proposes many
#: lookalikes (neighbouring tiles of one radiograph) that only the pHash keeps apart.
MIN_TIED = 0.25
MIN_MASKED_CORRELATION = 0.75
#: How many of a pair's closest scale combinations are tried by the finer check.
_TRIES = 3


def max_distance(slot: int) -> int:
    """The candidate radius of a hash slot's family."""
    return MAX_SIMHASH if slot_is_simhash(slot) else MAX_HAMMING


def close_slots(slots: Mapping[int, int], other: Mapping[int, int]) -> list[tuple[float, int, int, int]]:
    """``(distance / family radius, distance, slot, other slot)`` of every same-family pair of hashes within the
    family's radius, closest first."""
    out = []
    for i, h in slots.items():
        sim = slot_is_simhash(i)
        limit = max_distance(i)
        for j, o in other.items():
            if slot_is_simhash(j) != sim:
                continue
            d = (h ^ o).bit_count()
            if d <= limit:
                out.append((d / limit, d, i, j))
    out.sort()
    return out


def within_radius(
    slots: Mapping[int, int], other_slots: Sequence[int], other_values: Sequence[int]
) -> list[int | None]:
    """For each ``(slot, value)`` of another image, the value if it lies within its family's radius of a
    same-family hash of ``slots``, else None (vectorised: a lookup sees thousands of band collisions)."""
    out: list[int | None] = [None] * len(other_values)
    if not other_values:
        return out
    values = np.array(other_values, dtype=np.uint64)
    is_sim = np.array([slot_is_simhash(s) for s in other_slots])
    for sim, limit in ((False, MAX_HAMMING), (True, MAX_SIMHASH)):
        mine = np.array([h for i, h in slots.items() if slot_is_simhash(i) == sim], dtype=np.uint64)
        rows = np.flatnonzero(is_sim == sim)
        if mine.size == 0 or rows.size == 0:
            continue
        dist = np.bitwise_count(values[rows, None] ^ mine[None, :]).min(axis=1)
        for r in rows[dist <= limit]:
            out[int(r)] = int(other_values[int(r)])
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Confirmation:
    """The evidence for one near-duplicate pair."""

    #: Bits between the two hashes that proposed the pair (of the family in ``hash_kind``).
    hamming: int
    correlation: float
    #: Central-crop scales at which the pair's hashes agreed (this image, the other one).
    scale: float
    other_scale: float
    confirmed: bool
    hash_kind: str = "phash"


class BatchIndex:
    """An in-memory multi-index over the hash slots of a batch of images (four 16-bit bands, radius-1 probes)."""

    def __init__(self) -> None:
        self._bands: list[dict[int, list[tuple[int, int]]]] = [{}, {}, {}, {}]
        self._hashes: dict[int, dict[int, int]] = {}

    def add(self, key: int, slots: Mapping[int, int]) -> None:
        self._hashes[key] = dict(slots)
        for slot, h in slots.items():
            for band, value in enumerate(band_values(h)):
                self._bands[band].setdefault(value, []).append((key, slot))

    def near(self, slots: Mapping[int, int]) -> dict[int, dict[int, int]]:
        """Keys with a hash within its family's radius of a same-family hash of ``slots``: key -> {slot: hash}.

        Every pair within 7 bits is found (pigeonhole over four bands, radius-1 probes)."""
        seen: set[tuple[int, int]] = set()
        for h in slots.values():
            for band, value in enumerate(band_values(h)):
                table = self._bands[band]
                for probe in band_probes(value):
                    seen.update(table.get(probe, ()))
        out: dict[int, dict[int, int]] = {}
        hits = sorted(seen)
        values = [self._hashes[key][slot] for key, slot in hits]
        for (key, slot), kept in zip(hits, within_radius(slots, [s for _k, s in hits], values), strict=True):
            if kept is not None:
                out.setdefault(key, {})[slot] = kept
        return out


def confirm(
    slots: Mapping[int, int],
    view: npt.NDArray[np.uint8],
    other_slots: Mapping[int, int],
    other_view: npt.NDArray[np.uint8] | None,
    *,
    min_correlation: float = MIN_CORRELATION,
) -> Confirmation:
    """Check a candidate pair: for mostly uniform or saturated images (see :data:`MIN_TIED`) by the masked
    correlation, else the closest scale combinations of its pHashes, then the high-passed cross-correlation."""
    close = close_slots(slots, other_slots)
    if close and other_view is not None and max(tied_fraction(view), tied_fraction(other_view)) >= MIN_TIED:
        _r, d, i, j = close[0]
        score = masked_similarity(view, other_view)
        return Confirmation(hamming=d, correlation=round(score, 4), scale=slot_scale(i), other_scale=slot_scale(j),
                            confirmed=score >= MIN_MASKED_CORRELATION,
                            hash_kind="simhash" if slot_is_simhash(i) else "phash")  # fmt: skip
    pairs = [p for p in close if not slot_is_simhash(p[2])]
    if not pairs:
        return Confirmation(hamming=64, correlation=-1.0, scale=1.0, other_scale=1.0, confirmed=False)
    best = (-1.0, pairs[0])
    if other_view is not None:
        for pair in pairs[:_TRIES]:
            _r, _d, i, j = pair
            score = similarity(view, other_view, scale_a=slot_scale(i), scale_b=slot_scale(j))
            if score > best[0]:
                best = (score, pair)
            if score >= min_correlation:
                break
    score, (_r, d, i, j) = best
    return Confirmation(
        hamming=d,
        correlation=round(score, 4),
        scale=slot_scale(i),
        other_scale=slot_scale(j),
        confirmed=other_view is not None and score >= min_correlation,
    )
