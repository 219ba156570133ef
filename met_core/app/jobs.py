"""Background jobs started from the pages: tracing a dataset (Models page) and measuring the real batched early
exit (what-if page). One thread per job, so the page (and every other session) stays live while it runs; the page
polls its progress (images done, rate, time left) and may cancel it.

A trace's result is a checkpoint folder in the user's run folder (met_core.io.paths.runs_dir): the model's files plus
the new test trace, found again by `state.discover` on the next start. A measurement's result is met_core's
`SpeedupResult`.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from met_core.errors import METError, user_message
from met_core.io.checkpoint import checkpoint_hash, with_trace
from met_core.io.paths import runs_dir
from met_core.io.traces import save_trace

FEATURES = 1000  # head inputs kept for the Representations page (as in the shipped traces)
MAX_FINISHED = 50  # finished jobs remembered (a session shows its last one's outcome)
MEASURE_IMAGES, MEASURE_BATCH, MEASURE_REPEATS = 256, 64, 3


@dataclass
class Job:
    """A running or finished job: progress in images for the page's bar, an event to cancel, and how it ended."""

    done: int = 0  # images processed in the current stage
    total: int = 0  # images the current stage will process (0: not known yet)
    stage: str = "starting"
    stage_started: float = field(default_factory=time.monotonic)
    error: str | None = None
    result: Any = None
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    stages: list[str] = field(default_factory=list)  # every stage entered, in order

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def enter(self, stage: str, total: int = 0) -> None:
        self.stage, self.done, self.total, self.stage_started = stage, 0, total, time.monotonic()
        self.stages.append(stage)

    def relabel(self, stage: str) -> None:
        """A new stage name that keeps the last stage's count (saving, finished)."""
        self.stage = stage
        self.stages.append(stage)

    def progress(self, done: int, total: int) -> None:
        """The hook met_core calls after each batch or pass: records progress, and stops the work on Cancel."""
        from met_core.engine.tracing import TraceCancelled

        self.done, self.total = done, total
        if self.cancel.is_set():
            raise TraceCancelled("cancelled; nothing was written.")

    def status(self) -> tuple[float, str]:
        """(fraction done, a line saying how many images, how fast and how long is left) of the current stage."""
        if not self.total:
            return 0.0, f"{self.stage}..."
        elapsed = time.monotonic() - self.stage_started
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        left = f", about {_duration((self.total - self.done) / rate)} left" if rate else ""
        return self.done / self.total, (
            f"{self.stage}: {self.done:,} of {self.total:,} images" + (f", {rate:.0f} images/s" if rate else "") + left
        )

    def run(self) -> None:
        try:
            self.work()
        except METError as e:  # TraceCancelled is one
            self.error = user_message(e)
        except OSError as e:
            self.error = f"the job could not read or write a file ({e.strerror}); check the folders it names."
        finally:
            self.relabel("finished")

    def work(self) -> None:
        raise NotImplementedError


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def backbone_note(checkpoint: str) -> str:
    """The loading stage's name: it says so when the backbone is converted once (first use) before loading."""
    from met_core.io.checkpoint import read_config
    from met_core.nn.backbones import conversion_pending

    cfg = read_config(Path(checkpoint))
    if conversion_pending(cfg["model"].get("backbone", ""), cfg["model"].get("weights", "default")):
        return "converting the backbone once (first use on this machine: about 1 to 2 minutes), then loading it"
    return "loading the model"


@dataclass
class TraceJob(Job):
    checkpoint: str = ""
    dataset: str = ""
    split: str = "test"
    limit: int = 0

    def work(self) -> None:
        from met_core.config import TraceConfig
        from met_core.engine.tracing import trace_checkpoint

        self.enter("checking the dataset folder and its classes")
        options = TraceConfig(self.dataset, self.split, limit=self.limit, features=FEATURES)
        trace = trace_checkpoint(self.checkpoint, options, on_batch=self._traced, on_model=self._loading)
        self.relabel("saving")
        dest = runs_dir() / run_name(self.checkpoint, self.dataset, self.split, self.limit)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                f = Path(tmp) / "trace.npz"
                save_trace(f, trace)
                self.result = str(with_trace(self.checkpoint, dest, f))
        except OSError as e:
            raise METError(
                f"the trace could not be written to {runs_dir()} ({e.strerror}); set $MET_RUNS_DIR to a "
                "folder you may write to."
            ) from e

    def _loading(self) -> None:
        self.enter(backbone_note(self.checkpoint))

    def _traced(self, done: int, total: int) -> None:
        if self.stage != "running every exit over the images":
            self.enter("running every exit over the images", total)
        self.progress(done, total)


