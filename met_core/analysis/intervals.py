"""95 % intervals for what a trace says about an exit rule: how far each simulated number can be trusted.

A trace is a sample of images. Proportions (accuracy, the share leaving at each exit, the accuracy of
those leavers) get exact binomial (Clopper-Pearson) intervals. Mean GMACs and the speed-up depend on a
sample only through how many of its images leave at each exit, so their seeded bootstrap resamples those
counts (a multinomial draw, the same as resampling the images and exact for these statistics) and takes
the percentile interval: vectorised and cheap enough for every slider move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import bdtr, betaincinv  # scipy.stats' binom.cdf and beta.ppf, without scipy.stats (~1 s)

LEVEL = 0.95
MEANING = (
    "95 % intervals: drawing another set of test images from the same source, intervals built this way "
    "contain the true value 95 times in 100; they cover the noise of this sample of images, not a change "
    "of data."
)


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float

    def to_list(self) -> list[float]:
        return [self.lo, self.hi]


def clopper_pearson(k: np.ndarray | int, n: np.ndarray | int, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial interval of k successes in n trials (vectorised); (nan, nan) where n is 0."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, betaincinv(k, n - k + 1, a), 0.0)
        hi = np.where(k < n, betaincinv(k + 1, n - k, 1 - a), 1.0)
    bad = n <= 0
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of model A minus model B on the same images, from the images only one of them gets right."""

    difference: float  # (a_only - b_only) / images
    lo: float
    hi: float
    p_value: float  # exact McNemar test of "no difference", two-sided
    a_only: int  # images A gets right and B wrong
    b_only: int
    images: int


def paired_difference(a_correct: np.ndarray, b_correct: np.ndarray, level: float = LEVEL) -> PairedDifference:
    """Two models' accuracies compared image for image (bool arrays (N,), the same images in the same order).

    Only discordant images carry information: the exact McNemar test (McNemar 1947; the two-sided binomial test
    of a_only among the d = a_only + b_only discordant images at p = 1/2, scipy.stats.binomtest's p-value) and, for
    the difference, the Clopper-Pearson interval of the share a_only / d mapped to (d / N) * (2 share - 1): exact
    conditional on d. With no discordant image the difference is 0 with interval [0, 0] and p-value 1."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    a_only, b_only, n = int((a & ~b).sum()), int((b & ~a).sum()), len(a)
    d = a_only + b_only
    if d == 0:
        return PairedDifference(0.0, 0.0, 0.0, 1.0, 0, 0, n)
    lo, hi = clopper_pearson(a_only, d, level)
    p = min(1.0, 2 * float(bdtr(min(a_only, b_only), d, 0.5))) if a_only != b_only else 1.0
    return PairedDifference(
        (a_only - b_only) / n, d / n * (2 * float(lo) - 1), d / n * (2 * float(hi) - 1), p, a_only, b_only, n
    )


def exit_count_draws(counts: np.ndarray, reps: int = 2000, seed: int = 0) -> np.ndarray:
    """(reps, K) bootstrap draws of how many of the n images leave at each exit."""
    n = int(counts.sum())
    return np.random.default_rng(seed).multinomial(n, counts / n, size=reps)


def cost_intervals(
    counts: np.ndarray, gmacs: np.ndarray, reps: int = 2000, seed: int = 0, level: float = LEVEL
) -> tuple[Interval, Interval]:
    """Percentile-bootstrap intervals of the mean GMACs and of the speed-up over the last exit."""
    draws = exit_count_draws(counts, reps, seed)
    mean = draws @ gmacs / counts.sum()
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(mean, [a, 100 - a])
    return Interval(float(lo), float(hi)), Interval(float(gmacs[-1] / hi), float(gmacs[-1] / lo))


@dataclass
class WhatIfIntervals:
    """95 % intervals of every number of a WhatIfResult (None where no image leaves at an exit)."""

    accuracy: Interval
    gmacs: Interval
    speedup: Interval
    exit_fractions: list[Interval]
    exit_accuracy: list[Interval | None]
    meaning: str = MEANING

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy.to_list(),
            "gmacs": self.gmacs.to_list(),
            "speedup": self.speedup.to_list(),
            "exit_fractions": [i.to_list() for i in self.exit_fractions],
            "exit_accuracy": [None if i is None else i.to_list() for i in self.exit_accuracy],
            "level": LEVEL,
            "meaning": self.meaning,
        }


def whatif_intervals(
    n_correct: int, counts: np.ndarray, right: np.ndarray, gmacs: np.ndarray, seed: int = 0, reps: int = 2000
) -> WhatIfIntervals:
    """From a rule's outcome on n images: correct answers, images leaving at each exit and right among them."""
    n = int(counts.sum())
    acc_lo, acc_hi = clopper_pearson(n_correct, n)
    sh_lo, sh_hi = clopper_pearson(counts, n)
    ea_lo, ea_hi = clopper_pearson(right, counts)
    g, s = cost_intervals(counts, gmacs, reps, seed)
    return WhatIfIntervals(
        Interval(float(acc_lo), float(acc_hi)),
        g,
        s,
        [Interval(float(a), float(b)) for a, b in zip(sh_lo, sh_hi)],
        [None if c == 0 else Interval(float(a), float(b)) for a, b, c in zip(ea_lo, ea_hi, counts)],
    )
