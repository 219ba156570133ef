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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import REQUIRED, Range, Record, TaggedFile, _f
from ..errors import METError
from ..io.checkpoint import export_dir
from ..io.limits import read_tagged_file

FORMAT = "met-latency/1"
LATENCY_FILE = "latency.json"
PREDICTED_NOTE = "predicted from a measured latency profile"


MS = Range(0, 1e7, hi_open=True)  # a piece's milliseconds
TEXT = 200  # characters of a profile's descriptive fields


@dataclass
class LatencyProfile(TaggedFile):
    """Median milliseconds of each piece of the early-exit path, per batch size ([exit][batch] for stages)."""

    FORMAT = FORMAT
    device: str = _f(REQUIRED, "The device profiled ('cpu', 'cuda:0').", max_len=TEXT)
    device_name: str = _f(REQUIRED, "The device in words.", max_len=TEXT)
    threads: int = _f(REQUIRED, "Intra-op threads.", Range(0, 1_000_000))
    torch_version: str = _f(REQUIRED, "torch's version (onnxruntime's for the ONNX engine).", max_len=TEXT)
    precision: str = _f(REQUIRED, "'fp32', 'bf16' or 'fp16'.", max_len=TEXT)
    batch_sizes: list[int] = _f(REQUIRED, "The batch sizes measured, increasing.", Range(1, 2**31), max_len=64)
    stem_ms: list[float] = _f(REQUIRED, "The stem's ms per batch size.", MS, max_len=64)
    stage_ms: list[list[float]] = _f(REQUIRED, "Each stage's ms per batch size.", MS, max_len=64)
    head_ms: list[list[float]] = _f(REQUIRED, "Each exit's head and exit test, ms per batch size.", MS, max_len=64)
    compact_ms: list[float] = _f(REQUIRED, "Compacting the continuing images, ms per batch size.", MS, max_len=64)
    checkpoint_sha256: str = _f("", "Hash of the checkpoint profiled.", max_len=64)
    full_pass_ms: list[float] | None = _f(None, "One whole pass to the last exit, per batch size.", MS, max_len=64)
    piece_scale: list[float] | None = _f(
        None, "Full pass over the sum of the pieces timed alone (applied already).", MS, max_len=64
    )
    engine: Literal["pytorch", "onnx"] = _f(
        "pytorch", "'pytorch', or 'onnx': the per-stage export run by onnxruntime (its stem is inside stage 1)."
    )

    def check(self, what: str) -> None:
        """Batch sizes increasing; one time per batch size in every row; as many head rows as stage rows."""
        n = len(self.batch_sizes)
        rows = [
            self.stem_ms,
            self.compact_ms,
            *self.stage_ms,
            *self.head_ms,
            *(v for v in (self.full_pass_ms, self.piece_scale) if v is not None),
        ]
        if not (
            n
            and self.batch_sizes == sorted(set(self.batch_sizes))
            and all(len(r) == n for r in rows)
            and len(self.stage_ms) == len(self.head_ms) > 0
        ):
            raise METError(f"{what} has malformed timings (one per batch size, batch sizes increasing).")

    def piece(self, times: Sequence[float], batch: float) -> float:
        """A piece's time at any batch size: linear between the measured sizes (and through 0 at 0 images)."""
        if batch <= 0:
            return 0.0
        xs, ys = [0, *self.batch_sizes], [0.0, *times]
        if batch > xs[-1]:  # beyond the largest size: proportional
            return ys[-1] * batch / xs[-1]
        return float(np.interp(batch, xs, ys))


@dataclass
class LatencyPrediction(Record):
    """What an exit rule would cost in time on the profiled machine, at a batch size."""

    ms_per_image: float
    images_per_s: float
    full_ms_per_image: float  # every image to the last exit
    speedup: float
    batch: int
    device_name: str
    note: str = PREDICTED_NOTE


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
    note = PREDICTED_NOTE
    if batch > (largest := max(profile.batch_sizes)):
        note += f"; batch {batch} is beyond the largest profiled ({largest}): extrapolated in proportion"
    return LatencyPrediction(early, 1000 / early, full, full / early, batch, profile.device_name, note)


@dataclass
class LatencyPiece(Record):
    """One piece of the early-exit path at a batch size: its GMACs (None: not counted by the GMACs, as the stem,
    the exit heads and the compaction) beside the milliseconds per batch the profile measured for it."""

    piece: str
    gmacs: float | None
    ms_per_batch: float


def latency_pieces(profile: LatencyProfile, exit_gmacs: Sequence[float], batch: int) -> list[LatencyPiece]:
    """Where a batch's time goes, piece by piece, beside what the GMACs count: the stem, each stage's blocks
    (GMACs per image of that stage alone: the differences of the cumulative `exit_gmacs`), each exit's head and
    test, and the compaction. Used to explain a measured speed-up that differs from the GMACs-predicted one.

    Raises METError when `exit_gmacs` and the profile count different exits."""
    k = len(profile.stage_ms)
    if len(exit_gmacs) != k:
        raise METError(f"the profile has {k} exits and the model {len(exit_gmacs)}; profile this checkpoint.")
    stage_gmacs = np.diff(np.asarray(exit_gmacs, dtype=np.float64), prepend=0.0)
    rows = [LatencyPiece("stem (patches and position)", None, profile.piece(profile.stem_ms, batch))]
    for j in range(k):
        rows.append(
            LatencyPiece(f"blocks to exit {j + 1}", float(stage_gmacs[j]), profile.piece(profile.stage_ms[j], batch))
        )
        rows.append(LatencyPiece(f"exit {j + 1} head and test", None, profile.piece(profile.head_ms[j], batch)))
    rows.append(LatencyPiece("moving the continuing images on", None, profile.piece(profile.compact_ms, batch)))
    return rows


def profile_path(checkpoint: str | Path, engine: str = "pytorch", onnx: str | Path | None = None) -> Path:
    """Where an engine's latency profile lives by default: CHECKPOINT/latency.json for PyTorch, beside the graphs
    (ONNX_DIR/latency.json, ONNX_DIR by default CHECKPOINT/onnx) for the ONNX export."""
    if engine == "onnx":
        return export_dir(checkpoint, onnx) / LATENCY_FILE
    return Path(checkpoint) / LATENCY_FILE


def read_profile(
    path: str | Path, num_exits: int | None = None, checkpoint_sha256: str | None = None
) -> LatencyProfile:
    """Read and check a latency.json (untrusted: bounded, its fields as declared above: typed, finite, non-negative);
    with `num_exits` and `checkpoint_sha256` (the model in use), one of another model is refused.

    Raises:
        METError: one sentence saying what is wrong and to profile the checkpoint (met profile).
    """
    prof = read_tagged_file(LatencyProfile, path, "a latency profile", "profile the checkpoint again (met profile)")
    if num_exits is not None and len(prof.stage_ms) != num_exits:
        raise METError(f"{path} profiles {len(prof.stage_ms)} exits, not {num_exits}; profile this checkpoint.")
    if checkpoint_sha256 and prof.checkpoint_sha256 and prof.checkpoint_sha256 != checkpoint_sha256:
        raise METError(
            f"{path} is the latency profile of another checkpoint than the one in use; profile this one (met profile)."
        )
    return prof