@dataclass
class MeasureJob(Job):
    """The real batched early exit against the full network on `MEASURE_IMAGES` seeded test images."""

    checkpoint: str = ""
    dataset_root: str = ""
    thresholds: float | list[float | None] = 0.8
    policy: str = "max-softmax"

    def work(self) -> None:
        from met_core.config import BenchExitConfig
        from met_core.engine.inference import bench_exit, bench_images, model_inputs
        from met_core.nn.checkpoint import load_checkpoint

        cfg = BenchExitConfig(self.dataset_root, batch=[MEASURE_BATCH], limit=MEASURE_IMAGES, repeats=MEASURE_REPEATS)
        self.enter("reading the test images' folder")
        ds = bench_images(cfg)
        self.enter(backbone_note(self.checkpoint))
        model = load_checkpoint(self.checkpoint)[0]
        self.enter("decoding the images", len(ds))
        x = model_inputs(model, ds)
        self.progress(len(ds), len(ds))
        passes = 2 + 2 * MEASURE_REPEATS
        self.enter(
            f"running the early exit and the full network in turn ({passes} passes over the {len(x)} images)",
            passes * len(x),
        )
        self.result = bench_exit(model, x, cfg, self.thresholds, self.policy, on_progress=self.progress)[0].measured


def draw_progress(job: Job, cancel_key: str) -> None:
    """The job's progress bar (images, rate, time left) and its Cancel button."""
    frac, text = job.status()
    st.progress(min(1.0, frac), text=text)
    if st.button("Cancel", key=cancel_key, help="Stops the job; nothing is written"):
        job.cancel.set()


def run_name(checkpoint: str, dataset: str, split: str, limit: int) -> str:
    """A readable, stable folder name: the model, the dataset's last path part, and a digest of the whole choice."""
    where = str(Path(dataset).resolve()) if Path(dataset).exists() else dataset
    digest = hashlib.sha256(f"{checkpoint_hash(checkpoint)}|{where}|{split}|{limit}".encode()).hexdigest()[:8]
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(dataset).name or dataset)[:40]
    return f"{Path(checkpoint).name}@{tail}-{digest}"


@st.cache_resource(show_spinner=False)
def registry() -> dict[str, Job]:
    """Jobs by id, shared by the server's sessions (a session remembers its jobs' ids)."""
    return {}


def start(job: Job) -> str:
    """Start a job in a background thread; returns its id."""
    job.thread = threading.Thread(target=job.run, daemon=True, name=f"met-{type(job).__name__}")
    job_id = hashlib.sha256(f"{id(job)}{time.time_ns()}".encode()).hexdigest()[:12]
    jobs = registry()
    for old in [k for k, j in jobs.items() if not j.running][:-MAX_FINISHED]:  # a long-lived server stays small
        del jobs[old]
    jobs[job_id] = job
    job.thread.start()
    return job_id


def running(kind: type[Job]) -> str | None:
    """The id of a running job of `kind` on this server, if any: a page reloaded (a new session) or opened in another
    tab finds the trace it started there, with its progress and Cancel."""
    return next((k for k, j in registry().items() if isinstance(j, kind) and j.running), None)


def trace(checkpoint: str, dataset: str, split: str, limit: int) -> str:
    """Start tracing `dataset` with `checkpoint`; returns the job's id."""
    data = str(Path(dataset).expanduser()) if dataset.startswith("~") else dataset
    return start(TraceJob(checkpoint=checkpoint, dataset=data, split=split, limit=limit))


def measure(checkpoint: str, dataset_root: str, thresholds: float | list[float | None], policy: str) -> str:
    """Start measuring the real batched early exit; returns the job's id."""
    return start(MeasureJob(checkpoint=checkpoint, dataset_root=dataset_root, thresholds=thresholds, policy=policy))
