import numpy as np
import pytest

from met_core.analysis.geometry import knn_accuracy, silhouette
from met_core.errors import METError


def clusters(spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 16)) * 5
    y = np.repeat(np.arange(4), 30)
    return centres[y] + rng.normal(size=(120, 16)) * spread, y


def test_tight_classes_score_higher_than_loose_ones():
    tight, y = clusters(0.5)
    loose, _ = clusters(8.0)
    assert knn_accuracy(tight, y) == 1.0 and knn_accuracy(loose, y) < 0.9
    assert silhouette(tight, y) > 0.5 > silhouette(loose, y)


def test_knn_leaves_each_sample_out():
    """Twins with opposite labels: each sample's nearest other point is its twin, so 1-NN must be 0 %."""
    x = np.repeat(np.eye(6), 2, axis=0)
    y = np.tile([0, 1], 6)
    assert knn_accuracy(x, y, k=1) == 0.0


def test_bad_inputs():
    x, y = clusters(1.0)
    with pytest.raises(METError, match="more than k"):
        knn_accuracy(x[:5], y[:5], k=10)
    with pytest.raises(METError, match="two classes"):
        silhouette(x, np.zeros(len(x), int))


def test_class_spread_is_the_mean_pair_distance_and_ignores_scale():
    from itertools import combinations

    from met_core.analysis.geometry import class_spread

    x, y = clusters(1.0)
    x, y = x[::6], y[::6]  # 20 samples: the pairs are few enough to list
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = list(combinations(range(len(y)), 2))
    same = np.mean([2 - 2 * z[i] @ z[j] for i, j in pairs if y[i] == y[j]])
    other = np.mean([2 - 2 * z[i] @ z[j] for i, j in pairs if y[i] != y[j]])
    s = class_spread(x, y)
    assert s.same_class == pytest.approx(same, rel=1e-5) and s.other_class == pytest.approx(other, rel=1e-5)
    assert class_spread(7.0 * x, y).ratio == pytest.approx(s.ratio, rel=1e-5)
    with pytest.raises(METError, match="at least two classes"):
        class_spread(x, np.zeros(len(x), int))
