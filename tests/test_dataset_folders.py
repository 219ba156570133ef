"""Issue 22, item 5: dataset folders as people make them (met_core.data.datasets.skipped_name in image_folder).

The example: a Jupyter `.ipynb_checkpoints` sub-folder inside a class folder was traced as extra samples (the
same image counted twice). Hidden folders and files are skipped at every depth, the tool-made ones people zip
up with datasets are never classes or samples, and what was skipped is reported once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from met_core.data.datasets import image_folder, open_dataset
from met_core.io.images import IMAGE_EXTENSIONS

from .conftest import HYMENOPTERA, ROOT, run_cli


def _real(cls: str, n: int) -> list:
    return sorted((HYMENOPTERA / "train" / cls).glob("*.jpg"))[:n]


def _build(root):
    """Three real ants and three real bees, with what notebooks, Macs, Windows, NAS boxes and git leave there."""
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        for f in _real(cls, 3):
            shutil.copy(f, root / cls / f.name)
    bee = _real("bees", 1)[0]
    (root / "bees" / "more").mkdir()  # a real nested folder still counts
    shutil.copy(_real("bees", 4)[3], root / "bees" / "more" / "fourth.jpg")
    junk = {  # path -> a copy of a real image (or macOS resource-fork bytes)
        "bees/.ipynb_checkpoints/" + bee.stem + "-checkpoint.jpg": bee,  # the example
        ".ipynb_checkpoints/bees/" + bee.name: bee,
        "__MACOSX/bees/._" + bee.name: None,
        "ants/._" + _real("ants", 1)[0].name: None,
        "ants/@eaDir/" + _real("ants", 1)[0].name + "/SYNOFILE_THUMB_XL.jpg": _real("ants", 1)[0],
        "ants/__pycache__/cached.jpg": _real("ants", 1)[0],
        "bees/more/.hidden/deep/copy.jpg": bee,
        ".git/objects/blob.jpg": bee,
        "$RECYCLE.BIN/deleted.jpg": bee,
        "bees/Thumbs.db": None,
        "ants/.DS_Store": None,
        ".DS_Store": None,
    }
    for rel, src in junk.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if src is None:
            (root / rel).write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
        else:
            shutil.copy(src, root / rel)
    return 7  # real images


def _top_level_skips(root) -> int:
    n = 0
    for _, dirs, files in os.walk(root):
        hidden = [d for d in dirs if d.startswith(".") or d in ("__MACOSX", "__pycache__", "@eaDir", "$RECYCLE.BIN")]
        n += len(hidden) + sum(f.startswith(".") or f == "Thumbs.db" for f in files)
        dirs[:] = [d for d in dirs if d not in hidden]
    return n


def test_notebook_mac_windows_and_nas_leftovers_are_no_classes_or_samples_and_are_reported_once(tmp_path):
    root = tmp_path / "photos"
    real = _build(root)
    ds = image_folder(root)
    assert ds.class_names == ["ants", "bees"]
    assert len(ds.ids) == real
    assert sorted(ds.ids) == sorted(
        [f"ants/{f.name}" for f in _real("ants", 3)]
        + [f"bees/{f.name}" for f in _real("bees", 3)]
        + ["bees/more/fourth.jpg"]
    )
    digests = {hashlib.sha256((root / i).read_bytes()).hexdigest() for i in ds.ids}
    assert len(digests) == real  # no image counted twice
    assert list(ds.labels) == [0, 0, 0, 1, 1, 1, 1]
    notes = [n for n in ds.notes if "skipped" in n]
    skipped = _top_level_skips(root)
    assert len(notes) == 1 and notes[0].startswith(f"note: skipped {skipped} hidden or tool-made")
    assert "\n" not in notes[0] and skipped == 12

    # through the CLI: the note once, two classes, and every split image a real one
    out = tmp_path / "ckpt"
    proc = run_cli(
        "train",
        "--dataset",
        str(root),
        "--backbone",
        "vit_tiny_patch16_224",
        "--weights",
        "none",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--val-fraction",
        "0.3",
        "--exits",
        "6,12",
        "--out",
        str(out),
    )
    assert proc.stderr.count("note: skipped") == 1, proc.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["class_names"] == ["ants", "bees"]
    assert sorted(cfg["data"]["train_ids"] + cfg["data"]["val_ids"]) == sorted(ds.ids)


def test_clean_folders_give_no_note_and_the_same_samples_in_the_same_order():
    ds = open_dataset(str(HYMENOPTERA / "train"))
    assert not any("skipped" in n for n in ds.notes)
    old = []  # the scan of earlier versions: the split of a seed must not change
    for c in ds.class_names:
        for dirpath, _, files in sorted(os.walk(HYMENOPTERA / "train" / c)):
            old += [
                os.path.relpath(os.path.join(dirpath, f), HYMENOPTERA / "train")
                for f in sorted(files)
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
            ]
    assert ds.ids == old


def test_an_image_refused_while_tracing_a_folder_is_named(tmp_path):
    """A 1x5000 strip in a class folder was refused as "an image is 1x5000 pixels" (no file named) by train/trace."""
    from PIL import Image

    _build(tmp_path / "data")
    Image.new("RGB", (1, 5000), (120, 60, 0)).save(tmp_path / "data" / "ants" / "strip.png")
    proc = run_cli(
        "trace",
        "--checkpoint",
        str(ROOT / "checkpoints" / "hymenoptera-met"),
        "--dataset",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "t.npz"),
        "--quiet",
        check=False,
    )
    strip = (tmp_path / "data").resolve() / "ants" / "strip.png"
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith(f"error: {strip} is 1x5000 pixels")


def test_a_folder_one_level_too_high_is_named_with_the_folder_to_give(tmp_path):
    """A folder holding one class folder said 'num_classes must be at least 2' (train) and '1 classes' (trace)."""
    (tmp_path / "data" / "ants").mkdir(parents=True)
    for f in _real("ants", 2):
        shutil.copy(f, tmp_path / "data" / "ants" / f.name)
    inner = (tmp_path / "data").resolve() / "ants"
    train = run_cli("train", "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "ck"), check=False)
    assert train.returncode == 2 and train.stderr.splitlines()[-1].endswith(f"pass --dataset {inner}).")
    hym = str(ROOT / "checkpoints" / "hymenoptera-met")
    trace = run_cli(
        "trace", "--checkpoint", hym, "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "t.npz"), check=False
    )
    assert trace.returncode == 2 and "has one class and the checkpoint 2" in trace.stderr and str(inner) in trace.stderr
