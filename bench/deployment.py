"""Where early exit stops paying, and whether the latency profile predicts it: real batched early exit at
several batch sizes, with the PyTorch engine and the per-stage ONNX export (onnxruntime), in one run.

For each engine and batch size: the measured speed-up over running every image to the last exit, the speed-up
GMACs predict, and the one the checkpoint's latency profile predicts (`met profile`). Goal (issue 14): the
profile's predicted time per image within 10 % of the measured one at batch 64 and 256 (PyTorch engine).
The profile is measured in the same run, just before (a ratio from one run: on a shared machine the same pass
timed minutes apart varies by several per cent); `--profile FILE` uses a stored one instead (e.g. the shipped
`latency.json`).

    python bench/deployment.py [--checkpoint checkpoints/cifar10-met] [--threshold 0.8] [--images 512] [--record]

With --record the printed table is also written to CHECKPOINT/deployment.md (RESULTS.md includes it).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from met_core.checkpoint import checkpoint_hash, load_checkpoint
from met_core.data import decode_all, open_dataset, transform_for
from met_core.devices import device_name
from met_core.export import OnnxEarlyExit, export_onnx
from met_core.flops import exit_gmacs
from met_core.inference import measure_speedup
from met_core.latency import predict_latency, profile_model, read_profile
from met_core.paths import locate_dataset

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "cifar10-met"))
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", default="1,8,64,256")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="also write the table to CHECKPOINT/deployment.md")
    ap.add_argument("--profile", help="a stored latency.json to predict with (default: profile in this run)")
    args = ap.parse_args()
    report: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        report.append(line)

    batches = [int(b) for b in args.batch.split(",")]
    ck = Path(args.checkpoint)
    model, cfg = load_checkpoint(ck)
    if args.profile:
        prof, source = read_profile(args.profile, model.num_exits), args.profile
    else:
        prof, source = profile_model(model, batches), "measured in this run"
    root = locate_dataset(cfg["data"]["root"].replace("/train", "/test"))
    ds = open_dataset(str(root))
    ds = ds.subset(np.sort(np.random.default_rng(0).choice(len(ds), args.images, replace=False)))
    ds.transform = transform_for(model.cfg)
    x, _ = decode_all(ds, "decode", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, Path(tmp), "max-softmax", args.threshold, checkpoint_hash(ck), exit_gmacs(model))
        engines = {"pytorch": model, "onnx": OnnxEarlyExit(tmp)}
        say(f"{ck.name} on {args.images} CIFAR-10 test images, max-softmax threshold {args.threshold}; "
            f"{device_name(next(model.parameters()).device)}; profile ({source}): {prof.device_name}, "
            f"{prof.threads} threads")
        say("| engine | batch | measured speed-up | GMACs-predicted | profile-predicted | measured ms/image | "
            "profile ms/image | profile error |")
        say("|---|---|---|---|---|---|---|---|")
        ok = True
        for name, eng in engines.items():
            for b in batches:
                r = measure_speedup(eng, x, args.threshold, "max-softmax", b, args.repeats)
                measured_ms = 1e3 * r.early_seconds_median / r.images
                lp = predict_latency(prof, r.exit_fractions, b)
                err = lp.ms_per_image / measured_ms - 1
                say(f"| {name} | {b} | {r.measured_speedup:.2f}x | {r.predicted_speedup:.2f}x | {lp.speedup:.2f}x | "
                    f"{measured_ms:.2f} | {lp.ms_per_image:.2f} | {100 * err:+.1f} % |")
                if name == "pytorch" and b in (64, 256):
                    ok &= abs(err) <= GOAL
    say(f"{'PASS' if ok else 'FAIL'}: profile-predicted time within {GOAL:.0%} of the measured time at batch 64 "
        "and 256 (PyTorch engine)")
    if args.record:
        (ck / "deployment.md").write_text("\n".join(report) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
