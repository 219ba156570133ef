"""The out-of-distribution caution (met_core/analysis/ood.py): its false-alarm rate on in-distribution test images is
the stated one within its interval, photos of another kind are flagged, and a damaged reference file is one sentence."""

from __future__ import annotations

import re

import numpy as np
import pytest

from met_core.analysis.intervals import clopper_pearson
from met_core.analysis.ood import OOD_FILE, conformal_threshold, fit_ood, load_ood, save_ood
from met_core.errors import METError
from met_core.io.traces import load_trace

from .conftest import HYMENOPTERA, ROOT

CK = ROOT / "checkpoints" / "cifar10-met"
pytestmark = pytest.mark.skipif(not (CK / OOD_FILE).is_file(), reason="shipped ood.npz missing")


def test_the_false_alarm_rate_on_test_images_is_the_stated_one_within_its_interval():
    rule = load_ood(CK / OOD_FILE)
    t = load_trace(CK / "test_trace.npz")  # in-distribution images the rule never saw
    flagged = rule.flags(t.features[rule.exit])
    n = len(flagged)
    lo, hi = clopper_pearson(np.array([flagged.sum()]), n)
    assert lo[0] <= rule.false_alarm <= hi[0], (flagged.mean(), lo, hi)
    assert rule.fitted_on == "held-out training images" and rule.threshold_images >= 500


def test_photos_of_ants_and_bees_given_to_the_cifar10_model_are_flagged_while_its_softmax_is_confident():
    from met_core.engine.inference import predict_files, score_images
    from met_core.nn.checkpoint import load_checkpoint

    model = load_checkpoint(CK)[0]
    rule = load_ood(CK / OOD_FILE)
    photos = (
        sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:8]
        + sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[:8]
    )
    scores = score_images(model, rule, [(p.name, p) for p in photos])
    assert all(s is not None and s > rule.threshold for s in scores), scores
    confident = [p.confidence for p in predict_files(model, photos, 0.0)]  # the softmax alone would not flag them
    assert np.median(confident) > 0.5


def test_the_conformal_threshold_bounds_false_alarms_on_exchangeable_scores():
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(200):
        s = rng.normal(size=401)
        thr = conformal_threshold(s[:400], 0.05)
        rates.append(s[400] > thr)
    assert np.mean(rates) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 200)
    assert conformal_threshold(np.arange(10.0), 0.05) == np.inf  # 10 images cannot promise 5 %


def test_too_few_calibration_images_and_damaged_files_are_one_sentence(tmp_path):
    with pytest.raises(METError, match="cannot set a threshold"):
        fit_ood(np.ones((30, 8)), 0.05)
    rule = fit_ood(np.random.default_rng(0).normal(size=(200, 8)), 0.1)
    save_ood(tmp_path / "ok.npz", rule)
    assert load_ood(tmp_path / "ok.npz").threshold == pytest.approx(rule.threshold)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.savez(tmp_path / "pickled.npz", reference=np.array([{"a": 1}], dtype=object), header=np.array("{}"))
    np.savez(
        tmp_path / "nan.npz",
        reference=np.full((4, 8), np.nan),
        header=np.array('{"format": "met-ood/1", "threshold": 0.1, "k": 2, "false_alarm": 0.1, "exit": 0}'),
    )
    for bad in ("junk.npz", "pickled.npz", "nan.npz", "missing.npz"):
        with pytest.raises(METError) as e:
            load_ood(tmp_path / bad)
        assert "\n" not in str(e.value) and str(e.value).endswith("."), str(e.value)


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        ("cifar10-full-met/test_trace.npz", "was made by another model than .*trace it with this one"),
        ("cifar10-met/test_trace.npz", "a trace of the 'test' split; fit on held-out images"),
        ("cifar10-met/cal_trace.npz", "has no features at exit 1; trace with --features N"),
    ],
)
def test_met_ood_refuses_a_trace_it_cannot_fit_on_in_one_sentence(trace, expected, tmp_path):
    """Another model's trace, the test split (the caution is judged there) and a trace without features: each is
    one sentence and nothing is written."""
    from .conftest import run_cli

    out = tmp_path / "ood.npz"
    proc = run_cli(
        "ood", "--checkpoint", str(CK), "--trace", str(ROOT / "checkpoints" / trace), "--out", str(out), check=False
    )
    assert proc.returncode == 2 and not out.exists(), proc.stderr
    assert re.search(expected, proc.stderr) and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
