"""What the app's pages rest on, tested on real traces and real images: an image's journey against the whole-trace
exit rule, aligned embeddings cached on disk by the traces' digests, and tracing a user's folder into a run."""

from dataclasses import replace

import numpy as np
import pytest

from met_core.analysis.embeddings import aligned_pair, cache_name, shared_rows
from met_core.analysis.geometry import knn_accuracy, silhouette
from met_core.analysis.journey import journey
from met_core.analysis.policies import POLICIES
from met_core.analysis.whatif import TraceArrays, outcomes
from met_core.errors import METError
from met_core.io.traces import load_trace

from .conftest import CIFAR_TEST, ROOT

CKPT = ROOT / "checkpoints"
needs_shipped = pytest.mark.skipif(
    not (CKPT / "cifar10-met" / "test_trace.npz").is_file(), reason="shipped checkpoints missing"
)


@needs_shipped
@pytest.mark.parametrize("policy", list(POLICIES))
def test_journey_leaves_where_the_exit_rule_sends_each_image(policy):
    arrays = TraceArrays.from_trace(load_trace(CKPT / "cifar10-met" / "test_trace.npz"))
    t = POLICIES[policy].default_threshold
    o = outcomes(arrays, t, policy)
    gm, blocks = arrays.gmacs.tolist(), [3, 6, 9, 12]
    for i in range(300):
        j = journey(arrays.row_probs(i), gm, blocks, t, policy)
        assert (j.exit, j.predicted) == (o.exits[i], o.pred[i])
        assert [s.leaves for s in j.steps] == [False] * j.exit + [True]
        assert j.steps[-1].gmacs == gm[j.exit] and j.saved_gmacs == pytest.approx(gm[-1] - gm[j.exit])
    # probabilities only up to the exit a real early exit stopped at give the same journey
    k = int(o.exits[0])
    assert journey(arrays.row_probs(0)[: k + 1], gm, blocks, t, policy).exit == k


def test_journey_refuses_malformed_input_in_one_sentence():
    with pytest.raises(METError, match="a journey needs 1 to 4 exits"):
        journey(np.ones((5, 3)) / 3, [1, 2, 3, 4], [3, 6, 9, 12], 0.5)
    with pytest.raises(METError, match="did not leave"):  # stopped before any passing exit
        journey(np.full((2, 4), 0.25), [1, 2, 3, 4], [3, 6, 9, 12], 0.9)


def _small(path, rows: int):
    """A shipped trace with features kept for `rows` of its stored samples, every 10th (a fast UMAP, all classes)."""
    t = load_trace(path)
    return replace(t, feature_index=t.feature_index[::10][:rows], features=t.features[:, ::10][:, :rows])


@needs_shipped
def test_aligned_embeddings_are_fitted_once_then_read_in_either_order(tmp_path):
    a = _small(CKPT / "cifar10-met" / "test_trace.npz", 60)
    b = _small(CKPT / "cifar10-met-nogr" / "test_trace.npz", 60)
    d = ("a" * 64, "b" * 64)
    first = aligned_pair(a, b, 0, d, [tmp_path], tmp_path)
    assert not first.cached and first.xy_a.shape == (60, 2) and len(list(tmp_path.iterdir())) == 1
    again = aligned_pair(a, b, 0, d, [tmp_path], tmp_path)
    assert again.cached and np.allclose(again.xy_a, first.xy_a) and np.allclose(again.xy_b, first.xy_b)
    swapped = aligned_pair(b, a, 0, d[::-1], [tmp_path], tmp_path)
    assert swapped.cached and np.allclose(swapped.xy_a, first.xy_b)
    # the geometry kept with the embedding is that of each model's own features on the shared rows, in either order
    rows, ia, ib = shared_rows(a, b)
    fa, fb = a.features[0][ia], b.features[0][ib]
    assert first.knn == again.knn == (knn_accuracy(fa, a.labels[rows]), knn_accuracy(fb, b.labels[rows]))
    assert first.silhouette == pytest.approx((silhouette(fa, a.labels[rows]), silhouette(fb, b.labels[rows])))
    assert swapped.knn == first.knn[::-1] and swapped.silhouette == first.silhouette[::-1]
    # a file written before the geometry was kept is fitted again
    name, _ = cache_name(*d, 0)
    with np.load(tmp_path / name) as z:
        np.savez(tmp_path / name, rows=z["rows"], xy_lo=z["xy_lo"], xy_hi=z["xy_hi"])
    assert not aligned_pair(a, b, 0, d, [tmp_path], tmp_path).cached
    # a damaged cache file is not trusted: the pair is fitted again and the file replaced
    (tmp_path / name).write_bytes(b"PK\x03\x04 not a zip")
    assert not aligned_pair(a, b, 0, d, [tmp_path], tmp_path).cached
    assert aligned_pair(a, b, 0, d, [tmp_path], tmp_path).cached


