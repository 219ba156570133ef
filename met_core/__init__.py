"""MET Explorer core: Multiple-Exit Tuning (arXiv 2409.13999) for timm Vision Transformers.

The public names load lazily, so numeric modules (what-if, calibration, traces) import without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "METConfig": "config", "TrainConfig": "config", "METError": "errors", "METModel": "model",
    "create_backbone": "backbones", "load_checkpoint": "io", "save_checkpoint": "io", "exit_gmacs": "flops",
    "whatif": "whatif", "TraceArrays": "whatif", "load_trace": "traces", "calibrate_budget": "calibration",
    "sweep": "calibration", "early_exit": "inference", "predict_files": "inference",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'met_core' has no attribute {name!r}")
