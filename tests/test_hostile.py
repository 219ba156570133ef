"""Hostile inputs through met_core and the CLI: a room of phones' images, strangers' checkpoints and traces.

The app-level twins (uploads, added checkpoint folders) are in test_app.py; the README's hostile-input
table points at each test.
"""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from met_core.engine.inference import predict_files
from met_core.errors import METError
from met_core.io.images import load_image
from met_core.io.traces import load_trace, save_trace
from met_core.nn.checkpoint import load_checkpoint

from .conftest import HYMENOPTERA, ROOT, run_cli

HYM = ROOT / "checkpoints" / "hymenoptera-met"


def test_every_hostile_image_gets_its_own_answer(hostile_images, tiny_checkpoint):
    folder, expected = hostile_images
    model, _ = load_checkpoint(tiny_checkpoint)
    names = sorted(expected)
    res = predict_files(model, [str(folder / n) for n in names], 0.5)
    for name, r in zip(names, res):
        if expected[name]:
            assert r.error is None and r.class_name in model.cfg.class_names, (name, r)
        else:
            assert r.error.startswith(str(folder / name)) and "\n" not in r.error, (name, r)


def test_image_modes_orientation_and_first_frame(hostile_images):
    folder, _ = hostile_images
    photo = Image.open(next((HYMENOPTERA / "val" / "bees").glob("*.jpg"))).convert("RGB")
    assert load_image(folder / "exif-rotated.jpg").size == photo.size[::-1]  # orientation applied
    gif = np.asarray(load_image(folder / "animated.gif"), np.float32)
    assert np.abs(gif - gif[..., :1]).max() > 20  # the colour first frame, not the grey flipped second one
    for name in ("sixteen-bit.png", "cmyk.jpg", "palette-transparent.png", "one-pixel.png"):
        img = load_image(folder / name)
        assert img.mode == "RGB" and img.size[0] >= 1
    bw = np.asarray(load_image(folder / "sixteen-bit.png"), np.float32)
    assert bw.max() > 128  # 16-bit values scaled to 8 bits, not clipped to white or black


def test_decompression_bomb_is_refused_from_the_header(hostile_images):
    folder, _ = hostile_images
    tracemalloc.start()
    t0 = time.process_time()  # CPU time: the bound holds on a busy machine
    with pytest.raises(METError, match="decompression bomb|over the limit"):
        load_image(folder / "bomb-400-megapixels.png")
    seconds, peak = time.process_time() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000 and seconds < 1.0  # 400 MB of pixels were never decoded


def test_cli_predict_reports_each_bad_file_and_caps_the_count(hostile_images, tiny_checkpoint):
    folder, expected = hostile_images
    out = json.loads(
        run_cli(
            "predict",
            "--checkpoint",
            str(tiny_checkpoint),
            "--json",
            *[str(folder / n) for n in sorted(expected)],
            check=False,
        ).stdout
    )
    assert [("error" not in r) for r in out] == [expected[n] for n in sorted(expected)]
    many = run_cli(
        "predict",
        "--checkpoint",
        str(tiny_checkpoint),
        "--max-files",
        "3",
        *[str(folder / n) for n in sorted(expected)],
        check=False,
    )
    assert (
        many.returncode == 2 and many.stderr.strip() == "error: 10 files given; at most 3 at once (raise --max-files)."
    )


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.npz"))
    return dst


