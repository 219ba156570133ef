"""Degenerate splits say so (issue 22, item 6): a validation split or a holdout that cannot be made is a
warning or a one-sentence refusal that says what to do, and later messages never contradict it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from met_core.data.datasets import dataset_for_checkpoint, open_dataset, smallest_splittable_class, subsample_split
from met_core.errors import METError

from .conftest import CIFAR_TRAIN, run_cli, train_args

CLASSES = ("cat", "dog", "ship")


def image_folder(root: Path, per_class: int) -> Path:
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for f in sorted((CIFAR_TRAIN / c).glob("*.jpg"))[:per_class]:
            shutil.copy(f, root / c / f.name)
    return root


def test_one_image_per_class_at_a_fifth_gives_no_validation_and_says_so_once():
    said: list[str] = []
    train, val = subsample_split(np.array([0, 1, 2]), 0, 0.2, seed=0, class_names=list(CLASSES), warn=said.append)
    assert len(val) == 0 and sorted(train) == [0, 1, 2]
    assert len(said) == 1 and said[0].startswith(
        "warning: --val-fraction 0.2 gives no validation image to any class (each has fewer than 3 images)"
    )
    assert "--val-fraction 0" in said[0]
    assert smallest_splittable_class(0.2) == 3  # round(0.2 * 3) = 1 validation image, 2 training images


def test_classes_too_small_for_the_fraction_are_named_and_none_loses_its_last_training_image():
    said: list[str] = []
    labels = np.array([0] * 10 + [1] + [2] * 2)
    train, val = subsample_split(labels, 0, 0.6, seed=0, class_names=list(CLASSES), warn=said.append)
    assert set(labels[train]) == {0, 1, 2}  # round(0.6 * 1) = 1 would have left 'dog' without training images
    assert np.bincount(labels[val], minlength=3).tolist() == [6, 0, 1]
    assert len(said) == 1 and "no validation image to 1 of 3 classes ('dog'" in said[0]
    said.clear()
    subsample_split(labels, 0, 0.0, seed=0, warn=said.append)  # no validation asked for: nothing to say
    assert said == []


def test_the_issue_example_through_the_cli(tmp_path):
    data = image_folder(tmp_path / "data", 2)
    out = tmp_path / "ck"
    proc = run_cli(
        *train_args(data, 1, 32, "--batch-size", "3", "--backbone", "vit_tiny_patch16_224", val_fraction=0.2),
        *("--weights", "none", "--out", str(out), "--workers", "0"),
    )
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: --val-fraction")]
    assert len(warnings) == 1 and "no validation images" in warnings[0]
    assert "validation accuracy per exit: none (no validation images)" in proc.stdout
    assert (
        "validation accuracy per exit: none (no validation images)" in run_cli("info", "--checkpoint", str(out)).stdout
    )
    val = run_cli("trace", "--checkpoint", str(out), "--split", "val", "--out", str(tmp_path / "v.npz"), check=False)
    assert val.returncode == 2 and val.stderr.strip().splitlines() == [
        "error: this checkpoint was trained without validation images (--val-fraction 0.2 gave none), so --split "
        "val has nothing to trace; trace some of the 3 images it never saw (--split holdout --holdout N) or a test "
        "split."
    ]
    assert "missing" not in val.stderr
    hold = run_cli(
        "trace",
        "--checkpoint",
        str(out),
        "--split",
        "holdout",
        "--holdout",
        "5",
        "--out",
        str(tmp_path / "h.npz"),
        check=False,
    )
    assert hold.returncode == 2 and hold.stderr.strip().splitlines() == [
        f"error: --holdout 5 asks for more than the 3 images of {data} the checkpoint never saw; pass --holdout 3 "
        "or fewer."
    ]


def test_a_holdout_with_nothing_left_says_so_and_what_to_do(tmp_path):
    data = image_folder(tmp_path / "data", 1)
    ids = list(open_dataset(str(data)).ids)
    cfg = {
        "data": {"dataset": str(data), "root": str(data), "split": "train", "train_ids": ids, "val_ids": []},
        "train": {"val_fraction": 0.2},
    }
    with pytest.raises(METError) as e:
        dataset_for_checkpoint(cfg, str(data), "holdout", False, holdout=5)
    assert str(e.value) == (
        f"the checkpoint trained or validated on all 3 images of {data}, so none is left for "
        "--split holdout; trace another split (a test split), or train with --per-class below "
        "the class sizes to leave images out."
    )
    with pytest.raises(METError, match=r"trained without validation images .* trace a test split\.$"):
        dataset_for_checkpoint(cfg, str(data), "val", False)
    cfg["data"]["train_ids"] = ids[:1]
    with pytest.raises(METError, match="--split holdout needs --holdout N: how many of the 2 images"):
        dataset_for_checkpoint(cfg, str(data), "holdout", False, holdout=0)
