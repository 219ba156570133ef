"""Checkpoint folders: `config.json` + `model.safetensors` (+ `metrics.json`). Nothing is ever unpickled.

`model.safetensors` holds only the trained tensors (adapters, heads); the frozen backbone is rebuilt
from its name and weight source, and its content hash must match the one recorded at training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import limits
from .config import METConfig, config_from_dict
from .errors import METError
from .limits import MAX_JSON_BYTES, MAX_TRAINED_BYTES, MAX_WEIGHTS_BYTES, read_bounded, regular_file

if TYPE_CHECKING:
    import torch

    from .model import METModel

FORMAT = "met-checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
TEST_TRACE_FILE = "test_trace.npz"  # written by `trace` beside the checkpoint; the app reads them from there
VAL_TRACE_FILE = "val_trace.npz"
CAL_TRACE_FILE = "cal_trace.npz"  # held-out training images for calibration (`met trace --split holdout`)
T = TypeVar("T")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def versions() -> dict[str, str]:
    import timm
    import torch
    import torchvision

    from . import __version__
    return {"met_core": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


def read_json(path: Path, what: str, inside: Path | None = None) -> Any:
    """A JSON file of a checkpoint folder, bounded (limits.read_json); one sentence if anything is off."""
    return limits.read_json(path, what, f"restore {what} from its original", inside=inside)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def save_checkpoint(out: Path, model: METModel, record: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write the folder; `record` is the rest of config.json (train recipe, data split, ...)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "model": dataclasses.asdict(model.cfg), **record, "versions": versions()}
    save_file({k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()},
              str(out / WEIGHTS_FILE))  # device-independent: always written from CPU tensors
    write_json(out / CONFIG_FILE, config)
    write_json(out / METRICS_FILE, metrics)


def check_checkpoint_path(path: Path) -> Path:
    """A checkpoint is a folder; refuse pickle files and missing paths with one sentence."""
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise METError(f"{path} is a pickle-format file; MET never unpickles (it can run code). "
                       "A checkpoint is a folder with config.json and model.safetensors.")
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
        raise METError(f"{path / 'config.json'} points the backbone weights at {weights}, outside the checkpoint "
                       "folder; MET follows no path out of a checkpoint: copy the file into the folder and name it "
                       "there, or pass the weights yourself (--weights FILE).")
    return str(target)


def _read_safetensors(path: Path, read: Callable[[str], T]) -> T:
    """`read` applied to the folder's model.safetensors, with one-sentence errors for a missing or damaged file."""
    from safetensors import SafetensorError

    st = path / WEIGHTS_FILE
    if not st.exists():
        raise METError(f"{st} is missing; the checkpoint is incomplete.")
    regular_file(st, "a checkpoint's trained tensors", MAX_TRAINED_BYTES, inside=path)
    try:
        return read(str(st))
    except (SafetensorError, OSError, ValueError) as e:
        raise METError(f"{st} is corrupted or truncated ({e}); re-train or re-download the checkpoint.") from None


def _tensor_shapes(file: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes from the safetensors header alone (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def expected_shapes(mcfg: METConfig) -> dict[str, tuple[int, ...]]:
    """The trained tensors a config implies, from a model built on the meta device: no memory, no weights."""
    import timm
    import torch

    from .backbones import backbone_entry, check_vit
    from .model import METModel

    entry = backbone_entry(mcfg.backbone)
    with torch.device("meta"):
        backbone = timm.create_model(entry.arch, pretrained=False, num_classes=0, img_size=mcfg.img_size)
        check_vit(backbone, mcfg.backbone)
        model = METModel(backbone, mcfg)
    return {k: tuple(v.shape) for k, v in model.trainable_state_dict().items()}


def check_tensors(path: Path, mcfg: METConfig) -> None:
    """The safetensors header against the config, before any model is built for real: a config with absurd
    or mismatched sizes is refused in one sentence, whatever it asks for."""
    have = _read_safetensors(path, _tensor_shapes)
    if not have:
        raise METError(f"{path / WEIGHTS_FILE} holds no tensors; the checkpoint is incomplete.")
    want = expected_shapes(mcfg)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    bad = [k for k in want if k in have and have[k] != want[k]]
    if missing or extra or bad:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                else f"shape of {bad[0]} is {have[bad[0]]}, expected {want[bad[0]]}")
        raise METError(f"{path / WEIGHTS_FILE} does not match its config.json ({what}); the folder mixes files of "
                       "different models.")


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """Cheap checks before a folder is offered anywhere: the config, and a safetensors header that fits it
    (no backbone is built, no weights are read)."""
    cfg = read_config(path)
    check_tensors(path, config_from_dict(METConfig, cfg["model"]))
    return cfg


def load_checkpoint(path: str | Path, weights: str | None = None,
                    device: torch.device | str | None = None) -> tuple[METModel, dict[str, Any]]:
    """Rebuild a trained model from its folder (on `device`, CPU by default). `weights` (the caller's own
    choice, so trusted) overrides the recorded backbone weight source."""
    import torch

    from .backbones import create_backbone
    from .model import METModel
    from .tensorfiles import load_floating

    path = Path(path)
    cfg = read_config(path, own_weights=weights is not None)
    mcfg: METConfig = config_from_dict(METConfig, cfg["model"])
    check_tensors(path, mcfg)
    backbone, digest = create_backbone(mcfg.backbone, mcfg.img_size, weights or weights_path(path, mcfg.weights))
    if mcfg.weights_sha256 and digest and digest != mcfg.weights_sha256:
        raise METError(f"checkpoint {path} was trained on other backbone weights (sha256 "
                       f"{mcfg.weights_sha256[:12]}..., loaded {digest[:12]}...); use the weights it was trained with.")
    model = METModel(backbone, mcfg)
    state = _read_safetensors(path, lambda f: load_floating(f)[0])  # any floating dtype, as float32
    if any(not torch.isfinite(v).all() for v in state.values()):
        raise METError(f"{path / WEIGHTS_FILE} contains NaN or inf weights; the training diverged or the file is "
                       "damaged.")
    model.load_state_dict(state, strict=False)  # the frozen backbone is not in the file
    model.eval()
    return (model.to(device) if device is not None else model), cfg


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
