"""One image's way through a multi-exit network, exit by exit: what it has cost so far, what the exit believes,
and whether the exit rule lets it leave. Pure functions over that image's per-exit probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import METError
from .policies import as_thresholds, get_policy


@dataclass
class JourneyStep:
    """The image at one exit."""

    exit: int  # 0-based
    block: int  # blocks run so far (1-based depth of this exit)
    gmacs: float  # spent so far
    probs: list[float]  # this exit's class probabilities
    predicted: int
    score: float  # the policy's score at this exit
    threshold: float | None  # None at the last exit, which always answers
    passes: bool  # the rule lets the image leave here
    leaves: bool  # it leaves here (the first passing exit, or the last)


@dataclass
class Journey:
    """The steps up to and including the exit the image leaves at, and what leaving there saved."""

    steps: list[JourneyStep]
    policy: str
    full_gmacs: float  # the cost of running every block to the last exit

    @property
    def exit(self) -> int:
        return self.steps[-1].exit

    @property
    def predicted(self) -> int:
        return self.steps[-1].predicted

    @property
    def saved_gmacs(self) -> float:
        return self.full_gmacs - self.steps[-1].gmacs

    @property
    def saved_share(self) -> float:
        return self.saved_gmacs / self.full_gmacs


def journey(
    probs: np.ndarray,
    gmacs: Sequence[float],
    blocks: Sequence[int],
    thresholds: float | Sequence[float],
    policy: str = "max-softmax",
) -> Journey:
    """Walk one image through the exits with `probs` (K', C) for its first K' exits (K' = K for a test image's
    trace row, fewer for a real early exit that stopped), the model's per-exit `gmacs` and exit `blocks`.
    The decision at each exit is the same rule `policies.exit_index` applies to a whole trace."""
    p = np.asarray(probs, dtype=np.float64)
    k = len(gmacs)
    if p.ndim != 2 or not 1 <= len(p) <= k or len(blocks) != k:
        raise METError(f"a journey needs 1 to {k} exits' probabilities of one image, got shape {p.shape}.")
    pol = get_policy(policy)
    t = as_thresholds(thresholds, k, pol)
    scores = pol.score(p[None])[0]
    steps = []
    for j in range(len(p)):
        last = j == k - 1
        passes = bool(last or pol.passes(scores[j], t[j]))
        steps.append(
            JourneyStep(
                j,
                int(blocks[j]),
                float(gmacs[j]),
                p[j].tolist(),
                int(p[j].argmax()),
                float(scores[j]),
                None if last else float(t[j]),
                passes,
                passes,
            )
        )
        if passes:
            break
    if not steps[-1].leaves:
        raise METError("the image did not leave at any exit given; pass its probabilities up to the exit it left at.")
    return Journey(steps, policy, float(gmacs[-1]))
