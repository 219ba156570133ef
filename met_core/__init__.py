"""MET Explorer core: Multiple-Exit Tuning (arXiv 2409.13999) for timm Vision Transformers.

The public names load lazily, so numeric modules (what-if, calibration, traces) import without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "METConfig": "config", "TrainConfig": "config", "RuntimeConfig": "config", "METError": "errors",
    "METModel": "model", "create_backbone": "backbones", "backbone_entry": "backbones",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "exit_gmacs": "flops", "whatif": "whatif",
    "WhatIfResult": "whatif", "TraceArrays": "whatif", "load_trace": "traces", "calibrate_budget": "calibration",
    "sweep": "calibration", "certify_max_loss": "certify", "early_exit": "inference", "predict_files": "inference",
    "fit": "train", "POLICIES": "policies", "ModelSummary": "summary", "ExitRule": "exit_rule",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'met_core' has no attribute {name!r}")
