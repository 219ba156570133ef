"""Int8 early exit: which onnxruntime quantization to ship, chosen on held-out images, and what the shipped one
(`met export --quantize int8`) costs over all the test images, exit by exit and in the early-exit what-if.

1. The choice, on held-out images only (`--choose` seeded images of the checkpoint's calibration set, never test):
   dynamic quantization (int8 weights, activations quantized per run) with one scale per tensor, static QDQ
   quantization (activation ranges from `--calibration` seeded images the checkpoint trained on, MinMax) per
   tensor and per output channel, and what `met export --quantize int8` does. For each: per-exit accuracy, the
   share of images whose class equals fp32's (agreement), and the ms per image of a full pass at batch 64. The
   variant with the highest mean agreement over the exits is the one to ship: PASS when it is the export's.
2. The export's int8 graphs traced the way `met trace --engine onnx` does, over the held-out calibration set and
   every test image. Per exit: fp32 (the checkpoint's shipped traces, PyTorch) against int8 test accuracy, image
   for image (exact McNemar test and interval, `met_core.analysis.whatif.exit_differences`), and agreement.
3. The early-exit what-if recomputed from the int8 exits: each rule chosen on the engine's own held-out trace (a
   budget of 50 % of the last exit's GMACs; certified at most 1 pt below the last exit, delta 0.1) and measured
   on its own test trace, beside the same rules for fp32; the time per image at batch 64 predicted from each
   engine's latency profile (fp32 ONNX and int8, measured in this run): the combined saving of early exit and
   int8 against fp32 ONNX running every image to the last exit.

    python bench/int8.py [--checkpoint checkpoints/cifar10-full-met] [--choose 2000] [--record]

With --record the printed report is also written to CHECKPOINT/int8.md (RESULTS.md includes it). About 10 minutes
on the 2 CPU cores here.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from met_core.analysis.calibration import calibrate_budget
from met_core.analysis.certify import certify_max_loss
from met_core.analysis.latency import predict_latency
from met_core.analysis.whatif import TraceArrays, exit_differences, whatif
from met_core.config import TraceConfig
from met_core.data.datasets import dataset_for_checkpoint, decode_all, open_dataset, seeded_subset, transform_for
from met_core.engine.devices import timed
from met_core.engine.export import INT8_OPS, OnnxEarlyExit, export_onnx
from met_core.engine.profiling import profile_onnx
from met_core.engine.tracing import trace_checkpoint
from met_core.io.checkpoint import CAL_TRACE_FILE, checkpoint_hash
from met_core.io.paths import locate_dataset
from met_core.io.traces import load_trace
from met_core.nn.checkpoint import load_checkpoint
from met_core.nn.flops import exit_gmacs

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = "met export --quantize int8"
BATCH = 64


def alternatives(stage_inputs: list[np.ndarray]) -> dict[str, Callable[[str, str, int], None]]:
    """The other quantizations tried: (fp32 graph, int8 graph to write, stage index) -> None."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, x: np.ndarray) -> None:
            self.batches = iter([{"input": x[i : i + 32]} for i in range(0, len(x), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    def static(per_channel: bool) -> Callable[[str, str, int], None]:
        return lambda src, dst, k: quantize_static(
            src,
            dst,
            Reader(stage_inputs[k]),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=INT8_OPS,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
        )

    return {
        "dynamic, one scale per tensor": lambda src, dst, k: quantize_dynamic(
            src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OPS
        ),
        "static QDQ, per tensor": static(False),
        "static QDQ, per output channel": static(True),
    }


def ms_per_image(runner: OnnxEarlyExit, x: np.ndarray, repeats: int = 5) -> float:
    """A full pass (every exit) of one batch: median ms per image after one warm-up."""
    runner.all_logits(x)
    return 1e3 * statistics.median(timed(lambda: runner.all_logits(x)) for _ in range(repeats)) / len(x)


def logits_of(runner: OnnxEarlyExit, x: np.ndarray) -> np.ndarray:
    return np.concatenate([runner.all_logits(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "cifar10-full-met"))
    ap.add_argument("--choose", type=int, default=2000, help="held-out images the variants are compared on")
    ap.add_argument("--calibration", type=int, default=256, help="training images static quantization calibrates on")
    ap.add_argument("--record", action="store_true", help="also write the report to CHECKPOINT/int8.md")
    args = ap.parse_args()
    report: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice, once per graph, on the root logger
    ck = Path(args.checkpoint)
    model, cfg = load_checkpoint(ck)
    sha, gm = checkpoint_hash(ck), exit_gmacs(model)
    held_trace, test_trace = load_trace(ck / CAL_TRACE_FILE), load_trace(ck / "test_trace.npz")
    tf = transform_for(model.cfg)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {q: Path(tmp) / q for q in ("fp32", "int8")}
        for q, folder in folders.items():
            export_onnx(model, folder, "max-softmax", 0.8, sha, gm, q)
        fp32, int8 = OnnxEarlyExit(folders["fp32"]), OnnxEarlyExit(folders["int8"])

        # 1. the choice, on held-out images
        train = open_dataset(cfg["data"]["root"])
        where = {s: i for i, s in enumerate(train.ids)}
        trained = np.array([where[s] for s in cfg["data"]["train_ids"]])
        cal = train.subset(np.sort(np.random.default_rng(0).choice(trained, args.calibration, replace=False)))
        cal.transform = tf
        stage_inputs = [decode_all(cal, "decode", progress=False)[0].numpy()]
        for k in range(fp32.num_exits - 1):
            stage_inputs.append(fp32.run_stage(k, stage_inputs[-1])[0])
        held = seeded_subset(dataset_for_checkpoint(cfg, None, "val", False), args.choose, seed=0)
        held.transform = tf
        xh, yh = (a.numpy() for a in decode_all(held, "decode", progress=False))
        ref = logits_of(fp32, xh).argmax(-1)
        say(
            f"{ck.name}: int8 quantizations compared on {len(yh):,} held-out images (seeded, of its calibration set; "
            f"never test); static calibrated on {args.calibration} seeded images it trained on; onnxruntime "
            f"{fp32.threads} threads; full pass at batch {BATCH}, median of 5"
        )
        say()
        say("| quantization | accuracy per exit (%) | agreement with fp32 per exit (%) | mean agreement | ms/image |")
        say("|---|---|---|---|---|")
        rows = {"fp32 (no quantization)": fp32, SHIPPED + " (dynamic, one scale per output channel)": int8}
        for name, fn in alternatives(stage_inputs).items():
            folder = Path(tmp) / f"variant{len(rows)}"
            folder.mkdir()
            shutil.copy(folders["fp32"] / "exits.json", folder)
            for k, stage in enumerate(fp32.manifest.stages):
                fn(str(folders["fp32"] / stage), str(folder / stage), k)
            rows[name] = OnnxEarlyExit(folder)
        agreement = {}
        for name, runner in rows.items():
            pred = logits_of(runner, xh).argmax(-1)
            acc, agree = (pred == yh[:, None]).mean(0), (pred == ref).mean(0)
            agreement[name] = agree.mean()
            say(
                f"| {name} | {' / '.join(f'{100 * a:.2f}' for a in acc)} | "
                f"{' / '.join(f'{100 * a:.1f}' for a in agree)} | {100 * agree.mean():.1f} | "
                f"{ms_per_image(runner, xh[:BATCH]):.2f} |"
            )
        best = max((n for n in agreement if not n.startswith("fp32")), key=agreement.get)
        choice_ok = best.startswith(SHIPPED)
        say()
        say(f"Highest mean agreement with fp32: {best}.")

        # 2. the export's int8 exits over the held-out set and every test image
        test_root = locate_dataset(cfg["data"]["root"].replace("/train", "/test"))
        print("tracing the int8 exits (held-out, then test)", flush=True)
        t8 = {
            "held-out": trace_checkpoint(ck, TraceConfig(split="val", batch_size=BATCH), onnx=int8, progress=True),
            "test": trace_checkpoint(
                ck, TraceConfig(dataset=str(test_root), split="test", batch_size=BATCH), onnx=int8, progress=True
            ),
        }
        if not (np.array_equal(t8["test"].ids, test_trace.ids) and np.array_equal(t8["held-out"].ids, held_trace.ids)):
            raise SystemExit("the int8 traces do not cover the shipped traces' images in their order")
        a32, a8 = TraceArrays.from_trace(test_trace), TraceArrays.from_trace(t8["test"])
        say()
        say(
            f"Over all {len(a8.labels):,} test images, fp32 (the shipped trace, PyTorch) against int8 "
            f"({SHIPPED}), exit by exit (95 % intervals; McNemar's exact test):"
        )
        say()
        say(
            "| exit | fp32 accuracy (%) | int8 accuracy (%) | int8 - fp32 (pt, 95 % interval) | p-value | "
            "agreement (%) |"
        )
        say("|---|---|---|---|---|---|")
        for k, d in enumerate(exit_differences(a8, a32)):
            say(
                f"| {k + 1} | {100 * a32.correct[:, k].mean():.2f} | {100 * a8.correct[:, k].mean():.2f} | "
                f"{100 * d.difference:+.2f} ({100 * d.lo:+.2f} to {100 * d.hi:+.2f}) | {d.p_value:.2g} | "
                f"{100 * (a8.pred[:, k] == a32.pred[:, k]).mean():.1f} |"
            )

        # 3. the what-if from each engine's own traces, and its predicted time
        print("profiling both ONNX engines", flush=True)
        profiles = {
            "fp32": profile_onnx(fp32, [1, 8, BATCH], repeats=5),
            "int8": profile_onnx(int8, [1, 8, BATCH], repeats=5),
        }
        base = predict_latency(profiles["fp32"], [0.0] * (fp32.num_exits - 1) + [1.0], BATCH).ms_per_image
        say()
        say(
            "The early-exit what-if from each engine's own traces: rules chosen on its held-out trace, measured on its "
            f"test trace (simulated from the traced exits, 95 % intervals); ms per image at batch {BATCH} predicted "
            "from each engine's latency profile measured in this run (onnxruntime), against fp32 ONNX running every "
            f"image to the last exit ({base:.2f} ms per image):"
        )
        say()
        say(
            "| rule, chosen on the held-out images | engine | test accuracy (%) | share of the last exit's GMACs | "
            "leaving at each exit | predicted ms/image | saving against fp32 full |"
        )
        say("|---|---|---|---|---|---|---|")
        engines = {
            "fp32": (TraceArrays.from_trace(held_trace), a32),
            "int8": (TraceArrays.from_trace(t8["held-out"]), a8),
        }
        for rule, choose in (
            ("budget 50 % of the last exit's GMACs", lambda c: calibrate_budget(c, 0.5).thresholds),
            (
                "certified: at most 1 pt below the last exit, delta 0.1",
                lambda c: certify_max_loss(c, 0.01, 0.1).thresholds,
            ),
            ("every image to the last exit", lambda c: [2.0] * (c.num_exits - 1) + [None]),
        ):
            for eng, (c, a) in engines.items():
                th = choose(c) or [2.0] * (c.num_exits - 1) + [None]
                r = whatif(a, th, intervals=True)
                ms = predict_latency(profiles[eng], r.exit_fractions, BATCH).ms_per_image
                say(
                    f"| {rule} | {eng} | {100 * r.accuracy:.2f} ({100 * r.intervals.accuracy.lo:.2f}-"
                    f"{100 * r.intervals.accuracy.hi:.2f}) | {r.gmacs / a.gmacs[-1]:.0%} | "
                    + " / ".join(f"{100 * f:.0f}%" for f in r.exit_fractions)
                    + f" | {ms:.2f} | {base / ms:.2f}x |"
                )
    say()
    say(
        f"{'PASS' if choice_ok else 'FAIL'}: {SHIPPED} is the quantization that agrees best with fp32 on held-out "
        "images"
    )
    if args.record:
        (ck / "int8.md").write_text("\n".join(report) + "\n")
    return 0 if choice_ok else 1


if __name__ == "__main__":
    sys.exit(main())
