"""Measured latency of the real early-exit path, piece by piece, and the time an exit rule would take.

This module holds the profile (latency.json: its format and reader) and the prediction, NumPy only; the
measuring is met_core.engine.profiling.

`profile` times each piece of `METModel.forward_early_exit` on this machine at several batch sizes
(warm-up, repeats, median; CUDA synchronised): the stem, each stage's blocks with their adapters, each
exit's head and exit test, and the compaction that moves the continuing images on. `predict_latency`
turns exit shares into time: at batch B, the stem runs on B images and stage k on the images still
running there (B times the share leaving at k or later), each piece's time interpolated between the
measured batch sizes. Predicted, and labelled so; `bench-exit` measures.

Pieces timed one at a time need not sum to the same pieces run back to back (each timing pays its own
dispatch and finds other caches warm; on the 2 CPU cores here the sum was 0.97 to 1.12 times the whole pass).
So at each batch size the profile also times one whole pass to the last exit and scales the stem, stage and head
times to sum to it (`full_pass_ms`, `piece_scale`); the split between the pieces stays measured.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import METError
from ..io.limits import read_tagged_json

FORMAT = "met-latency/1"
LATENCY_FILE = "latency.json"
PREDICTED_NOTE = "predicted from a measured latency profile"


@dataclass
class LatencyProfile:
    """Median milliseconds of each piece of the early-exit path, per batch size ([exit][batch] for stages)."""

    device: str
    device_name: str
    threads: int
    torch_version: str
    precision: str
    batch_sizes: list[int]
    stem_ms: list[float]
    stage_ms: list[list[float]]
    head_ms: list[list[float]]
    compact_ms: list[float]
    checkpoint_sha256: str = ""
    full_pass_ms: list[float] | None = None  # one whole pass to the last exit, per batch size
    piece_scale: list[float] | None = None  # full pass over the sum of the pieces timed alone (applied already)
    engine: str = "pytorch"  # or "onnx": the per-stage export run by onnxruntime (its stem is inside stage 1)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=2, allow_nan=False)

    def piece(self, times: Sequence[float], batch: float) -> float:
        """A piece's time at any batch size: linear between the measured sizes (and through 0 at 0 images)."""
        if batch <= 0:
            return 0.0
        xs, ys = [0, *self.batch_sizes], [0.0, *times]
        if batch > xs[-1]:  # beyond the largest size: proportional
            return ys[-1] * batch / xs[-1]
        return float(np.interp(batch, xs, ys))


@dataclass
class LatencyPrediction:
    """What an exit rule would cost in time on the profiled machine, at a batch size."""

    ms_per_image: float
    images_per_s: float
    full_ms_per_image: float  # every image to the last exit
    speedup: float
    batch: int
    device_name: str
    note: str = PREDICTED_NOTE

    def to_dict(self) -> dict:
        return asdict(self)


def predict_latency(profile: LatencyProfile, exit_fractions: Sequence[float], batch: int) -> LatencyPrediction:
    """Time per image of batched early exit with these exit shares (see the module docstring)."""
    k = len(profile.stage_ms)
    if len(exit_fractions) != k:
        raise METError(f"the profile has {k} exits and the rule {len(exit_fractions)}; profile this checkpoint.")

    def total(shares: Sequence[float]) -> float:
        reach = batch * (1 - np.concatenate([[0.0], np.cumsum(shares)[:-1]]))  # images running stage j
        t = profile.piece(profile.stem_ms, batch)
        for j in range(k):
            t += profile.piece(profile.stage_ms[j], reach[j]) + profile.piece(profile.head_ms[j], reach[j])
            if j < k - 1 and reach[j + 1] < reach[j]:  # some leave: the rest are compacted
                t += profile.piece(profile.compact_ms, reach[j + 1])
        return t

    early = total(exit_fractions) / batch
    full = total([0.0] * (k - 1) + [1.0]) / batch
    return LatencyPrediction(early, 1000 / early, full, full / early, batch, profile.device_name)


def read_profile(path: str | Path, num_exits: int | None = None) -> LatencyProfile:
    """Read and check a latency.json (untrusted: bounded, typed, finite, non-negative)."""
    path = Path(path)
    data = read_tagged_json(path, "a latency profile", FORMAT, "profile the checkpoint again (met profile)")
    try:
        prof = LatencyProfile(**data)
    except TypeError:
        raise METError(f"{path} has missing or unknown fields; profile the checkpoint again.") from None
    sizes = prof.batch_sizes
    ok_sizes = (isinstance(sizes, list) and 0 < len(sizes) <= 64 and all(isinstance(b, int) and b > 0 for b in sizes)
                and sizes == sorted(set(sizes)))

    def row(v: object) -> bool:
        return (isinstance(v, list) and len(v) == len(sizes)
                and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < 1e7 for t in v))

    optional = [v for v in (prof.full_pass_ms, prof.piece_scale) if v is not None]
    if not (ok_sizes and row(prof.stem_ms) and row(prof.compact_ms) and isinstance(prof.stage_ms, list)
            and all(row(v) for v in optional)
            and isinstance(prof.head_ms, list) and len(prof.stage_ms) == len(prof.head_ms) > 0
            and all(row(r) for r in prof.stage_ms + prof.head_ms)):
        raise METError(f"{path} has malformed timings; profile the checkpoint again (met profile).")
    if num_exits is not None and len(prof.stage_ms) != num_exits:
        raise METError(f"{path} profiles {len(prof.stage_ms)} exits, not {num_exits}; profile this checkpoint.")
    if prof.engine not in ("pytorch", "onnx"):
        raise METError(f"{path} names an unknown engine; profile the checkpoint again (met profile).")
    for name in ("device", "device_name", "torch_version", "precision", "checkpoint_sha256"):
        setattr(prof, name, str(getattr(prof, name))[:200])
    return prof
