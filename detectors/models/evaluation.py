"""Evaluation on held-out views: per generator family AUC and TPR at the model's threshold, after laundering too,
the false-positive rate on real views, and tamper localisation (pixel AUC of the heatmap against the edit mask).

For the synthetic families the image score is ``synthetic_score``; for ``tamper`` it is ``tamper_score``
(a local edit leaves the rest of the image real). Every figure is computed against the same held-out real views.

Beside the pooled AUC, two figures tell whether a detector ranks a fake above the real images *of its own source*
(same patient, scanner and processing): ``within_source_auc``, the mean over sources of the AUC of a source's real
views against the paired fakes made from them, and ``paired_win_rate``, how often a paired fake scores above the
very real view it was made from (ties count half). A pooled AUC far below them means that the scores of real
images shift from source to source more than a fake shifts them.

The pooled AUC also comes with ``auc_ci95``, a 95 % interval from a bootstrap over *source images* (a source's
views are not independent of one another, so resampling views would make the interval far too narrow). With the
handful of held-out sources of the sample corpus, the interval is wide: it says how much a figure can be trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.models.augment import jpeg, resize
from detectors.models.base import DetectionReport, Detector
from detectors.models.views import View

#: Families judged by the tamper score (the legacy name ``tamper`` included).
TAMPER_FAMILIES = frozenset({"inject", "remove", "copymove", "tamper"})

__all__ = [
    "LAUNDERING",
    "auc",
    "evaluate_views",
    "pixel_auc",
    "score_views",
    "source_bootstrap_auc",
    "source_bootstrap_rate",
    "tpr_at_fpr",
    "within_source",
]

Transform = Callable[[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None],
                     tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None]]

#: The laundering conditions of the issue: none, JPEG quality 75, half-size resize.
LAUNDERING: dict[str, Transform] = {
    "clean": lambda image, mask: (image, mask),
    "jpeg75": lambda image, mask: (jpeg(image, 75), mask),
    "resize0.5": lambda image, mask: resize(image, 0.5, mask),
}


def auc(negatives: npt.ArrayLike, positives: npt.ArrayLike) -> float | None:
    """ROC AUC (ties count half); None when a class is empty."""
    neg = np.asarray(negatives, dtype=np.float64)
    pos = np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([neg, pos]))
    return float((ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2) / (neg.size * pos.size))


def source_bootstrap_auc(
    negatives: Sequence[tuple[str, float]],
    positives: Sequence[tuple[str, float]],
    *,
    rounds: int = 1000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """95 % interval of the AUC of ``negatives`` against ``positives`` (``(source_id, score)`` pairs), from
    ``rounds`` resamplings of the source images with replacement; None with fewer than two sources."""
    sources = sorted({s for s, _ in negatives} | {s for s, _ in positives})
    if len(sources) < 2 or not negatives or not positives:
        return None
    by_source = {s: ([v for t, v in negatives if t == s], [v for t, v in positives if t == s]) for s in sources}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        drawn = rng.choice(len(sources), size=len(sources), replace=True)
        neg = [v for i in drawn for v in by_source[sources[i]][0]]
        pos = [v for i in drawn for v in by_source[sources[i]][1]]
        value = auc(neg, pos)
        if value is not None:
            values.append(value)
    if not values:
        return None
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def source_bootstrap_rate(
    flags: Sequence[tuple[str, bool]], *, rounds: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % interval of the share of ``flags`` (``(source_id, flagged)`` pairs) that are set, from ``rounds``
    resamplings of the sources (patients) with replacement; None with fewer than two sources."""
    sources = sorted({s for s, _ in flags})
    if len(sources) < 2:
        return None
    counts = {s: (sum(f for t, f in flags if t == s), sum(1 for t, _ in flags if t == s)) for s in sources}
    hits = np.array([counts[s][0] for s in sources], dtype=np.float64)
    sizes = np.array([counts[s][1] for s in sources], dtype=np.float64)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(sources), size=(rounds, len(sources)))
    rates = hits[drawn].sum(axis=1) / np.maximum(sizes[drawn].sum(axis=1), 1.0)
    low, high = np.quantile(rates, [0.025, 0.975])
    return float(low), float(high)


