"""Thresholds + trace -> metrics, as pure vectorised numpy. Simulated from cached exit outputs.

`TraceArrays` precomputes what every what-if needs once (predictions, correctness, policy scores),
so a slider move costs one comparison and a few bincounts over (N, K) arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import METError
from ..io.limits import MAX_CONFUSION_CLASSES
from ..io.traces import SIMULATED_NOTE, Trace
from .intervals import PairedDifference, WhatIfIntervals, paired_difference, whatif_intervals
from .policies import Policy, as_thresholds, exit_index, exit_probs, exit_scores, get_policy


@dataclass
class TraceArrays:
    """What-if inputs derived once from a trace: (N, K) predictions, correctness, confidence, scores.

    `probs` (float32) are for showing; the policies' scores come from the trace's logits through
    `policies.exit_scores` (float64), the same function the real early exits use."""

    pred: np.ndarray
    correct: np.ndarray
    labels: np.ndarray
    gmacs: np.ndarray
    num_classes: int
    probs: np.ndarray
    logits: np.ndarray | None = None  # None: the log of `probs` (arrays built from probabilities alone)
    temperatures: tuple[float, ...] | None = None
    _scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.logits is None:
            with np.errstate(divide="ignore"):
                self.logits = np.log(np.asarray(self.probs, dtype=np.float64))

    @classmethod
    def from_trace(cls, trace: Trace, temperatures: Sequence[float] | None = None) -> TraceArrays:
        """`temperatures`: one per exit, dividing that exit's logits (temperature scaling), if given."""
        p = trace.probs(temperatures)
        pred = p.argmax(-1)
        return cls(
            pred,
            pred == trace.labels[:, None],
            trace.labels,
            np.asarray(trace.gmacs, float),
            p.shape[-1],
            p,
            trace.logits,
            None if temperatures is None else tuple(map(float, temperatures)),
        )

    def take(self, rows: np.ndarray) -> TraceArrays:
        """The same arrays for a subset (or a resample) of the samples."""
        return TraceArrays(
            self.pred[rows],
            self.correct[rows],
            self.labels[rows],
            self.gmacs,
            self.num_classes,
            self.probs[rows],
            self.logits[rows],
            self.temperatures,
        )

    def score(self, policy: Policy) -> np.ndarray:
        if policy.name not in self._scores:
            self._scores[policy.name] = exit_scores(self.logits, policy, self.temperatures)
        return self._scores[policy.name]

    def row_probs(self, i: int) -> np.ndarray:
        """Sample i's (K, C) probabilities as the exit decisions see them (float64, `policies.exit_probs`)."""
        return exit_probs(self.logits[i], self.temperatures)

    @property
    def num_exits(self) -> int:
        return self.pred.shape[1]


def exits_for(arrays: TraceArrays, thresholds: float | Sequence[float], policy: str = "max-softmax") -> np.ndarray:
    """Each sample's exit under the rule."""
    pol = get_policy(policy)
    return exit_index(arrays.score(pol), as_thresholds(thresholds, arrays.num_exits, pol), pol)


@dataclass
class Outcomes:
    """Per sample under an exit rule: the exit it leaves at, its prediction there, whether that is right."""

    exits: np.ndarray  # (N,) int, 0-based
    pred: np.ndarray  # (N,) int, the class predicted at that exit
    correct: np.ndarray  # (N,) bool
    trace_probs: np.ndarray  # (N, K, C) the trace's probabilities (a view, not a copy)

    @property
    def confidence(self) -> np.ndarray:
        """(N,) float: the top softmax probability of the answer each sample leaves with (whatever the policy)."""
        return self.trace_probs[np.arange(len(self.exits)), self.exits].max(-1)


def outcomes(arrays: TraceArrays, thresholds: float | Sequence[float], policy: str = "max-softmax") -> Outcomes:
    ex = exits_for(arrays, thresholds, policy)
    rows = np.arange(len(ex))
    return Outcomes(ex, arrays.pred[rows, ex], arrays.correct[rows, ex], arrays.probs)


