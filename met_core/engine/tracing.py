"""Making traces: every exit of a checkpoint over a dataset split, in PyTorch (batched, one or several processes)
or through its ONNX export. The file format and its reader are met_core.io.traces.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import METError
from ..io.traces import MAC_NOTE, SIMULATED_NOTE, Trace, check_trace_size

if TYPE_CHECKING:
    from ..config import RuntimeConfig, TraceConfig
    from ..data.datasets import ImageDataset
    from ..nn.model import METModel
    from .distributed import DistContext


def run_trace(
    model: METModel,
    ds: ImageDataset,
    gmacs: list[float],
    meta: dict[str, Any],
    batch_size: int = 64,
    features: int = 2000,
    seed: int = 0,
    progress: bool = True,
    precision: str = "fp32",
    workers: int = 0,
    ctx: DistContext | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Trace | None:
    """Run every exit over `ds` once, batched, on the model's device; keep logits for all samples and head
    inputs for a seeded subset. `on_batch(done, total)` is called after each batch with the images traced so far
    and in all (this process's share; the app's progress bar);
    it may raise (e.g. TraceCancelled) to stop the run.

    Under torchrun the batches (the same ones one process would run) are dealt out to the processes in turn;
    each fills its rows and the main process sums the disjoint parts, so its trace equals a one-process trace,
    in the dataset's order. Other processes return None.
    """
    import torch
    from tqdm.auto import tqdm

    from .devices import autocast
    from .distributed import DistContext, sum_across

    ctx = ctx or DistContext()
    model.eval()
    device = next(model.parameters()).device
    n = len(ds)
    rng = np.random.default_rng(seed)
    feat_idx = np.sort(rng.choice(n, size=min(features, n), replace=False)) if features > 0 else np.zeros(0, np.int64)
    slot = np.full(n, -1)
    slot[feat_idx] = np.arange(len(feat_idx))
    k, c, d = model.num_exits, model.cfg.num_classes, model.feature_dim
    logits = torch.zeros((n, k, c), dtype=torch.float32)
    feats = torch.zeros((k, len(feat_idx), d), dtype=torch.float32)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    mine = batches[ctx.rank :: ctx.world_size]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=mine, num_workers=workers, pin_memory=device.type == "cuda")
    done, todo = 0, sum(len(b) for b in mine)
    for x, _, idx in tqdm(loader, desc="trace", disable=not progress, unit="batch", total=len(mine)):
        with torch.no_grad(), autocast(device, precision):
            z = model.forward_features(x.to(device, non_blocking=True))
            logits[idx] = torch.stack(model.forward_head(z), 1).float().cpu()
        rows = slot[idx.numpy()]
        keep = rows >= 0
        if keep.any():
            feats[:, torch.from_numpy(rows[keep])] = torch.stack(z)[:, torch.from_numpy(keep).to(device)].float().cpu()
        done += len(idx)
        if on_batch is not None:
            on_batch(done, todo)
    logits, feats = sum_across(logits, ctx), sum_across(feats, ctx)  # each row was written by one process only
    if not ctx.is_main:
        return None
    return Trace(
        logits.numpy().astype(np.float16),
        np.asarray(ds.labels),
        np.asarray(ds.ids, dtype=str),
        np.asarray(gmacs),
        list(ds.class_names),
        feat_idx,
        feats.numpy().astype(np.float16),
        meta,
    ).validate("the new trace")


def run_trace_onnx(
    runner: Any, ds: ImageDataset, meta: dict[str, Any], batch_size: int = 64, workers: int = 0, progress: bool = False
) -> Trace:
    """Every exit's logits over `ds` from an ONNX export's runner (no head inputs), as a trace."""
    import torch
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    logits = np.concatenate(
        [runner.all_logits(x.numpy()) for x, _, _ in tqdm(loader, desc="trace", unit="batch", disable=not progress)]
    )
    k, d = runner.num_exits, 0
    return Trace(
        logits.astype(np.float16),
        np.asarray(ds.labels),
        np.asarray(ds.ids, dtype=str),
        np.asarray(runner.manifest.gmacs),
        list(ds.class_names),
        np.zeros(0, np.int64),
        np.zeros((k, 0, d), np.float16),
        meta,
    ).validate("the new trace")


class TraceCancelled(METError):
    """Raised from an `on_batch` hook to stop a trace; nothing is written."""


def _feature_dim(checkpoint: Path) -> int:
    """Width of the head input, read from the first head's weight shape in the safetensors header (no tensors)."""
    from safetensors import safe_open

    from ..io.checkpoint import WEIGHTS_FILE

    with safe_open(str(checkpoint / WEIGHTS_FILE), "np") as f:
        heads = [k for k in f.keys() if k.startswith("heads.") and k.endswith(".weight")]
        return int(f.get_slice(heads[0]).get_shape()[1]) if heads else 0


