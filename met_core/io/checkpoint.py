"""Checkpoint folders: `config.json` + `model.safetensors` (+ `metrics.json`). Nothing is ever unpickled.

`model.safetensors` holds only the trained tensors (adapters, heads); the frozen backbone is rebuilt
from its name and weight source, and its content hash must match the one recorded at training.
This module is the folder's format and what reads it without torch (config, metrics, hash); writing a model
into a folder and rebuilding it from one is met_core.nn.checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ..config import METConfig, config_from_dict
from ..errors import METError
from . import limits
from .limits import MAX_JSON_BYTES, MAX_TRAINED_BYTES, MAX_WEIGHTS_BYTES, read_bounded, regular_file

FORMAT = "met-checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
TEST_TRACE_FILE = "test_trace.npz"  # written by `trace` beside the checkpoint; the app reads them from there
VAL_TRACE_FILE = "val_trace.npz"
CAL_TRACE_FILE = "cal_trace.npz"  # held-out training images for calibration (`met trace --split holdout`)
EXPORT_DIR = "onnx"  # `met export` writes the ONNX graphs here unless told otherwise
RECORD_SECTIONS = ("train", "runtime", "data", "preprocessing", "versions")  # config.json's other sections
# model fields added after the first checkpoints were written; absent, their default is what those were made with
OPTIONAL_MODEL_KEYS = ("interpolation",)
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def read_json(path: Path, what: str, inside: Path | None = None) -> Any:
    """A JSON file of a checkpoint folder, bounded (limits.read_json); one sentence if anything is off."""
    return limits.read_json(path, what, f"restore {what} from its original", inside=inside)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def check_checkpoint_path(path: Path) -> Path:
    """A checkpoint is a folder; refuse pickle files and missing paths with one sentence."""
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise METError(
            f"{path} is a pickle-format file; MET never unpickles (it can run code). "
            "A checkpoint is a folder with config.json and model.safetensors."
        )
    if path.is_file():
        raise METError(f"{path} is a file; a checkpoint is a folder with config.json and model.safetensors.")
    if not path.is_dir():
        raise METError(f"checkpoint folder {path} does not exist.")
    return path


def read_config(path: Path, own_weights: bool = False) -> dict[str, Any]:
    """The checkpoint's config.json, validated: format, a model section that builds a METConfig, and no
    weight path out of the folder (unless the caller brings its own weights)."""
    cfg = read_json(check_checkpoint_path(path) / CONFIG_FILE, "the checkpoint's config", inside=path)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise METError(f"{path / 'config.json'} is not a MET checkpoint config (format must be '{FORMAT}').")
    if "model" not in cfg:
        raise METError(f"{path / 'config.json'} has no 'model' section; the checkpoint is incomplete.")
    for section in ("model", *RECORD_SECTIONS):
        if section in cfg and not isinstance(cfg[section], dict):
            raise METError(
                f"{path / 'config.json'} has a '{section}' that is not a JSON object; restore config.json from its "
                "original."
            )
    missing = sorted(
        {f.name for f in dataclasses.fields(METConfig)} - set(OPTIONAL_MODEL_KEYS) - set(cfg["model"])
    )  # a default in their place would silently build another model than the one trained
    if missing:
        raise METError(
            f"{path / 'config.json'} 'model' section lacks {', '.join(missing[:5])}; the checkpoint is incomplete: "
            "restore config.json from its original."
        )
    mcfg = config_from_dict(METConfig, cfg["model"], what=f"{path / 'config.json'} 'model' section")
    mcfg.validate()
    if not own_weights:
        weights_path(path, mcfg.weights)
    return cfg


def weights_path(path: Path, weights: str) -> str:
    """The recorded backbone weight source; a file must lie inside the checkpoint folder.

    A config is untrusted input: following its paths would let a stranger's checkpoint read any file.
    """
    if weights in ("default", "none"):
        return weights
    folder = path.resolve()
    target = (folder / weights).resolve()
    if target.is_relative_to(folder):
        regular_file(target, "the backbone weights", MAX_WEIGHTS_BYTES, inside=folder)
    else:
        raise METError(
            f"{path / 'config.json'} points the backbone weights at {weights}, outside the checkpoint "
            "folder; MET follows no path out of a checkpoint: copy the file into the folder and name it "
            "there, or pass the weights yourself (--weights FILE)."
        )
    return str(target)


def export_dir(checkpoint: str | Path, folder: str | Path | None = None) -> Path:
    """A checkpoint's ONNX export folder: `folder` when given, else CHECKPOINT/onnx."""
    return Path(folder) if folder else Path(checkpoint) / EXPORT_DIR


def checkpoint_hash(path: str | Path) -> str:
    """sha256 over config.json and model.safetensors: ties traces and exported thresholds to a model."""
    h = hashlib.sha256()
    for name, limit in ((CONFIG_FILE, MAX_JSON_BYTES), (WEIGHTS_FILE, MAX_TRAINED_BYTES)):
        h.update(read_bounded(Path(path) / name, f"a checkpoint's {name}", limit, inside=Path(path)))
    return h.hexdigest()


def with_trace(src: str | Path, dest: Path, trace_file: str | Path) -> Path:
    """A checkpoint folder `dest` that is `src` (its files copied: weights are only the trained tensors, so it is
    small) with `trace_file` as its test trace: a model traced on a user's dataset becomes one more checkpoint
    the app lists, written where the user may write even when `src` is read-only. Built in a temporary folder
    and renamed, so a half-written folder is never listed."""
    import shutil
    import tempfile

    src = Path(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".partial-"))
    try:
        for f in src.iterdir():
            if f.is_file() and f.name != TEST_TRACE_FILE and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        shutil.move(str(trace_file), tmp / TEST_TRACE_FILE)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
