"""A model into a checkpoint folder and back: the trained tensors written with their config, and a model rebuilt
from a folder (the frozen backbone from its recorded source, checked by its hash). The folder's format and its
torch-free readers are met_core.io.checkpoint.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import METConfig, config_from_dict
from ..errors import METError
from ..io.checkpoint import (
    CONFIG_FILE,
    FORMAT,
    METRICS_FILE,
    WEIGHTS_FILE,
    read_config,
    weights_path,
    write_json,
)
from ..io.limits import MAX_TRAINED_BYTES, regular_file

if TYPE_CHECKING:
    import torch

    from .model import METModel

T = TypeVar("T")


def versions() -> dict[str, str]:
    import timm
    import torch
    import torchvision

    from .. import __version__

    return {
        "met_core": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(out: Path, model: METModel, record: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write the folder; `record` is the rest of config.json (train recipe, data split, ...)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "model": dataclasses.asdict(model.cfg), **record, "versions": versions()}
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}, str(out / WEIGHTS_FILE)
    )  # device-independent: always written from CPU tensors
    write_json(out / CONFIG_FILE, config)
    write_json(out / METRICS_FILE, metrics)


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


def meta_model(mcfg: METConfig) -> METModel:
    """The model a config describes, built on the meta device: shapes and GMACs, no memory, no weights."""
    import timm
    import torch

    from .backbones import backbone_entry, check_vit
    from .model import METModel

    entry = backbone_entry(mcfg.backbone)
    with torch.device("meta"):
        backbone = timm.create_model(entry.arch, pretrained=False, num_classes=0, img_size=mcfg.img_size)
        check_vit(backbone, mcfg.backbone)
        return METModel(backbone, mcfg)


def expected_shapes(mcfg: METConfig) -> dict[str, tuple[int, ...]]:
    """The trained tensors a config implies (`meta_model`)."""
    return {k: tuple(v.shape) for k, v in meta_model(mcfg).trainable_state_dict().items()}


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
        what = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {extra[:3]}"
            if extra
            else f"shape of {bad[0]} is {have[bad[0]]}, expected {want[bad[0]]}"
        )
        raise METError(
            f"{path / WEIGHTS_FILE} does not match its config.json ({what}); the folder mixes files of "
            "different models."
        )


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """Cheap checks before a folder is offered anywhere: the config, and a safetensors header that fits it
    (no backbone is built, no weights are read)."""
    cfg = read_config(path)
    check_tensors(path, config_from_dict(METConfig, cfg["model"]))
    return cfg


def load_checkpoint(
    path: str | Path, weights: str | None = None, device: torch.device | str | None = None
) -> tuple[METModel, dict[str, Any]]:
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
    if mcfg.weights_sha256 and not digest:
        raise METError(
            f"checkpoint {path} was trained on pretrained backbone weights (sha256 {mcfg.weights_sha256[:12]}...); "
            "--weights none builds a random backbone, whose answers would be noise: pass --weights default or the "
            "weights file it was trained with."
        )
    if mcfg.weights_sha256 and digest != mcfg.weights_sha256:
        raise METError(
            f"checkpoint {path} was trained on other backbone weights (sha256 "
            f"{mcfg.weights_sha256[:12]}..., loaded {digest[:12]}...); use the weights it was trained with."
        )
    model = METModel(backbone, mcfg)
    state = _read_safetensors(path, lambda f: load_floating(f)[0])  # any floating dtype, as float32
    if any(not torch.isfinite(v).all() for v in state.values()):
        raise METError(
            f"{path / WEIGHTS_FILE} contains NaN or inf weights; the training diverged or the file is damaged."
        )
    model.load_state_dict(state, strict=False)  # the frozen backbone is not in the file
    model.eval()
    return (model.to(device) if device is not None else model), cfg
