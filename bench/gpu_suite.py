"""Every GPU figure this project names, from one command, in minutes (GPU time comes in short windows).

Writes DIR/gpu_suite.md and DIR/gpu_suite.json (rewritten after each section, so a run cut short keeps what it
measured): the device, driver and library versions; the peak of a large fp32 and bf16 matmul; training
throughput and model-FLOPs utilisation (FLOPs of one step counted with torch.utils.flop_counter, over the matmul
peak of the same precision) in fp32 and bf16 at the shipped recipe (the checkpoint's ViT-S/14 at 112 px, batch 64)
and at the paper's ViT-B/16 at 224 px; tracing throughput on real CIFAR-10 test images; and the real batched early
exit's measured speed-up against the GMACs- and profile-predicted ones at batch 1 to 1024, the profile taken in
the same run.

Backbones have random weights (throughput does not depend on them; nothing is downloaded). Exits are therefore
*replayed*: each image leaves where the shipped test trace's rule (max-softmax 0.8 by default) sends the test
image in its place, so the work done per exit is the trained model's.

    python bench/gpu_suite.py --pack                   # once, where ../shared/datasets is: bench/gpu/pack/ (~1 MB)
    python bench/gpu_suite.py --out bench/gpu           # on the GPU (< 9 min on one large GPU)
    python bench/gpu_suite.py --smoke --out /tmp/smoke  # the same code on CPU at tiny sizes (tests/test_gpu_suite.py)

The pack (real test images, so never committed: bench/gpu/pack/ is git-ignored) is copied from the dataset at run
time; carry it with the working tree to the GPU machine. Without it the tracing section is skipped, and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from throughput import matmul_peak, seconds, step_flops, time_steps  # noqa: E402 (bench/, the script's folder)

from met_core.analysis.latency import predict_latency  # noqa: E402
from met_core.analysis.policies import as_thresholds, exit_index, get_policy  # noqa: E402
from met_core.config import METConfig, TrainConfig, config_from_dict  # noqa: E402
from met_core.engine.devices import device_name, resolve_device  # noqa: E402
from met_core.engine.distributed import DistContext  # noqa: E402
from met_core.engine.inference import measure_speedup  # noqa: E402
from met_core.engine.profiling import profile_model  # noqa: E402
from met_core.engine.train import TensorSource  # noqa: E402
from met_core.io.checkpoint import read_config  # noqa: E402
from met_core.io.traces import load_trace  # noqa: E402
from met_core.nn.flops import exit_gmacs  # noqa: E402
from met_core.nn.model import METModel  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "cifar10-met"
PACK = ROOT / "bench" / "gpu" / "pack"
PACK_DATASET = ROOT.parent / "shared" / "datasets" / "cifar10" / "test"
PAPER_BACKBONE = "vit_base_patch16_224.augreg_in21k"


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the full run on a GPU, or the smoke run on CPU."""

    recipe_px: int  # the shipped recipe's input size (the checkpoint's own in a full run)
    paper_px: int
    train_batch: int
    train_steps: int
    matmul_n: int
    matmul_inner: int
    exit_batches: tuple[int, ...]
    exit_images: int
    exit_repeats: int
    profile_repeats: int
    trace_images: int
    trace_batch: int
    workers: int
    depth: int | None = None  # keep only this many blocks of each backbone (exits scaled): smoke runs only


FULL = Sizes(112, 224, 64, 20, 8192, 20, (1, 8, 64, 256, 1024), 1024, 3, 10, 512, 256, 4)
SMOKE = Sizes(28, 32, 2, 1, 128, 2, (1, 4), 8, 1, 1, 8, 4, 0, depth=4)


@dataclass
class Peak:
    precision: str
    n: int
    tflops: float


@dataclass
class TrainRow:
    setting: str
    backbone: str
    img_size: int
    batch: int
    precision: str
    gflop_per_step: float  # counted: forward + backward
    seconds_per_step: float  # median over the timed steps
    images_per_s: float
    mfu: float  # counted FLOP/s over the same precision's matmul peak


@dataclass
class TraceRow:
    precision: str
    images: int
    batch: int
    workers: int
    images_per_s: float  # every exit, decoding included (DataLoader)


@dataclass
class ExitRow:
    precision: str
    batch: int
    measured_speedup: float
    gmacs_predicted: float
    profile_predicted: float
    measured_ms_per_image: float
    profile_ms_per_image: float
    profile_error: float  # predicted / measured - 1
    exits: str = "replayed"


