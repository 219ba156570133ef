"""Real early-exit inference on image files and tensors, the OOD score of images, and its measured speed-up.

Shared by the CLI (`predict`, `bench-exit`) and the app's upload page and measurement.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch

from ..analysis.latency import LatencyPrediction, LatencyProfile, predict_latency
from ..analysis.policies import as_thresholds, get_policy
from ..config import BenchExitConfig, Record
from ..data.datasets import ImageDataset, decode_all, open_dataset, seeded_subset, transform_for
from ..errors import METError
from ..io.images import load_image
from ..nn.flops import exit_gmacs
from ..nn.model import EarlyExitResult, METModel
from .devices import autocast, synchronizer, timed

if TYPE_CHECKING:
    from ..analysis.ood import OODRule
    from .export import OnnxEarlyExit


@torch.no_grad()
def head_inputs(
    model: METModel,
    data: torch.Tensor | ImageDataset,
    device: torch.device | None = None,
    precision: str = "fp32",
    batch_size: int = 128,
    workers: int = 0,
) -> list[torch.Tensor]:
    """Head inputs of every exit for a tensor of images (N, 3, H, W) or a dataset, batched: K tensors (N, D')
    on the CPU in float32 (`METModel.forward_features`), whatever device and precision ran them."""
    model.eval()
    device = device or next(model.parameters()).device
    if isinstance(data, torch.Tensor):
        chunks: Any = (data[i : i + batch_size] for i in range(0, len(data), batch_size))
    else:
        chunks = (x for x, _, _ in torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers))
    parts = []
    for x in chunks:
        with autocast(device, precision):
            parts.append([z.float().cpu() for z in model.forward_features(x.to(device))])
    return [torch.cat(z) for z in zip(*parts, strict=True)]


def early_exit(
    model: METModel,
    x: torch.Tensor,
    thresholds: float | Sequence[float],
    policy: str = "max-softmax",
    batch_size: int = 64,
    precision: str = "fp32",
    replay: np.ndarray | None = None,
) -> EarlyExitResult:
    """Batched real early exit over preprocessed images x (N, 3, H, W), on the model's device, in batches of
    `batch_size`; `replay` (N,) gives each image's exit instead of the rule (see `METModel.forward_early_exit`).
    thresholds: one global value or one per exit (`policies.as_thresholds`; METError when malformed or out of
    the policy's range). Returns an EarlyExitResult of N rows."""
    pol = get_policy(policy)
    t = as_thresholds(thresholds, model.num_exits, pol)
    device = next(model.parameters()).device
    parts = []
    for i in range(0, len(x), batch_size):
        with autocast(device, precision):
            part = None if replay is None else replay[i : i + batch_size]
            parts.append(model.forward_early_exit(x[i : i + batch_size].to(device), t, pol, part))
    return EarlyExitResult(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("classes", "exits", "confidence", "probs"))
    )


@dataclass
class Prediction:
    """One image's real early-exit answer, or the one sentence saying why it could not be read."""

    file: str
    error: str | None = None
    class_name: str | None = None
    exit: int | None = None  # 0-based
    confidence: float | None = None
    gmacs: float | None = None
    gmacs_full: float | None = None
    exit_probs: list[list[float] | None] | None = None  # per exit; None beyond the exit it left at
    seconds: float | None = None  # wall time per image of the batch it ran in

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if "class_name" in d:
            d["class"] = d.pop("class_name")
        return d


def predict_files(
    model: METModel,
    files: Sequence[str | Path],
    thresholds: float | Sequence[float],
    policy: str = "max-softmax",
    batch_size: int = 64,
    precision: str = "fp32",
) -> list[Prediction]:
    """Per file: class, exit, confidence, GMACs and per-exit probabilities; or an error for that file alone."""
    return predict_images(model, [(str(f), f) for f in files], thresholds, policy, batch_size, precision)


def predict_images(
    model: METModel | OnnxEarlyExit,
    items: Sequence[tuple[str, str | Path | IO[bytes]]],
    thresholds: float | Sequence[float],
    policy: str = "max-softmax",
    batch_size: int = 64,
    precision: str = "fp32",
) -> list[Prediction]:
    """Like `predict_files` for (name, path or binary file object) pairs, e.g. uploads; `model` is a METModel or
    an ONNX export's runner (the same answers: tests/test_export.py)."""
    from .export import OnnxEarlyExit

    if isinstance(model, OnnxEarlyExit):
        m = model.manifest
        tf, gm, names, img_size = m.transform(), m.gmacs, m.class_names, m.img_size

        def run(x: torch.Tensor) -> EarlyExitResult:
            return model(x.numpy(), thresholds, policy, batch_size)
    else:
        tf, gm, img_size = transform_for(model.cfg), exit_gmacs(model), model.cfg.img_size
        names = model.cfg.class_names or [str(c) for c in range(model.cfg.num_classes)]

        def run(x: torch.Tensor) -> EarlyExitResult:
            return early_exit(model, x, thresholds, policy, batch_size, precision)

    results = [Prediction(name) for name, _ in items]
    good, tensors = [], []
    for i, (name, src) in enumerate(items):
        try:
            tensors.append(tf(load_image(src, name, resize_to=img_size)))
            good.append(i)
        except METError as e:
            results[i].error = str(e)
    if good:
        t0 = time.perf_counter()
        res = run(torch.stack(tensors))
        per_image_s = (time.perf_counter() - t0) / len(good)
        for j, i in enumerate(good):
            e = int(res.exits[j])
            r = results[i]
            r.class_name, r.exit, r.confidence = names[int(res.classes[j])], e, float(res.confidence[j])
            r.gmacs, r.gmacs_full, r.seconds = gm[e], gm[-1], per_image_s
            r.exit_probs = [None if np.isnan(p).any() else p.tolist() for p in res.probs[j]]
    return results


def score_images(model, rule: OODRule, items) -> list[float | None]:
    """The OOD score (met_core.analysis.ood) of each (name, path or file) image with a PyTorch METModel (None
    where it cannot be read)."""
    tf = transform_for(model.cfg)
    out: list[float | None] = []
    device = next(model.parameters()).device
    for name, src in items:
        try:
            x = tf(load_image(src, name, resize_to=model.cfg.img_size))[None]
        except METError:
            out.append(None)
            continue
        with torch.no_grad():
            z = model.forward_features(x.to(device), upto=rule.exit)[rule.exit].float().cpu().numpy()
        out.append(float(rule.score(z)[0]))
    return out


@dataclass
class SpeedupResult(Record):
    """Real batched early exit against every image to the last exit (measured), beside the GMACs prediction."""

    predicted_speedup: float
    measured_speedup: float
    early_exit_share: float
    exit_fractions: list[float]
    images: int
    batch_size: int
    repeats: int
    policy: str
    thresholds: list[float | None]
    full_seconds_median: float
    early_seconds_median: float


@dataclass
class _TwoPasses:
    """What `measure_speedup` times, for either engine."""

    gmacs: np.ndarray  # cumulative GMACs per exit
    thresholds: np.ndarray  # (K,), as_thresholds
    sync: Callable[[], None]  # the device's synchronizer
    run_full: Callable[[], None]  # every image to the last exit
    run_early: Callable[[], EarlyExitResult]  # the real batched early exit


def _two_passes(
    model: METModel | OnnxEarlyExit,
    x: torch.Tensor,
    thresholds: float | Sequence[float],
    pol: Any,
    batch_size: int,
    precision: str,
    replay: np.ndarray | None,
) -> _TwoPasses:
    """The two passes `measure_speedup` compares, for a METModel (PyTorch) or an ONNX export's runner."""
    from .export import OnnxEarlyExit

    k = model.num_exits
    t = as_thresholds(thresholds, k, pol)
    if isinstance(model, OnnxEarlyExit):
        xn = x.numpy()
        return _TwoPasses(
            np.asarray(model.manifest.gmacs),
            t,
            synchronizer(torch.device("cpu")),
            lambda: model(xn, [pol.skip(k)] * (k - 1) + [None], pol.name, batch_size),
            lambda: model(xn, t, pol.name, batch_size, replay),
        )
    device = next(model.parameters()).device

    def run_full() -> None:
        with torch.no_grad(), autocast(device, precision):
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(device))

    return _TwoPasses(
        np.asarray(exit_gmacs(model)),
        t,
        synchronizer(device),
        run_full,
        lambda: early_exit(model, x, t, pol.name, batch_size, precision, replay),
    )


