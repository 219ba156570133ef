"""Exit rules as pure functions over per-exit probabilities, and a registry.

A policy maps probabilities `p` of shape (N, K, C) to a score (N, K) and says whether a sample may
leave at an exit: `passes = score >= threshold` (max-softmax, patience) or `score <= threshold`
(entropy). `exit_index` applies thresholds and returns each sample's exit; the last exit always answers.
Thresholds are one global number or one per exit (the last one is ignored); each policy checks its own
(`Policy.check`: patience takes whole counts 1..K).

The probabilities every exit decision sees come from one function, `exit_probs`: a softmax in float64
(the largest logit subtracted first), in the what-if (`exit_scores`, over a trace's logits), the PyTorch
early exit, the ONNX runner and the journey. In float32 a top probability above 1 - 6e-8 rounds to exactly
1.0 (a logit margin of about 17), so a max-softmax threshold of 1.0 let 14 % of the CIFAR-10 test images
leave early; in float64 only a margin above about 37 over all other classes together reaches 1.0 (7
early-exit scores of the 30,000 on that trace). So a max-softmax threshold of 1.0 means "leave only when
the other classes together hold less than 1.1e-16 of probability", and anything above 1 (the slider's top
end) means "never leave early".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import METError

SCORE_CHUNK_ELEMENTS = 1 << 21  # float64 probabilities held at once by `exit_scores` (16 MB)


def exit_probs(logits: np.ndarray, temperatures: Sequence[float] | None = None) -> np.ndarray:
    """Softmax over the last axis of logits (..., K, C) in float64, the largest logit subtracted first (so the
    top class's exp is exactly 1 and the sum is at least 1); each exit's logits divided by its temperature
    first if given. The one input of every exit decision."""
    z = np.asarray(logits, dtype=np.float64)
    if temperatures is not None:
        z = z / np.asarray(temperatures, dtype=np.float64)[:, None]
    e = np.exp(z - z.max(-1, keepdims=True))
    e /= e.sum(-1, keepdims=True)
    return e


def exit_scores(logits: np.ndarray, policy: Policy, temperatures: Sequence[float] | None = None) -> np.ndarray:
    """The policy's (N, K) scores of a trace's logits (N, K, C), from `exit_probs` in chunks of rows, so the
    float64 probabilities never take more than SCORE_CHUNK_ELEMENTS at once."""
    n, per_row = len(logits), int(np.prod(logits.shape[1:]))
    rows = max(1, SCORE_CHUNK_ELEMENTS // max(per_row, 1))
    return np.concatenate(
        [policy.score(exit_probs(logits[i : i + rows], temperatures)) for i in range(0, max(n, 1), rows)]
    )


def max_softmax(p: np.ndarray) -> np.ndarray:
    """Confidence = top-1 probability at each exit."""
    return p.max(-1)


def normalized_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy of each exit's distribution divided by log C: 0 = certain, 1 = uniform."""
    c = p.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.where(p > 0, np.log(p), 0.0)).sum(-1)
    return h / np.log(c)


def patience_agreement(p: np.ndarray) -> np.ndarray:
    """How many consecutive exits, ending at this one, predict the same class (1 at the first exit)."""
    pred = p.argmax(-1)
    run = np.ones(pred.shape, dtype=np.float64)
    for k in range(1, pred.shape[1]):
        run[:, k] = np.where(pred[:, k] == pred[:, k - 1], run[:, k - 1] + 1, 1)
    return run


