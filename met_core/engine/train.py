"""Training MET, in the steps of torchvision's reference scripts: `build_optimizer`, `lr_schedule`,
`train_one_epoch`, `evaluate`, and `fit` that strings them together.

One process or many (torchrun): every process plans the same global batches from the seed and trains on its
shard of each (sampling.py); DistributedDataParallel averages the gradients of the trainable modules, and the
graph regulariser sees the whole global batch through a differentiable gather (losses.met_loss), so N processes
train the same tensors as one process with the same global batch.
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Record, RuntimeConfig, TrainConfig
from ..data.datasets import ImageDataset, decode_all, decoded_bytes
from ..data.sampling import PlannedBatches, plan_epochs, shard
from ..errors import METError
from ..nn.losses import met_loss
from ..nn.model import METModel
from .devices import autocast, device_name, grad_scaler, resolve_device
from .distributed import DistContext, gather_rows, sum_across
from .inference import head_inputs

Batch = tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: METModel, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the heads at their own learning rate (see TrainConfig.head_lr)."""
    heads = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("heads.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("heads.")]
    groups = [{"params": heads, "lr": tcfg.head_lr}] + ([{"params": rest, "lr": tcfg.lr}] if rest else [])
    return torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay)


def lr_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero: a multiplier of the peak learning rate per step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return factor


# --- where a process's images come from ----------------------------------------------------------------


class TensorSource:
    """Images (or precomputed head inputs) held in memory: the decode-once fast path."""

    path = "memory"

    def __init__(self, x: torch.Tensor | list[torch.Tensor], y: torch.Tensor, ctx: DistContext) -> None:
        self.x, self.y, self.ctx = x, y, ctx

    def batches(self, plan: list[np.ndarray]) -> Iterator[Batch]:
        for b in plan:
            idx = torch.from_numpy(shard(b, self.ctx.rank, self.ctx.world_size))
            yield ([f[idx] for f in self.x] if isinstance(self.x, list) else self.x[idx]), self.y[idx]


class StreamSource:
    """A DataLoader that decodes this process's shard of every planned batch: for sets that do not fit in
    memory, and for augmentation. Workers persist across epochs; their seeds come from the run's seed."""

    path = "stream"

    def __init__(self, ds: ImageDataset, ctx: DistContext, workers: int, pin_memory: bool, seed: int) -> None:
        self.ctx = ctx
        self.sampler = PlannedBatches()
        self.loader = torch.utils.data.DataLoader(
            ds,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(seed + 7919 * ctx.rank),
        )

    def batches(self, plan: list[np.ndarray]) -> Iterator[Batch]:
        self.sampler.set_plan([shard(b, self.ctx.rank, self.ctx.world_size) for b in plan])
        for x, y, _ in self.loader:
            yield x, y


Source = TensorSource | StreamSource


class TrainStep(nn.Module):
    """What DistributedDataParallel wraps: images (or precomputed head inputs) -> (head inputs, logits).

    The frozen backbone is inside but excluded from DDP (no gradients, no broadcasts); adapters and heads train.
    """

    def __init__(self, model: METModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats = x if isinstance(x, list) else self.model.forward_features(x)
        return feats, self.model.forward_head(feats)


def wrap_for_training(model: METModel, ctx: DistContext, device: torch.device) -> nn.Module:
    """The TrainStep, inside DistributedDataParallel when there are several processes."""
    step = TrainStep(model)
    if not ctx.enabled:
        return step
    frozen = [f"model.{n}" for n, _ in model.backbone.named_parameters(prefix="backbone")]
    frozen += [f"model.{n}" for n, _ in model.backbone.named_buffers(prefix="backbone")]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, frozen)
    return nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)


# --- one epoch, and evaluation ----------------------------------------------------------------------


@dataclass
class StepLog:
    """Running sums of the loss terms over an epoch (this process's shares; `reduced` adds up the processes)."""

    ce: float = 0.0
    gr: float = 0.0
    kd: float = 0.0
    steps: int = 0
    has: set[str] = field(default_factory=set)

    def add(self, parts: Any) -> None:
        for k in ("ce", "gr", "kd"):
            v = getattr(parts, k)
            if v is not None:
                setattr(self, k, getattr(self, k) + v)
                self.has.add(k)
        self.steps += 1

    def reduced(self, ctx: DistContext) -> dict[str, float]:
        """Epoch means of the global loss terms (the graph term is already global in every process)."""
        sums = sum_across(torch.tensor([self.ce, self.kd], dtype=torch.float64), ctx).tolist()
        means = {"ce": sums[0], "kd": sums[1], "gr": self.gr}
        return {k: round(means[k] / max(1, self.steps), 5) for k in ("ce", "gr", "kd") if k in self.has}