@dataclass
class WhatIfResult:
    """What an exit rule gives on a trace (simulated from cached exit outputs: `note` says so)."""

    accuracy: float
    gmacs: float  # mean GMACs per image
    speedup: float  # the last exit's GMACs over the mean
    exit_fractions: list[float]
    exit_accuracy: list[float | None]  # accuracy of the images that leave at each exit (None: nobody leaves there)
    thresholds: list[float | None]  # None: the last exit, which always answers
    policy: str
    last_exit_accuracy: float
    last_exit_gmacs: float
    note: str = SIMULATED_NOTE
    per_class_accuracy: list[float | None] | None = None  # with detail=True
    confusion: list[list[int]] | None = None  # with detail=True and at most MAX_CONFUSION_CLASSES classes; rows:
    #                                          true class, columns: predicted
    intervals: WhatIfIntervals | None = None  # with intervals=True: 95 % intervals of the numbers above

    @property
    def early_share(self) -> float:
        """Share of images that leave before the last exit."""
        return 1.0 - self.exit_fractions[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the detail fields only when computed."""
        d = asdict(self)
        for name in ("per_class_accuracy", "confusion"):
            if d[name] is None:
                del d[name]
        d["intervals"] = self.intervals.to_dict() if self.intervals else None
        if self.intervals is None:
            del d["intervals"]
        return d


def whatif(
    arrays: TraceArrays,
    thresholds: float | Sequence[float],
    policy: str = "max-softmax",
    detail: bool = False,
    intervals: bool = False,
    seed: int = 0,
) -> WhatIfResult:
    """Accuracy, mean GMACs, speed-up over the last exit, exit shares and per-exit accuracy of leavers.

    `detail` adds per-class accuracy and the confusion matrix; `intervals` their 95 % intervals (seeded).
    """
    t = as_thresholds(thresholds, arrays.num_exits, get_policy(policy))
    o = outcomes(arrays, t, policy)
    ex, correct = o.exits, o.correct
    n, k = arrays.pred.shape
    counts = np.bincount(ex, minlength=k)
    right = np.bincount(ex, weights=correct, minlength=k)
    gm = float(arrays.gmacs[ex].mean())
    out = WhatIfResult(
        accuracy=float(correct.mean()),
        gmacs=gm,
        speedup=float(arrays.gmacs[-1] / gm),
        exit_fractions=(counts / n).tolist(),
        exit_accuracy=[float(r / c) if c else None for r, c in zip(right, counts, strict=True)],
        thresholds=[float(x) if np.isfinite(x) else None for x in t],
        policy=policy,
        last_exit_accuracy=float(arrays.correct[:, -1].mean()),
        last_exit_gmacs=float(arrays.gmacs[-1]),
    )
    if intervals:
        out.intervals = whatif_intervals(int(correct.sum()), counts, right, arrays.gmacs, seed)
    if detail:  # per-class accuracy in O(N + C); the C x C confusion matrix only up to MAX_CONFUSION_CLASSES
        c = arrays.num_classes
        per_class_n = np.bincount(arrays.labels, minlength=c)
        right_c = np.bincount(arrays.labels, weights=correct, minlength=c)
        out.per_class_accuracy = [float(r / m) if m else None for r, m in zip(right_c, per_class_n, strict=True)]
        if c <= MAX_CONFUSION_CLASSES:
            out.confusion = np.bincount(arrays.labels * c + o.pred, minlength=c * c).reshape(c, c).tolist()
    return out


@dataclass
class RuleFigures:
    """Accuracy, mean GMACs and exit shares of many exit rules on one trace (`rule_figures`)."""

    accuracy: np.ndarray  # (R,) float64, 0..1
    gmacs: np.ndarray  # (R,) float64, mean GMACs per image
    exit_fractions: np.ndarray  # (R, K) float64, each row sums to 1


_RULE_CHUNK = 1 << 24  # booleans (rules x samples) held at once by rule_figures


def rule_figures(
    arrays: TraceArrays, thresholds: Sequence[float | Sequence[float | None]], policy: str = "max-softmax"
) -> RuleFigures:
    """`whatif`'s accuracy, mean GMACs and exit shares for R rules at once (vectorised over rules, in chunks of
    at most 16 M booleans): what a sweep of candidate thresholds needs, about 10x faster than R calls of `whatif`.
    Mean GMACs are summed per exit (counts x GMACs), so they may differ from `whatif`'s in the last bits.

    thresholds: R entries, each a global threshold or a per-exit vector (`as_thresholds`). Raises METError as
    `as_thresholds` does.
    """
    pol = get_policy(policy)
    n, k = arrays.pred.shape
    t = np.stack([as_thresholds(x, k, pol) for x in thresholds]) if len(thresholds) else np.zeros((0, k))
    score = arrays.score(pol)
    right, counts = np.zeros(len(t)), np.zeros((len(t), k))
    step = max(1, _RULE_CHUNK // max(1, n))
    for a in range(0, len(t), step):
        b = min(a + step, len(t))
        remaining = np.ones((b - a, n), dtype=bool)
        for j in range(k):  # images leave at the first exit whose score passes; the last exit takes the rest
            leave = remaining & pol.passes(score[None, :, j], t[a:b, j, None]) if j < k - 1 else remaining
            counts[a:b, j] = np.count_nonzero(leave, axis=1)
            right[a:b] += np.count_nonzero(leave & arrays.correct[None, :, j], axis=1)
            remaining &= ~leave
    return RuleFigures(right / n, counts @ np.asarray(arrays.gmacs, np.float64) / n, counts / n)


def exit_accuracy_all(arrays: TraceArrays) -> list[float]:
    """Accuracy of every exit on all samples (no early exit)."""
    return arrays.correct.mean(0).tolist()


def exit_differences(a: TraceArrays, b: TraceArrays) -> list[PairedDifference]:
    """Each exit's accuracy of model A minus model B, image for image (`intervals.paired_difference`: exact McNemar
    test and interval), on traces of the same images in the same order.

    Raises METError when the traces hold other images or other exit counts."""
    if a.num_exits != b.num_exits or not np.array_equal(a.labels, b.labels):
        raise METError("compare two traces of the same images with as many exits, in the same order.")
    return [paired_difference(a.correct[:, k], b.correct[:, k]) for k in range(a.num_exits)]