def measure_speedup(
    model: METModel | OnnxEarlyExit,
    x: torch.Tensor,
    thresholds: float | Sequence[float],
    policy: str = "max-softmax",
    batch_size: int = 64,
    repeats: int = 5,
    precision: str = "fp32",
    replay: np.ndarray | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SpeedupResult:
    """Real batched early exit vs every image to the last exit: same images, same process, interleaved, median.
    `model` is a METModel (PyTorch) or an ONNX export's runner. `replay` (N,): each image leaves at this exit
    instead of where the rule sends it (a replayed exit pattern: the timing needs no trained weights).
    `on_progress(images, total)` is called after each pass over the images (2 warm-up passes and 2 per repeat),
    counting images run so far; an exception it raises stops the measurement."""
    pol = get_policy(policy)
    two = _two_passes(model, x, thresholds, pol, batch_size, precision, replay)
    k, gm = model.num_exits, two.gmacs
    passes, total = 0, (2 + 2 * repeats) * len(x)

    def passed() -> None:
        nonlocal passes
        passes += 1
        if on_progress is not None:
            on_progress(passes * len(x), total)

    res = two.run_early()  # warm-up, and the exits the prediction is based on
    two.sync()
    passed()
    two.run_full()
    two.sync()
    passed()
    full_s, early_s = [], []
    for _ in range(repeats):
        full_s.append(timed(two.run_full, two.sync))
        passed()
        early_s.append(timed(two.run_early, two.sync))
        passed()
    return SpeedupResult(
        predicted_speedup=float(gm[-1] / gm[res.exits].mean()),
        measured_speedup=float(statistics.median(full_s) / statistics.median(early_s)),
        early_exit_share=float((res.exits < k - 1).mean()),
        exit_fractions=(np.bincount(res.exits, minlength=k) / len(x)).tolist(),
        images=len(x),
        batch_size=batch_size,
        repeats=repeats,
        policy=pol.name,
        thresholds=[float(v) if np.isfinite(v) else None for v in two.thresholds],
        full_seconds_median=statistics.median(full_s),
        early_seconds_median=statistics.median(early_s),
    )


def load_engine(
    checkpoint: str | Path,
    engine: str = "pytorch",
    onnx: str | Path | None = None,
    weights: str | None = None,
    device: Any = "cpu",
) -> METModel | OnnxEarlyExit:
    """The model `predict`, `bench-exit` and `profile` run: the checkpoint in PyTorch on `device`, or its ONNX
    export's runner (`engine="onnx"`; `onnx`: the export folder, default CHECKPOINT/onnx), checked to be of it."""
    from ..nn.checkpoint import load_checkpoint
    from .export import open_export

    if engine == "pytorch":
        return load_checkpoint(checkpoint, weights, device)[0]
    return open_export(checkpoint, onnx)


def bench_images(cfg: BenchExitConfig) -> ImageDataset:
    """The images a measurement runs: `cfg.limit` images of the dataset drawn by `cfg.seed` (`seeded_subset`)."""
    ds = open_dataset(cfg.dataset, split=cfg.split, download=cfg.download, data_root=cfg.data_root or None)
    return seeded_subset(ds, cfg.limit, cfg.seed)


def model_inputs(model: METModel | OnnxEarlyExit, ds: ImageDataset, progress: bool = False) -> torch.Tensor:
    """`ds` preprocessed as the model expects (an export: as its manifest records) and decoded once (N, 3, S, S)."""
    from .export import OnnxEarlyExit

    ds.transform = model.manifest.transform() if isinstance(model, OnnxEarlyExit) else transform_for(model.cfg)
    return decode_all(ds, "decode", progress=progress)[0]


@dataclass
class BenchExitRow:
    """One batch size of `bench_exit`: the measurement, and what a latency profile predicted for its exit shares."""

    measured: SpeedupResult
    profile: LatencyPrediction | None = None

    @property
    def ms_per_image(self) -> float:
        return 1e3 * self.measured.early_seconds_median / self.measured.images

    def to_dict(self) -> dict[str, Any]:
        d = {**self.measured.to_dict(), "measured_ms_per_image": self.ms_per_image}
        return d if self.profile is None else {**d, "profile": self.profile.to_dict()}


def bench_exit(
    model: METModel | OnnxEarlyExit,
    x: torch.Tensor,
    cfg: BenchExitConfig,
    thresholds: float | Sequence[float | None],
    policy: str = "max-softmax",
    precision: str = "fp32",
    profile: LatencyProfile | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[BenchExitRow]:
    """`met bench-exit` and the app's measurement: at each of `cfg.batch`, the real batched early exit against
    every image to the last exit (`measure_speedup`, `cfg.repeats` timed passes, torch seeded by `cfg.seed`), with
    the profile's prediction beside it when a latency profile is given."""
    rows = []
    for b in cfg.batch:
        torch.manual_seed(cfg.seed)
        r = measure_speedup(model, x, thresholds, policy, b, cfg.repeats, precision, on_progress=on_progress)
        rows.append(BenchExitRow(r, None if profile is None else predict_latency(profile, r.exit_fractions, b)))
    return rows