def train_one_epoch(
    step: nn.Module,
    source: Source,
    plan: list[np.ndarray],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    tcfg: TrainConfig,
    ctx: DistContext,
    device: torch.device,
    precision: str,
    on_step: Callable[[Any], None] = lambda parts: None,
) -> StepLog:
    """One pass over the planned global batches; this process trains on its shard of each."""
    gather = (lambda t: gather_rows(t, ctx)) if ctx.enabled else None
    log = StepLog()
    for b, (x, y) in zip(plan, source.batches(plan), strict=True):
        x = [f.to(device) for f in x] if isinstance(x, list) else x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, precision):
            feats, logits = step(x)
            loss, parts = met_loss(
                logits,
                feats,
                y,
                tcfg.graph_reg,
                tcfg.graph_reg_kind,
                tcfg.knn_k,
                tcfg.distill,
                tcfg.distill_temperature,
                global_batch=len(b),
                world_size=ctx.world_size,
                gather=gather,
            )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {float(loss)}; lower --lr (or use --precision fp32).")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        log.add(parts)
        on_step(parts)
    return log


@torch.no_grad()
def evaluate(
    model: METModel,
    source: Source,
    n: int,
    ctx: DistContext,
    device: torch.device,
    precision: str,
    batch_size: int = 128,
) -> list[float]:
    """Per-exit accuracy over a validation set, sharded across processes and summed."""
    model.eval()
    plan = [np.arange(i, min(i + batch_size * ctx.world_size, n)) for i in range(0, n, batch_size * ctx.world_size)]
    right = torch.zeros(model.num_exits, dtype=torch.float64)
    for x, y in source.batches(plan):
        with autocast(device, precision):
            feats = x if isinstance(x, list) else model.forward_features(x.to(device))
            feats = [f.to(device) for f in feats]
            logits = model.forward_head(feats)
        right += torch.tensor([float((lg.argmax(-1).cpu() == y).sum()) for lg in logits], dtype=torch.float64)
    return (sum_across(right, ctx) / max(1, n)).tolist()


# --- the whole run ----------------------------------------------------------------------------------


@dataclass
class TrainMetrics(Record):
    """What a run reports (metrics.json); `exit_gmacs` and `mac_note` are added by the caller."""

    val_accuracy: list[float] | None
    train_time_s: float
    train_images: int
    val_images: int
    trainable_parameters: int
    frozen_parameters: int
    trainable_share: float
    torch_threads: int
    data_path: str
    world_size: int
    device: str
    precision: str
    peak_rss_gb: float
    history: list[dict[str, Any]]


def peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children (data workers), in GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + kids) * 1024 / 1e9, 3)


def choose_data_path(n_images: int, img_size: int, tcfg: TrainConfig, runtime: RuntimeConfig) -> tuple[str, str]:
    """('memory' or 'stream', the reason, for the log)."""
    need = decoded_bytes(n_images, img_size) / 1e9
    if runtime.data_path == "memory" and tcfg.augment != "none":
        raise METError("--augment standard draws new crops every epoch, so it needs --data-path stream (or auto).")
    if runtime.data_path != "auto":
        return runtime.data_path, f"asked for ({need:.2f} GB decoded)"
    if tcfg.augment != "none":
        return "stream", f"augmentation '{tcfg.augment}' draws new crops every epoch"
    if need <= runtime.memory_budget_gb:
        return "memory", (
            f"{n_images:,} decoded images take {need:.2f} GB, within the {runtime.memory_budget_gb} GB budget"
        )
    return (
        "stream",
        f"{n_images:,} decoded images would take {need:.2f} GB, over the {runtime.memory_budget_gb} GB budget",
    )