def tpr_at_fpr(negatives: npt.ArrayLike, positives: npt.ArrayLike, fpr: float = 0.01) -> float | None:
    """The share of ``positives`` above the score that at most ``fpr`` of ``negatives`` reach (the ROC curve at
    that false-positive rate, read on these very negatives); None when a class is empty."""
    neg = np.sort(np.asarray(negatives, dtype=np.float64))[::-1]
    pos = np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        return None
    allowed = int(np.floor(fpr * neg.size))
    cut = neg[allowed] if allowed < neg.size else -np.inf
    return float((pos > cut).mean())


def pixel_auc(reports: Sequence[DetectionReport], masks: Sequence[npt.NDArray[np.bool_]]) -> float | None:
    """AUC of the per-pixel heatmap against the edit masks, pooled over images (unscored pixels excluded)."""
    scores, labels = [], []
    for report, mask in zip(reports, masks, strict=True):
        heat = report.pixel_heatmap()
        h, w = mask.shape
        heat = heat[:h, :w]
        ok = ~np.isnan(heat)
        scores.append(heat[ok])
        labels.append(mask[: heat.shape[0], : heat.shape[1]][ok])
    if not scores:
        return None
    s, y = np.concatenate(scores), np.concatenate(labels)
    return auc(s[~y], s[y])


def within_source(
    views: Sequence[View], scores: Sequence[float], family: str
) -> tuple[float | None, int, float | None]:
    """``(within_source_auc, sources, paired_win_rate)`` of ``family``'s paired fakes among ``views`` scored
    ``scores`` (see the module docstring); None where no source has both real views and paired fakes."""
    position = {id(v): i for i, v in enumerate(views)}
    per_source: list[float] = []
    for source in sorted({v.source_id for v in views if v.is_real}):
        reals = [scores[i] for i, v in enumerate(views) if v.is_real and v.source_id == source]
        fakes = [scores[i] for i, v in enumerate(views)
                 if v.family == family and v.partner is not None and v.source_id == source]
        value = auc(reals, fakes)
        if value is not None:
            per_source.append(value)
    wins = [float(np.sign(scores[i] - scores[position[id(v.partner)]]) + 1) / 2
            for i, v in enumerate(views) if v.family == family and v.partner is not None and id(v.partner) in position]
    return (float(np.mean(per_source)) if per_source else None, len(per_source),
            float(np.mean(wins)) if wins else None)


def score_views(
    detector: Detector, views: Sequence[View], transform: Transform | None = None
) -> tuple[list[DetectionReport], list[npt.NDArray[np.bool_] | None]]:
    """Detection reports of ``views`` (after ``transform``) and their (transformed) masks."""
    reports, masks = [], []
    for view in views:
        image, mask = view.pixels, view.mask
        if transform is not None:
            image, mask = transform(image, mask)
        reports.append(detector.detect(image, group=view.group))
        masks.append(mask)
    return reports, masks


def _rate(flags: npt.NDArray[np.bool_], sources: Sequence[str]) -> dict[str, Any]:
    """A false-positive rate with its count and patient-bootstrap interval."""
    return {
        "rate": float(flags.mean()) if flags.size else None,
        "flagged": int(flags.sum()),
        "views": int(flags.size),
        "patients": len(set(sources)),
        "ci95": source_bootstrap_rate(list(zip(sources, (bool(f) for f in flags), strict=True))),
    }


