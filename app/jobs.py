"""Background trace jobs started from the Models page: one thread per job, so the page (and every other
session) stays live while it runs; the page polls its progress and may cancel it.

The result is a checkpoint folder in the user's run folder (met_core.paths.runs_dir): the model's files plus the
new test trace, found again by `state.discover` on the next start.
"""
from __future__ import annotations

import hashlib
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from met_core.checkpoint import checkpoint_hash, with_trace
from met_core.errors import METError, user_message
from met_core.paths import runs_dir
from met_core.traces import TraceCancelled, save_trace, trace_checkpoint

FEATURES = 1000  # head inputs kept for the Representations page (as in the shipped traces)
MAX_FINISHED = 50  # finished jobs remembered (a session shows its last one's outcome)


@dataclass
class TraceJob:
    """One running or finished trace: progress for the page's bar, an event to cancel, and how it ended."""

    checkpoint: str
    dataset: str
    split: str
    limit: int
    done: int = 0
    total: int = 0
    stage: str = "loading the model and scanning the dataset"
    error: str | None = None
    result: str | None = None  # the new checkpoint folder
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _on_batch(self, done: int, total: int) -> None:
        self.done, self.total, self.stage = done, total, "running every exit over the images"
        if self.cancel.is_set():
            raise TraceCancelled("the trace was cancelled; nothing was written.")

    def run(self) -> None:
        try:
            trace = trace_checkpoint(self.checkpoint, self.dataset, self.split, limit=self.limit, features=FEATURES,
                                     download=True, on_batch=self._on_batch)
            self.stage = "saving"
            dest = runs_dir() / run_name(self.checkpoint, self.dataset, self.split, self.limit)
            with tempfile.TemporaryDirectory() as tmp:
                f = Path(tmp) / "trace.npz"
                save_trace(f, trace)
                self.result = str(with_trace(self.checkpoint, dest, f))
        except METError as e:
            self.error = user_message(e)
        except OSError as e:
            self.error = f"the trace could not be written to {runs_dir()} ({e.strerror}); set $MET_RUNS_DIR to a " \
                         "folder you may write to."
        finally:
            self.stage = "finished"


def run_name(checkpoint: str, dataset: str, split: str, limit: int) -> str:
    """A readable, stable folder name: the model, the dataset's last path part, and a digest of the whole choice."""
    where = str(Path(dataset).resolve()) if Path(dataset).exists() else dataset
    digest = hashlib.sha256(f"{checkpoint_hash(checkpoint)}|{where}|{split}|{limit}".encode()).hexdigest()[:8]
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(dataset).name or dataset)[:40]
    return f"{Path(checkpoint).name}@{tail}-{digest}"


@st.cache_resource(show_spinner=False)
def registry() -> dict[str, TraceJob]:
    """Jobs by id, shared by the server's sessions (a session remembers its job's id)."""
    return {}


def start(checkpoint: str, dataset: str, split: str, limit: int) -> str:
    """Start a trace in a background thread; returns its id."""
    job = TraceJob(checkpoint, str(Path(dataset).expanduser()) if dataset.startswith("~") else dataset, split, limit)
    job.thread = threading.Thread(target=job.run, daemon=True, name="met-trace")
    job_id = hashlib.sha256(f"{id(job)}{checkpoint}{dataset}".encode()).hexdigest()[:12]
    jobs = registry()
    for old in [k for k, j in jobs.items() if not j.running][:-MAX_FINISHED]:  # a long-lived server stays small
        del jobs[old]
    jobs[job_id] = job
    job.thread.start()
    return job_id
