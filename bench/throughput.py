"""Training and tracing throughput at the shipped recipe, and the model-FLOPs utilisation (MFU).

MFU = FLOPs one training step actually executes (counted with torch.utils.flop_counter: forward, and the
backward through the frozen backbone that the adapters need) x steps per second, divided by the peak of a
large matmul measured in the same run on the same device. Both data paths are timed on the same planned
batches: `memory` (decoded once) and `stream` (a DataLoader decoding every batch, as on full datasets).

    python bench/throughput.py                              # CPU, fp32: goal stream MFU >= 0.6
    python bench/throughput.py --device cuda --precision bf16  # GPU: goal stream MFU >= 0.4
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from met_core.config import METConfig, RuntimeConfig, TrainConfig
from met_core.data.datasets import decode_all, open_dataset, transform_for
from met_core.data.sampling import class_balanced_batches
from met_core.engine.devices import autocast, device_name, grad_scaler, resolve_device
from met_core.engine.distributed import DistContext
from met_core.engine.tracing import run_trace
from met_core.engine.train import (
    StreamSource,
    TensorSource,
    build_optimizer,
    lr_schedule,
    train_one_epoch,
    wrap_for_training,
)
from met_core.io.paths import locate_dataset
from met_core.nn.backbones import create_backbone
from met_core.nn.flops import exit_gmacs
from met_core.nn.model import METModel

GOALS = {"cpu": 0.6, "cuda": 0.4}


def matmul_peak(device: torch.device, precision: str, n: int, repeats: int = 5, inner: int = 1) -> float:
    """FLOP/s of the best of `repeats` timings of `inner` back-to-back n x n matmuls in the run's compute dtype
    (after one untimed warm-up; on CUDA, timed with events: one matmul of a large GPU is too short to time alone)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(inner):
            torch.matmul(a, b, out=out)

    best = min(seconds(run, device) for _ in range(repeats + 1))
    return 2 * n**3 * inner / best


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of fn(): CUDA events around it on a GPU (synchronised before and after), perf_counter on CPU."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(
    model: METModel, x: torch.Tensor, y: torch.Tensor, tcfg: TrainConfig, device: torch.device, precision: str
) -> int:
    """FLOPs of one training step (forward + backward), counted on the explicit-matmul attention path
    (the counter has no formula for the fused CPU kernel; the arithmetic is the same)."""
    from torch.utils.flop_counter import FlopCounterMode

    from met_core.nn.losses import met_loss

    attns = [blk.attn for blk in model.backbone.blocks]
    fused = [a.fused_attn for a in attns]
    try:
        for a in attns:
            a.fused_attn = False
        with FlopCounterMode(display=False) as counter, autocast(device, precision):
            feats = model.forward_features(x.to(device))
            loss, _ = met_loss(model.forward_head(feats), feats, y.to(device), tcfg.graph_reg)
            loss.backward()
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(
    model: METModel,
    source: TensorSource | StreamSource,
    plan: list[np.ndarray],
    tcfg: TrainConfig,
    device: torch.device,
    precision: str,
) -> float:
    """Seconds per step over `plan` (the first step, a warm-up, is not counted)."""
    opt = build_optimizer(model, tcfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(len(plan), 0))
    step = wrap_for_training(model, DistContext(), device)
    scaler = grad_scaler(device, precision)
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(_parts: object) -> None:
        sync(device)
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    model.train()
    train_one_epoch(step, source, plan, opt, sched, scaler, tcfg, DistContext(), device, precision, tick)
    return float(np.median(times[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--steps", type=int, default=6, help="timed training steps per data path (+1 warm-up)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--backbone", default="dinov2_s14_imgfocus")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trace-images", type=int, default=512)
    p.add_argument("--matmul-size", type=int, default=2048)
    args = p.parse_args()

    device = resolve_device(args.device)
    root = locate_dataset("datasets/cifar10/train")
    ds = open_dataset(str(root) if root else "cifar10")
    torch.manual_seed(0)
    backbone, _ = create_backbone(args.backbone, args.img_size)
    mcfg = METConfig(
        backbone=args.backbone,
        img_size=args.img_size,
        num_classes=len(ds.class_names),
        class_names=ds.class_names,
        head_input="cls+mean",
    )
    model = METModel(backbone, mcfg).to(device)
    tcfg = TrainConfig(batch_size=args.batch_size)
    n = args.batch_size * (args.steps + 1)
    rng = np.random.default_rng(0)
    ds = ds.subset(np.sort(rng.choice(len(ds), size=n, replace=False)))
    ds.transform = transform_for(mcfg)
    plan = class_balanced_batches(np.asarray(ds.labels), args.batch_size, 0, rng)[: args.steps + 1]

    peak = matmul_peak(device, args.precision, args.matmul_size)
    x, y = decode_all(ds, "decode", progress=False)
    flops = step_flops(model, x[: args.batch_size], y[: args.batch_size], tcfg, device, args.precision)
    runtime = RuntimeConfig(workers=args.workers)
    sources = {
        "memory": TensorSource(x, y, DistContext()),
        "stream": StreamSource(ds, DistContext(), runtime.workers, device.type == "cuda", 0),
    }
    print(f"device: {device_name(device)}; precision {args.precision}; torch {torch.__version__}")
    print(
        f"recipe: {args.backbone} at {args.img_size} px, cls+mean, r=8, 4 exits, batch {args.batch_size}, "
        f"graph reg. 0.1; {flops / 1e9:.1f} GFLOP per training step (counted, forward + backward)"
    )
    print(f"matmul peak ({args.matmul_size}^2, {args.precision}): {peak / 1e9:.1f} GFLOP/s")
    mfu = {}
    for name, src in sources.items():
        s = time_steps(model, src, plan, tcfg, device, args.precision)
        mfu[name] = flops / s / peak
        print(
            f"train, {name} data path: {s:.3f} s/step, {args.batch_size / s:.1f} images/s, "
            f"{flops / s / 1e9:.1f} GFLOP/s, MFU {mfu[name]:.2f}"
        )

    tr = ds.subset(np.arange(min(args.trace_images, len(ds))))
    t0 = time.perf_counter()
    run_trace(
        model,
        tr,
        exit_gmacs(model),
        {},
        batch_size=64,
        features=0,
        progress=False,
        precision=args.precision,
        workers=args.workers,
    )
    sync(device)
    t = time.perf_counter() - t0
    print(f"trace: {len(tr) / t:.1f} images/s over {len(tr)} images (every exit, batch 64)")
    goal = GOALS[device.type]
    ok = mfu["stream"] >= goal
    print(f"{'PASS' if ok else 'FAIL'}: streaming-path MFU {mfu['stream']:.2f} (goal >= {goal} on {device.type})")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
