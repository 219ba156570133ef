import json
import shutil

import numpy as np
import pytest
import torch

from met_core.errors import METError
from met_core.io.checkpoint import checkpoint_hash
from met_core.io.traces import load_trace, save_trace
from met_core.nn.checkpoint import load_checkpoint


def test_checkpoint_round_trip(tiny_checkpoint):
    model, cfg = load_checkpoint(tiny_checkpoint)
    assert cfg["model"]["class_names"][0] == "airplane" and model.cfg.img_size == 56
    assert len(cfg["data"]["train_ids"]) == 20 and len(cfg["data"]["val_ids"]) == 20
    assert cfg["data"]["train_ids"][0].endswith(".jpg") and "/" in cfg["data"]["train_ids"][0]
    assert set(cfg["versions"]) >= {"torch", "timm", "met_core"}
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert len(metrics["val_accuracy"]) == 4 and metrics["train_time_s"] > 0
    assert len(checkpoint_hash(tiny_checkpoint)) == 64


@pytest.mark.parametrize(
    "damage,match",
    [
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
            "corrupted or truncated",
        ),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "config.json").write_text(json.dumps({"format": "met-checkpoint/1"})), "no 'model' section"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
    ],
)
def test_damaged_checkpoints_are_refused(tiny_checkpoint, tmp_path, damage, match):
    d = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, d)
    damage(d)
    with pytest.raises(METError, match=match):
        load_checkpoint(d)


def test_checkpoint_for_another_class_count_or_backbone(tiny_checkpoint, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["num_classes"], cfg["model"]["class_names"] = 2, ["a", "b"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(METError, match="does not match its config.json"):
        load_checkpoint(d)
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    cfg["model"]["weights_sha256"] = "0" * 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(METError, match="other backbone weights"):
        load_checkpoint(d)


def test_pickle_files_are_never_loaded(tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"x": 1}, bad)
    with pytest.raises(METError, match="never unpickles"):
        load_checkpoint(bad)


def test_trace_round_trip_and_refusals(tiny_checkpoint, tmp_path):
    from met_core.data.datasets import dataset_for_checkpoint, make_transform
    from met_core.engine.tracing import run_trace

    model, cfg = load_checkpoint(tiny_checkpoint)
    ds = dataset_for_checkpoint(cfg, None, "val", download=False)
    ds.transform = make_transform(56, model.cfg.mean, model.cfg.std)
    trace = run_trace(model, ds, [1.0, 2.0, 3.0, 4.0], {"split": "val"}, batch_size=8, features=5, progress=False)
    path = tmp_path / "t.npz"
    save_trace(path, trace)
    back = load_trace(path)
    assert back.logits.shape == (20, 4, 10) and back.features.shape == (4, 5, 384)
    assert list(back.ids) == cfg["data"]["val_ids"]
    # stored logits equal a fresh forward pass (float16 precision)
    x = torch.stack([ds[i][0] for i in range(3)])
    with torch.no_grad():
        fresh = model(x).transpose(0, 1).numpy()
    np.testing.assert_allclose(back.logits[:3].astype(np.float32), fresh, atol=2e-2, rtol=1e-2)

    bad = load_trace(path)
    bad.logits = bad.logits.copy()
    bad.logits[0, 0, 0] = np.nan
    save_trace(tmp_path / "nan.npz", bad)
    with pytest.raises(METError, match="NaN or inf"):
        load_trace(tmp_path / "nan.npz")
    short = load_trace(path)
    short.labels = short.labels[:5]
    save_trace(tmp_path / "short.npz", short)
    with pytest.raises(METError, match="mismatched lengths"):
        load_trace(tmp_path / "short.npz")
    np.savez(tmp_path / "pickled.npz", logits=np.array([object()], dtype=object))
    with pytest.raises(METError):
        load_trace(tmp_path / "pickled.npz")
