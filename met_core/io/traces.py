"""The trace file: one pass of a checkpoint over a dataset split, from which everything interactive is computed.

A trace is a NumPy `.npz` read with `allow_pickle=False`. Arrays (N samples, K exits, C classes):
  logits         float16 (N, K, C)   every exit's logits for every sample
  labels         int64   (N,)        true class
  ids            str     (N,)        sample ids (paths relative to the dataset root for folders)
  gmacs          float64 (K,)        cumulative GMACs to leave at each exit (1 multiply-add = 1)
  class_names    str     (C,)
  feature_index  int64   (M,)        rows whose head inputs are stored (a fixed, seeded subset)
  features       float16 (K, M, D)   head inputs z_k of those rows
  meta           str     ()          JSON: format, checkpoint name and sha256, dataset, root, split, exits
"""
from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import METError
from .limits import MAX_TEXT_CHARS, MAX_TRACE_BYTES, regular_file

if TYPE_CHECKING:
    from .data import ImageDataset
    from .distributed import DistContext
    from .model import METModel

FORMAT = "met-trace/1"
SIMULATED_NOTE = "simulated from cached exit outputs"
REQUIRED = ("logits", "labels", "ids", "gmacs", "class_names", "feature_index", "features", "meta")


@dataclass
class Trace:
    logits: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    gmacs: np.ndarray
    class_names: list[str]
    feature_index: np.ndarray
    features: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_exits(self) -> int:
        return self.logits.shape[1]

    def probs(self, temperatures: Sequence[float] | None = None) -> np.ndarray:
        """Softmax probabilities (N, K, C), float32; each exit's logits divided by its temperature if given."""
        z = self.logits.astype(np.float32)
        if temperatures is not None:
            z = z / np.asarray(temperatures, dtype=np.float32)[None, :, None]
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def validate(self, source: str = "trace") -> Trace:
        """One sentence per inconsistency: shapes, lengths, finiteness, emptiness."""
        kinds = {"logits": "f", "labels": "iu", "gmacs": "fiu", "feature_index": "iu", "features": "f", "ids": "U"}
        for name, kind in kinds.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in kind:
                raise METError(f"{source}: {name} has type {getattr(arr, 'dtype', type(arr).__name__)}; the file is "
                               "not a MET trace or is damaged: re-create it.")
        for name, ndim in (
            ("logits", 3),
            ("labels", 1),
            ("ids", 1),
            ("gmacs", 1),
            ("feature_index", 1),
            ("features", 3),
        ):
            if getattr(self, name).ndim != ndim:
                raise METError(
                    f"{source}: {name} must have {ndim} dimension(s), got shape {getattr(self, name).shape}; "
                    "re-create the trace."
                )
        n = len(self.labels)
        if n == 0 or self.logits.shape[0] == 0:
            raise METError(f"{source} is empty (no samples); re-run `python -m met_core trace` on a non-empty dataset.")
        if self.logits.shape[0] != n or len(self.ids) != n:
            raise METError(
                f"{source} has mismatched lengths (logits {self.logits.shape[0]}, labels {n}, "
                f"ids {len(self.ids)}); it is damaged: re-create it."
            )
        if len(self.gmacs) != self.num_exits:
            raise METError(f"{source} has {len(self.gmacs)} GMACs entries for {self.num_exits} exits; re-create it.")
        if len(self.class_names) != self.logits.shape[2]:
            raise METError(f"{source} has {len(self.class_names)} class names for {self.logits.shape[2]} classes.")
        if self.logits.shape[1] == 0 or self.logits.shape[2] < 2:
            raise METError(
                f"{source} has {self.logits.shape[1]} exits and {self.logits.shape[2]} classes; re-create it."
            )
        if not (np.isfinite(self.gmacs).all() and (self.gmacs > 0).all() and (np.diff(self.gmacs) > 0).all()):
            raise METError(
                f"{source} has GMACs {self.gmacs.tolist()}: they must be positive and increase with the "
                "exit; re-create the trace."
            )
        if not np.isfinite(self.logits).all():
            raise METError(
                f"{source} contains NaN or inf logits; the model or the file is broken: re-create the trace."
            )
        if ((self.labels < 0) | (self.labels >= self.logits.shape[2])).any():
            raise METError(f"{source} has labels outside 0..{self.logits.shape[2] - 1}.")
        if self.features.shape[1] != len(self.feature_index) or (
            len(self.feature_index)
            and (
                self.feature_index.min() < 0
                or self.feature_index.max() >= n
                or self.features.shape[0] != self.num_exits
            )
        ):
            raise METError(f"{source} has a feature subset that does not fit its samples; re-create it.")
        if len(self.feature_index) and not np.isfinite(self.features).all():
            raise METError(f"{source} contains NaN or inf features; re-create the trace.")
        ids = self.ids.astype(str)
        suspect = (  # every unsafe id is among these (a quick vectorised pass; ids are checked one by one only here)
            (np.char.str_len(ids) == 0) | np.char.startswith(ids, "/") | np.char.startswith(ids, "\\")
            | (np.char.find(ids, "..") >= 0) | ("\x00" in "".join(ids)))  # (numpy cannot search for a NUL)
        bad = next((i for i in ids[suspect] if not _safe_id(str(i))), None)
        if bad is not None:
            raise METError(
                f"{source} has the sample id {bad[:80]!r}, which leaves the dataset folder (absolute or "
                "'..'); a trace only names files inside its dataset: re-create it."
            )
        return self


