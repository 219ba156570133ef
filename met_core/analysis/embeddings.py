"""Aligned 2-D embeddings of two traces' features at one exit, fitted once per pair and kept on disk.

An aligned UMAP of 1,000 samples takes tens of seconds on two CPU cores: too long to redo whenever a page
opens. The result depends only on the two trace files and the exit, so it is stored under a name made
of the traces' sha256 digests and found again by any process (the shipped models ship theirs). The same file
keeps the kNN accuracy and silhouette of both feature sets (`geometry`), so a page that shows them needs neither
scikit-learn (about a second to import) nor the features again.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import METError
from ..io.limits import regular_file
from ..io.traces import Trace

MAX_EMBEDDING_BYTES = 16 << 20  # a cached pair of 2-D embeddings; far more than 100,000 samples need
MIN_SHARED = 20


@dataclass
class AlignedPair:
    """Where each shared sample sits in the two models' pictures (the same frame), and which trace rows they are."""

    rows: np.ndarray  # (M,) indices into both traces (same dataset order)
    xy_a: np.ndarray  # (M, 2)
    xy_b: np.ndarray  # (M, 2)
    cached: bool  # read from disk rather than fitted now
    knn: tuple[float, float]  # leave-one-out 10-NN accuracy (cosine) of a's and b's features on these rows, 0..1
    silhouette: tuple[float, float]  # silhouette (cosine, classes as clusters) of a's and b's features, -1..1


def _geometry(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[kNN accuracy, silhouette] of one feature set (met_core.analysis.geometry, scikit-learn)."""
    from .geometry import knn_accuracy, silhouette

    return np.array([knn_accuracy(features, labels), silhouette(features, labels)])


def shared_rows(a: Trace, b: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample rows whose features both traces store, and where they are in each trace's feature arrays."""
    if len(a.labels) != len(b.labels) or not np.array_equal(a.ids, b.ids):
        raise METError("the two traces are not of the same images; trace both models on the same dataset.")
    common, ia, ib = np.intersect1d(a.feature_index, b.feature_index, return_indices=True)
    if len(common) < MIN_SHARED:
        raise METError(
            f"the two traces share fewer than {MIN_SHARED} feature samples; trace both with the same "
            "--features and --seed."
        )
    return common, ia, ib


def cache_name(digest_a: str, digest_b: str, exit_index: int) -> tuple[str, bool]:
    """File name of a pair's embedding (the pair in a fixed order) and whether (a, b) is stored swapped."""
    lo, hi = sorted((digest_a, digest_b))
    return f"aligned-{lo[:20]}-{hi[:20]}-exit{exit_index + 1}.npz", digest_a != lo


_ARRAYS = ("rows", "xy_lo", "xy_hi", "geometry_lo", "geometry_hi")


def _read(path: Path, rows: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """A stored pair (xy_lo, xy_hi, geometry_lo, geometry_hi), or None when it is not a well-formed file for these
    rows, or one written before the geometry was kept (then it is fitted again)."""
    try:
        regular_file(path, "a cached embedding", MAX_EMBEDDING_BYTES)
        with np.load(path, allow_pickle=False) as z:
            got = {k: z[k] for k in _ARRAYS}
    except (METError, OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    shapes = {
        "rows": rows.shape,
        "xy_lo": (len(rows), 2),
        "xy_hi": (len(rows), 2),
        "geometry_lo": (2,),
        "geometry_hi": (2,),
    }
    if not np.array_equal(got["rows"], rows) or any(got[k].shape != v for k, v in shapes.items()):
        return None
    out = tuple(got[k].astype(np.float64 if k.startswith("geometry") else np.float32) for k in _ARRAYS[1:])
    return out if all(np.isfinite(a).all() for a in out) else None


def _write(path: Path, rows: np.ndarray, arrays: Sequence[np.ndarray], meta: dict) -> None:
    """Atomic write (a temporary file renamed), so two processes fitting the same pair never leave half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    lo, hi, geo_lo, geo_hi = arrays
    with os.fdopen(fd, "wb") as f:
        np.savez(
            f,
            rows=rows,
            xy_lo=lo.astype(np.float32),
            xy_hi=hi.astype(np.float32),
            geometry_lo=geo_lo,
            geometry_hi=geo_hi,
            meta=json.dumps(meta),
        )
    os.replace(tmp, path)


def aligned_pair(
    a: Trace, b: Trace, exit_index: int, digests: tuple[str, str], folders: Sequence[Path], write_to: Path | None
) -> AlignedPair:
    """The aligned embedding of traces `a` and `b` at one exit, with both feature sets' kNN accuracy and silhouette
    on the shared rows: read from the first of `folders` that holds it, else fitted (aligned UMAP, seeded) and
    written to `write_to` (unless None).

    Raises METError when the traces are not of the same images or share fewer than MIN_SHARED feature rows.
    """
    from .geometry import aligned_umap

    rows, ia, ib = shared_rows(a, b)
    name, swapped = cache_name(*digests, exit_index)

    def pair(xy_a: np.ndarray, xy_b: np.ndarray, geo_a: np.ndarray, geo_b: np.ndarray, cached: bool) -> AlignedPair:
        return AlignedPair(
            rows, xy_a, xy_b, cached, (float(geo_a[0]), float(geo_b[0])), (float(geo_a[1]), float(geo_b[1]))
        )

    for folder in folders:
        got = _read(Path(folder) / name, rows)
        if got is not None:
            lo, hi, geo_lo, geo_hi = got
            return pair(hi, lo, geo_hi, geo_lo, True) if swapped else pair(lo, hi, geo_lo, geo_hi, True)
    fa = a.features[exit_index][ia].astype(np.float32)
    fb = b.features[exit_index][ib].astype(np.float32)
    xy_a, xy_b = aligned_umap([fa, fb])
    geo_a, geo_b = _geometry(fa, a.labels[rows]), _geometry(fb, b.labels[rows])
    if write_to is not None:
        meta = {
            "digests": sorted(digests),
            "exit": exit_index + 1,
            "method": "umap.AlignedUMAP, cosine, seed 0",
            "geometry": "[10-NN accuracy, silhouette], cosine, scikit-learn",
        }
        arrays = (xy_b, xy_a, geo_b, geo_a) if swapped else (xy_a, xy_b, geo_a, geo_b)
        _write(Path(write_to) / name, rows, arrays, meta)
    return pair(xy_a, xy_b, geo_a, geo_b, False)
