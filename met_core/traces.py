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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import METError

if TYPE_CHECKING:
    from .data import ImageDataset
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

    def probs(self) -> np.ndarray:
        """Softmax probabilities (N, K, C), float32."""
        z = self.logits.astype(np.float32)
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def validate(self, source: str = "trace") -> "Trace":
        """One sentence per inconsistency: shapes, lengths, finiteness, emptiness."""
        n = len(self.labels)
        if self.logits.ndim != 3:
            raise METError(f"{source}: logits must be (samples, exits, classes), got shape {self.logits.shape}.")
        if n == 0 or self.logits.shape[0] == 0:
            raise METError(f"{source} is empty (no samples); re-run `python -m met_core trace` on a non-empty dataset.")
        if self.logits.shape[0] != n or len(self.ids) != n:
            raise METError(f"{source} has mismatched lengths (logits {self.logits.shape[0]}, labels {n}, "
                           f"ids {len(self.ids)}); it is damaged: re-create it.")
        if len(self.gmacs) != self.num_exits:
            raise METError(f"{source} has {len(self.gmacs)} GMACs entries for {self.num_exits} exits; re-create it.")
        if len(self.class_names) != self.logits.shape[2]:
            raise METError(f"{source} has {len(self.class_names)} class names for {self.logits.shape[2]} classes.")
        if not np.isfinite(self.logits).all():
            raise METError(f"{source} contains NaN or inf logits; the model or the file is broken: re-create the trace.")
        if ((self.labels < 0) | (self.labels >= self.logits.shape[2])).any():
            raise METError(f"{source} has labels outside 0..{self.logits.shape[2] - 1}.")
        if len(self.feature_index) and (self.feature_index.max() >= n or self.features.shape[1] != len(self.feature_index)):
            raise METError(f"{source} has a feature subset that does not fit its samples; re-create it.")
        return self


def save_trace(path: str | Path, trace: Trace) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, logits=trace.logits.astype(np.float16), labels=trace.labels.astype(np.int64),
                        ids=np.asarray(trace.ids, dtype=str), gmacs=np.asarray(trace.gmacs, dtype=np.float64),
                        class_names=np.asarray(trace.class_names, dtype=str),
                        feature_index=trace.feature_index.astype(np.int64), features=trace.features.astype(np.float16),
                        meta=np.asarray(json.dumps({"format": FORMAT, **trace.meta})))
    tmp.replace(path)


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise METError(f"trace file {path} does not exist; create one with `python -m met_core trace`.")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise METError(f"{path} is not a MET trace (missing {', '.join(missing)}).")
            arrays = {k: z[k] for k in REQUIRED}
    except METError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise METError(f"{path} holds pickled objects; MET never unpickles: re-create the trace.") from None
        raise METError(f"{path} is not a readable trace ({e}).") from None
    except (OSError, EOFError, KeyError) as e:
        raise METError(f"{path} is not a readable trace file ({type(e).__name__}); re-create it.") from None
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError:
        raise METError(f"{path} has unreadable metadata; re-create the trace.") from None
    if meta.get("format") != FORMAT:
        raise METError(f"{path} has format {meta.get('format')!r}, expected '{FORMAT}'.")
    return Trace(arrays["logits"], arrays["labels"], arrays["ids"], arrays["gmacs"],
                 [str(c) for c in arrays["class_names"]], arrays["feature_index"], arrays["features"],
                 meta).validate(str(path))


def run_trace(model: METModel, ds: ImageDataset, gmacs: list[float], meta: dict[str, Any], batch_size: int = 64,
              features: int = 2000, seed: int = 0, progress: bool = True) -> Trace:
    """Run every exit over `ds` once, batched; keep logits for all and head inputs for a seeded subset."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    n = len(ds)
    rng = np.random.default_rng(seed)
    feat_idx = np.sort(rng.choice(n, size=min(features, n), replace=False)) if features > 0 else np.zeros(0, np.int64)
    slot = np.full(n, -1)
    slot[feat_idx] = np.arange(len(feat_idx))
    k, c, d = model.num_exits, model.cfg.num_classes, model.backbone.embed_dim
    logits = np.zeros((n, k, c), np.float16)
    feats = np.zeros((k, len(feat_idx), d), np.float16)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    for x, _, idx in tqdm(loader, desc="trace", disable=not progress, unit="batch"):
        with torch.no_grad():
            z = model.forward_features(x)
            logits[idx.numpy()] = torch.stack(model.forward_head(z), 1).numpy()
        rows = slot[idx.numpy()]
        keep = rows >= 0
        if keep.any():
            feats[:, rows[keep]] = torch.stack(z)[:, torch.from_numpy(keep)].numpy()
    return Trace(logits, np.asarray(ds.labels), np.asarray(ds.ids, dtype=str), np.asarray(gmacs),
                 list(ds.class_names), feat_idx, feats, meta).validate("the new trace")
