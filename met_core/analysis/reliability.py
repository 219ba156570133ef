"""How well each exit's confidence matches its accuracy, and per-exit temperature scaling.

An early-exit rule trusts each exit's top-1 probability. Expected calibration error (ECE: the mean gap between
confidence and accuracy over equal-width confidence bins, weighted by the share of images in each bin) and
the reliability diagram say per exit how far that trust is deserved. Temperature scaling divides an exit's
logits by one number T_k fitted on a calibration trace (minimum negative log-likelihood); it never changes
an exit's predicted class, only its confidence, so it moves which images leave where. Temperatures live
beside the checkpoint in `temperatures.json`, never in the trained weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import REQUIRED, Range, Record, TaggedFile, _f
from ..errors import METError
from ..io.limits import read_tagged_file

if TYPE_CHECKING:
    from ..io.traces import Trace

FORMAT = "met-temperatures/1"
TEMPERATURES_FILE = "temperatures.json"


@dataclass
class ReliabilityCurve(Record):
    """One exit's reliability diagram: per confidence bin, its mean confidence, accuracy and image count."""

    confidence: list[float | None]
    accuracy: list[float | None]
    count: list[int]
    ece: float


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> ReliabilityCurve:
    """Reliability of one exit's (N, C) probabilities."""
    conf, right = probs.max(-1), probs.argmax(-1) == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    s_conf = np.bincount(which, weights=conf, minlength=bins)
    s_acc = np.bincount(which, weights=right, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mc, ma = s_conf / count, s_acc / count
    ece = float(np.nansum(np.abs(ma - mc) * count) / len(labels))
    return ReliabilityCurve(
        [None if c == 0 else float(v) for v, c in zip(mc, count)],
        [None if c == 0 else float(v) for v, c in zip(ma, count)],
        count.tolist(),
        ece,
    )


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(-1, keepdims=True)
    return float((np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T > 0 minimising the NLL of softmax(logits / T): a grid over log T, then golden-section refinement."""
    logits = logits.astype(np.float64)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 60))
    i = int(np.argmin([_nll(logits, labels, t) for t in grid]))
    lo, hi = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)])
    g = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if _nll(logits, labels, np.exp(a)) < _nll(logits, labels, np.exp(b)):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


@dataclass
class Temperatures(TaggedFile):
    """Per-exit temperatures, and what they were fitted on."""

    FORMAT = FORMAT
    temperatures: list[float] = _f(REQUIRED, "One temperature per exit.", Range(1e-3, 1e3), max_len=64)
    checkpoint_sha256: str = _f("", "Hash of the checkpoint whose exits they were fitted for.", max_len=64)
    fitted_on: str = _f("", "The calibration trace (its file name).", max_len=4096)
    images: int = _f(0, "Images of the calibration trace.", Range(0, 2**63 - 1))

    @classmethod
    def fit(cls, cal: Trace, fitted_on: str) -> Temperatures:
        """Per-exit temperatures fitted on a calibration trace (named `fitted_on` in the file)."""
        return cls(
            fit_temperatures(cal.logits.astype(np.float32), cal.labels),
            str(cal.meta.get("checkpoint_sha256", "")),
            fitted_on,
            len(cal.labels),
        )


def fit_temperatures(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    """One temperature per exit of (N, K, C) logits."""
    return [fit_temperature(logits[:, k], labels) for k in range(logits.shape[1])]


def exit_reliability(trace: Trace, temperatures: list[float] | None = None, bins: int = 15) -> list[ReliabilityCurve]:
    """The reliability of each exit of a trace (its probabilities divided by `temperatures` when given): what
    `met reliability` prints and the what-if page draws."""
    return [reliability(p, trace.labels, bins) for p in trace.probs(temperatures).transpose(1, 0, 2)]


def read_temperatures(path: str | Path, num_exits: int, sha256: str | None = None) -> Temperatures:
    """Read and check a temperatures file (untrusted: bounded, its fields as declared above, for this model)."""
    t = read_tagged_file(
        Temperatures, path, "a temperatures file", "fit the temperatures again (met reliability)", ignore_unknown=True
    )
    if len(t.temperatures) != num_exits:
        raise METError(f"{path}: temperatures must be {num_exits} numbers between 0.001 and 1000.")
    if sha256 and t.checkpoint_sha256 not in (sha256, ""):
        raise METError(f"{path} was fitted for another checkpoint; fit the temperatures for this one.")
    t.temperatures = [float(v) for v in t.temperatures]
    return t
