"""Training losses: per-exit cross-entropy, the graph regularisers of early-exit features, and
optional self-distillation of early exits from the last one.

Each regulariser takes the head inputs `z` of one early exit, the labels, and the last exit's
features `ref` (used detached by the 'relational' and 'knn' graphs), and returns a scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GraphReg = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
Gather = Callable[[torch.Tensor], torch.Tensor]


def _pair_distance(z: torch.Tensor) -> torch.Tensor:
    """||z_i/|z_i| - z_j/|z_j|||^2 = 2 - 2 cos for all pairs."""
    zn = F.normalize(z.float(), dim=1)
    return 2.0 - 2.0 * zn @ zn.T


def label_graph(z: torch.Tensor, y: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Laplacian smoothness over the same-class graph: mean squared distance of same-class pairs."""
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    if not same.any():
        return z.new_zeros(())  # no pairs in this batch: skip the term
    return _pair_distance(z)[same].mean()


def relational_graph(z: torch.Tensor, y: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Match the early exit's cosine-similarity matrix to the last exit's (detached)."""
    zn, rn = F.normalize(z.float(), dim=1), F.normalize(ref.detach().float(), dim=1)
    return ((zn @ zn.T - rn @ rn.T) ** 2).mean()


def knn_graph(z: torch.Tensor, y: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Smoothness over a k-nearest-neighbour graph built on the last exit's (detached) features."""
    k = min(k, len(z) - 1)
    if k < 1:
        return z.new_zeros(())
    rn = F.normalize(ref.detach().float(), dim=1)
    sim = rn @ rn.T
    sim.fill_diagonal_(float("-inf"))
    nbr = sim.topk(k, dim=1).indices
    return _pair_distance(z).gather(1, nbr).mean()


GRAPH_REGULARIZERS: dict[str, GraphReg] = {
    "label": label_graph,
    "relational": relational_graph,
    "knn": knn_graph,
}


def self_distillation(logits: list[torch.Tensor], temperature: float, denominator: int | None = None) -> torch.Tensor:
    """sum_{k<K} T^2 KL(softmax(last / T) || softmax(exit_k / T)), summed over samples / `denominator`,
    the last exit detached.

    Teaching early exits to agree with the last one is what makes exiting early cheap in accuracy:
    an early answer costs nothing where it equals the answer the full network would give.
    """
    teacher = F.log_softmax(logits[-1].detach().float() / temperature, dim=-1)
    kl = [
        F.kl_div(F.log_softmax(lg.float() / temperature, dim=-1), teacher, log_target=True, reduction="sum")
        for lg in logits[:-1]
    ]
    return temperature**2 * torch.stack(kl).sum() / (denominator or len(logits[0]))


@dataclass
class LossParts:
    """The terms of one step, for logging. `ce` and `kd` are this process's share of the global batch's mean
    (they add up over processes); `gr` is computed on the global batch (the same in every process)."""

    ce: float
    gr: float | None = None
    kd: float | None = None


def met_loss(
    logits: list[torch.Tensor],
    feats: list[torch.Tensor],
    y: torch.Tensor,
    graph_reg: float = 0.1,
    kind: str = "label",
    knn_k: int = 5,
    distill: float = 0.0,
    temperature: float = 3.0,
    global_batch: int | None = None,
    world_size: int = 1,
    gather: Gather | None = None,
) -> tuple[torch.Tensor, LossParts]:
    """sum_k CE(exit k) + lambda * sum_{k<K} GR(z_k) [+ distill * KD], equal exit weights.

    One process: `y` is the whole batch. Under data parallelism `y` is this process's shard of a batch of
    `global_batch` images, and `gather` returns the global batch's rows of a tensor (differentiably), so the
    graph regulariser sees every pair of the global batch. The returned objective is scaled so that
    DistributedDataParallel's gradient average over `world_size` processes equals the single-process
    gradient of the global loss: the per-sample terms are sums over the shard / global_batch, times the
    world size; the graph term is the same global value in every process, and its gradient, summed back
    through the gather from every process, is world_size times this shard's part, which the average undoes.
    """
    b = global_batch or len(y)
    ce = torch.stack([F.cross_entropy(lg.float(), y, reduction="sum") for lg in logits]).sum() / b
    parts = LossParts(ce=float(ce.detach()))
    per_sample = ce
    if distill > 0 and len(logits) > 1:
        kd = self_distillation(logits, temperature, b)
        per_sample = per_sample + distill * kd
        parts.kd = float(kd.detach())
    loss = world_size * per_sample
    if graph_reg > 0 and len(feats) > 1:
        reg = GRAPH_REGULARIZERS[kind]
        ga = gather or (lambda t: t)
        z_all, y_all = [ga(z) for z in feats], ga(y)
        gr = torch.stack([reg(z, y_all, z_all[-1], knn_k) for z in z_all[:-1]]).sum()
        loss = loss + graph_reg * gr
        parts.gr = float(gr.detach())
    return loss, parts
