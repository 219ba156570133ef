"""Thresholds that keep their promise on new data, and how much a validation-chosen rule can move.

**Certified calibration** (Learn-then-Test, Angelopoulos et al. 2021). The loss of an exit rule against the
last exit, on one image, is 1[last exit right] - 1[rule right]; it is at most the *harm*, 1[last exit right
and rule wrong]. A rule is certified for a loss D if the null "its harm rate exceeds D" is rejected by the
exact binomial p-value P(Bin(n, D) <= observed harm) <= delta. The candidates lie on one path, from sending
every image to the last exit (loss 0, safe without a test) to the most aggressive global threshold; they are
tested in that order and testing stops at the first failure (fixed-sequence testing), so with probability
at least 1 - delta over the draw of the calibration images, every certified rule, the cheapest one
included, loses at most D against the last exit on new images from the same distribution.

**Selection spread.** A rule chosen on a small validation trace (a budget, a maximum loss) is chosen again
on bootstrap resamples of that trace and measured on the test trace each time: the spread of those test
figures is how much the choice itself can move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import bdtr  # scipy.stats' binom.cdf, without importing scipy.stats (~1 s)

from ..config import Record
from ..errors import METError
from .calibration import OperatingPoint, oriented_score
from .policies import get_policy
from .whatif import TraceArrays, whatif


def harm_p_value(harm: np.ndarray | int, n: int, max_loss: float) -> np.ndarray:
    """P(Bin(n, max_loss) <= harm): small when a harm count this low is unlikely under a harm rate of max_loss."""
    harm = np.floor(np.asarray(harm, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        return np.where(harm < 0, 0.0, np.where(harm >= n, 1.0, bdtr(np.clip(harm, 0, n), n, max_loss)))


def images_needed(harm_rate: float, max_loss: float, delta: float, limit: int = 10_000_000) -> int | None:
    """Fewest calibration images n that would certify a rule whose harm rate stays at `harm_rate` (harm
    floor(rate * n)); None if none up to `limit` would (or the rate is not below max_loss).

    The p-value is not monotone in n: it falls while the harm count floor(rate * n) stays the same and jumps
    up when the count grows by one, so a bisection over n can miss the first n that works (it returned 667
    for a 0.5 % harm rate, a 1-point loss and delta 0.1, where 388 already certify). Instead: within each
    run of n with the same harm count the p-value falls, so the first run whose last n certifies holds the
    answer, and bisection within that run finds it."""
    if harm_rate >= max_loss:
        return None

    def p(n: np.ndarray | int) -> np.ndarray:
        return harm_p_value(np.floor(harm_rate * np.asarray(n, dtype=np.float64)), n, max_loss)

    hi = 1  # a size that certifies (any will do as an upper end of the search), or the limit
    while hi < limit and p(hi) > delta:
        hi = min(2 * hi, limit)
    if harm_rate <= 0:  # one run: harm 0 for every n, p = (1 - D)^n falls with n
        runs = [(1, hi)]
    else:
        counts = np.arange(int(np.floor(harm_rate * hi)) + 1, dtype=np.float64)
        last = np.minimum(np.ceil((counts + 1) / harm_rate).astype(np.int64) - 1, hi)
        last = np.where(np.floor(harm_rate * last) > counts, last - 1, last)  # rounding at a run's end
        last = np.where((last < hi) & (np.floor(harm_rate * (last + 1)) == counts), last + 1, last)
        first = np.concatenate([[1], last[:-1] + 1])
        keep = last >= first
        runs = list(zip(first[keep].tolist(), last[keep].tolist(), strict=True))
    ends = np.array([b for _, b in runs])
    good = np.flatnonzero(p(ends) <= delta) if len(ends) else ends
    if not len(good):
        return None
    lo, hi = runs[int(good[0])]
    while lo < hi:  # within one run the p-value falls with n: the first n that certifies
        mid = (lo + hi) // 2
        if p(mid) <= delta:
            hi = mid
        else:
            lo = mid + 1
    return int(hi)


@dataclass
class CertifiedRule(Record):
    """The cheapest certified thresholds on the path, with the evidence; `thresholds` is None if no rule
    with early exits was certified (then every image goes to the last exit)."""

    policy: str
    max_loss: float
    delta: float
    calibration_images: int
    thresholds: list[float | None] | None
    harm: int  # calibration images the rule gets wrong and the last exit right
    p_value: float | None
    gmacs: float  # mean GMACs of the rule on the calibration trace
    accuracy: float  # on the calibration trace
    tested: int  # candidates tested before the sequence stopped
    images_needed: int | None  # when none is certified: images that would certify the first candidate
    message: str


def threshold_path(arrays: TraceArrays, policy: str, steps: int = 400) -> np.ndarray:
    """Global thresholds from the most conservative to the most aggressive, in the policy's own direction:
    the early exits' scores in decreasing confidence, at ranks spaced geometrically, so the path is dense
    where few images leave (where certification is decided) and sparse where many do."""
    pol, s = oriented_score(arrays, policy, "certification")
    desc = np.unique(s[:, :-1])[::-1]
    ranks = np.unique(np.round(np.geomspace(1, len(desc), min(steps, len(desc)))).astype(int)) - 1
    q = desc[ranks]
    return q if pol.higher_is_confident else -q


def certify_max_loss(
    cal: TraceArrays, max_loss: float, delta: float, policy: str = "max-softmax", steps: int = 400
) -> CertifiedRule:
    """The cheapest global threshold certified to lose at most `max_loss` (a fraction) against the last exit,
    with probability at least 1 - delta over the calibration images (see the module docstring)."""
    if not 0 < max_loss < 1:
        raise METError(f"the certified loss must be between 0 and 1 (a fraction), got {max_loss}.")
    if not 0 < delta < 1:
        raise METError(f"delta must be between 0 and 1, got {delta}.")
    pol = get_policy(policy)
    n, k = cal.pred.shape
    last_right = cal.correct[:, -1]
    full = CertifiedRule(
        policy, max_loss, delta, n, None, 0, None, float(cal.gmacs[-1]), float(last_right.mean()), 0, None, ""
    )
    if k == 1:
        full.message = "the model has one exit: every image runs the whole network."
        return full
    path = threshold_path(cal, policy, steps)
    score = cal.score(pol)[:, :-1]
    ok = pol.passes(score[:, :, None], path[None, None, :])  # (n, K-1, T): may leave at exit j under step t
    first = np.where(ok.any(1), ok.argmax(1), k - 1)  # (n, T): the exit each image takes
    right = np.take_along_axis(cal.correct, first, axis=1)  # (n, T)
    harm = (last_right[:, None] & ~right).sum(0)
    p = harm_p_value(harm, n, max_loss)
    failed = np.flatnonzero(p > delta)
    passed = failed[0] if failed.size else len(path)  # fixed sequence: the prefix before the first failure
    if passed == 0:
        need = images_needed(harm[0] / n, max_loss, delta)
        full.tested, full.images_needed = 1, need
        full.message = (
            f"no early exit can be certified on {n:,} images: the most cautious threshold (harm {harm[0]} "
            f"of {n}, p = {p[0]:.3f} > delta = {delta:g}) fails; "
            + (
                f"about {need:,} calibration images with the same harm rate would certify it."
                if need
                else f"at its observed harm rate ({100 * harm[0] / n:.2f} %) no number of images "
                f"would certify a {100 * max_loss:g}-point loss: allow a larger loss."
            )
        )
        return full
    j = passed - 1
    t = float(path[j])
    r = whatif(cal, t, policy)
    return CertifiedRule(
        policy,
        max_loss,
        delta,
        n,
        [t] * (k - 1) + [None],
        int(harm[j]),
        float(p[j]),
        r.gmacs,
        r.accuracy,
        int(min(passed + 1, len(path))),
        None,
        f"certified: with probability at least {1 - delta:.0%} over the {n:,} calibration images, "
        f"threshold {t:.4g} loses at most {100 * max_loss:g} "
        f"point{'' if 100 * max_loss == 1 else 's'} against the last exit on new "
        f"images from the same source ({r.gmacs / cal.gmacs[-1]:.0%} of its GMACs here).",
    )


@dataclass
class Spread(Record):
    """5th, 50th and 95th percentiles of a validation-chosen rule's test figures over validation resamples."""

    accuracy: list[float]
    gmacs: list[float]
    reps: int
    validation_images: int


def selection_spread(
    val: TraceArrays,
    test: TraceArrays,
    choose: Callable[[TraceArrays], OperatingPoint],
    policy: str = "max-softmax",
    reps: int = 100,
    seed: int = 0,
) -> Spread:
    """Choose again on `reps` bootstrap resamples of the validation trace, measure each choice on test."""
    rng = np.random.default_rng(seed)
    n = len(val.labels)
    acc, gm = [], []
    for _ in range(reps):
        try:
            point = choose(val.take(rng.integers(0, n, n)))
        except METError:  # e.g. a budget below the first exit's cost on this resample
            continue
        r = whatif(test, point.thresholds, policy)
        acc.append(r.accuracy)
        gm.append(r.gmacs)
    if not acc:
        raise METError("no validation resample gave a rule; the budget or loss cannot be met on this trace.")
    q = [5, 50, 95]
    return Spread(np.percentile(acc, q).tolist(), np.percentile(gm, q).tolist(), len(acc), n)
