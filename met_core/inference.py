"""Real early-exit inference on image files and tensors, and its measured speed-up.

Shared by the CLI (`predict`, `bench-exit`) and the app's upload page.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import IO, Any, Sequence

import numpy as np
import torch

from .data import load_image, make_transform
from .errors import METError
from .flops import exit_gmacs
from .model import EarlyExitResult, METModel
from .policies import as_thresholds, get_policy


def early_exit(model: METModel, x: torch.Tensor, thresholds: float | Sequence[float], policy: str = "max-softmax",
               batch_size: int = 64) -> EarlyExitResult:
    """Batched real early exit over a tensor of preprocessed images."""
    pol = get_policy(policy)
    t = as_thresholds(thresholds, model.num_exits)
    parts = [model.forward_early_exit(x[i:i + batch_size], t, pol) for i in range(0, len(x), batch_size)]
    return EarlyExitResult(*(np.concatenate([getattr(p, f) for p in parts])
                             for f in ("classes", "exits", "confidence", "probs")))


def predict_files(model: METModel, files: Sequence[str | Path], thresholds: float | Sequence[float],
                  policy: str = "max-softmax", batch_size: int = 64) -> list[dict[str, Any]]:
    """Per file: class, exit (0-based), confidence, GMACs and per-exit probabilities; or an error for that file alone."""
    return predict_images(model, [(str(f), f) for f in files], thresholds, policy, batch_size)


def predict_images(model: METModel, items: Sequence[tuple[str, str | Path | IO[bytes]]],
                   thresholds: float | Sequence[float], policy: str = "max-softmax",
                   batch_size: int = 64) -> list[dict[str, Any]]:
    """Like `predict_files` for (name, path or binary file object) pairs, e.g. uploads."""
    tf = make_transform(model.cfg.img_size, model.cfg.mean, model.cfg.std)
    gm = exit_gmacs(model)
    results: list[dict[str, Any]] = [{"file": name} for name, _ in items]
    good, tensors = [], []
    for i, (name, src) in enumerate(items):
        try:
            tensors.append(tf(load_image(src, name)))
            good.append(i)
        except METError as e:
            results[i]["error"] = str(e)
    if good:
        t0 = time.perf_counter()
        res = early_exit(model, torch.stack(tensors), thresholds, policy, batch_size)
        per_image_s = (time.perf_counter() - t0) / len(good)
        names = model.cfg.class_names or [str(c) for c in range(model.cfg.num_classes)]
        for j, i in enumerate(good):
            e = int(res.exits[j])
            results[i].update({
                "class": names[int(res.classes[j])], "exit": e, "confidence": float(res.confidence[j]),
                "gmacs": gm[e], "gmacs_full": gm[-1],
                "exit_probs": [None if np.isnan(p).any() else p.tolist() for p in res.probs[j]],
                "seconds": per_image_s,
            })
    return results


def measure_speedup(model: METModel, x: torch.Tensor, thresholds: float | Sequence[float], policy: str = "max-softmax",
                    batch_size: int = 64, repeats: int = 5) -> dict[str, Any]:
    """Real batched early exit vs every image to the last exit: same images, same process, interleaved, median."""
    gm = np.asarray(exit_gmacs(model))
    t = as_thresholds(thresholds, model.num_exits)
    pol = get_policy(policy)

    def run_full() -> None:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i:i + batch_size])

    def run_early() -> EarlyExitResult:
        return early_exit(model, x, t, policy, batch_size)

    res = run_early()  # warm-up, and the exits the prediction is based on
    run_full()
    full_s, early_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter(); run_full(); full_s.append(time.perf_counter() - t0)  # noqa: E702
        t0 = time.perf_counter(); run_early(); early_s.append(time.perf_counter() - t0)  # noqa: E702
    predicted = float(gm[-1] / gm[res.exits].mean())
    measured = statistics.median(full_s) / statistics.median(early_s)
    return {"predicted_speedup": predicted, "measured_speedup": float(measured),
            "early_exit_share": float((res.exits < model.num_exits - 1).mean()),
            "images": len(x), "batch_size": batch_size, "repeats": repeats, "policy": pol.name,
            "thresholds": [float(v) if np.isfinite(v) else None for v in t],
            "full_seconds_median": statistics.median(full_s), "early_seconds_median": statistics.median(early_s)}