def _figures(
    detector: Detector,
    selected: Sequence[View],
    reports: Sequence[DetectionReport],
    masks: Sequence[npt.NDArray[np.bool_] | None],
    wanted: Sequence[str],
) -> dict[str, Any]:
    """False-positive rates on the real views and, per family, AUC, its interval, TPR at the threshold and at
    1 % FPR, of the given scored views."""
    cfg = detector.config
    real_mask = [v.is_real for v in selected]
    reals = [v for v in selected if v.is_real]
    real_syn = np.array([r.synthetic_score for r, m in zip(reports, real_mask, strict=True) if m])
    real_tam = np.array([r.tamper_score for r, m in zip(reports, real_mask, strict=True) if m])
    sources = [v.source_id for v in reals]
    cond: dict[str, Any] = {
        "fpr_synthetic": float((real_syn >= cfg.threshold).mean()) if real_syn.size else None,
        "fpr_tamper": float((real_tam >= cfg.tamper_threshold).mean()) if real_tam.size else None,
        "fpr": _rate((real_syn >= cfg.threshold) | (real_tam >= cfg.tamper_threshold), sources),
        "families": {},
    }
    for family in wanted:
        idx = [i for i, v in enumerate(selected) if v.family == family]
        if not idx:
            continue
        if family in TAMPER_FAMILIES:
            pos = np.array([reports[i].tamper_score for i in idx])
            neg, thr = real_tam, cfg.tamper_threshold
        else:
            pos = np.array([reports[i].synthetic_score for i in idx])
            neg, thr = real_syn, cfg.threshold
        entry: dict[str, Any] = {
            "n": len(idx),
            "auc": auc(neg, pos),
            "auc_ci95": source_bootstrap_auc(
                [(v.source_id, float(x)) for v, x in zip(reals, neg, strict=True)],
                [(selected[i].source_id, float(x)) for i, x in zip(idx, pos, strict=True)]),
            "tpr_at_threshold": float((pos >= thr).mean()) if pos.size else None,
            "tpr_at_1pct_fpr": tpr_at_fpr(neg, pos, 0.01),
            "auc_by_synthetic_score": auc(real_syn, [reports[i].synthetic_score for i in idx]),
        }
        column = [r.tamper_score if family in TAMPER_FAMILIES else r.synthetic_score for r in reports]
        entry["within_source_auc"], entry["within_sources"], entry["paired_win_rate"] = within_source(
            selected, column, family)
        if family in TAMPER_FAMILIES:
            with_mask = [(reports[i], m) for i in idx if (m := masks[i]) is not None and m.any()]
            entry["pixel_auc"] = pixel_auc([r for r, _ in with_mask], [m for _, m in with_mask])
        cond["families"][family] = entry
    return cond


def evaluate_views(
    detector: Detector,
    views: Sequence[View],
    *,
    conditions: Mapping[str, Transform] | None = None,
    families: Sequence[str] | None = None,
    by_form: bool = True,
) -> dict[str, Any]:
    """Figures per laundering condition and family (see the module docstring); with ``by_form`` the same again
    for the native and the 8-bit views apart (``forms``)."""
    conditions = LAUNDERING if conditions is None else conditions
    present = sorted({v.family for v in views if not v.is_real})
    wanted = [f for f in (families or present) if f in present]
    out: dict[str, Any] = {
        "model_tag": detector.config.tag or detector.name,
        "threshold": detector.config.threshold,
        "tamper_threshold": detector.config.tamper_threshold,
        "real_views": sum(v.is_real for v in views),
        "real_sources": len({v.source_id for v in views if v.is_real}),
        "conditions": {},
    }
    for name, transform in conditions.items():
        selected = [v for v in views if v.is_real or v.family in wanted]
        reports, masks = score_views(detector, selected, transform)
        cond = _figures(detector, selected, reports, masks, wanted)
        if by_form:
            cond["forms"] = {}
            for form in sorted({v.form for v in selected}):
                keep = [i for i, v in enumerate(selected) if v.form == form]
                cond["forms"][form] = _figures(detector, [selected[i] for i in keep], [reports[i] for i in keep],
                                               [masks[i] for i in keep], wanted)
        out["conditions"][name] = cond
    return out
