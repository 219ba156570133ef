"""Is an image one of the model's kind? A distance-to-training-data score on the first exit's features, with a
threshold that bounds the false-alarm rate on in-distribution images.

Score: the mean cosine distance (1 - cos) of an image's first-exit head input z_1 to its `k` nearest neighbours
among reference features of in-distribution images (the kNN detector of Sun et al., "Out-of-distribution detection
with deep nearest neighbors", ICML 2022, on normalised features). Exit 1 runs for every image, so the score costs
no extra blocks. The softmax confidence of the exits is no such score here: photos of ants and bees given to the
CIFAR-10 model get 0.97 to 1.00 (tests/test_ood.py).

Threshold: held-out in-distribution images never seen in training (a calibration set) are split by a seed into a
reference half and a threshold half; the threshold is the ceil((n + 1)(1 - alpha))-th smallest score of the n
threshold images (split conformal: for a new image exchangeable with them, P(flagged) <= alpha; Vovk et al. 2005,
Angelopoulos & Bates 2021), so the stated false-alarm rate is a bound, and RESULTS / tests measure it on test.

File: `ood.npz` beside the checkpoint (`met ood`): the reference features (float16, unit length) and a JSON
header; read without unpickling, bounded in size.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import METError
from ..io.limits import regular_file
from ..io.traces import Trace

OOD_FILE = "ood.npz"
FORMAT = "met-ood/1"
MAX_OOD_BYTES = 64 * 2**20
MAX_REFERENCE_ROWS = 20_000


@dataclass(frozen=True)
class OODRule:
    """Flag an image when its score exceeds `threshold`. reference: (N, D) float32 unit rows; exit: 0-based."""

    reference: np.ndarray
    threshold: float
    false_alarm: float  # the bound on the share of in-distribution images flagged
    k: int = 5
    exit: int = 0
    threshold_images: int = 0  # how many calibration images set the threshold
    fitted_on: str = ""  # what those images are

    def score(self, z: np.ndarray) -> np.ndarray:
        """(M,) scores of (M, D) features (any scale: rows are normalised here)."""
        return knn_distance(self.reference, np.asarray(z, dtype=np.float32), self.k)

    def flags(self, z: np.ndarray) -> np.ndarray:
        return self.score(z) > self.threshold

    def describe(self) -> str:
        return (
            f"kNN distance of exit {self.exit + 1}'s features to {len(self.reference):,} in-distribution images; "
            f"threshold {self.threshold:.4f} set on {self.threshold_images:,} {self.fitted_on} so that at most "
            f"{100 * self.false_alarm:g} % of images like the training data are flagged"
        )


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_distance(reference: np.ndarray, queries: np.ndarray, k: int = 5, chunk: int = 1024) -> np.ndarray:
    """Mean cosine distance of each query row to its k nearest reference rows. reference (N, D) unit rows, queries
    (M, D); returns (M,) float64. Memory: chunk x N floats at a time."""
    q = unit_rows(queries)
    k = min(k, len(reference))
    out = np.empty(len(q))
    for i in range(0, len(q), chunk):
        d = 1.0 - q[i : i + chunk] @ reference.T
        out[i : i + chunk] = np.partition(d, k - 1, axis=1)[:, :k].mean(1)
    return out


def conformal_threshold(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score (inf when n is too small for alpha): flags at most a share
    alpha of new exchangeable images."""
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    return float(np.sort(scores)[rank - 1]) if rank <= n else math.inf


def fit_ood(
    features: np.ndarray,
    false_alarm: float = 0.05,
    k: int = 5,
    exit: int = 0,
    seed: int = 0,
    fitted_on: str = "held-out training images",
) -> OODRule:
    """An OOD rule from (M, D) features of held-out in-distribution images: a seeded half is the reference, the
    other half sets the threshold. Raises METError when there are too few images for `false_alarm`."""
    if not 0 < false_alarm < 1:
        raise METError(f"the false-alarm rate must be between 0 and 1, not {false_alarm}.")
    m = len(features)
    need = math.ceil(1 / false_alarm)  # threshold images for a finite conformal threshold
    if m < 2 * max(need, k):
        raise METError(
            f"{m} calibration images cannot set a threshold for a {100 * false_alarm:g} % false-alarm "
            f"rate; trace at least {2 * max(need, k)} with features (met trace --features N)."
        )
    order = np.random.default_rng(seed).permutation(m)
    ref, held = unit_rows(features[order[: m // 2]]), features[order[m // 2 :]]
    threshold = conformal_threshold(knn_distance(ref, held, k), false_alarm)
    return OODRule(ref, threshold, false_alarm, k, exit, len(held), fitted_on)


def fit_ood_on_trace(
    trace: Trace, source: str, exit: int, false_alarm: float = 0.05, k: int = 5, seed: int = 0
) -> OODRule:
    """`fit_ood` on the features a trace stored at `exit` (0-based). The trace must be of held-out images (split
    'holdout' or 'val'), never of the test split the caution is judged on. Raises METError, one sentence naming
    `source` and what to trace instead, when it is not or stores no features at that exit."""
    split = trace.meta.get("split")
    if split not in ("holdout", "val"):
        raise METError(
            f"{source} is a trace of the '{split}' split; fit on held-out images "
            "(met trace --split holdout --features N), never on the test split."
        )
    if not 0 <= exit < trace.num_exits or not len(trace.feature_index):
        raise METError(f"{source} has no features at exit {exit + 1}; trace with --features N (N >= 400).")
    what = "held-out training images" if split == "holdout" else "validation images"
    return fit_ood(trace.features[exit], false_alarm, k, exit, seed, what)


def save_ood(path: str | Path, rule: OODRule) -> None:
    header = {k: v for k, v in asdict(rule).items() if k != "reference"}
    np.savez_compressed(
        path, reference=rule.reference.astype(np.float16), header=np.array(json.dumps({"format": FORMAT, **header}))
    )


def load_ood(path: str | Path) -> OODRule:
    """Read an ood.npz: bounded, never unpickled, every field checked; one sentence when it is not one."""
    path = Path(path)
    regular_file(path, "the out-of-distribution reference", MAX_OOD_BYTES)
    try:
        with np.load(path, allow_pickle=False) as z:
            if set(z.files) != {"reference", "header"}:
                raise METError(f"{path} is not an ood.npz written by `met ood`; re-create it.")
            ref, header = z["reference"], json.loads(str(z["header"]))
    except METError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, RecursionError) as e:
        raise METError(f"{path} is not a readable ood.npz ({type(e).__name__}); re-create it with `met ood`.") from None
    ok = (
        isinstance(header, dict)
        and header.get("format") == FORMAT
        and ref.ndim == 2
        and ref.dtype.kind == "f"
        and 0 < len(ref) <= MAX_REFERENCE_ROWS
        and np.isfinite(ref).all()
        and isinstance(header.get("threshold"), (int, float))
        and isinstance(header.get("k"), int)
        and 1 <= header["k"] <= len(ref)
        and isinstance(header.get("false_alarm"), (int, float))
        and 0 < header["false_alarm"] < 1
        and isinstance(header.get("exit"), int)
        and header["exit"] >= 0
    )
    if not ok:
        raise METError(f"{path} is not a valid ood.npz (format {FORMAT}); re-create it with `met ood`.")
    return OODRule(
        unit_rows(ref),
        float(header["threshold"]),
        float(header["false_alarm"]),
        header["k"],
        header["exit"],
        int(header.get("threshold_images", 0)),
        str(header.get("fitted_on", ""))[:200],
    )
