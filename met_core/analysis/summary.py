"""The model card: one summary of a checkpoint, built from its config and metrics, for the CLI's `info`, the
app's "How MET works" and its Models page alike."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import Record
from ..io.traces import MAC_NOTE


@dataclass
class ModelSummary(Record):
    """What a person wants to know about a trained model, without loading its weights."""

    name: str
    backbone: str
    weights: str
    weights_sha256: str
    img_size: int
    exits: list[int]
    class_names: list[str]
    adapters: str
    head_input: str
    graph_reg: float | None
    exit_gmacs: list[float]
    trainable_parameters: int | None
    frozen_parameters: int | None
    dataset: str | None
    train_images: int
    val_images: int
    per_class: int | None  # images per class sub-sampled for training (0: all of them)
    val_accuracy: list[float] | None
    train_time_s: float | None
    trained_on: str

    @classmethod
    def build(
        cls,
        name: str,
        config: dict[str, Any],
        metrics: dict[str, Any],
        exit_gmacs: list[float] | None = None,
        parameters: dict[str, int] | None = None,
    ) -> ModelSummary:
        """From config.json and metrics.json; `exit_gmacs` and `parameters` from a loaded model override them."""
        m = config["model"]  # validated by read_config; the other sections and metrics.json are read defensively
        train, data = (config.get(k) if isinstance(config.get(k), dict) else {} for k in ("train", "data"))
        adapters = (
            f"r={m['adapter_dim']}, sharing {m['sharing']}, diagonals "
            f"{m['diagonal_mode'] if m['exit_diagonals'] else 'off'}"
            if m["adapters"]
            else "none (linear probes)"
        )
        run = config.get("runtime") if isinstance(config.get("runtime"), dict) else {}
        trained_on = (
            f"{run.get('device_name', run.get('device'))}, {run.get('precision')}, "
            f"{run.get('world_size', 1)} process(es)"
            if run
            else f"CPU, {metrics.get('torch_threads', '?')} threads"
        )
        params = parameters or {
            "trainable": _int(metrics.get("trainable_parameters")),
            "frozen": _int(metrics.get("frozen_parameters")),
        }
        return cls(
            name=name,
            backbone=m["backbone"],
            weights=m["weights"],
            weights_sha256=m["weights_sha256"],
            img_size=m["img_size"],
            exits=m["exits"],
            class_names=m["class_names"],
            adapters=adapters,
            head_input=m.get("head_input", "cls"),
            graph_reg=_number(train.get("graph_reg")),
            exit_gmacs=exit_gmacs or _numbers(metrics.get("exit_gmacs")) or [],
            trainable_parameters=params["trainable"],
            frozen_parameters=params["frozen"],
            dataset=str(data.get("dataset"))[:200],
            train_images=_count(data.get("train_ids")),
            val_images=_count(data.get("val_ids")),
            per_class=_int(train.get("per_class")),
            val_accuracy=_numbers(metrics.get("val_accuracy")),
            train_time_s=_number(metrics.get("train_time_s")),
            trained_on=trained_on,
        )

    @property
    def trainable_share(self) -> float | None:
        if self.trainable_parameters and self.frozen_parameters:
            return self.trainable_parameters / self.frozen_parameters
        return None

    @property
    def training_data(self) -> str:
        """The images it was trained on, in a few words: '45,000 training images', with ', the paper's VTAB-1k
        protocol' added for 100 per class, 1,000 in all (800 to train, 200 to validate: Zhai et al. 2019)."""
        vtab = self.per_class == 100 and self.train_images + self.val_images == 1000
        return f"{self.train_images:,} training images" + (", the paper's VTAB-1k protocol" if vtab else "")

    def card(self) -> list[tuple[str, str]]:
        """(field, value) lines of the model card, in reading order."""
        share = self.trainable_share
        return [
            ("checkpoint", self.name),
            (
                "backbone",
                f"{self.backbone} at {self.img_size} px, weights {self.weights} (sha256 {self.weights_sha256[:12]}...)",
            ),
            ("exits after blocks", ", ".join(map(str, self.exits))),
            ("adapters", self.adapters),
            ("head input", self.head_input),
            ("graph regularization (lambda)", "n/a" if self.graph_reg is None else f"{self.graph_reg:g}"),
            ("GMACs per exit", " / ".join(f"{g:.3f}" for g in self.exit_gmacs) + f" ({MAC_NOTE})"),
            (
                "parameters",
                f"{self.trainable_parameters:,} trainable, {self.frozen_parameters:,} frozen ({100 * share:.2f}%)"
                if share
                else "n/a",
            ),
            ("dataset", f"{self.dataset} ({self.train_images:,} train / {self.val_images:,} validation images)"),
            ("training data", self.training_data),
            (
                "classes",
                f"{len(self.class_names)}: "
                + ", ".join(self.class_names[:20])
                + (" ..." if len(self.class_names) > 20 else ""),
            ),
            (
                "validation accuracy per exit",
                " / ".join(f"{100 * a:.1f}%" for a in self.val_accuracy or [])
                or ("none (no validation images)" if self.val_images == 0 else "n/a"),
            ),
            ("training", f"{self.train_time_s or 0:.0f} s on {self.trained_on}"),
        ]


def config_digest(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config.json for printing: each of its split's id lists (`data.train_ids`, `data.val_ids`,
    tens of thousands of paths) replaced by its count, "45000 ids"; every other field as it is."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    digest = {k: v for k, v in config.items() if k != "data"}
    digest["data"] = {k: (f"{_count(v)} ids" if k.endswith("_ids") else v) for k, v in data.items()}
    return digest


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _count(v: Any) -> int:
    return len(v) if isinstance(v, list) else 0


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _numbers(v: Any) -> list[float] | None:
    """A list of finite numbers from an untrusted metrics.json, or None."""
    if isinstance(v, list) and v and all(_number(x) is not None for x in v):
        return [float(x) for x in v]
    return None
