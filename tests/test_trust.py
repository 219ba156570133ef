"""Thresholds you can trust: intervals that cover, certified rules that keep their promise, the spread of a
validation-chosen rule, per-exit calibration and temperatures. On the shipped 10,000-image CIFAR-10 trace,
used here only as an exchangeable pool to test the methods."""

from __future__ import annotations

import json

import numpy as np
import pytest

from met_core.analysis.calibration import calibrate_budget
from met_core.analysis.certify import certify_max_loss, harm_p_value, images_needed, selection_spread
from met_core.analysis.intervals import clopper_pearson
from met_core.analysis.reliability import fit_temperatures, read_temperatures, reliability
from met_core.analysis.whatif import TraceArrays, exit_differences, whatif
from met_core.errors import METError
from met_core.io.traces import Trace, load_trace, save_trace

from .conftest import ROOT, run_cli

CK = ROOT / "checkpoints" / "cifar10-met"
pytestmark = pytest.mark.skipif(not (CK / "test_trace.npz").is_file(), reason="shipped checkpoints missing")


@pytest.fixture(scope="module")
def pool() -> TraceArrays:
    return TraceArrays.from_trace(load_trace(CK / "test_trace.npz"))


def test_clopper_pearson_matches_known_values():
    lo, hi = clopper_pearson(np.array([0, 5, 10]), np.array([10, 10, 10]))
    np.testing.assert_allclose(lo, [0, 0.187086, 0.691503], atol=1e-5)
    np.testing.assert_allclose(hi, [0.308497, 0.812914, 1.0], atol=1e-5)


def test_95_percent_intervals_of_1000_image_samples_cover_the_full_trace_value(pool):
    """Samples drawn with replacement, so the full trace is the population and its value the truth."""
    full = whatif(pool, 0.8)
    rng = np.random.default_rng(0)
    draws, cover_acc, cover_gm, cover_share = 1000, 0, 0, 0
    for i in range(draws):
        r = whatif(pool.take(rng.integers(0, len(pool.labels), 1000)), 0.8, intervals=True, seed=i)
        cover_acc += r.intervals.accuracy.lo <= full.accuracy <= r.intervals.accuracy.hi
        cover_gm += r.intervals.gmacs.lo <= full.gmacs <= r.intervals.gmacs.hi
        cover_share += r.intervals.exit_fractions[0].lo <= full.exit_fractions[0] <= r.intervals.exit_fractions[0].hi
    for name, c in (("accuracy", cover_acc), ("mean GMACs", cover_gm), ("exit-1 share", cover_share)):
        assert 0.93 <= c / draws <= 0.97, (name, c / draws)


def test_certified_rules_lose_more_than_d_in_at_most_delta_of_500_splits(pool):
    rng = np.random.default_rng(1)
    n, d, delta, splits = len(pool.labels), 0.01, 0.1, 500
    exceeded = certified = 0
    for _ in range(splits):
        perm = rng.permutation(n)
        c = certify_max_loss(pool.take(perm[:2000]), d, delta)
        if c.thresholds is None:
            continue
        certified += 1
        r = whatif(pool.take(perm[2000:]), c.thresholds)
        exceeded += r.last_exit_accuracy - r.accuracy > d
    assert certified >= splits // 2  # the guarantee is not bought by never exiting early
    assert exceeded / splits <= delta + 3 * np.sqrt(delta * (1 - delta) / splits)


def test_certification_says_when_it_cannot_and_how_many_images_it_would_need(pool):
    c = certify_max_loss(pool.take(np.arange(200)), 0.005, 0.1)
    assert c.thresholds is None and c.gmacs == pool.gmacs[-1] and "no early exit can be certified" in c.message
    assert images_needed(0.0, 0.005, 0.1) == int(np.ceil(np.log(0.1) / np.log(1 - 0.005)))  # (1 - D)^n <= delta
    assert images_needed(0.006, 0.005, 0.1) is None
    assert harm_p_value(0, 460, 0.005) <= 0.1 < harm_p_value(0, 459, 0.005)