def make_sources(
    model: METModel,
    train_ds: ImageDataset,
    val_ds: ImageDataset | None,
    path: str,
    runtime: RuntimeConfig,
    ctx: DistContext,
    device: torch.device,
    seed: int,
    progress: bool,
) -> tuple[Source, Source | None]:
    """The training and validation sources of this process. Without adapters the head inputs never change,
    so they are computed once (the linear-probe rung) and training runs on them."""
    pin = device.type == "cuda"
    fixed = model.adapters is None
    if path == "memory":
        x_tr, y_tr = decode_all(train_ds, "decode train", progress)
        val = decode_all(val_ds, "decode val", progress) if val_ds is not None and len(val_ds) else None
        if fixed:
            x_tr = head_inputs(model, x_tr, device, runtime.precision)
            val = (head_inputs(model, val[0], device, runtime.precision), val[1]) if val else None
        return TensorSource(x_tr, y_tr, ctx), (TensorSource(*val, ctx) if val else None)
    has_val = val_ds is not None and len(val_ds) > 0
    if fixed:
        y_tr = torch.from_numpy(np.asarray(train_ds.labels))
        f_tr = head_inputs(model, train_ds, device, runtime.precision, workers=runtime.workers)
        val_src = (
            TensorSource(
                head_inputs(model, val_ds, device, runtime.precision, workers=runtime.workers),
                torch.from_numpy(np.asarray(val_ds.labels)),
                ctx,
            )
            if has_val
            else None
        )
        return TensorSource(f_tr, y_tr, ctx), val_src
    return (
        StreamSource(train_ds, ctx, runtime.workers, pin, seed),
        StreamSource(val_ds, ctx, runtime.workers, pin, seed) if has_val else None,
    )


def fit(
    model: METModel,
    train_ds: ImageDataset,
    val_ds: ImageDataset | None,
    tcfg: TrainConfig,
    runtime: RuntimeConfig | None = None,
    ctx: DistContext | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: None,
) -> TrainMetrics:
    """Train the adapters and heads of `model`. `train_ds` carries the training transform; `val_ds` is scored
    with its own. Returns the run's metrics; only the trainable tensors change."""
    from tqdm.auto import tqdm

    tcfg.validate()
    runtime, ctx = runtime or RuntimeConfig(workers=0), ctx or DistContext()
    runtime.validate()
    if tcfg.batch_size < ctx.world_size:
        raise METError(
            f"--batch-size {tcfg.batch_size} is smaller than the {ctx.world_size} processes; every "
            "process needs at least one image of each batch."
        )
    device = resolve_device(runtime.device, ctx.local_rank)
    seed_everything(tcfg.seed)
    t0 = time.perf_counter()
    model.to(device)
    n_val = 0 if val_ds is None else len(val_ds)
    path, why = choose_data_path(len(train_ds) + n_val, model.cfg.img_size, tcfg, runtime)
    log(f"data path: {path} ({why})" + (f"; {runtime.workers} loader workers" if path == "stream" else ""))
    train_src, val_src = make_sources(model, train_ds, val_ds, path, runtime, ctx, device, tcfg.seed, progress)
    plans = plan_epochs(np.asarray(train_ds.labels), tcfg, ctx.world_size)
    steps = len(plans[0])
    opt = build_optimizer(model, tcfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(steps * tcfg.epochs, int(tcfg.warmup_epochs * steps)))
    scaler, step = grad_scaler(device, runtime.precision), wrap_for_training(model, ctx, device)
    history: list[dict[str, Any]] = []
    bar = tqdm(total=steps * tcfg.epochs, desc="train", disable=not progress, unit="step")
    for epoch, plan in enumerate(plans):
        model.train()

        def show(parts: Any, e: int = epoch) -> None:
            bar.update(1)
            bar.set_postfix(epoch=e + 1, ce=f"{parts.ce * ctx.world_size:.3f}")

        sums = train_one_epoch(step, train_src, plan, opt, sched, scaler, tcfg, ctx, device, runtime.precision, show)
        entry: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in sums.reduced(ctx).items()}}
        if val_src is not None:
            acc = evaluate(model, val_src, n_val, ctx, device, runtime.precision)
            entry["val_accuracy"] = [round(a, 5) for a in acc]
            bar.set_postfix(epoch=epoch + 1, val=" ".join(f"{a:.2f}" for a in acc))
        history.append(entry)
    bar.close()
    model.eval()
    n = model.num_parameters()
    return TrainMetrics(
        val_accuracy=history[-1].get("val_accuracy"),
        train_time_s=round(time.perf_counter() - t0, 2),
        train_images=len(train_ds),
        val_images=n_val,
        trainable_parameters=n["trainable"],
        frozen_parameters=n["frozen"],
        trainable_share=round(n["trainable"] / n["frozen"], 6),
        torch_threads=torch.get_num_threads(),
        data_path=path,
        world_size=ctx.world_size,
        device=device_name(device),
        precision=runtime.precision,
        peak_rss_gb=peak_rss_gb(),
        history=history,
    )
