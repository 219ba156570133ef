"""Choose thresholds on a validation trace; apply them to a test trace.

The candidate operating points are per-exit threshold vectors under which a geometric share of the
images leaves at each exit (share_k proportional to q^k, q swept: the MSDNet budgeted protocol), plus
the single global thresholds at the score quantiles. From them: the accuracy-vs-GMACs sweep with its
Pareto front, the best point within a cost budget, and the cheapest point within an accuracy loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Record
from ..errors import METError
from .policies import CALIBRATABLE, Policy, get_policy
from .whatif import TraceArrays, WhatIfResult, rule_figures, whatif


@dataclass
class OperatingPoint(Record):
    """Per-exit thresholds and what they give on the trace they were chosen on."""

    thresholds: list[float | None]
    accuracy: float
    gmacs: float
    exit_fractions: list[float]
    source: str
    pareto: bool = False


@dataclass
class AppliedPoint(Record):
    """A candidate chosen on a calibration trace (held-out or validation images), with its figures there and the same
    thresholds on test."""

    thresholds: list[float | None]
    source: str
    pareto: bool
    cal_accuracy: float  # on the calibration set the thresholds were chosen on
    cal_gmacs: float
    test_accuracy: float
    test_gmacs: float


@dataclass
class Calibrated:
    """Thresholds chosen on one trace (`point`) and measured on another (`measured`)."""

    point: OperatingPoint
    measured: WhatIfResult

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.measured.to_dict(),
            "calibration_set": {
                "accuracy": self.point.accuracy,
                "gmacs": self.point.gmacs,
                "source": self.point.source,
            },
        }


def oriented_score(arrays: TraceArrays, policy: str, what: str) -> tuple[Policy, np.ndarray]:
    """The policy and its (N, K) score turned so that higher = more confident; continuous scores only."""
    pol = get_policy(policy)
    if not pol.calibratable:
        raise METError(f"{what} needs a continuous score; use one of {', '.join(CALIBRATABLE)}, not '{policy}'.")
    return pol, arrays.score(pol) if pol.higher_is_confident else -arrays.score(pol)


def thresholds_for_shares(arrays: TraceArrays, shares: np.ndarray, policy: str = "max-softmax") -> list[float | None]:
    """Per-exit thresholds under which about `shares[k]` of all images leave at exit k (ties may add a few).

    Exits are filled in order; at exit k the most confident of the images still running leave.
    The last exit's threshold is None: it always answers.
    """
    pol, s = oriented_score(arrays, policy, "calibration")
    n, k = s.shape
    remaining = np.ones(n, dtype=bool)
    out: list[float | None] = []
    for j in range(k - 1):
        take = int(round(shares[j] * n))
        cand = s[remaining, j]
        if take <= 0 or cand.size == 0:
            t = np.inf  # nobody leaves here
        else:
            m = min(take, cand.size)
            t = np.partition(cand, cand.size - m)[cand.size - m]  # the m-th largest
            remaining &= ~(s[:, j] >= t)
        out.append(_policy_value(t, pol.higher_is_confident, pol.never))
    return out + [None]


def _policy_value(t: float, higher: bool, never: float) -> float:
    if not np.isfinite(t):
        return never
    return float(t if higher else -t)


def geometric_shares(q: float, k: int) -> np.ndarray:
    w = q ** np.arange(k, dtype=np.float64)
    return w / w.sum()


def sweep(arrays: TraceArrays, policy: str = "max-softmax", n_q: int = 41, n_global: int = 41) -> list[OperatingPoint]:
    """Candidate operating points sorted by GMACs, with the Pareto front marked (no point is cheaper and better)."""
    pol, _ = oriented_score(arrays, policy, "calibration")
    k = arrays.num_exits
    cands: list[tuple[list[float | None], str]] = []
    for q in np.concatenate([[0.0], np.logspace(-2, 2, n_q)]):
        cands.append(
            (
                thresholds_for_shares(arrays, geometric_shares(q, k) if q > 0 else np.eye(k)[0], policy),
                f"geometric q={q:.4g}",
            )
        )
    scores = arrays.score(pol)[:, :-1].ravel()  # empty for a one-exit model: nothing to threshold
    for t in np.unique(np.quantile(scores, np.linspace(0, 1, n_global))) if scores.size else []:
        cands.append(([float(t)] * (k - 1) + [None], f"global {t:.4g}"))
    cands.append(([pol.never] * (k - 1) + [None], "last exit only"))
    fig = rule_figures(arrays, [th for th, _ in cands], policy)
    points = [
        OperatingPoint(th, float(a), float(g), f.tolist(), src)
        for (th, src), a, g, f in zip(cands, fig.accuracy, fig.gmacs, fig.exit_fractions, strict=True)
    ]
    points.sort(key=lambda p: (p.gmacs, -p.accuracy))
    best = -1.0
    for p in points:
        if p.accuracy > best:
            p.pareto, best = True, p.accuracy
    return points


def sweep_applied(val: TraceArrays, test: TraceArrays, policy: str = "max-softmax") -> list[AppliedPoint]:
    """Every candidate chosen on `val` with its validation figures and the same thresholds measured on `test`."""
    points = sweep(val, policy)
    fig = rule_figures(test, [p.thresholds for p in points], policy)
    return [
        AppliedPoint(p.thresholds, p.source, p.pareto, p.accuracy, p.gmacs, float(a), float(g))
        for p, a, g in zip(points, fig.accuracy, fig.gmacs, strict=True)
    ]


def calibrate_budget(val: TraceArrays, budget: float, policy: str = "max-softmax") -> OperatingPoint:
    """Most accurate validation point whose mean cost is at most `budget` x the last exit's GMACs."""
    if not np.isfinite(budget) or budget <= 0:
        raise METError(f"budget must be a positive fraction of the last exit's GMACs, got {budget}.")
    limit = budget * val.gmacs[-1]
    feasible = [p for p in sweep(val, policy) if p.gmacs <= limit + 1e-12]
    if not feasible:
        raise METError(
            f"a budget of {budget:.0%} ({limit:.3f} GMACs) is below the first exit's cost "
            f"({val.gmacs[0]:.3f} GMACs, {val.gmacs[0] / val.gmacs[-1]:.0%}); raise it."
        )
    return max(feasible, key=lambda p: (p.accuracy, -p.gmacs))


