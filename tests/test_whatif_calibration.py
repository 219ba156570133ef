"""What-if and calibration: exact checks on a real trace, hypothesis properties on real and generated traces."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from met_core.analysis.calibration import (
    agreement_oracle,
    apply,
    calibrate_accuracy_loss,
    calibrate_budget,
    sweep,
    threshold_grid,
    thresholds_for_shares,
)
from met_core.analysis.policies import POLICIES
from met_core.analysis.whatif import TraceArrays, outcomes, rule_figures, whatif
from met_core.errors import METError
from met_core.io.traces import Trace, load_trace

from .conftest import CIFAR_TEST, ROOT, run_cli


@pytest.fixture(scope="module")
def real_trace(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "test.npz"
    run_cli(
        "trace",
        "--checkpoint",
        str(tiny_checkpoint),
        "--dataset",
        str(CIFAR_TEST),
        "--out",
        str(path),
        "--limit",
        "300",
        "--features",
        "50",
        "--quiet",
    )
    return path


def synthetic(seed: int, n: int = 200, k: int = 4, c: int = 5) -> TraceArrays:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k, c)) * np.linspace(0.5, 3, k)[None, :, None]
    t = Trace(
        logits.astype(np.float16),
        rng.integers(0, c, n),
        np.array([str(i) for i in range(n)]),
        np.cumsum(rng.uniform(0.1, 1, k)),
        [str(i) for i in range(c)],
        np.zeros(0, int),
        np.zeros((k, 0, 8)),
    )
    return TraceArrays.from_trace(t.validate())


def test_whatif_by_hand(real_trace):
    t = load_trace(real_trace)
    a = TraceArrays.from_trace(t)
    r = whatif(a, 0.2, detail=True)
    p = t.probs()
    conf = p.max(-1)
    ex = np.where((conf[:, :3] >= 0.2).any(1), (conf[:, :3] >= 0.2).argmax(1), 3)
    pred = p[np.arange(len(ex)), ex].argmax(-1)
    assert r.accuracy == pytest.approx((pred == t.labels).mean())
    assert r.gmacs == pytest.approx(t.gmacs[ex].mean())
    assert r.speedup == pytest.approx(t.gmacs[-1] / t.gmacs[ex].mean())
    assert r.exit_fractions == pytest.approx(np.bincount(ex, minlength=4) / len(ex))
    assert np.asarray(r.confusion).sum() == len(ex) and len(r.per_class_accuracy) == 10
    assert r.note == "simulated from cached exit outputs"


def test_whatif_cli_contract(real_trace):
    r = json.loads(run_cli("whatif", "--trace", str(real_trace), "--threshold", "0.5", "--json").stdout)
    assert {"accuracy", "gmacs", "speedup", "exit_fractions", "exit_accuracy", "thresholds"} <= set(r)
    r2 = json.loads(
        run_cli("calibrate", "--trace", str(real_trace), "--apply", str(real_trace), "--budget", "0.5", "--json").stdout
    )
    assert {"accuracy", "gmacs", "speedup", "exit_fractions", "exit_accuracy", "thresholds"} <= set(r2)
    assert r2["gmacs"] <= 0.5 * r2["last_exit_gmacs"] + 1e-9  # same trace: the budget holds exactly


def test_edge_cases(real_trace, tmp_path):
    a = TraceArrays.from_trace(load_trace(real_trace))
    assert whatif(a, 1.5).exit_fractions == [0, 0, 0, 1]
    assert whatif(a, 0.0).exit_fractions == [1, 0, 0, 0]
    with pytest.raises(METError, match="3 thresholds? given|thresholds given"):
        whatif(a, [0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(METError, match="NaN"):
        whatif(a, float("nan"))
    with pytest.raises(METError, match="below the first exit"):
        calibrate_budget(a, 0.05)
    empty = load_trace(real_trace)
    empty.logits, empty.labels, empty.ids = empty.logits[:0], empty.labels[:0], empty.ids[:0]
    empty.feature_index, empty.features = empty.feature_index[:0], empty.features[:, :0]
    with pytest.raises(METError, match="empty"):
        empty.validate()
    proc = run_cli("whatif", "--trace", str(tmp_path / "none.npz"), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_sweep_marks_a_monotone_pareto_front(real_trace):
    pts = sweep(TraceArrays.from_trace(load_trace(real_trace)))
    front = [p for p in pts if p.pareto]
    assert len(front) >= 2
    assert all(a.gmacs <= b.gmacs and a.accuracy < b.accuracy for a, b in zip(front, front[1:]))
    for p in pts:  # nothing off the front beats a front point at no more cost
        assert not any(q.gmacs <= p.gmacs and q.accuracy > p.accuracy for q in pts) or not p.pareto


@pytest.mark.parametrize("policy", ["max-softmax", "entropy", "patience"])
def test_rule_figures_are_whatif_for_many_rules_at_once(policy, monkeypatch):
    a = TraceArrays.from_trace(load_trace(ROOT / "checkpoints" / "cifar10-met" / "test_trace.npz"))
    pol = POLICIES[policy]
    rng = np.random.default_rng(0)
    lo, hi = pol.ui_range(a.num_exits)
    draw = (
        (lambda m: np.round(rng.uniform(lo, hi, m)).tolist())
        if pol.counts_exits
        else (lambda m: rng.uniform(lo, hi, m).tolist())
    )
    rules = draw(5) + [draw(3) + [None] for _ in range(5)]
    monkeypatch.setattr("met_core.analysis.whatif._RULE_CHUNK", 3 * 10_000)  # three rules per chunk: chunks are joined
    fig = rule_figures(a, rules, policy)
    for i, t in enumerate(rules):
        r = whatif(a, t, policy)
        assert (fig.accuracy[i], fig.exit_fractions[i].tolist()) == (r.accuracy, r.exit_fractions)
        assert fig.gmacs[i] == pytest.approx(r.gmacs, rel=1e-12)


def test_geometric_shares_are_met():
    a = synthetic(0, n=1000)
    th = thresholds_for_shares(a, np.array([0.4, 0.3, 0.2, 0.1]))
    got = whatif(a, th).exit_fractions
    assert got == pytest.approx([0.4, 0.3, 0.2, 0.1], abs=0.01)


TRACES = st.integers(0, 10_000).map(synthetic)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(a=TRACES, t1=st.floats(0, 1.2), t2=st.floats(0, 1.2))
def test_raising_the_threshold_never_lowers_mean_gmacs(a, t1, t2):
    lo, hi = sorted([t1, t2])
    assert whatif(a, hi).gmacs >= whatif(a, lo).gmacs - 1e-12


@FAST
@given(a=TRACES, t=st.floats(1.0 + 1e-6, 100))
def test_above_one_everything_takes_the_last_exit(a, t):
    r = whatif(a, t)
    assert r.accuracy == r.last_exit_accuracy and r.exit_fractions[-1] == 1.0


@FAST
@given(
    a=TRACES, t=st.lists(st.floats(0, 1), min_size=3, max_size=3), policy=st.sampled_from(["max-softmax", "entropy"])
)
def test_exit_shares_sum_to_one(a, t, policy):
    assert sum(whatif(a, t, policy).exit_fractions) == pytest.approx(1.0)


@FAST
@given(a=TRACES, budget=st.floats(0.0, 1.0))
def test_calibrated_cost_never_exceeds_the_budget_on_validation(a, budget):
    floor = a.gmacs[0] / a.gmacs[-1]
    if budget < floor:
        with pytest.raises(METError):
            calibrate_budget(a, budget)
        return
    p = calibrate_budget(a, budget)
    assert p.gmacs <= budget * a.gmacs[-1] + 1e-9
    assert apply(a, p).measured.gmacs == pytest.approx(p.gmacs)


@FAST
@given(a=TRACES, loss=st.floats(0, 0.2))
def test_accuracy_loss_target_holds_on_validation(a, loss):
    p = calibrate_accuracy_loss(a, loss)
    assert p.accuracy >= a.correct[:, -1].mean() - loss - 1e-12


def test_properties_on_the_real_trace(real_trace):
    a = TraceArrays.from_trace(load_trace(real_trace))
    g = [whatif(a, t).gmacs for t in np.linspace(0, 1.01, 50)]
    assert all(x <= y + 1e-12 for x, y in zip(g, g[1:]))
    for b in (0.3, 0.5, 0.75, 1.0):
        assert calibrate_budget(a, b).gmacs <= b * a.gmacs[-1] + 1e-9


def test_sweep_applied_measures_validation_thresholds_on_test(real_trace):
    from met_core.analysis.calibration import sweep_applied

    a = TraceArrays.from_trace(load_trace(real_trace))
    rows = sweep_applied(a, a)  # the same trace on both sides: test figures must equal validation figures
    assert rows and all(r.test_gmacs == pytest.approx(r.cal_gmacs) for r in rows)
    assert all(r.test_accuracy == pytest.approx(r.cal_accuracy) for r in rows)
    csv = run_cli("calibrate", "--trace", str(real_trace), "--sweep").stdout.splitlines()
    assert csv[0] == "cal_gmacs,cal_accuracy,test_gmacs,test_accuracy,pareto,source,thresholds"
    assert len(csv) == len(rows) + 1
    # the thresholds column, given back to whatif, reproduces the row (the CSV had no thresholds)
    last = csv[-1].split(",")
    given = [t for t in last[-1].split(";") if t != "last"]
    again = json.loads(run_cli("whatif", "--trace", str(real_trace), "--thresholds", ",".join(given), "--json").stdout)
    assert f"{again['accuracy']:.4f}" == last[3] and f"{again['gmacs']:.4f}" == last[2]


@pytest.mark.parametrize("policy", ["max-softmax", "entropy"])
def test_an_exhaustive_threshold_grid_bounds_every_calibration(policy):
    """With a threshold between every pair of scores the grid holds every per-exit rule, so no sweep point beats it."""
    a = synthetic(3, n=40, k=3)
    grid = threshold_grid(a, policy, levels=401)
    for p in sweep(a, policy):
        assert grid[grid[:, 1] <= p.gmacs + 1e-12, 0].max() >= p.accuracy - 1e-12
    corners = {(round(acc, 9), round(g, 9)) for acc, g in grid}
    assert (round(a.correct[:, -1].mean(), 9), round(a.gmacs[-1], 9)) in corners  # nobody leaves early
    assert (round(a.correct[:, 0].mean(), 9), round(a.gmacs[0], 9)) in corners  # everybody leaves at exit 1
    with pytest.raises(METError, match="continuous score"):
        threshold_grid(a, "patience")


def test_the_agreement_oracle_by_hand():
    """Each image leaves at the first exit that already gives the last exit's answer."""
    pred = np.array([[5, 5, 5], [1, 2, 2], [0, 1, 2]])  # leaves at exit 1, 2 and 3
    labels = np.array([5, 2, 0])
    a = TraceArrays(pred, pred == labels[:, None], labels, np.array([1.0, 2.0, 3.0]), 6, np.full((3, 3, 6), 1 / 6))
    assert agreement_oracle(a) == (pytest.approx(2 / 3), pytest.approx(2.0))


def test_outcomes_confidence_is_the_top_probability_where_each_image_leaves():
    a = TraceArrays.from_trace(load_trace(ROOT / "checkpoints" / "cifar10-met" / "test_trace.npz"))
    o = outcomes(a, [0.6, 0.7, 0.9, None])
    for i in range(0, 10_000, 97):
        assert o.confidence[i] == a.probs[i, o.exits[i]].max() and o.pred[i] == a.probs[i, o.exits[i]].argmax()