def test_selection_spread_is_wide_on_200_images_and_narrow_on_thousands(pool):
    def choose(a: TraceArrays):
        return calibrate_budget(a, 0.6)

    small = selection_spread(pool.take(np.arange(200)), pool, choose, reps=40)
    big = selection_spread(pool.take(np.arange(5000)), pool, choose, reps=40)
    width = [s.accuracy[2] - s.accuracy[0] for s in (small, big)]
    assert width[0] > 2 * width[1] and small.validation_images == 200 and small.reps == 40


def test_temperatures_fitted_on_one_trace_lower_the_ece_on_another_and_keep_every_prediction(tmp_path):
    val, test = load_trace(CK / "val_trace.npz"), load_trace(CK / "test_trace.npz")
    temps = fit_temperatures(val.logits.astype(np.float32), val.labels)
    assert all(0.05 < t < 20 for t in temps)
    before = [reliability(p, test.labels).ece for p in test.probs().transpose(1, 0, 2)]
    after = [reliability(p, test.labels).ece for p in test.probs(temps).transpose(1, 0, 2)]
    assert all(a < b for a, b in zip(after, before)), (before, after)
    assert (test.probs(temps).argmax(-1) == test.probs().argmax(-1)).all()
    out = tmp_path / "temperatures.json"
    run_cli(
        "reliability", "--trace", str(CK / "test_trace.npz"), "--fit-on", str(CK / "val_trace.npz"), "--out", str(out)
    )
    t = read_temperatures(out, 4, test.meta["checkpoint_sha256"])
    np.testing.assert_allclose(t.temperatures, temps, rtol=1e-6)
    r = json.loads(
        run_cli(
            "whatif", "--trace", str(CK / "test_trace.npz"), "--temperatures", str(out), "--intervals", "--json"
        ).stdout
    )
    assert r["accuracy"] == whatif(TraceArrays.from_trace(test, temps), 0.8).accuracy
    assert r["intervals"]["accuracy"][0] < r["accuracy"] < r["intervals"]["accuracy"][1]


def test_cli_certified_calibration_and_spread():
    out = json.loads(
        run_cli(
            "calibrate", "--trace", str(CK / "test_trace.npz"), "--max-loss", "0.01", "--delta", "0.1", "--json"
        ).stdout
    )
    c = out["certified"]
    assert c["thresholds"] is not None and c["calibration_images"] == 10_000 and c["p_value"] <= 0.1
    sp = json.loads(
        run_cli(
            "calibrate",
            "--trace",
            str(CK / "val_trace.npz"),
            "--apply",
            str(CK / "test_trace.npz"),
            "--budget",
            "0.6",
            "--spread",
            "30",
            "--json",
        ).stdout
    )["selection_spread"]
    assert sp["accuracy"][0] <= sp["accuracy"][1] <= sp["accuracy"][2] and sp["validation_images"] == 200


def test_holdout_trace_draws_only_images_the_checkpoint_never_saw(tiny_checkpoint, tmp_path):
    out = tmp_path / "cal.npz"
    run_cli(
        "trace",
        "--checkpoint",
        str(tiny_checkpoint),
        "--split",
        "holdout",
        "--holdout",
        "60",
        "--features",
        "0",
        "--out",
        str(out),
        "--quiet",
        "--workers",
        "0",
    )
    t = load_trace(out)
    data = json.loads((tiny_checkpoint / "config.json").read_text())["data"]
    assert len(t.ids) == 60 and not set(t.ids) & set(data["train_ids"] + data["val_ids"])
    assert t.meta["split"] == "holdout"


