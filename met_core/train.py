"""The training loop: seeded, class-balanced batches when graph regularisation is on, progress bar."""
from __future__ import annotations

import math
import random
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import ImageDataset
from .losses import met_loss
from .model import METModel


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_balanced_batches(labels: np.ndarray, batch_size: int, classes_per_batch: int,
                           rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of P x M batches (P classes, M images each) so every batch has same-class pairs.

    Each class is drawn without replacement and refilled when used up; the epoch has as many
    batches as plain shuffling would.
    """
    classes = np.unique(labels)
    p = len(classes) if classes_per_batch <= 0 else min(classes_per_batch, len(classes))
    m = max(2, batch_size // p)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    batches = []
    for _ in range(math.ceil(len(labels) / (p * m))):
        chosen = rng.choice(classes, size=p, replace=False)
        batch = []
        for c in chosen:
            while len(pools[c]) < m:  # refill (repeatedly, for classes smaller than M)
                pools[c] += list(rng.permutation(np.flatnonzero(labels == c)))
            batch += [pools[c].pop() for _ in range(m)]
        batches.append(rng.permutation(np.asarray(batch)))
    return batches


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def materialize(ds: ImageDataset, desc: str, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and preprocess a (small, VTAB-1k sized) dataset once: no augmentation, so epochs reuse it."""
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False, num_workers=0)
    xs, ys = [], []
    for x, y, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def head_inputs(model: METModel, x: torch.Tensor, batch_size: int = 128, bf16: bool = False) -> list[torch.Tensor]:
    """Head inputs of every exit for a tensor of images, batched."""
    model.eval()
    parts = []
    for i in range(0, len(x), batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            parts.append([z.float() for z in model.forward_features(x[i:i + batch_size])])
    return [torch.cat(z) for z in zip(*parts)]


@torch.no_grad()
def evaluate(model: METModel, feats: list[torch.Tensor], y: torch.Tensor) -> list[float]:
    """Per-exit accuracy from head inputs."""
    return [float((head(z).argmax(-1) == y).float().mean()) for head, z in zip(model.heads, feats)]


def fit(model: METModel, train_ds: ImageDataset, val_ds: ImageDataset | None, tcfg: TrainConfig,
        progress: bool = True) -> dict[str, Any]:
    """Train the adapters and heads; returns metrics (per-exit validation accuracy, time, history)."""
    tcfg.validate()
    seed_everything(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    t0 = time.perf_counter()
    x_tr, y_tr = materialize(train_ds, "decode train", progress)
    x_va, y_va = materialize(val_ds, "decode val", progress) if val_ds is not None and len(val_ds) else (None, None)
    heads = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("heads.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("heads.")]
    groups = [{"params": heads, "lr": tcfg.head_lr}] + ([{"params": rest, "lr": tcfg.lr}] if rest else [])
    opt = torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay)
    balanced = tcfg.graph_reg > 0 and tcfg.graph_reg_kind == "label"
    labels = y_tr.numpy()

    def epoch_batches() -> list[np.ndarray]:
        if balanced:
            return class_balanced_batches(labels, tcfg.batch_size, tcfg.classes_per_batch, rng)
        return shuffled_batches(len(labels), tcfg.batch_size, rng)

    # without adapters the head inputs never change: compute them once (the linear-probe rung)
    fixed_features = model.adapters is None
    f_tr = head_inputs(model, x_tr, bf16=tcfg.bf16) if fixed_features else None
    f_va = head_inputs(model, x_va, bf16=tcfg.bf16) if fixed_features and x_va is not None else None
    steps_per_epoch = len(epoch_batches())
    total = steps_per_epoch * tcfg.epochs
    warmup = int(tcfg.warmup_epochs * steps_per_epoch)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    history = []
    bar = tqdm(total=total, desc="train", disable=not progress, unit="step")
    for epoch in range(tcfg.epochs):
        model.train()
        sums: dict[str, float] = {}
        for idx in epoch_batches():
            idx_t = torch.from_numpy(idx)
            xb, yb = (None if fixed_features else x_tr[idx_t]), y_tr[idx_t]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tcfg.bf16):
                feats = [f[idx_t] for f in f_tr] if fixed_features else model.forward_features(xb)
                logits = model.forward_head(feats)
                loss, parts = met_loss(logits, feats, yb, tcfg.graph_reg, tcfg.graph_reg_kind, tcfg.knn_k,
                                         tcfg.distill, tcfg.distill_temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1}; lower --lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v / steps_per_epoch
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, **{k: f"{v:.3f}" for k, v in parts.items()})
        entry: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": round(v, 5) for k, v in sums.items()}}
        if x_va is not None:
            feats_va = f_va if fixed_features else head_inputs(model, x_va, bf16=tcfg.bf16)
            entry["val_accuracy"] = [round(a, 5) for a in evaluate(model, feats_va, y_va)]
            bar.set_postfix(epoch=epoch + 1, val=" ".join(f"{a:.2f}" for a in entry["val_accuracy"]))
        history.append(entry)
    bar.close()
    model.eval()
    n = model.num_parameters()
    return {
        "val_accuracy": history[-1].get("val_accuracy") if history else None,
        "train_time_s": round(time.perf_counter() - t0, 2),
        "train_images": len(train_ds),
        "val_images": 0 if val_ds is None else len(val_ds),
        "trainable_parameters": n["trainable"],
        "frozen_parameters": n["frozen"],
        "trainable_share": round(n["trainable"] / n["frozen"], 6),
        "torch_threads": torch.get_num_threads(),
        "history": history,
    }