@dataclass(frozen=True)
class Policy:
    """An exit rule and what callers need to know about it, so none of them special-cases a policy by name."""

    name: str
    score: Callable[[np.ndarray], np.ndarray]
    higher_is_confident: bool
    help: str
    default_threshold: float
    never: float  # a threshold no sample passes (the exit is skipped); for counts, see `skip`
    calibratable: bool  # a continuous score: thresholds can be chosen for a budget or an accuracy loss
    ui_step: float  # slider step; the range comes from `ui_range`
    counts_exits: bool = False  # the threshold is a whole count of exits, 1..K (its range grows with K)

    def passes(self, score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        return score >= thresholds if self.higher_is_confident else score <= thresholds

    def skip(self, num_exits: int) -> float:
        """A threshold no sample passes before the last exit (a count of K agreeing exits for patience)."""
        return float(num_exits) if self.counts_exits else self.never

    def ui_range(self, num_exits: int) -> tuple[float, float]:
        """(low, high) of a threshold control; the high end of a max-softmax slider sends all to the last exit."""
        if self.counts_exits:
            return 1.0, float(max(num_exits, 2))
        return (0.0, 1.0 + self.ui_step) if self.higher_is_confident else (0.0, 1.0)

    def check(self, thresholds: np.ndarray) -> None:
        """One sentence if the thresholds of the exits before the last are not this policy's: counts must be
        whole numbers from 1 to K (below 1 every image would leave at the first exit; K already means never)."""
        k = len(thresholds)
        if self.counts_exits and k > 1:
            early = thresholds[:-1]
            if not (np.isin(early, np.arange(1, k + 1)).all()):
                bad = next(float(t) for t in early if t not in range(1, k + 1))
                raise METError(
                    f"{self.name} thresholds are counts of agreeing exits: whole numbers from 1 to {k} "
                    f"for this {k}-exit model ({k}: never leave early), got {bad:g}."
                )


POLICIES: dict[str, Policy] = {
    "max-softmax": Policy(
        "max-softmax",
        max_softmax,
        True,
        "leave when the top-1 probability reaches the threshold (0..1)",
        0.8,
        1.0 + 1e-6,
        calibratable=True,
        ui_step=0.01,
    ),
    "entropy": Policy(
        "entropy",
        normalized_entropy,
        False,
        "leave when the normalised entropy is at most the threshold (0..1)",
        0.3,
        -1e-6,
        calibratable=True,
        ui_step=0.01,
    ),
    "patience": Policy(
        "patience",
        patience_agreement,
        True,
        "leave when this many consecutive exits agree (a whole count from 1 to the number of exits)",
        2,
        float("inf"),
        calibratable=False,
        ui_step=1.0,
        counts_exits=True,
    ),
}
CALIBRATABLE = tuple(name for name, p in POLICIES.items() if p.calibratable)
DEFAULT_POLICY = "max-softmax"


def get_policy(name: str) -> Policy:
    """The registered policy, or one sentence naming the choices."""
    if name not in POLICIES:
        raise METError(f"unknown exit policy '{name}'; choose one of {', '.join(POLICIES)}.")
    return POLICIES[name]


def as_thresholds(thresholds: float | Sequence[float], num_exits: int, policy: Policy | None = None) -> np.ndarray:
    """A global threshold or a per-exit vector -> a (K,) vector. NaN is refused; a length mismatch too; with
    `policy`, thresholds outside its range (`Policy.check`)."""
    vals = list(thresholds) if isinstance(thresholds, (list, tuple, np.ndarray)) else [thresholds]
    if len(vals) == num_exits and vals[-1] is None:
        vals[-1] = np.inf  # the last exit always answers; None marks that in JSON
    if any(v is None for v in vals):
        raise METError("only the last exit's threshold may be null; give numbers for the others.")
    t = np.atleast_1d(np.asarray(vals, dtype=np.float64))
    if t.size == 1:
        t = np.full(num_exits, float(t[0]))
    elif t.size == num_exits - 1:
        t = np.append(t, np.inf)  # the last exit always answers: its threshold does not matter
    elif t.size != num_exits:
        raise METError(f"{t.size} thresholds given for {num_exits} exits; give one, {num_exits - 1} or {num_exits}.")
    if np.isnan(t).any():
        raise METError("a threshold is NaN; give numbers.")
    if policy is not None:
        policy.check(t)
    return t


def exit_index(score: np.ndarray, thresholds: np.ndarray, policy: Policy) -> np.ndarray:
    """First exit whose score passes its threshold; the last exit if none does. score: (N, K)."""
    ok = policy.passes(score, thresholds[None, :])
    ok[:, -1] = True
    return ok.argmax(1)


class EarlyExitBook:
    """The bookkeeping of real batched early exit, one implementation for the PyTorch model
    (`METModel.forward_early_exit`) and the ONNX runner (`engine.export.OnnxEarlyExit`): per image its exit and the
    float64 probabilities of the exits it reached (NaN beyond), and which images are still running. The caller runs
    each stage on the running images only and compacts its tensors with the mask `leave` returns.

    n images, K exits, C classes; thresholds: (K,) as `as_thresholds` gives them; replay (n,): each image's 0-based
    exit instead of the rule's."""

    def __init__(
        self,
        n: int,
        num_exits: int,
        num_classes: int,
        policy: Policy,
        thresholds: np.ndarray,
        replay: np.ndarray | None = None,
    ) -> None:
        self.policy, self.thresholds, self.replay, self.num_exits = policy, thresholds, replay, num_exits
        self.exit_of = np.full(n, -1)
        self.probs = np.full((n, num_exits, num_classes), np.nan)  # float64: what the decision sees
        self.active = np.arange(n)  # the images still running, in order

    def leave(self, k: int, logits: np.ndarray) -> np.ndarray:
        """Exit k's logits (len(active), C) of the running images: records their probabilities and returns which of
        them leave here (all at the last exit); `active` keeps the others."""
        self.probs[self.active, k] = exit_probs(logits)
        if k == self.num_exits - 1:
            leave = np.ones(len(self.active), dtype=bool)
        elif self.replay is None:
            leave = self.policy.passes(self.policy.score(self.probs[self.active, : k + 1])[:, -1], self.thresholds[k])
        else:
            leave = self.replay[self.active] <= k
        self.exit_of[self.active[leave]] = k
        self.active = self.active[~leave]
        return leave

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(classes, exits, confidence, probs): the fields of an EarlyExitResult."""
        chosen = self.probs[np.arange(len(self.exit_of)), self.exit_of]
        return chosen.argmax(-1), self.exit_of, chosen.max(-1), self.probs
