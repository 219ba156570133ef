"""How tight the classes are in an exit's feature space, and a shared 2-D frame to look at it.

Pure functions over (N, D) feature arrays: kNN accuracy (leave-one-out, cosine), silhouette (cosine),
and an aligned UMAP of several feature sets of the same samples, so their pictures share one frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import METError


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out k-nearest-neighbour accuracy with cosine similarity (majority vote)."""
    from sklearn.neighbors import KNeighborsClassifier

    z = _normalize(features)
    if len(z) <= k:
        raise METError(f"kNN accuracy needs more than k={k} samples, got {len(z)}.")
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(z, labels)
    idx = clf.kneighbors(return_distance=False)  # no X: each point is excluded from its own neighbours, ties too
    votes = labels[idx]
    pred = np.array([np.bincount(v).argmax() for v in votes])
    return float((pred == labels).mean())


def silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient with cosine distance, labels as clusters (-1..1, higher = tighter)."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        raise METError("the silhouette needs at least two classes.")
    return float(silhouette_score(_normalize(features), labels, metric="cosine"))


def aligned_umap(feature_sets: Sequence[np.ndarray], seed: int = 0, n_neighbors: int = 15) -> list[np.ndarray]:
    """2-D embeddings of several feature sets of the same samples (row i = the same image in every set),
    aligned so that a sample sits at about the same place in each: one shared frame for side-by-side views.

    (One UMAP fitted on the concatenation puts two models' features in separate regions; AlignedUMAP
    ties each sample's position across the sets.)
    """
    import umap

    n = len(feature_sets[0])
    if any(len(f) != n for f in feature_sets):
        raise METError("aligned views need the same samples in every feature set.")
    ident = {i: i for i in range(n)}
    reducer = umap.AlignedUMAP(n_neighbors=n_neighbors, min_dist=0.1, metric="cosine", random_state=seed)
    reducer.fit([_normalize(f) for f in feature_sets], relations=[ident] * (len(feature_sets) - 1))
    return [np.asarray(e) for e in reducer.embeddings_]


@dataclass
class ClassSpread:
    """How far apart an exit's features are: the mean cosine distance (2 - 2 cos) of same-class pairs and of
    different-class pairs. A graph regulariser that only pulls same-class pairs together can shrink both alike:
    then the picture contracts while kNN accuracy and the silhouette, which are scale-free, stay where they were."""

    same_class: float
    other_class: float

    @property
    def ratio(self) -> float:
        """same / other: below 1 means classes are tighter than the space as a whole."""
        return self.same_class / self.other_class


def class_spread(features: np.ndarray, labels: np.ndarray) -> ClassSpread:
    """Mean pairwise cosine distance within and across classes (O(N^2): meant for the ~1,000 stored samples)."""
    z = _normalize(features)
    labels = np.asarray(labels)
    if len(z) > 20_000:
        raise METError(f"class_spread compares all pairs; give at most 20,000 samples, not {len(z):,}.")
    d = 2.0 - 2.0 * (z @ z.T)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other = labels[:, None] != labels[None, :]
    if not same.any() or not other.any():
        raise METError("the class spread needs at least two classes and two samples of one class.")
    return ClassSpread(float(d[same].mean()), float(d[other].mean()))