def _safe_id(sample_id: str) -> bool:
    """Sample ids are paths relative to the dataset root; none may climb out of it."""
    p = PurePath(sample_id.replace("\\", "/"))
    return bool(sample_id) and not p.is_absolute() and ".." not in p.parts and "\x00" not in sample_id


def save_trace(path: str | Path, trace: Trace) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        logits=trace.logits.astype(np.float16),
        labels=trace.labels.astype(np.int64),
        ids=np.asarray(trace.ids, dtype=str),
        gmacs=np.asarray(trace.gmacs, dtype=np.float64),
        class_names=np.asarray(trace.class_names, dtype=str),
        feature_index=trace.feature_index.astype(np.int64),
        features=trace.features.astype(np.float16),
        meta=np.asarray(json.dumps({"format": FORMAT, **trace.meta})),
    )
    tmp.replace(path)


# what each array may be: dtype kinds and dimensions (checked from the .npy headers, before any data is read)
ARRAY_KINDS = {"logits": ("f", 3), "labels": ("iu", 1), "ids": ("U", 1), "gmacs": ("fiu", 1),
               "class_names": ("U", 1), "feature_index": ("iu", 1), "features": ("f", 3), "meta": ("U", 0)}


def npy_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of every required array, read from the .npy headers inside the archive: nothing is
    decompressed beyond them, so a small file that would inflate to gigabytes is refused for what it claims."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        missing = [k for k in REQUIRED if f"{k}.npy" not in names]
        if missing:
            raise METError(f"{path} is not a MET trace (missing {', '.join(missing)}).")
        for k in REQUIRED:
            with zf.open(f"{k}.npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise METError(f"{path}: {k} has .npy format {version}; re-create the trace.")
            out[k] = (tuple(int(d) for d in shape), np.dtype(dtype))
    return out


def check_headers(path: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Kinds, dimensions and total size of the arrays, before they are read (limits.MAX_TRACE_BYTES)."""
    total = 0
    for k, (shape, dtype) in headers.items():
        kinds, ndim = ARRAY_KINDS[k]
        if dtype.hasobject:
            raise METError(f"{path} holds pickled objects; MET never unpickles: re-create the trace.")
        if dtype.kind not in kinds or len(shape) != ndim:
            raise METError(f"{path}: {k} is {dtype} with shape {shape}; the file is not a MET trace or is damaged: "
                           "re-create it.")
        if dtype.kind == "U" and dtype.itemsize // 4 > MAX_TEXT_CHARS[k]:
            raise METError(f"{path}: {k} holds strings of up to {dtype.itemsize // 4:,} characters, more than the "
                           f"{MAX_TEXT_CHARS[k]:,} allowed; it is not a trace MET wrote.")
        total += math.prod(shape) * dtype.itemsize
    if total > MAX_TRACE_BYTES:
        raise METError(f"{path} would take {total:,} bytes once decompressed, more than the {MAX_TRACE_BYTES:,} "
                       "allowed for a trace; it is not a trace MET wrote.")


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace; never unpickles, never decompresses more than its headers promise within
    the bound, and normalises the arrays to the dtypes the code assumes."""
    path = Path(path)
    if not path.exists():
        raise METError(f"trace file {path} does not exist; create one with `met trace`.")
    regular_file(path, "a trace", MAX_TRACE_BYTES)
    if not zipfile.is_zipfile(path):
        raise METError(f"{path} is not a trace file (a .npz archive written by `met trace`).")
    try:
        check_headers(path, npy_headers(path))
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in REQUIRED}
    except METError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise METError(f"{path} holds pickled objects; MET never unpickles: re-create the trace.") from None
        raise METError(f"{path} is not a readable trace ({str(e)[:200]}).") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise METError(f"{path} is not a readable trace file ({type(e).__name__}); re-create it.") from None
    try:
        meta = json.loads(str(arrays["meta"]))
    except (json.JSONDecodeError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise METError(f"{path} has unreadable metadata; re-create the trace.")
    if meta.get("format") != FORMAT:
        raise METError(f"{path} has format {str(meta.get('format'))[:40]!r}, expected '{FORMAT}'.")
    labels = arrays["labels"]
    if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise METError(f"{path} has labels beyond any class; re-create the trace.")
    return Trace(arrays["logits"], labels.astype(np.int64), arrays["ids"], arrays["gmacs"].astype(np.float64),
                 [str(c) for c in arrays["class_names"]], arrays["feature_index"].astype(np.int64),
                 arrays["features"], meta).validate(str(path))


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


def run_trace_onnx(runner: Any, ds: ImageDataset, meta: dict[str, Any], batch_size: int = 64, workers: int = 0,
                   progress: bool = False) -> Trace:
    """Every exit's logits over `ds` from an ONNX export's runner (no head inputs), as a trace."""
    import torch
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    logits = np.concatenate([runner.all_logits(x.numpy()) for x, _, _ in tqdm(loader, desc="trace", unit="batch",
                                                                              disable=not progress)])
    k, d = runner.num_exits, 0
    return Trace(logits.astype(np.float16), np.asarray(ds.labels), np.asarray(ds.ids, dtype=str),
                 np.asarray(runner.manifest.gmacs), list(ds.class_names), np.zeros(0, np.int64),
                 np.zeros((k, 0, d), np.float16), meta).validate("the new trace")


class TraceCancelled(METError):
    """Raised from an `on_batch` hook to stop a trace; nothing is written."""


def trace_checkpoint(
    checkpoint: str | Path,
    dataset: str | None,
    split: str = "test",
    *,
    weights: str | None = None,
    device: Any = "cpu",
    download: bool = True,
    data_root: str | None = None,
    holdout: int = 0,
    limit: int = 0,
    batch_size: int = 64,
    features: int = 2000,
    seed: int = 0,
    precision: str = "fp32",
    workers: int = 0,
    ctx: DistContext | None = None,
    progress: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    notes: Callable[[str], None] | None = None,
    on_model: Callable[[], None] | None = None,
    onnx: Any = None,
) -> Trace | None:
    """The trace of a checkpoint over a dataset, as `met trace` and the app's Models page make it: the dataset is
    checked against the checkpoint's classes before any model is loaded (one sentence, at once), and the trace
    records which model made it. `on_model()` is called just before the model is loaded, `on_batch` and `notes` as
    in `run_trace` and `dataset_for_checkpoint`. `onnx`: an export's runner (`met_core.export.OnnxEarlyExit`, e.g.
    int8) runs the exits instead of PyTorch (logits only: no head inputs are kept)."""
    from .checkpoint import checkpoint_hash, load_checkpoint, read_config
    from .config import METConfig, config_from_dict
    from .data import dataset_for_checkpoint, seeded_subset, transform_for
    from .flops import MAC_NOTE, exit_gmacs

    # everything that needs no model first (the folder, its classes, its images): a mismatch is answered at once
    cfg = read_config(Path(checkpoint), own_weights=weights is not None)
    mcfg = config_from_dict(METConfig, cfg["model"])
    if onnx is not None and onnx.manifest.checkpoint_sha256 != checkpoint_hash(checkpoint):
        raise METError(f"the ONNX export in {onnx.folder} was made from another checkpoint; export this one "
                       "again (met export).")
    ds = dataset_for_checkpoint(cfg, dataset, split, download, data_root, holdout, seed)
    for note in ds.notes:
        (notes or (lambda _: None))(note)
    want = list(mcfg.class_names)
    if len(ds.class_names) != len(want):
        raise METError(f"the dataset has {len(ds.class_names)} classes and the checkpoint {len(want)}; trace a "
                       "dataset with the checkpoint's classes (one sub-folder per class).")
    if list(ds.class_names) != want:
        raise METError(f"the dataset's classes {list(ds.class_names)[:5]}... differ from the checkpoint's "
                       f"{want[:5]}...; name its sub-folders as the checkpoint's classes.")
    if not len(ds):
        raise METError("the dataset has no images; put image files (.jpg, .png, ...) in its class sub-folders.")
    ds = seeded_subset(ds, limit, seed)
    if onnx is None:
        if on_model is not None:
            on_model()
        model, cfg = load_checkpoint(checkpoint, weights, device)
    ds.transform = transform_for(mcfg)
    meta = {"checkpoint": Path(checkpoint).name, "checkpoint_sha256": checkpoint_hash(checkpoint),
            "dataset": dataset or cfg.get("data", {}).get("dataset"), "dataset_root": ds.root,
            "split": split, "exits": mcfg.exits, "mac_note": MAC_NOTE, "note": SIMULATED_NOTE}
    if onnx is not None:
        meta["engine"] = f"onnx {onnx.manifest.quantization}"
        return run_trace_onnx(onnx, ds, meta, batch_size, workers, progress)
    return run_trace(model, ds, exit_gmacs(model), meta, batch_size=batch_size, features=features, seed=seed,
                     progress=progress, precision=precision, workers=workers, ctx=ctx, on_batch=on_batch)


def trace_digest(path: str | Path) -> str:
    """sha256 of a trace file: the key of what is derived from it (e.g. cached embeddings)."""
    import hashlib

    regular_file(path, "the trace", MAX_TRACE_BYTES)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
