"""Gradient-boosted trees that a bundle can store as plain arrays.

A logistic regression on the physics features ranks fakes well (AUC) but puts its decision boundary where the
bulk of the classes meet; at 1 % false positives on real patients it catches few fakes, because a fake usually
departs from real images in *some* features, not a little in all of them. Shallow boosted trees learn those
interactions ("fine-scale noise too low *and* its correlation too high"). On the held-out views of the shared
corpus, boosting the same two-sided physics features raised the physics member's true-positive rate at 1 % FPR
on families left out of training from 0.01-0.18 to 0.14-0.33 (``benchmarks/bench_detection.py`` measures the
shipped ensemble).

scikit-learn's :class:`~sklearn.ensemble.GradientBoostingClassifier` fits them; its fitted trees are read through
their public ``tree_`` arrays and kept as one set of flat arrays (:class:`Forest`), so that a bundle stays
safetensors (no pickle is ever loaded) and scoring one image is a few vectorised numpy steps. The trees start
from a zero log-odds (``init="zero"``), so the score is the sum of the trees' leaf values and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.models.base import ModelError

__all__ = ["Forest", "fit_forest"]

#: What the physics member's ``booster`` arch_args may set, with the defaults of the shipped preset.
DEFAULTS: dict[str, float] = {"trees": 300, "depth": 3, "rate": 0.05, "subsample": 0.7, "min_leaf": 20}


@dataclasses.dataclass(frozen=True)
class Forest:
    """Regression trees laid end to end: node ``i`` of tree ``t`` is row ``start[t] + i``; ``left``/``right`` are
    offsets within the tree (-1 at a leaf); a sample goes left when ``x[feature] <= threshold`` (compared in
    float32, as scikit-learn's trees do); ``value`` is a leaf's contribution, the learning rate included."""

    start: npt.NDArray[np.int64]
    feature: npt.NDArray[np.int64]
    threshold: npt.NDArray[np.float64]
    left: npt.NDArray[np.int64]
    right: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]

    @property
    def trees(self) -> int:
        return len(self.start)

    def decision(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The summed leaf values (log-odds) of each row of ``x`` (N, F)."""
        rows = np.atleast_2d(np.asarray(x, dtype=np.float32))
        node = np.broadcast_to(self.start, (len(rows), self.trees)).copy()
        index = np.arange(len(rows))[:, None]
        for _ in range(len(self.feature)):  # bounded by the node count; a tree of depth d needs d steps
            inner = self.left[node] >= 0
            if not inner.any():
                break
            go_left = rows[index, self.feature[node]] <= self.threshold[node]
            child = np.where(go_left, self.left[node], self.right[node])
            node = np.where(inner, self.start[None, :] + child, node)
        return np.asarray(self.value[node].sum(axis=1), dtype=np.float64)

    def arrays(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        return {f"{prefix}.{field.name}": getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]], prefix: str, n_features: int) -> Forest:
        """The forest stored under ``prefix``, checked so that a damaged bundle fails here, not while scoring."""
        try:
            values = {f.name: np.asarray(arrays[f"{prefix}.{f.name}"]) for f in dataclasses.fields(cls)}
        except KeyError as exc:
            raise ModelError(f"boosted trees lack {exc}") from None
        forest = cls(
            start=values["start"].astype(np.int64), feature=values["feature"].astype(np.int64),
            threshold=values["threshold"].astype(np.float64), left=values["left"].astype(np.int64),
            right=values["right"].astype(np.int64), value=values["value"].astype(np.float64),
        )
        nodes = len(forest.feature)
        sizes = np.diff(np.append(forest.start, nodes))
        same = {len(forest.threshold), len(forest.left), len(forest.right), len(forest.value)} == {nodes}
        if forest.trees == 0 or not same or (sizes < 1).any() or forest.start[0] != 0:
            raise ModelError("boosted trees are malformed")
        tree_size = np.repeat(sizes, sizes)
        inner = forest.left >= 0
        if ((forest.feature[inner] < 0) | (forest.feature[inner] >= n_features)).any() or (
            (forest.left[inner] >= tree_size[inner]) | (forest.right[inner] < 0)
            | (forest.right[inner] >= tree_size[inner])
        ).any() or (forest.left[inner] <= np.arange(nodes)[inner] - np.repeat(forest.start, sizes)[inner]).any():
            raise ModelError("boosted trees point outside themselves")
        return forest


def fit_forest(x: npt.ArrayLike, y: npt.ArrayLike, *, seed: int = 0, **settings: Any) -> Forest:
    """Boosted trees of ``y`` (0/1) on ``x``, classes weighted to balance, with ``settings`` over
    :data:`DEFAULTS`."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.utils.class_weight import compute_sample_weight

    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ModelError(f"unknown booster settings: {', '.join(sorted(unknown))}")
    s = {**DEFAULTS, **settings}
    labels = np.asarray(y)
    model = GradientBoostingClassifier(
        init="zero", n_estimators=int(s["trees"]), max_depth=int(s["depth"]), learning_rate=float(s["rate"]),
        subsample=float(s["subsample"]), min_samples_leaf=int(s["min_leaf"]), random_state=seed,
    )
    model.fit(np.asarray(x, dtype=np.float64), labels, sample_weight=compute_sample_weight("balanced", labels))
    starts, parts = [], []
    offset = 0
    for estimator in model.estimators_[:, 0]:
        tree = estimator.tree_
        starts.append(offset)
        parts.append((tree.feature, tree.threshold, tree.children_left, tree.children_right,
                      float(s["rate"]) * tree.value[:, 0, 0]))
        offset += tree.node_count
    feature, threshold, left, right, value = (np.concatenate(column) for column in zip(*parts, strict=True))
    leaf = left < 0
    return Forest(
        start=np.array(starts, dtype=np.int64), feature=np.where(leaf, 0, feature).astype(np.int64),
        threshold=threshold.astype(np.float64), left=np.where(leaf, -1, left).astype(np.int64),
        right=np.where(leaf, -1, right).astype(np.int64), value=value.astype(np.float64),
    )
