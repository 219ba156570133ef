import numpy as np
import pytest

from met_core.errors import METError
from met_core.geometry import knn_accuracy, silhouette


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
