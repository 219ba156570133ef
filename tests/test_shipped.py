"""The shipped checkpoints keep the contract of issue 4: complete folders, matching traces, no images, < 40 MB."""

from __future__ import annotations

import json

import pytest

from met_core.io.traces import load_trace
from met_core.nn.checkpoint import inspect_checkpoint

from .conftest import ROOT

CKPT = ROOT / "checkpoints"
FOLDERS = sorted(p.parent.relative_to(CKPT).as_posix() for p in CKPT.glob("**/config.json"))
pytestmark = pytest.mark.skipif(not FOLDERS, reason="no shipped checkpoints: run bench/rebuild_checkpoints.py")


def test_checkpoints_stay_small_and_hold_no_images():
    files = [p for p in CKPT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 40_000_000
    assert not [p for p in files if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}]


@pytest.mark.parametrize("name", FOLDERS)
def test_every_shipped_folder_is_complete_and_its_traces_match_it(name):
    d = CKPT / name
    cfg = inspect_checkpoint(d)
    model = cfg["model"]
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["trainable_parameters"] > 0 and metrics["train_time_s"] > 0
    for split in ("val", "test"):
        t = load_trace(d / f"{split}_trace.npz")
        assert t.logits.shape[1:] == (len(model["exits"]), model["num_classes"])
        assert list(t.class_names) == model["class_names"]
    if name in ("cifar10-met", "cifar10-met-nogr", "hymenoptera-met"):  # the app's UMAP views read these
        assert t.features.shape[1] > 0


def test_a_shipped_calibration_trace_holds_only_images_its_model_never_saw():
    d = CKPT / "cifar10-met"
    if not (d / "cal_trace.npz").is_file():
        pytest.skip("no calibration trace shipped")
    t = load_trace(d / "cal_trace.npz")
    data = json.loads((d / "config.json").read_text())["data"]
    assert len(t.ids) >= 5000 and t.meta["split"] == "holdout"
    assert not set(t.ids) & set(data["train_ids"] + data["val_ids"])
