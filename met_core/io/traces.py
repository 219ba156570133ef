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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..errors import METError
from .limits import MAX_TEXT_CHARS, MAX_TRACE_BYTES, regular_file

FORMAT = "met-trace/1"
SIMULATED_NOTE = "simulated from cached exit outputs"
MAC_NOTE = "GMACs: 1 multiply-add = 1 MAC"  # the unit of every GMACs figure (gmacs here, met_core.nn.flops)
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

    def check_model(self, sha256: str | None, source: str, model: str, fix: str, *, unhashed_ok: bool = False) -> None:
        """Raise METError, one sentence ending in `fix`, when this trace (read from `source`) was made by another
        model than the checkpoint hashed `sha256` (named `model`); a trace without a hash passes if `unhashed_ok`."""
        have = self.meta.get("checkpoint_sha256")
        if have != sha256 and not (unhashed_ok and have is None):
            raise METError(f"{source} was made by another model than {model}; {fix}")

    def check_pair(self, other: Trace, source: str, other_source: str, fix: str) -> None:
        """Raise METError, one sentence ending in `fix`, when this trace (from `source`) and `other` (from
        `other_source`) were made by different models: other checkpoint hashes, or, where neither records one
        (traces made by hand), other exits or classes."""
        self.check_model(other.meta.get("checkpoint_sha256"), source, other_source, fix)
        if (self.num_exits, list(self.class_names)) != (other.num_exits, list(other.class_names)):
            raise METError(
                f"{source} ({self.num_exits} exits, {len(self.class_names)} classes) and {other_source} "
                f"({other.num_exits} exits, {len(other.class_names)} classes) differ in their exits or class names: "
                f"they were made by different models; {fix}"
            )

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
                raise METError(
                    f"{source}: {name} has type {getattr(arr, 'dtype', type(arr).__name__)}; the file is "
                    "not a MET trace or is damaged: re-create it."
                )
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
            (np.char.str_len(ids) == 0)
            | np.char.startswith(ids, "/")
            | np.char.startswith(ids, "\\")
            | (np.char.find(ids, "..") >= 0)
            | ("\x00" in "".join(ids))
        )  # (numpy cannot search for a NUL)
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
ARRAY_KINDS = {
    "logits": ("f", 3),
    "labels": ("iu", 1),
    "ids": ("U", 1),
    "gmacs": ("fiu", 1),
    "class_names": ("U", 1),
    "feature_index": ("iu", 1),
    "features": ("f", 3),
    "meta": ("U", 0),
}


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
            raise METError(
                f"{path}: {k} is {dtype} with shape {shape}; the file is not a MET trace or is damaged: re-create it."
            )
        if dtype.kind == "U" and dtype.itemsize // 4 > MAX_TEXT_CHARS[k]:
            raise METError(
                f"{path}: {k} holds strings of up to {dtype.itemsize // 4:,} characters, more than the "
                f"{MAX_TEXT_CHARS[k]:,} allowed; it is not a trace MET wrote."
            )
        total += math.prod(shape) * dtype.itemsize
    if total > MAX_TRACE_BYTES:
        raise METError(
            f"{path} would take {total:,} bytes once decompressed, more than the {MAX_TRACE_BYTES:,} "
            "allowed for a trace; it is not a trace MET wrote."
        )


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
    return Trace(
        arrays["logits"],
        labels.astype(np.int64),
        arrays["ids"],
        arrays["gmacs"].astype(np.float64),
        [str(c) for c in arrays["class_names"]],
        arrays["feature_index"].astype(np.int64),
        arrays["features"],
        meta,
    ).validate(str(path))


def trace_bytes(
    images: int, num_exits: int, num_classes: int, feature_rows: int, feature_dim: int, id_chars: int
) -> int:
    """Bytes a trace's arrays take decompressed, as `load_trace` counts them against limits.MAX_TRACE_BYTES:
    float16 logits (N, K, C), int64 labels, ids of `id_chars` characters (4 bytes each), float16 features of
    `feature_rows` images (K, rows, D), class names of at most MAX_TEXT_CHARS characters (4 bytes each) and 64 KiB
    for GMACs and meta (a trace's meta is a few KiB)."""
    return (
        images * num_exits * num_classes * 2
        + images * 8
        + images * id_chars * 4
        + num_exits * min(feature_rows, images) * (feature_dim * 2 + 8)
        + 4 * MAX_TEXT_CHARS["class_names"] * num_classes
        + 2**16
    )


def check_trace_size(
    images: int, num_exits: int, num_classes: int, feature_rows: int, feature_dim: int, id_chars: int
) -> None:
    """Refuse, before any model runs, a trace `load_trace` would refuse for its size (`trace_bytes` over
    limits.MAX_TRACE_BYTES): one sentence with the --limit that fits, or --features when even no image fits.
    Raises METError."""
    size = trace_bytes(images, num_exits, num_classes, feature_rows, feature_dim, id_chars)
    if size <= MAX_TRACE_BYTES:
        return
    base = trace_bytes(0, num_exits, num_classes, 0, feature_dim, id_chars)
    fixed = base + num_exits * min(feature_rows, images) * (feature_dim * 2 + 8)  # what does not shrink with --limit
    per_image = trace_bytes(1, num_exits, num_classes, 0, feature_dim, id_chars) - base
    fits = max(0, (MAX_TRACE_BYTES - fixed) // per_image)
    raise METError(
        f"a trace of {images:,} images of {num_classes:,} classes would take {size / 2**20:,.1f} MiB, "
        f"more than the {MAX_TRACE_BYTES / 2**20:g} MiB a trace may hold; "
        + (f"trace at most {fits:,} images (--limit {fits})." if fits else "store fewer feature rows (--features).")
    )


def trace_digest(path: str | Path) -> str:
    """sha256 of a trace file: the key of what is derived from it (e.g. cached embeddings)."""
    import hashlib

    regular_file(path, "the trace", MAX_TRACE_BYTES)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