def _check_classes(ds: Any, want: list[str]) -> None:
    """The dataset holds images of exactly the checkpoint's classes, in its order; else one sentence (METError)."""
    if len(ds.class_names) != len(want):
        one = len(ds.class_names) == 1
        raise METError(
            f"the dataset has {'one class' if one else f'{len(ds.class_names)} classes'} and the checkpoint "
            f"{len(want)}; trace a dataset with the checkpoint's classes (one sub-folder per class"
            + (f", so perhaps the folder one level down: {Path(ds.root) / ds.class_names[0]})." if one else ").")
        )
    if list(ds.class_names) != want:
        raise METError(
            f"the dataset's classes {list(ds.class_names)[:5]}... differ from the checkpoint's "
            f"{want[:5]}...; name its sub-folders as the checkpoint's classes."
        )
    if not len(ds):
        raise METError("the dataset has no images; put image files (.jpg, .png, ...) in its class sub-folders.")


def trace_checkpoint(
    checkpoint: str | Path,
    options: TraceConfig,
    runtime: RuntimeConfig | None = None,
    *,
    weights: str | None = None,
    device: Any = "cpu",
    ctx: DistContext | None = None,
    progress: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    notes: Callable[[str], None] | None = None,
    on_model: Callable[[], None] | None = None,
    onnx: Any = None,
) -> Trace | None:
    """The trace of a checkpoint over a dataset, as `met trace` and the app's Models page make it (`options`: which
    images; `runtime`: its precision and loader workers, default fp32 and none; `device`: where the model runs): the
    dataset is checked against the checkpoint's classes before any model is loaded (one sentence, at once), and the
    trace records which model made it. `on_model()` is called just before the model is loaded, `on_batch` and
    `notes` as in `run_trace` and `dataset_for_checkpoint`. `onnx`: an export's runner
    (`met_core.engine.export.OnnxEarlyExit`, e.g. int8) runs the exits instead of PyTorch (logits only: no head
    inputs are kept)."""
    from ..config import METConfig, RuntimeConfig, config_from_dict
    from ..data.datasets import dataset_for_checkpoint, seeded_subset, transform_for
    from ..io.checkpoint import checkpoint_hash, read_config
    from ..nn.checkpoint import load_checkpoint
    from ..nn.flops import exit_gmacs
    from .export import check_export

    # everything that needs no model first (the folder, its classes, its images): a mismatch is answered at once
    cfg = read_config(Path(checkpoint), own_weights=weights is not None)
    mcfg = config_from_dict(METConfig, cfg["model"])
    if onnx is not None:
        check_export(onnx, checkpoint)
    o, runtime = options, runtime or RuntimeConfig(workers=0)
    dataset, split = o.dataset or None, o.split
    ds = dataset_for_checkpoint(cfg, dataset, split, o.download, o.data_root or None, o.holdout, o.seed)
    for note in ds.notes:
        (notes or (lambda _: None))(note)
    _check_classes(ds, list(mcfg.class_names))
    ds = seeded_subset(ds, o.limit, o.seed)
    rows = 0 if onnx is not None else o.features
    id_chars = max((len(str(i)) for i in ds.ids), default=0)
    check_trace_size(len(ds), len(mcfg.exits), len(mcfg.class_names), rows, _feature_dim(Path(checkpoint)), id_chars)
    if onnx is None:
        if on_model is not None:
            on_model()
        model, cfg = load_checkpoint(checkpoint, weights, device)
    ds.transform = transform_for(mcfg)
    meta = {
        "checkpoint": Path(checkpoint).name,
        "checkpoint_sha256": checkpoint_hash(checkpoint),
        "dataset": dataset or cfg.get("data", {}).get("dataset"),
        "dataset_root": ds.root,
        "split": split,
        "exits": mcfg.exits,
        "mac_note": MAC_NOTE,
        "note": SIMULATED_NOTE,
    }
    if onnx is not None:
        meta["engine"] = f"onnx {onnx.manifest.quantization}"
        return run_trace_onnx(onnx, ds, meta, o.batch_size, runtime.workers, progress)
    return run_trace(
        model,
        ds,
        exit_gmacs(model),
        meta,
        batch_size=o.batch_size,
        features=o.features,
        seed=o.seed,
        progress=progress,
        precision=runtime.precision,
        workers=runtime.workers,
        ctx=ctx,
        on_batch=on_batch,
    )