@needs_shipped
def test_traces_of_different_images_are_refused():
    a = load_trace(CKPT / "cifar10-met" / "test_trace.npz")
    b = load_trace(CKPT / "hymenoptera-met" / "test_trace.npz")
    with pytest.raises(METError, match="not of the same images"):
        aligned_pair(a, b, 0, ("a" * 64, "b" * 64), [], None)


def _user_folder(root, classes, per_class=2):
    """A user's ImageFolder of real CIFAR-10 test images (links, no copies)."""
    for c in classes:
        (root / c).mkdir(parents=True)
        for f in sorted((CIFAR_TEST / c).iterdir())[:per_class]:
            (root / c / f.name).symlink_to(f)
    return root


def test_tracing_a_user_folder_makes_a_run_the_app_finds(tiny_checkpoint, tmp_path, monkeypatch):
    from met_core.app import jobs, state
    from met_core.io.checkpoint import checkpoint_hash

    monkeypatch.setenv("MET_RUNS_DIR", str(tmp_path / "runs"))
    classes = sorted(p.name for p in CIFAR_TEST.iterdir())
    folder = _user_folder(tmp_path / "my images", classes)
    job = jobs.TraceJob(checkpoint=str(tiny_checkpoint), dataset=str(folder), split="test", limit=0)
    job.run()
    assert job.error is None and job.done == job.total >= 1, job.error
    run = state.discover()[-1]
    assert str(run) == job.result and run.parent == tmp_path / "runs" and state.label(run).startswith("my runs/")
    t = load_trace(run / "test_trace.npz")
    assert len(t.labels) == 20 and t.meta["checkpoint_sha256"] == checkpoint_hash(tiny_checkpoint)
    assert checkpoint_hash(run) == checkpoint_hash(tiny_checkpoint)  # the same model, so its trace is accepted


def test_a_cancelled_or_mismatched_trace_is_one_sentence_and_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    from met_core.app import jobs

    monkeypatch.setenv("MET_RUNS_DIR", str(tmp_path / "runs"))
    classes = sorted(p.name for p in CIFAR_TEST.iterdir())
    job = jobs.TraceJob(checkpoint=str(tiny_checkpoint), dataset=str(_user_folder(tmp_path / "a", classes)))
    job.cancel.set()
    job.run()
    assert job.error == "cancelled; nothing was written." and job.result is None
    few = jobs.TraceJob(checkpoint=str(tiny_checkpoint), dataset=str(_user_folder(tmp_path / "b", classes[:3])))
    few.run()
    assert few.error.startswith("the dataset has 3 classes and the checkpoint 10;"), few.error
    assert not any("loading" in st_ for st_ in few.stages)  # answered before any model was loaded
    (tmp_path / "c" / "cat").mkdir(parents=True)
    (tmp_path / "c" / "cat" / "note.txt").write_text("not an image")
    empty = jobs.TraceJob(checkpoint=str(tiny_checkpoint), dataset=str(tmp_path / "c"), split="test", limit=0)
    empty.run()
    assert "has class folders but no image files" in empty.error, empty.error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