def calibrate_accuracy_loss(val: TraceArrays, max_loss: float, policy: str = "max-softmax") -> OperatingPoint:
    """Cheapest validation point within `max_loss` (a fraction, 0.005 = half a point) of the last exit's accuracy."""
    if not np.isfinite(max_loss) or max_loss < 0:
        raise METError(f"the accuracy loss must be a non-negative fraction, got {max_loss}.")
    target = val.correct[:, -1].mean() - max_loss
    ok = [p for p in sweep(val, policy) if p.accuracy >= target - 1e-12]
    return min(ok, key=lambda p: (p.gmacs, -p.accuracy))


def apply(test: TraceArrays, point: OperatingPoint, policy: str = "max-softmax") -> Calibrated:
    """The what-if of calibrated thresholds on another (test) trace, with what they were chosen for."""
    return Calibrated(point, whatif(test, point.thresholds, policy))


def threshold_grid(arrays: TraceArrays, policy: str = "max-softmax", levels: int = 41) -> np.ndarray:
    """(accuracy, mean GMACs) of every per-exit threshold vector on a grid of `levels` score quantiles per exit.

    Chosen on the trace it is scored on, its best point at a budget bounds what any per-exit thresholds
    of this policy could reach there (to the grid's resolution): a ceiling for calibration, never a choice.
    The last early exit is vectorised, so the cost is levels^(K-2) passes over the images.
    """
    _, s = oriented_score(arrays, policy, "the threshold grid")
    if levels < 2:
        raise METError(f"the threshold grid needs at least 2 levels per exit, got {levels}.")
    n, k = s.shape
    if k < 2:
        return np.array([[arrays.correct[:, 0].mean(), arrays.gmacs[0]]])
    # thresholds per early exit: score quantiles, plus +inf (nobody leaves there)
    grids = [np.append(np.unique(np.quantile(s[:, j], np.linspace(0, 1, levels))), np.inf) for j in range(k - 1)]
    correct, g = arrays.correct, arrays.gmacs
    rows: list[np.ndarray] = []

    def walk(j: int, remaining: np.ndarray, n_correct: float, cost: float) -> None:
        if j == k - 2:  # the last early exit: all its thresholds at once
            sr = s[remaining, j][:, None] >= grids[j][None, :]
            leave_ok = (sr & correct[remaining, j][:, None]).sum(0)
            stay_ok = (~sr & correct[remaining, -1][:, None]).sum(0)
            n_leave = sr.sum(0)
            acc = (n_correct + leave_ok + stay_ok) / n
            gm = (cost + n_leave * g[j] + (remaining.sum() - n_leave) * g[-1]) / n
            rows.append(np.stack([acc, gm], 1))
            return
        for t in grids[j]:
            leave = remaining & (s[:, j] >= t)
            walk(j + 1, remaining & ~leave, n_correct + correct[leave, j].sum(), cost + leave.sum() * g[j])

    walk(0, np.ones(n, dtype=bool), 0.0, 0.0)
    return np.concatenate(rows)


def agreement_oracle(arrays: TraceArrays) -> tuple[float, float]:
    """(accuracy, mean GMACs) of a rule that knows where an early answer equals the last exit's.

    Each image leaves at the first exit that already gives the last exit's answer, so the accuracy is
    the last exit's and the cost is the least any rule needs to change no answer. Set against the
    threshold ceiling, it says whether the exits or the confidence signal hold early exit back.
    """
    exits = (arrays.pred == arrays.pred[:, -1:]).argmax(1)
    return float(arrays.correct[:, -1].mean()), float(arrays.gmacs[exits].mean())
