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

from .config import METConfig, config_from_dict
from .errors import METError

if TYPE_CHECKING:
    import torch

    from .model import METModel

FORMAT = "met-checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
TEST_TRACE_FILE = "test_trace.npz"  # written by `trace` beside the checkpoint; the app reads them from there
VAL_TRACE_FILE = "val_trace.npz"
T = TypeVar("T")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def versions() -> dict[str, str]:
    import timm
    import torch
    import torchvision

    from . import __version__
    return {"met_core": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise METError(f"{path} is missing; {what} must be there.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise METError(f"{path} is not valid JSON ({e}); restore {what} from its original.") from None


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
    cfg = read_json(check_checkpoint_path(path) / CONFIG_FILE, "the checkpoint's config")
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
    if not target.is_relative_to(folder):
        raise METError(f"{path / 'config.json'} points the backbone weights at {weights}, outside the checkpoint "
                       "folder; MET follows no path out of a checkpoint: copy the file into the folder and name it "
                       "there, or pass the weights yourself (--weights FILE).")
    return str(target)


def _read_safetensors(path: Path, read: Callable[[str], T]) -> T:
    """`read` applied to the folder's model.safetensors, with one-sentence errors for a missing or damaged file."""
    from safetensors import SafetensorError

    st = path / WEIGHTS_FILE
    if not st.is_file():
        raise METError(f"{st} is missing; the checkpoint is incomplete.")
    try:
        return read(str(st))
    except (SafetensorError, OSError, ValueError) as e:
        raise METError(f"{st} is corrupted or truncated ({e}); re-train or re-download the checkpoint.") from None


def _tensor_names(file: str) -> list[str]:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        return list(f.keys())


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """Cheap checks before a folder is offered anywhere: the config, and a readable safetensors header
    (no backbone is built, no weights are read)."""
    cfg = read_config(path)
    if not _read_safetensors(path, _tensor_names):
        raise METError(f"{path / 'model.safetensors'} holds no tensors; the checkpoint is incomplete.")
    return cfg


def load_checkpoint(path: str | Path, weights: str | None = None,
                    device: torch.device | str | None = None) -> tuple[METModel, dict[str, Any]]:
    """Rebuild a trained model from its folder (on `device`, CPU by default). `weights` (the caller's own
    choice, so trusted) overrides the recorded backbone weight source."""
    import torch
    from safetensors.torch import load_file

    from .backbones import create_backbone
    from .model import METModel

    path = Path(path)
    cfg = read_config(path, own_weights=weights is not None)
    mcfg: METConfig = config_from_dict(METConfig, cfg["model"])
    backbone, digest = create_backbone(mcfg.backbone, mcfg.img_size, weights or weights_path(path, mcfg.weights))
    if mcfg.weights_sha256 and digest and digest != mcfg.weights_sha256:
        raise METError(
            f"checkpoint {path} was trained on other backbone weights (sha256 {mcfg.weights_sha256[:12]}..., "
            f"loaded {digest[:12]}...); use the weights it was trained with."
        )
    model = METModel(backbone, mcfg)
    st = path / WEIGHTS_FILE
    state = _read_safetensors(path, load_file)
    expected = model.trainable_state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or bad:
        what = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {extra[:3]}"
            if extra
            else f"shape of {bad[0]} is {tuple(state[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}"
        )
        raise METError(f"{st} does not match its config.json ({what}); the folder mixes files of different models.")
    if any(not torch.isfinite(v).all() for v in state.values()):
        raise METError(f"{st} contains NaN or inf weights; the training diverged or the file is damaged.")
    model.load_state_dict(state, strict=False)
    model.eval()
    return (model.to(device) if device is not None else model), cfg


def checkpoint_hash(path: str | Path) -> str:
    """sha256 over config.json and model.safetensors: ties traces and exported thresholds to a model."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        h.update((Path(path) / name).read_bytes())
    return h.hexdigest()
