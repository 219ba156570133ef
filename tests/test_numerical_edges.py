"""Numerical edges (issue 22, item 8): exit scores that do not saturate at a threshold of 1.0, identically in
the what-if, the PyTorch early exit and the ONNX runner; the fewest calibration images that certify; patience
thresholds that are whole counts 1..K.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from met_core.analysis.certify import images_needed
from met_core.analysis.journey import journey
from met_core.analysis.policies import POLICIES, exit_probs
from met_core.analysis.whatif import TraceArrays, outcomes, whatif
from met_core.config import METConfig
from met_core.engine.inference import early_exit
from met_core.errors import METError
from met_core.io.traces import load_trace
from met_core.nn.model import METModel

from .conftest import ROOT, run_cli, tiny_vit

TRACE = ROOT / "checkpoints" / "cifar10-met" / "test_trace.npz"
needs_shipped = pytest.mark.skipif(not TRACE.is_file(), reason="shipped checkpoints missing")


@pytest.fixture(scope="module")
def shipped() -> tuple:
    t = load_trace(TRACE)
    return t, TraceArrays.from_trace(t)


# --- (a) threshold 1.0 ----------------------------------------------------------------------------------


@needs_shipped
def test_threshold_one_sends_out_early_only_the_images_whose_float64_probability_is_one(shipped):
    t, arrays = shipped
    early = t.probs()[:, :-1].max(-1)  # the old float32 softmax of the float16 logits
    assert int((early == 1.0).sum()) == 1463  # the issue's example: all of these left early at 1.0
    z = t.logits.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    certain = ((e / e.sum(-1, keepdims=True))[:, :-1].max(-1) >= 1.0).any(1)  # float64, computed independently
    r = whatif(arrays, 1.0)
    assert r.early_share == pytest.approx(certain.mean()) and certain.sum() == 7  # 0.07 %, not 14.2 %
    out = json.loads(run_cli("whatif", "--trace", str(TRACE), "--threshold", "1.0", "--json").stdout)
    assert 1 - out["exit_fractions"][-1] == pytest.approx(0.0007)
    assert whatif(arrays, 1.0 + 1e-6).early_share == 0.0  # above 1: nobody leaves early


@needs_shipped
def test_ordinary_thresholds_give_the_float32_numbers_unchanged(shipped):
    """At the app's slider positions nothing moves: the old float32 scores give the same exits."""
    t, arrays = shipped
    old = t.probs()[:, :-1].max(-1)
    for th in (0.3, 0.5, 0.8, 0.9, 0.95, 0.99):
        ex = np.where((old >= th).any(1), (old >= th).argmax(1), 3)
        assert (outcomes(arrays, th).exits == ex).all(), th


@needs_shipped
def test_the_journey_decides_as_the_whatif_at_the_saturated_edge(shipped):
    t, arrays = shipped
    o = outcomes(arrays, 1.0)
    rows = np.flatnonzero(t.probs()[:, :-1].max(-1).max(-1) == 1.0)[:40]  # float32 said 1.0 for these
    for i in [*rows, *np.flatnonzero(o.exits < 3)]:
        j = journey(arrays.row_probs(int(i)), arrays.gmacs.tolist(), [3, 6, 9, 12], 1.0)
        assert j.exit == o.exits[i]


def _confident_model() -> tuple[METModel, torch.Tensor]:
    """A tiny ViT whose first exit answers class 0 with a logit margin of 30: float32 rounds that probability to
    exactly 1.0, float64 to 1 - 8e-13; the later exits are unsure."""
    torch.manual_seed(0)
    model = METModel(
        tiny_vit(depth=4),
        METConfig(img_size=32, exits=[1, 2, 3, 4], num_classes=10, class_names=[str(c) for c in range(10)]),
    ).eval()
    with torch.no_grad():
        for k, head in enumerate(model.heads):
            head.weight.zero_()
            head.bias.zero_()
            if k == 0:
                head.bias[0] = 30.0
    return model, torch.randn(6, 3, 32, 32)


