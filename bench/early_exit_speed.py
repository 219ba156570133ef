"""Benchmark: real batched early exit reaches at least 0.85 x its predicted speed-up at batch 64 on CPU,
at a threshold where at least half of the images leave early (goal of issue 3).

    python bench/early_exit_speed.py [--checkpoint checkpoints/cifar10-met] [--dataset ../shared/datasets/cifar10/test]

The threshold is the highest of a few candidates at which at least half of the images exit early
(chosen on the checkpoint's validation trace when shipped, otherwise on the images themselves).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from met_core.data.datasets import decode_all, make_transform, open_dataset, seeded_subset  # noqa: E402
from met_core.engine.inference import early_exit, measure_speedup  # noqa: E402
from met_core.nn.checkpoint import load_checkpoint  # noqa: E402

GOAL = 0.85


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "cifar10-met"))
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "cifar10" / "test"))
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, _ = load_checkpoint(args.checkpoint)
    ds = open_dataset(args.dataset, split="test")
    ds = seeded_subset(ds, args.images, seed=0)
    ds.transform = make_transform(model.cfg.img_size, model.cfg.mean, model.cfg.std)
    x, _ = decode_all(ds, "decode", progress=False)
    threshold = None
    for t in (0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
        if (early_exit(model, x, t).exits < model.num_exits - 1).mean() >= 0.5:
            threshold = t
            break
    if threshold is None:
        print("FAIL: no threshold lets half of the images exit early")
        return 1
    r = measure_speedup(model, x, threshold, batch_size=64, repeats=args.repeats)
    ratio = r.measured_speedup / r.predicted_speedup
    print(json.dumps(r, indent=2))
    print(
        f"threshold {threshold}: {100 * r.early_exit_share:.1f}% exit early; predicted {r.predicted_speedup:.2f}x, "
        f"measured {r.measured_speedup:.2f}x, ratio {ratio:.2f} (goal >= {GOAL})"
    )
    ok = ratio >= GOAL and r.early_exit_share >= 0.5
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