def _edit_config(d, drop=(), sections=None, **model):
    """Change `model` fields, drop some, or replace whole `sections` of a copied checkpoint's config.json."""
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"].update(model)
    for key in drop:
        del cfg["model"][key]
    cfg.update(sections or {})
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda d: _edit_config(d, exits=[4, 8, 12]), "does not match its config.json"),
        (lambda d: _edit_config(d, backbone="vit_base_patch16_224", weights="none"), "does not match its config.json"),
        (lambda d: _edit_config(d, weights="../../backbone.safetensors"), "outside the checkpoint folder"),
        (lambda d: _edit_config(d, exits="3,6,9,12"), "exits must be a list of integers"),
        (lambda d: _edit_config(d, adapter_dim=True), "adapter_dim must be an integer"),
        # fields missing: a default in their place built another model than the one trained (or a KeyError)
        (lambda d: _edit_config(d, drop=["adapter_dim"]), "'model' section lacks adapter_dim"),
        (lambda d: _edit_config(d, drop=["adapter_scale", "mean", "std"]), "lacks adapter_scale, mean, std"),
        (lambda d: _edit_config(d, sections={"model": {}}), "lacks adapter_dim, adapter_scale"),
        (lambda d: _edit_config(d, sections={"data": [1]}), "has a 'data' that is not a JSON object"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\0" * 64), "corrupted or truncated"),
        (lambda d: (d / "config.json").write_text("[1, 2"), "not valid JSON"),
    ],
)
def test_strangers_checkpoints_get_one_sentence_in_the_cli(tmp_path, damage, match):
    d = _copy(HYM, tmp_path / "ck")
    damage(d)
    with pytest.raises(METError, match=match):
        load_checkpoint(d)
    proc = run_cli("info", "--checkpoint", str(d), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_weights_outside_the_folder_load_only_when_the_user_names_them(tmp_path, tiny_checkpoint):
    from met_core.nn.backbones import imgfocus_weights

    d = _copy(tiny_checkpoint, tmp_path / "ck")
    _edit_config(d, weights=str(imgfocus_weights()))
    with pytest.raises(METError, match="outside the checkpoint folder"):
        load_checkpoint(d)
    model, _ = load_checkpoint(d, weights=str(imgfocus_weights()))  # the user's own choice
    assert model.cfg.img_size == 56
    assert run_cli("info", "--checkpoint", str(d), "--weights", str(imgfocus_weights())).returncode == 0


def test_traces_with_hostile_contents(tmp_path):
    t = load_trace(HYM / "test_trace.npz")
    cases = {
        "inf": ("logits", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.inf, a)),
        "escape": ("ids", lambda a: np.array(["../../../etc/passwd"] + list(a[1:]))),
        "absolute": ("ids", lambda a: np.array(["/etc/passwd"] + list(a[1:]))),
        "gmacs": ("gmacs", lambda a: a[::-1].copy()),
        "short": ("labels", lambda a: a[:-1]),
    }
    expect = {
        "inf": "NaN or inf",
        "escape": "leaves the dataset folder",
        "absolute": "leaves the dataset folder",
        "gmacs": "must be positive and increase",
        "short": "mismatched lengths",
    }
    for name, (field, change) in cases.items():
        bad = load_trace(HYM / "test_trace.npz")
        setattr(bad, field, change(getattr(bad, field)))
        save_trace(tmp_path / f"{name}.npz", bad)
        with pytest.raises(METError, match=expect[name]):
            load_trace(tmp_path / f"{name}.npz")
    assert len(t.ids) == 153  # the shipped trace itself is fine
    torch.save({"logits": 1}, tmp_path / "trace.npz")  # a pickle wearing the trace's name
    with pytest.raises(METError, match="not a (MET )?trace"):
        load_trace(tmp_path / "trace.npz")


@pytest.mark.parametrize(
    "flag,value,sentence",
    [
        ("--distill", "-1", "error: argument --distill: must be at least 0 and at most 10,000, got -1."),
        (
            "--distill-temperature",
            "0",
            "error: argument --distill-temperature: must be positive and at most 1,000, got 0.",
        ),
        ("--epochs", "0", "error: argument --epochs: must be at least 1 and at most 10,000, got 0."),
        ("--val-fraction", "1.5", "error: argument --val-fraction: must be at least 0 and below 1, got 1.5."),
        ("--img-size", "100000", "error: argument --img-size: must be at least 16 and at most 1,024, got 100000."),
    ],
)
def test_cli_train_refuses_a_bad_recipe_in_one_sentence(tmp_path, flag, value, sentence):
    proc = run_cli(
        "train",
        "--backbone",
        "vit_tiny_patch16_224",
        "--weights",
        "none",
        "--dataset",
        str(HYM.parent),
        "--out",
        str(tmp_path / "out"),
        flag,
        value,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == sentence, proc.stderr
    assert not (tmp_path / "out").exists()