def test_pytorch_early_exit_at_threshold_one_does_not_saturate():
    model, x = _confident_model()
    assert float(torch.softmax(torch.tensor([30.0] + [0.0] * 9), -1).max()) == 1.0  # float32 saturates
    assert exit_probs(np.array([30.0] + [0.0] * 9)).max() < 1.0
    assert (early_exit(model, x, 1.0).exits == 3).all()  # nobody leaves early at 1.0
    assert (early_exit(model, x, 0.999999).exits == 0).all()  # ... but just below it all do


def test_onnx_runner_at_threshold_one_does_not_saturate(tmp_path):
    pytest.importorskip("onnxruntime")
    from met_core.engine.export import OnnxEarlyExit, export_onnx

    model, x = _confident_model()
    export_onnx(model, tmp_path / "onnx", "max-softmax", 1.0, "", [0.1, 0.2, 0.3, 0.4])
    runner = OnnxEarlyExit(tmp_path / "onnx")
    assert (runner(x.numpy()).exits == 3).all()
    assert (runner(x.numpy(), 0.999999).exits == 0).all()


# --- (b) the fewest calibration images ------------------------------------------------------------------


def first_certifying(harm_rate: float, max_loss: float, delta: float, upto: int) -> int | None:
    n = np.arange(1, upto + 1)
    ok = np.flatnonzero(binom.cdf(np.floor(harm_rate * n), n, max_loss) <= delta)
    return int(n[ok[0]]) if ok.size else None


def test_images_needed_is_the_fewest_for_the_issue_example():
    # a 0.5 % harm rate (1 of 200 calibration images), a 1-point loss, delta 0.1: the bisection returned 667
    assert images_needed(0.005, 0.01, 0.1) == 388 == first_certifying(0.005, 0.01, 0.1, 1000)
    assert binom.cdf(1, 388, 0.01) <= 0.1 < binom.cdf(2, 400, 0.01)  # 388 certifies; 400 (harm 2) does not
    assert images_needed(0.0, 0.005, 0.1) == 460 and images_needed(0.006, 0.005, 0.1) is None


@settings(max_examples=40, deadline=None)
@given(
    harm=st.integers(0, 40),
    per=st.integers(50, 2000),
    loss=st.sampled_from([0.01, 0.02, 0.05, 0.1]),
    delta=st.sampled_from([0.05, 0.1, 0.2]),
)
def test_images_needed_is_the_first_n_that_certifies(harm, per, loss, delta):
    rate = harm / per
    if rate >= loss:
        assert images_needed(rate, loss, delta) is None
        return
    got = images_needed(rate, loss, delta)
    assert got is not None and got == first_certifying(rate, loss, delta, got)


# --- (c) patience counts ---------------------------------------------------------------------------------


@needs_shipped
@pytest.mark.parametrize("bad", [0.5, 0.0, -3.0, 2.5, 5.0])
def test_patience_thresholds_are_whole_counts_from_one_to_k(bad, shipped):
    _, arrays = shipped
    with pytest.raises(METError, match="whole numbers from 1 to 4"):
        whatif(arrays, bad, "patience")  # 0.5 sent every image to exit 1
    assert POLICIES["patience"].ui_range(4) == (1.0, 4.0)
    assert whatif(arrays, 1, "patience").exit_fractions[0] == 1.0  # one exit agreeing with itself: exit 1
    assert whatif(arrays, 4, "patience").exit_fractions[-1] == 1.0  # four agreeing exits: only the last


@needs_shipped
def test_patience_below_one_is_refused_by_the_cli_in_one_sentence():
    proc = run_cli("whatif", "--trace", str(TRACE), "--policy", "patience", "--threshold", "0.5", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: patience thresholds are counts of agreeing exits: whole numbers from 1 to 4 for this 4-exit model "
        "(4: never leave early), got 0.5."
    ]