@pytest.mark.parametrize(
    "args",
    [
        ("calibrate", "--trace", "cifar10-met/val_trace.npz", "--apply", "cifar10-full-met/test_trace.npz"),
        ("reliability", "--trace", "cifar10-met/test_trace.npz", "--fit-on", "cifar10-full-met/cal_trace.npz"),
    ],
)
def test_thresholds_or_temperatures_from_another_model_s_trace_are_one_sentence(args):
    """Choosing on one model's trace and applying to another's would report numbers of neither model."""
    cmd, *rest = args
    paths = [str(ROOT / "checkpoints" / a) if a.endswith(".npz") else a for a in rest]
    proc = run_cli(cmd, *paths, *(["--budget", "0.6"] if cmd == "calibrate" else []), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"{paths[3]} was made by another model than {paths[1]}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("cmd", ["calibrate", "reliability"])
def test_two_traces_without_hashes_of_other_exit_counts_are_one_sentence(cmd, tmp_path):
    """Traces made by hand record no checkpoint hash; their exits still tell two models apart (this pair used to
    give "only the last exit's threshold may be null")."""
    real = load_trace(ROOT / "checkpoints" / "cifar10-met" / "val_trace.npz")
    paths = []
    for k in (4, 3):
        t = Trace(
            real.logits[:, :k],
            real.labels,
            real.ids,
            real.gmacs[:k],
            real.class_names,
            np.zeros(0, np.int64),
            np.zeros((k, 0, 0), np.float16),
            {"exits": real.meta["exits"][:k]},
        )
        paths.append(str(tmp_path / f"hand_{k}.npz"))
        save_trace(paths[-1], t)
    flag = "--apply" if cmd == "calibrate" else "--fit-on"
    proc = run_cli(
        cmd, "--trace", paths[0], flag, paths[1], *(["--budget", "0.6"] if cmd == "calibrate" else []), check=False
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"{paths[1]} (3 exits, 10 classes) and {paths[0]} (4 exits, 10 classes) differ" in proc.stderr, proc.stderr


def test_the_paired_comparison_of_two_models_is_mcnemar_s_exact_test():
    """The full-data models with and without graph regularization on the same 10,000 test images: the p-value is
    scipy's exact binomial test on the discordant images, the interval holds the difference and shrinks to it."""
    from scipy.stats import binomtest

    from met_core.analysis.intervals import paired_difference

    full = ROOT / "checkpoints" / "cifar10-full-met"
    twin = ROOT / "checkpoints" / "cifar10-full-met-nogr"
    if not (twin / "test_trace.npz").is_file():
        pytest.skip("the full-data twin is not shipped")
    a, b = load_trace(full / "test_trace.npz"), load_trace(twin / "test_trace.npz")
    assert (a.ids == b.ids).all()
    for k in range(a.num_exits):
        ca, cb = a.logits[:, k].argmax(-1) == a.labels, b.logits[:, k].argmax(-1) == b.labels
        r = paired_difference(ca, cb)
        assert r.difference == pytest.approx(ca.mean() - cb.mean()) and r.lo <= r.difference <= r.hi
        assert r.p_value == pytest.approx(binomtest(r.a_only, r.a_only + r.b_only, 0.5).pvalue, rel=1e-9)
        swapped = paired_difference(cb, ca)
        assert swapped.difference == -r.difference and swapped.p_value == pytest.approx(r.p_value)
        assert (swapped.lo, swapped.hi) == pytest.approx((-r.hi, -r.lo))
    same = paired_difference(ca, ca)
    assert (same.difference, same.lo, same.hi, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    # every exit at once, from the what-if arrays: the same comparison
    arrays = [TraceArrays.from_trace(t) for t in (a, b)]
    assert exit_differences(*arrays) == [
        paired_difference(arrays[0].correct[:, k], arrays[1].correct[:, k]) for k in range(a.num_exits)
    ]
    assert exit_differences(*arrays)[-1] == r  # the logits' classes are the arrays' classes
    with pytest.raises(METError, match="same images"):
        exit_differences(arrays[0], arrays[1].take(np.arange(100)))
