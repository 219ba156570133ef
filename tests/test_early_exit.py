"""Real batched early exit equals computing every exit and applying the rule afterwards (real images)."""

import json

import numpy as np
import pytest
import torch

from met_core.analysis.policies import POLICIES, as_thresholds, exit_index, exit_probs
from met_core.data.datasets import decode_all, make_transform, open_dataset
from met_core.engine.inference import early_exit, measure_speedup, predict_files
from met_core.errors import METError
from met_core.nn.checkpoint import load_checkpoint

from .conftest import CIFAR_TEST, HYMENOPTERA, run_cli


@pytest.fixture(scope="module")
def model_and_images(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    ds = open_dataset(str(CIFAR_TEST))
    ds = ds.subset(np.random.default_rng(0).choice(len(ds), 70, replace=False))
    ds.transform = make_transform(model.cfg.img_size, model.cfg.mean, model.cfg.std)
    x, _ = decode_all(ds, "decode", progress=False)
    with torch.no_grad():
        probs = exit_probs(model(x).transpose(0, 1).numpy())  # (N, K, C), every exit, as the decisions see them
    return model, x, probs


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_batched_early_exit_matches_all_exits_then_rule(model_and_images, policy, batch_size):
    model, x, probs = model_and_images
    pol = POLICIES[policy]
    score = pol.score(probs)
    # thresholds at per-exit score medians: about half leave at each exit, so every path is exercised
    t = np.median(score, axis=0) if policy != "patience" else np.full(4, 2.0)
    expected_exit = exit_index(score, as_thresholds(t, 4), pol)
    res = early_exit(model, x, t, policy, batch_size=batch_size)
    assert 0 < (expected_exit < 3).mean() < 1
    np.testing.assert_array_equal(res.exits, expected_exit)
    np.testing.assert_array_equal(res.classes, probs[np.arange(len(x)), expected_exit].argmax(-1))
    for i, e in enumerate(res.exits):  # probabilities exist exactly for the exits an image ran
        assert not np.isnan(res.probs[i, : e + 1]).any() and np.isnan(res.probs[i, e + 1 :]).all()
        np.testing.assert_allclose(res.probs[i, : e + 1], probs[i, : e + 1], atol=1e-5)


def test_threshold_extremes(model_and_images):
    model, x, _ = model_and_images
    assert (early_exit(model, x[:10], 1.01).exits == 3).all()
    assert (early_exit(model, x[:10], 0.0).exits == 0).all()
    with pytest.raises(METError, match="thresholds given for 4 exits"):
        early_exit(model, x[:2], [0.5, 0.5])


def test_predict_files_answers_good_files_and_reports_bad_ones(tiny_checkpoint, tmp_path):
    model, _ = load_checkpoint(tiny_checkpoint)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    photo = next((HYMENOPTERA / "val" / "ants").iterdir())
    res = predict_files(model, [str(photo), str(bad), str(tmp_path / "gone.png")], 0.5)
    assert res[0].class_name in model.cfg.class_names and 0 <= res[0].exit < 4 and res[0].gmacs > 0
    assert res[1].error and "not a readable image" in res[1].error
    assert res[2].error.endswith("gone.png does not exist; check the path.")


def test_predict_cli_json_contract(tiny_checkpoint, tmp_path):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    img = CIFAR_TEST / "cat" / "0001.jpg"
    proc = run_cli(
        "predict", "--checkpoint", str(tiny_checkpoint), "--threshold", "0.3", "--json", str(img), str(bad), check=False
    )
    out = json.loads(proc.stdout)
    assert set(out[0]) >= {"file", "class", "exit", "confidence", "gmacs"} and set(out[1]) == {"file", "error"}
    # every file is answered, and the exit code says that one was not (scripts check it)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: 1 of 2 files could not be read (each is named with its error); the rest answered."
    )
    text = run_cli("predict", "--checkpoint", str(tiny_checkpoint), str(img), str(bad), check=False)
    assert text.returncode == 2 and text.stdout.startswith(f"{img}: ") and text.stdout.count("\n") == 1
    assert text.stderr.splitlines()[0].startswith("error: ") and str(bad) in text.stderr.splitlines()[0]


def test_measure_speedup_reports_its_figures(model_and_images):
    model, x, probs = model_and_images
    r = measure_speedup(model, x, 0.0, batch_size=64, repeats=1)
    assert r.early_exit_share == 1.0 and r.predicted_speedup > 3
    assert r.measured_speedup > 1.0  # stopping after 3 of 12 blocks must be faster than all 12
