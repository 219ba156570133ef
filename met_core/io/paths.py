"""Where things live on this machine: the cache, and the dataset folders that traces and checkpoints record.

No torch here: the app's first page uses these without loading any model code.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted weights (and torchvision downloads) live: $MET_CACHE_DIR or ~/.cache/met_explorer."""
    root = os.environ.get("MET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "met_explorer"
    )
    return Path(root)


def runs_dir() -> Path:
    """Where the app keeps models traced on the user's datasets: $MET_RUNS_DIR or <cache>/runs."""
    return Path(os.environ.get("MET_RUNS_DIR") or cache_dir() / "runs")


def embeddings_dir() -> Path:
    """Where fitted aligned embeddings are kept (met_core.analysis.embeddings): <cache>/embeddings."""
    return cache_dir() / "embeddings"


def locate_dataset(recorded: str | None, override: str | None = None) -> Path | None:
    """Where a recorded dataset folder is on this machine: an explicit override, $MET_DATASET_ROOT, the
    recorded path, or the same sub-path under this repository's ../shared/datasets. None if nowhere."""
    recorded = recorded or ""
    candidates = [override, os.environ.get("MET_DATASET_ROOT"), recorded]
    if "datasets/" in recorded:
        repo = Path(__file__).resolve().parents[2]
        candidates.append(str(repo.parent / "shared" / "datasets" / recorded.split("datasets/", 1)[1]))
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def checkout_root() -> Path | None:
    """The source checkout this package runs from (the folder holding pyproject.toml and met_core/), or None when
    it runs installed (from site-packages)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "met_core" / "__init__.py").is_file() else None


def checkpoints_dir() -> Path:
    """Where the app finds checkpoint folders: $MET_CHECKPOINTS (`met app --checkpoints DIR` sets it), else the
    checkout's checkpoints/ when run from a checkout, else <cache>/checkpoints (see cache_dir)."""
    if os.environ.get("MET_CHECKPOINTS"):
        return Path(os.environ["MET_CHECKPOINTS"])
    root = checkout_root()
    return root / "checkpoints" if root is not None else cache_dir() / "checkpoints"
