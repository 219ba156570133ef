"""The measured latency profile of the real early-exit path, and what it predicts."""

from __future__ import annotations

import json

import pytest

from met_core.analysis.latency import LatencyProfile, latency_pieces, predict_latency, read_profile
from met_core.errors import METError

from .conftest import CIFAR_TEST, run_cli


@pytest.fixture(scope="module")
def profile_file(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("lat") / "latency.json"
    run_cli(
        "profile",
        "--checkpoint",
        str(tiny_checkpoint),
        "--batch",
        "1,8,32",
        "--repeats",
        "3",
        "--out",
        str(out),
        "--quiet",
    )
    return out


def test_profile_times_every_piece_at_every_batch_size(profile_file):
    p = read_profile(profile_file, 4)
    assert p.batch_sizes == [1, 8, 32] and p.device == "cpu" and p.precision == "fp32"
    assert len(p.checkpoint_sha256) == 64
    assert all(t > 0 for t in p.stem_ms + p.compact_ms + sum(p.stage_ms, []) + sum(p.head_ms, []))
    assert all(row[-1] > row[0] for row in p.stage_ms)  # 32 images take longer than one
    # the pieces are scaled so that, run back to back, they take what one measured whole pass takes
    for j, full in enumerate(p.full_pass_ms):
        pieces = p.stem_ms[j] + sum(r[j] for r in p.stage_ms) + sum(r[j] for r in p.head_ms)
        assert pieces == pytest.approx(full) and 0.3 < p.piece_scale[j] < 3


def test_prediction_follows_the_exit_shares(profile_file):
    p = read_profile(profile_file, 4)
    full = predict_latency(p, [0, 0, 0, 1], 32)
    early = predict_latency(p, [0.7, 0.1, 0.1, 0.1], 32)
    assert full.speedup == pytest.approx(1.0) and early.speedup > 1.5
    assert early.ms_per_image < full.ms_per_image and early.images_per_s == pytest.approx(1000 / early.ms_per_image)
    assert p.piece(p.stem_ms, 20) == pytest.approx((p.stem_ms[1] + p.stem_ms[2]) / 2)  # linear between sizes


def test_pieces_put_each_stage_s_gmacs_beside_its_measured_time():
    """The shipped default model's profile and its trace's cumulative GMACs: each stage's own GMACs (they add up
    to the last exit's), and each piece's time as the profile interpolates it."""
    from met_core.io.traces import load_trace

    from .conftest import DEFAULT_MODEL, ROOT

    p = read_profile(ROOT / "checkpoints" / DEFAULT_MODEL / "latency.json", 4)
    gm = load_trace(ROOT / "checkpoints" / DEFAULT_MODEL / "test_trace.npz").gmacs
    rows = latency_pieces(p, gm, 100)
    assert [r.piece for r in rows][:3] == ["stem (patches and position)", "blocks to exit 1", "exit 1 head and test"]
    assert len(rows) == 2 * 4 + 2 and rows[-1].piece == "moving the continuing images on"
    stages = [r for r in rows if r.gmacs is not None]
    assert sum(r.gmacs for r in stages) == pytest.approx(gm[-1]) and stages[0].gmacs == pytest.approx(gm[0])
    assert stages[1].ms_per_batch == pytest.approx(p.piece(p.stage_ms[1], 100))
    assert p.stage_ms[1][2] < stages[1].ms_per_batch < p.stage_ms[1][3]  # between batch 64 and 256
    with pytest.raises(METError, match="profile has 4 exits and the model 3"):
        latency_pieces(p, gm[:3], 100)


def test_bench_exit_reports_each_batch_size_with_both_predictions(tiny_checkpoint, profile_file):
    rows = json.loads(
        run_cli(
            "bench-exit",
            "--checkpoint",
            str(tiny_checkpoint),
            "--dataset",
            str(CIFAR_TEST),
            "--limit",
            "32",
            "--batch",
            "1,8",
            "--repeats",
            "2",
            "--threshold",
            "0.2",
            "--profile",
            str(profile_file),
            "--json",
            "--quiet",
        ).stdout
    )
    assert [r["batch_size"] for r in rows] == [1, 8]
    for r in rows:
        assert r["measured_speedup"] > 0 and r["predicted_speedup"] >= 1 and r["profile"]["speedup"] >= 1
        assert r["profile"]["ms_per_image"] > 0 and r["measured_ms_per_image"] > 0


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(batch_sizes=[8, 1]),
        lambda d: d.update(stem_ms=[-1, 2, 3]),
        lambda d: d.pop("head_ms"),
        lambda d: d.update(stage_ms=[[1e400] * 3] * 4),
        lambda d: d.update(format="x"),
    ],
)
def test_a_damaged_profile_is_one_sentence(edit, profile_file, tmp_path):
    data = json.loads(profile_file.read_text())
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data).replace("Infinity", "1e400"))
    with pytest.raises(METError):
        read_profile(bad, 4)
    assert isinstance(read_profile(profile_file), LatencyProfile)


def test_a_profile_of_another_checkpoint_is_refused_and_a_batch_beyond_it_is_labelled(profile_file):
    """whatif predicted a model's time from another model's profile without a word, and extrapolated silently."""
    from .conftest import ROOT

    shipped = ROOT / "checkpoints" / "cifar10-met" / "test_trace.npz"  # another model than the profiled one
    proc = run_cli("whatif", "--trace", str(shipped), "--threshold", "0.8", "--profile", str(profile_file), check=False)
    assert proc.returncode == 2 and "is the latency profile of another checkpoint" in proc.stderr
    prof = read_profile(profile_file, 4)
    lp = predict_latency(prof, [0.25] * 4, 64)
    assert lp.note.endswith("batch 64 is beyond the largest profiled (32): extrapolated in proportion")
    assert predict_latency(prof, [0.25] * 4, 32).note == "predicted from a measured latency profile"
