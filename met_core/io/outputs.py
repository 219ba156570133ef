"""Where commands write: every `--out` is checked here, before any work is done (one mechanism for output paths).

A path is untrusted input too: a trace written over a checkpoint's own `model.safetensors`, an existing folder given
where a file is meant, or a folder nobody may write to would otherwise surface as a traceback after minutes of work,
or destroy a model silently.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import METError
from .checkpoint import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE

OWN_FILES = (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE)  # what makes a checkpoint folder: never written over by --out


def _writable(folder: Path, out: Path) -> None:
    """Create `folder` (and its parents) and a probe file in it; one sentence if the system refuses."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".met-probe-"):
            pass
    except OSError as e:
        raise METError(f"--out {out}: cannot write in {folder} ({e.strerror or e}); choose another --out.") from None


def output_file(path: str | Path, suffix: str, what: str) -> Path:
    """`path` checked as where `what` (a file ending in `suffix`, e.g. ".npz") will be written: not a folder, the
    right suffix, not a checkpoint folder's own config, weights or metrics, and its folder writable (created if
    missing).

    Raises:
        METError: one sentence naming the path and what to give instead.
    """
    path = Path(path)
    if path.is_dir():
        raise METError(f"--out {path} is a folder; {what} is one file: give its name, e.g. {path / ('name' + suffix)}.")
    if path.suffix.lower() != suffix:
        raise METError(f"--out {path}: {what} is written as a {suffix} file; give a name ending in {suffix}.")
    if path.name in OWN_FILES and (path.parent / CONFIG_FILE).is_file():
        raise METError(
            f"--out {path} would overwrite the checkpoint's own {path.name}; write {what} under another name."
        )
    _writable(path.parent, path)
    return path


def output_folder(path: str | Path, what: str, checkpoint_there: str | None = None) -> Path:
    """`path` checked as the folder `what` will be written into: not a file, writable (created if missing), and,
    when it already holds a checkpoint (a config.json), refused with `checkpoint_there` (what to do instead) unless
    that is None (the caller replaces the checkpoint on purpose).

    Raises:
        METError: one sentence naming the path and what to give instead.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise METError(f"--out {path} is a file; {what} is a folder: give a folder path.")
    if checkpoint_there is not None and (path / CONFIG_FILE).is_file():
        raise METError(f"--out {path} already holds a checkpoint; {checkpoint_there}")
    _writable(path, path)
    return path
