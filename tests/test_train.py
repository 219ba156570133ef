import numpy as np

from met_core.data.sampling import class_balanced_batches, shuffled_batches


def test_class_balanced_batches_have_same_class_pairs_even_for_tiny_classes():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 1)
    rng = np.random.default_rng(0)
    batches = class_balanced_batches(labels, batch_size=12, classes_per_batch=0, rng=rng)
    assert len(batches) == int(np.ceil(81 / 12))
    for b in batches:
        counts = np.bincount(labels[b], minlength=3)
        assert (counts == 4).all()  # P = 3 classes x M = 4 images
    again = class_balanced_batches(labels, 12, 0, np.random.default_rng(0))
    assert all((a == b).all() for a, b in zip(batches, again))


def test_shuffled_batches_cover_every_sample_once():
    b = shuffled_batches(10, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(b).tolist()) == list(range(10)) and [len(x) for x in b] == [4, 4, 2]