@dataclass
class Report:
    """Everything the suite measured; `skipped` names what it did not, and why."""

    smoke: bool
    environment: dict[str, Any]
    peaks: list[Peak] = field(default_factory=list)
    train: list[TrainRow] = field(default_factory=list)
    trace: list[TraceRow] = field(default_factory=list)
    early_exit: list[ExitRow] = field(default_factory=list)
    exit_pattern: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def markdown(self) -> str:
        env = self.environment
        lines = [
            f"# GPU suite{' (smoke run on CPU: tiny sizes, not figures)' if self.smoke else ''}",
            "",
            f"Device: **{env['device_name']}**; " + "; ".join(f"{k} {v}" for k, v in env.items() if k != "device_name"),
            "",
        ]
        if self.peaks:
            lines += ["## Matmul peak", "", "| precision | n | TFLOP/s |", "|---|---|---|"]
            lines += [f"| {p.precision} | {p.n} | {p.tflops:.1f} |" for p in self.peaks] + [""]
        if self.train:
            lines += [
                "## Training throughput and MFU (memory data path, synthetic batches, random weights)",
                "",
                "| setting | backbone | px | batch | precision | GFLOP/step | s/step | images/s | MFU |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r.setting} | {r.backbone} | {r.img_size} | {r.batch} | {r.precision} | "
                f"{r.gflop_per_step:.1f} | {r.seconds_per_step:.4f} | {r.images_per_s:.1f} | {r.mfu:.2f} |"
                for r in self.train
            ] + [""]
        if self.trace:
            lines += [
                "## Tracing throughput (shipped recipe, real CIFAR-10 test images, every exit)",
                "",
                "| precision | images | batch | loader workers | images/s |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {r.precision} | {r.images} | {r.batch} | {r.workers} | {r.images_per_s:.1f} |" for r in self.trace
            ] + [""]
        if self.early_exit:
            p = self.exit_pattern
            lines += [
                "## Real batched early exit (shipped recipe, exits replayed)",
                "",
                f"Exit pattern replayed from `{p['trace']}` ({p['policy']} {p['threshold']}): shares "
                f"{', '.join(f'{100 * s:.1f} %' for s in p['fractions'])} over {p['images']} images; "
                "profile taken in this run.",
                "",
                "| precision | batch | measured speed-up | GMACs-predicted | profile-predicted "
                "| measured ms/image | profile ms/image | profile error | exits |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r.precision} | {r.batch} | {r.measured_speedup:.2f}x | {r.gmacs_predicted:.2f}x | "
                f"{r.profile_predicted:.2f}x | {r.measured_ms_per_image:.3f} | {r.profile_ms_per_image:.3f} | "
                f"{100 * r.profile_error:+.1f} % | {r.exits} |"
                for r in self.early_exit
            ] + [""]
        if self.skipped:
            lines += ["## Not measured", ""] + [f"- {s}" for s in self.skipped] + [""]
        lines += ["Seconds per section: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()), ""]
        return "\n".join(lines)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_suite.json").write_text(json.dumps(asdict(self), indent=2, allow_nan=False) + "\n")
        (out / "gpu_suite.md").write_text(self.markdown())


def environment(device: torch.device) -> dict[str, Any]:
    """Device, driver and library versions (what a figure depends on)."""
    import timm

    env: dict[str, Any] = {
        "device_name": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "cpu threads": torch.get_num_threads(),
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            {
                "CUDA (torch)": torch.version.cuda,
                "cuDNN": torch.backends.cudnn.version(),
                "GPU memory GiB": round(props.total_memory / 2**30, 1),
                "SMs": props.multi_processor_count,
                "TF32 matmul": torch.backends.cuda.matmul.allow_tf32,
                "TF32 cuDNN": torch.backends.cudnn.allow_tf32,
                "driver": _driver_version(),
            }
        )
    return env


def _driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown (nvidia-smi not available)"


def recipe_config(img_size: int) -> METConfig:
    """The shipped checkpoint's model config (ViT-S/14, cls+mean, r = 8, 4 exits) at `img_size`."""
    cfg = config_from_dict(METConfig, read_config(CHECKPOINT)["model"])
    cfg.img_size, cfg.weights, cfg.weights_sha256 = img_size, "none", ""
    return cfg


def random_model(cfg: METConfig, device: torch.device, depth: int | None = None) -> METModel:
    """A MET model with a randomly initialised backbone (timm, no download) and fresh adapters and heads;
    `depth` keeps the first blocks only, with the exits scaled to them (smoke runs)."""
    from met_core.nn.backbones import create_backbone

    torch.manual_seed(0)
    backbone, _ = create_backbone(cfg.backbone, cfg.img_size, weights="none")
    if depth is not None:
        backbone.blocks = backbone.blocks[:depth]
        cfg = dataclasses.replace(cfg, exits=[max(1, e * depth // cfg.exits[-1]) for e in cfg.exits])
    return METModel(backbone, cfg).to(device).eval()


def replayed_exits(policy: str, threshold: float, n: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The exit (0-based) the shipped test trace's rule gives each of `n` seeded test images, and a description."""
    trace = load_trace(CHECKPOINT / "test_trace.npz")
    pol = get_policy(policy)
    exits = exit_index(pol.score(trace.probs()), as_thresholds(threshold, trace.num_exits), pol)
    rows = np.random.default_rng(0).choice(len(exits), size=n, replace=n > len(exits))
    chosen = exits[rows]
    return chosen, {
        "trace": str((CHECKPOINT / "test_trace.npz").relative_to(ROOT)),
        "policy": pol.name,
        "threshold": threshold,
        "images": n,
        "fractions": (np.bincount(chosen, minlength=trace.num_exits) / n).tolist(),
    }


def pack(out: Path, per_class: int, dataset: Path = PACK_DATASET) -> Path:
    """Copy `per_class` seeded test images of each class (as they are: JPEG files) into `out` (an ImageFolder)."""
    from met_core.errors import METError

    if not dataset.is_dir():
        raise METError(f"no dataset at {dataset}; pass --pack-from with a CIFAR-10 test folder (class folders).")
    rng = np.random.default_rng(0)
    shutil.rmtree(out, ignore_errors=True)
    for cls in sorted(p for p in dataset.iterdir() if p.is_dir()):
        files = sorted(cls.glob("*.jpg"))
        (out / cls.name).mkdir(parents=True)
        for i in np.sort(rng.choice(len(files), size=min(per_class, len(files)), replace=False)):
            shutil.copyfile(files[i], out / cls.name / files[i].name)
    return out


class Suite:
    """Runs the sections in order within a time budget; the report is written after each."""

    def __init__(self, device: torch.device, sizes: Sizes, out: Path, budget_s: float, smoke: bool) -> None:
        self.device, self.sizes, self.out, self.budget_s = device, sizes, out, budget_s
        self.precisions = ["fp32", "bf16"]
        self.report = Report(smoke, environment(device))
        self.t0 = time.perf_counter()
        self.peak: dict[str, float] = {}

    def section(self, name: str, fn: Callable[[], None]) -> None:
        left = self.budget_s - (time.perf_counter() - self.t0)
        if left <= 0:
            self.report.skipped.append(f"{name}: the time budget ({self.budget_s:.0f} s) was spent")
        else:
            t = time.perf_counter()
            fn()
            self.report.seconds[name] = time.perf_counter() - t
            print(f"[{time.perf_counter() - self.t0:6.1f} s] {name} done", flush=True)
        self.report.write(self.out)

    def peaks(self) -> None:
        s = self.sizes
        for prec in self.precisions:
            self.peak[prec] = matmul_peak(self.device, prec, s.matmul_n, repeats=3, inner=s.matmul_inner)
            self.report.peaks.append(Peak(prec, s.matmul_n, self.peak[prec] / 1e12))

    def train(self, setting: str, cfg: METConfig) -> None:
        s = self.sizes
        model = random_model(cfg, self.device, s.depth)
        tcfg = TrainConfig(batch_size=s.train_batch)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(s.train_batch, 3, cfg.img_size, cfg.img_size, generator=gen)  # on the CPU: the memory path
        y = torch.arange(s.train_batch) % cfg.num_classes
        plan = [np.arange(s.train_batch)] * (s.train_steps + 1)
        for prec in self.precisions:
            flops = step_flops(model, x, y, tcfg, self.device, prec)
            sec = time_steps(model, TensorSource(x, y, DistContext()), plan, tcfg, self.device, prec)
            self.report.train.append(
                TrainRow(
                    setting,
                    cfg.backbone,
                    cfg.img_size,
                    s.train_batch,
                    prec,
                    flops / 1e9,
                    sec,
                    s.train_batch / sec,
                    flops / sec / self.peak[prec],
                )
            )
        del model

    def trace(self, images: Path) -> None:
        from met_core.data.datasets import open_dataset, transform_for
        from met_core.engine.tracing import run_trace

        s = self.sizes
        model = random_model(recipe_config(s.recipe_px), self.device, s.depth)
        ds = open_dataset(str(images))
        ds = ds.subset(np.arange(min(s.trace_images, len(ds))))
        ds.transform = transform_for(model.cfg)
        gm = exit_gmacs(model)

        def run(subset, precision: str) -> None:
            run_trace(
                model,
                subset,
                gm,
                {},
                batch_size=s.trace_batch,
                features=0,
                progress=False,
                precision=precision,
                workers=s.workers,
            )

        for prec in self.precisions:
            run(ds.subset(np.arange(min(len(ds), s.trace_batch))), prec)  # warm-up
            sec = seconds(lambda p=prec: run(ds, p), self.device)
            self.report.trace.append(TraceRow(prec, len(ds), s.trace_batch, s.workers, len(ds) / sec))

    def early_exit(self, policy: str, threshold: float) -> None:
        s = self.sizes
        model = random_model(recipe_config(s.recipe_px), self.device, s.depth)
        replay, self.report.exit_pattern = replayed_exits(policy, threshold, s.exit_images)
        x = torch.randn(s.exit_images, 3, s.recipe_px, s.recipe_px, generator=torch.Generator().manual_seed(0))
        x = x.to(self.device)
        for prec in self.precisions:
            prof = profile_model(
                model, list(s.exit_batches), prec, repeats=s.profile_repeats, warmup=min(2, s.profile_repeats)
            )
            for b in s.exit_batches:
                r = measure_speedup(model, x, threshold, policy, b, s.exit_repeats, prec, replay=replay)
                lp = predict_latency(prof, r.exit_fractions, b)
                ms = 1e3 * r.early_seconds_median / r.images
                self.report.early_exit.append(
                    ExitRow(
                        prec,
                        b,
                        r.measured_speedup,
                        r.predicted_speedup,
                        lp.speedup,
                        ms,
                        lp.ms_per_image,
                        lp.ms_per_image / ms - 1,
                    )
                )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "gpu"), help="folder for gpu_suite.md and gpu_suite.json")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the code, measures nothing useful")
    ap.add_argument("--budget-s", type=float, default=480, help="skip the sections left after this many seconds")
    ap.add_argument("--policy", default="max-softmax")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--images", default=str(PACK), help="folder of real test images for the tracing rate")
    ap.add_argument("--pack", action="store_true", help="build the image pack (--images) from --pack-from, then stop")
    ap.add_argument("--pack-from", default=str(PACK_DATASET))
    ap.add_argument("--pack-per-class", type=int, default=52)
    args = ap.parse_args()

    if args.pack:
        folder = pack(Path(args.images), args.pack_per_class, Path(args.pack_from))
        files = [f for f in folder.rglob("*") if f.is_file()]
        print(f"packed {len(files)} images, {sum(f.stat().st_size for f in files) / 1e6:.2f} MB, into {folder}")
        return 0
    device = resolve_device("cpu" if args.smoke else args.device)
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device: the suite is for a GPU (use --smoke to check it on CPU)")
        return 2
    sizes = SMOKE if args.smoke else FULL
    suite = Suite(device, sizes, Path(args.out), args.budget_s, args.smoke)
    print(f"device: {suite.report.environment['device_name']}; writing {args.out}/gpu_suite.md", flush=True)
    suite.section("matmul peak", suite.peaks)
    suite.section("train: shipped recipe", lambda: suite.train("shipped recipe", recipe_config(sizes.recipe_px)))
    paper = METConfig(backbone=PAPER_BACKBONE, weights="none", img_size=sizes.paper_px, num_classes=100)
    suite.section("train: paper ViT-B/16", lambda: suite.train("paper (VTAB-1k)", paper))
    images = Path(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        if not images.is_dir() and args.smoke and PACK_DATASET.is_dir():  # the smoke run packs its own few images
            images = pack(Path(tmp) / "pack", 2)
        if images.is_dir():
            suite.section("trace", lambda: suite.trace(images))
        else:
            suite.report.skipped.append(f"trace: no image pack at {images} (python bench/gpu_suite.py --pack)")
        suite.section("early exit", lambda: suite.early_exit(args.policy, args.threshold))
    print(suite.report.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
