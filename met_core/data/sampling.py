"""Batch plans: which training images form each step's global batch, drawn once from the seed.

Every process draws the same plan and takes its own shard of each batch, so N processes see exactly
the batches one process would, and a data path (in-memory tensor or streaming DataLoader) only
decides how the images of a shard are fetched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch.utils.data

if TYPE_CHECKING:
    from ..config import TrainConfig


def classes_in_batch(num_classes: int, batch_size: int, classes_per_batch: int) -> tuple[int, int]:
    """(P, M) of a class-balanced batch: P classes (all by default, `classes_per_batch` if given) of M images
    each, M >= 2 so that every class in the batch has a same-class pair, and P x M within `batch_size`:
    with more classes than batch_size / 2, a batch takes batch_size / 2 of them, so the batch (and the graph
    terms, which grow with its square) is bounded by the batch size, not by the class count."""
    p = num_classes if classes_per_batch <= 0 else min(classes_per_batch, num_classes)
    p = max(1, min(p, batch_size // 2))
    return p, max(2, batch_size // p)


def class_balanced_batches(
    labels: np.ndarray, batch_size: int, classes_per_batch: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of P x M batches (P classes, M images each; `classes_in_batch`) so every batch has same-class
    pairs.

    Each class is drawn without replacement and refilled when used up; the epoch has as many
    batches as plain shuffling would.
    """
    classes, counts = np.unique(labels, return_counts=True)
    p, m = classes_in_batch(len(classes), batch_size, classes_per_batch)
    members = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])  # each class's images, once
    pools = {c: list(rng.permutation(idx)) for c, idx in zip(classes, members, strict=True)}
    of = dict(zip(classes, members, strict=True))
    batches = []
    for _ in range(math.ceil(len(labels) / (p * m))):
        chosen = rng.choice(classes, size=p, replace=False)
        batch = []
        for c in chosen:
            while len(pools[c]) < m:  # refill (repeatedly, for classes smaller than M)
                pools[c] += list(rng.permutation(of[c]))
            batch += [pools[c].pop() for _ in range(m)]
        batches.append(rng.permutation(np.asarray(batch)))
    return batches


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of plain shuffled batches covering every sample once."""
    perm = rng.permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def plan_epochs(labels: np.ndarray, tcfg: TrainConfig, world_size: int = 1) -> list[list[np.ndarray]]:
    """Every epoch's global batches, drawn up front from the seed (so every process draws the same): class-
    balanced with the label graph, shuffled otherwise. A last batch too small to give every process an image
    is dropped."""
    rng = np.random.default_rng(tcfg.seed)
    balanced = tcfg.graph_reg > 0 and tcfg.graph_reg_kind == "label"
    plans = []
    for _ in range(tcfg.epochs):
        plan = (
            class_balanced_batches(labels, tcfg.batch_size, tcfg.classes_per_batch, rng)
            if balanced
            else shuffled_batches(len(labels), tcfg.batch_size, rng)
        )
        plans.append([b for b in plan if len(b) >= world_size])
    return plans


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This process's part of a global batch: every world_size-th image, so shards differ by at most one."""
    return batch[rank::world_size]


class PlannedBatches(torch.utils.data.Sampler):
    """A batch sampler that yields the current epoch's plan; `set_plan` swaps it between epochs, so a
    DataLoader with persistent workers keeps them across epochs."""

    def __init__(self) -> None:
        self.plan: list[np.ndarray] = []

    def set_plan(self, plan: list[np.ndarray]) -> None:
        self.plan = plan

    def __iter__(self) -> Iterator[list[int]]:
        return (b.tolist() for b in self.plan)

    def __len__(self) -> int:
        return len(self.plan)
