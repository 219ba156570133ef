"""The GPU suite (bench/gpu_suite.py) runs end to end in its CPU smoke mode, so it never rots between GPU windows."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from met_core.config import METConfig
from met_core.engine.inference import early_exit, measure_speedup
from met_core.nn.model import METModel

from .conftest import CIFAR_TEST, ROOT, tiny_vit

SUITE = ROOT / "bench" / "gpu_suite.py"


@pytest.mark.skipif(not CIFAR_TEST.is_dir(), reason="needs the CIFAR-10 test images (../shared/datasets)")
def test_smoke_run_measures_every_section_and_writes_markdown_and_json(tmp_path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, str(SUITE), "--smoke", "--out", str(tmp_path), "--images", str(tmp_path / "none")],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 150  # CPU seconds, not wall
    rep = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert rep["smoke"] and rep["skipped"] == []
    assert [p["precision"] for p in rep["peaks"]] == ["fp32", "bf16"]
    assert {(r["setting"], r["precision"]) for r in rep["train"]} == {
        (s, p) for s in ("shipped recipe", "paper (VTAB-1k)") for p in ("fp32", "bf16")
    }
    assert all(r["gflop_per_step"] > 0 and r["mfu"] > 0 for r in rep["train"])
    assert [r["precision"] for r in rep["trace"]] == ["fp32", "bf16"]
    assert all(r["images_per_s"] > 0 for r in rep["trace"])
    rows = rep["early_exit"]
    assert {(r["precision"], r["batch"]) for r in rows} == {(p, b) for p in ("fp32", "bf16") for b in (1, 4)}
    assert all(r["exits"] == "replayed" and r["measured_speedup"] > 0 for r in rows)
    assert sum(rep["exit_pattern"]["fractions"]) == pytest.approx(1)
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "smoke run on CPU" in md and "replayed" in md and "MFU" in md


def test_pack_copies_a_few_hundred_real_test_images_under_5_mb(tmp_path):
    if not CIFAR_TEST.is_dir():
        pytest.skip("needs the CIFAR-10 test images (../shared/datasets)")
    out = tmp_path / "pack"
    subprocess.run(
        [sys.executable, str(SUITE), "--pack", "--images", str(out), "--pack-from", str(CIFAR_TEST)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) == 520 and len({f.parent.name for f in files}) == 10
    assert sum(f.stat().st_size for f in files) < 5e6


def test_a_replayed_exit_pattern_sends_each_image_to_its_exit_whatever_its_score():
    torch.manual_seed(0)
    model = METModel(tiny_vit(depth=4), METConfig(img_size=32, exits=[1, 2, 3, 4], num_classes=3)).eval()
    x = torch.randn(10, 3, 32, 32)
    replay = np.array([0, 3, 1, 2, 0, 0, 3, 2, 1, 1])
    for threshold in (0.0, 2.0):  # every image would leave at exit 1 / none before the last
        res = early_exit(model, x, threshold, batch_size=4, replay=replay)
        assert (res.exits == replay).all()
        assert np.isnan(res.probs[replay == 0, 1]).all() and not np.isnan(res.probs[replay == 3, 3]).any()
    r = measure_speedup(model, x, 0.0, batch_size=4, repeats=1, replay=replay)
    assert r.exit_fractions == (np.bincount(replay, minlength=4) / 10).tolist()
