"""Cached loaders and the app's shared state. Every number comes from met_core; this file only caches it.

cache_resource: objects shared by all sessions (models, traces); cache_data: derived tables.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import streamlit as st

from met_core.analysis.calibration import AppliedPoint, apply, calibrate_budget, sweep_applied
from met_core.analysis.certify import CertifiedRule, Spread, certify_max_loss, selection_spread
from met_core.analysis.latency import LATENCY_FILE, LatencyProfile, read_profile
from met_core.analysis.policies import get_policy
from met_core.analysis.reliability import ReliabilityCurve, exit_reliability
from met_core.analysis.summary import ModelSummary
from met_core.analysis.whatif import TraceArrays, WhatIfResult
from met_core.app.safe import md
from met_core.app.view import Context
from met_core.errors import METError, user_message
from met_core.io.checkpoint import (
    CAL_TRACE_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    TEST_TRACE_FILE,
    VAL_TRACE_FILE,
    WEIGHTS_FILE,
    checkpoint_hash,
    read_config,
    read_json,
)
from met_core.io.paths import checkout_root, checkpoints_dir, embeddings_dir, locate_dataset, runs_dir
from met_core.io.traces import Trace, load_trace

CHECKPOINTS = checkpoints_dir()  # $MET_CHECKPOINTS (met app --checkpoints DIR), or a checkout's checkpoints/
# the model the app opens on: the first of these that is shipped (all of CIFAR-10, else the VTAB-1k model)
DEFAULTS = ("cifar10-full-met", "cifar10-met")
BUDGETS = (0.25, 0.5, 0.75)
SPREAD_REPS = 20  # resamples of the calibration set behind the what-if page's spread caption (~25 ms each)


def discover(root: Path = CHECKPOINTS) -> list[Path]:
    """Checkpoint folders under `root` (any depth), the default first; then the models traced on the user's
    datasets from the Models page (kept in the user's run folder, so they are found again on the next start)."""
    found = sorted(p.parent for p in root.glob(f"**/{CONFIG_FILE}"))
    runs = runs_dir()
    mine = sorted(p.parent for p in runs.glob(f"*/{CONFIG_FILE}")) if runs.is_dir() else []
    rank = {name: i for i, name in enumerate(DEFAULTS)}
    return sorted(found, key=lambda p: (rank.get(p.name, len(rank)), str(p))) + [p for p in mine if p not in found]


def checkpoints() -> list[Path]:
    """Shipped checkpoints, the user's traced runs, and the folders this session added on the Models page."""
    from met_core.app import session

    extra = [Path(p) for p in session.local().extra_checkpoints]
    found = discover()
    return found + [p for p in extra if p not in found]


def current() -> Path:
    """The checkpoint the pages use (the view's model; the Models page picks it)."""
    from met_core.app import session

    p = by_label(session.view().model)
    if p is None:
        fail("the model of this view is no longer listed; pick one on the Models page.")
    return p


def _default_model() -> Path:
    found = discover()
    if not found:
        fail(
            f"No checkpoints found under {CHECKPOINTS}: "
            + (
                "rebuild the shipped ones with `python bench/rebuild_checkpoints.py`, or name a folder of "
                "checkpoints with `met app --checkpoints DIR`."
                if checkout_root() is not None
                else "train one with `met train --dataset FOLDER --out DIR/NAME` (FOLDER: one sub-folder of images per "
                "class), then start the app with `met app --checkpoints DIR`."
            )
        )
    return found[0]


@st.cache_resource(show_spinner=False, max_entries=32)
def _trace_ids(path: str, mtime: float) -> tuple[str, ...]:
    return tuple(str(i) for i in trace(path)[0].ids)


def context(model: str | None = None) -> Context:
    """What the named listed model offers a view (the default model when `model` is None or not listed): the
    listed labels, its exits, classes, test-image ids, latency-profile batch sizes, whether it has a calibration
    set, and its no-graph-regularization twin."""
    paths = checkpoints()
    labels = tuple(label(p) for p in paths)
    path = paths[labels.index(model)] if model in labels else _default_model()
    cfg = card(str(path))["config"]["model"]
    ids: tuple[str, ...] = ()
    f = path / TEST_TRACE_FILE
    if f.is_file():
        try:
            ids = _trace_ids(str(f), f.stat().st_mtime)
        except METError:
            ids = ()  # the page says why (traces_of)
    try:
        prof = profile_of_quiet(path)
    except METError:
        prof = None
    twin = label(path.parent / f"{path.name}-nogr")
    comparable = tuple(
        label(p)
        for p in paths
        if p != path and has_test_trace(p) and card(str(p))["config"]["model"]["num_classes"] == cfg["num_classes"]
    )
    return Context(
        model=label(path),
        models=labels,
        num_exits=len(cfg["exits"]),
        class_names=tuple(cfg.get("class_names") or ()),
        ids=ids,
        batch_sizes=tuple(prof.batch_sizes) if prof else (),
        certifiable=any((path / n).is_file() for n in (CAL_TRACE_FILE, VAL_TRACE_FILE)),
        comparable=comparable,
        twin=twin if twin in comparable else None,
    )


def thresholds_in_use() -> tuple[str, float | list[float | None]]:
    """(policy, thresholds) every page uses: the view's global or per-exit thresholds, or in certified mode the
    rule certified on the calibration set (every exit but the last skipped when nothing can be certified)."""
    from met_core.app import session

    v = session.view()
    if v.mode == "certified":
        return v.policy, certified_thresholds(current(), v.policy, v.cert_loss, v.cert_delta)
    return v.policy, v.thresholds()


def certified_thresholds(ckpt: Path, policy: str, loss_points: float, delta: float) -> list[float | None]:
    c = certified(str(ckpt), policy, loss_points / 100, delta)
    k = card(str(ckpt))["config"]["model"]["exits"]
    return c.thresholds if c is not None and c.thresholds else [get_policy(policy).never] * (len(k) - 1) + [None]


def describe(thresholds: float | list[float | None]) -> str:
    """Thresholds as a person reads them, to 4 significant digits as the pages' other numbers (the exact values are in
    the what-if page's entry box and the link): one number, or one per exit but the last."""
    if isinstance(thresholds, (int, float)):
        return f"{thresholds:.4g}"
    return " / ".join(f"{t:.4g}" for t in thresholds[:-1]) + " (per exit; the last exit always answers)"


def has_test_trace(ckpt: Path) -> bool:
    return (ckpt / TEST_TRACE_FILE).is_file()


def test_trace_path(ckpt: Path) -> str:
    return str(ckpt / TEST_TRACE_FILE)


RUNS_LABEL = "my runs"


def label(path: Path) -> str:
    """How a checkpoint is named on the pages and in links: relative to the shipped or the user's run folder."""
    for root, prefix in ((CHECKPOINTS, ""), (runs_dir(), f"{RUNS_LABEL}/")):
        try:
            return prefix + str(Path(path).relative_to(root))
        except ValueError:
            continue
    return str(path)


def name(path: Path) -> str:
    """A checkpoint as a person reads it wherever a model is named: its label and the data it was trained on."""
    return f"{label(path)} ({summary(path).training_data})"


def by_label(text: str) -> Path | None:
    """The listed checkpoint a label (e.g. from a link) names, or None."""
    return next((p for p in checkpoints() if label(p) == text), None)


def fail(message: str) -> None:
    """One clear sentence (shown as text: it may quote a file), and the page stops; session state is kept, and the
    address still names the view (written before the stop: what a stopped run writes is not sent)."""
    from met_core.app import session

    if _failing.active:  # writing the link failed too (e.g. no checkpoints at all): the first sentence stands
        st.stop()
    st.error(md(message))
    _failing.active = True
    try:
        session.publish()
    finally:
        _failing.active = False
    st.stop()


class _Failing(threading.local):
    active = False  # this session's thread is inside fail()'s link write


_failing = _Failing()


@st.cache_data(show_spinner=False)
def card(path: str) -> dict[str, Any]:
    """config.json (validated) and metrics.json of a checkpoint, without loading any weights."""
    cfg = read_config(Path(path))
    m = Path(path) / METRICS_FILE
    metrics = read_json(m, "the checkpoint's metrics", inside=Path(path)) if m.exists() else {}
    if not isinstance(metrics, dict):
        raise METError(f"{m} is not a JSON object; restore the checkpoint's metrics from its original.")
    return {"config": cfg, "metrics": metrics}


def summary(path: Path) -> ModelSummary:
    """The model card of a checkpoint (met_core builds it; the CLI's `info` shows the same)."""
    c = card(str(path))
    return ModelSummary.build(label(path), c["config"], c["metrics"])


@st.cache_data(show_spinner=False)
def _hash(path: str, mtimes: tuple[float, ...]) -> str:
    return checkpoint_hash(path)


def checkpoint_sha256(ckpt: Path) -> str:
    """The checkpoint's hash, computed once per version of its files (not on every slider move)."""
    return _hash(str(ckpt), tuple((ckpt / f).stat().st_mtime for f in (CONFIG_FILE, WEIGHTS_FILE)))


@st.cache_resource(show_spinner="Loading the model (backbone and adapters)...")
def model(path: str):
    """One model object per checkpoint, shared by every session (inference only, under no_grad), on
    $MET_DEVICE (auto: CUDA when available)."""
    from met_core.engine.devices import resolve_device
    from met_core.nn.checkpoint import load_checkpoint

    return load_checkpoint(path, device=resolve_device(os.environ.get("MET_DEVICE", "auto")))[0]


@st.cache_data(show_spinner="Choosing the budget again on resamples of the calibration set...")
def budget_spread(ckpt: str, policy: str, budget: float) -> Spread | None:
    """How much the calibrated budget's test figures move when the calibration set is resampled."""
    (_, test), _ = traces_of(Path(ckpt))
    cal = calibration_set(Path(ckpt))
    if cal is None:
        return None
    try:
        return selection_spread(cal[0], test, lambda a: calibrate_budget(a, budget, policy), policy, reps=SPREAD_REPS)
    except METError:
        return None


@st.cache_resource(show_spinner="Reading the trace...")
def trace(path: str) -> tuple[Trace, TraceArrays]:
    t = load_trace(path)
    return t, TraceArrays.from_trace(t)


def traces_of(ckpt: Path) -> tuple[tuple[Trace, TraceArrays], tuple[Trace, TraceArrays] | None]:
    """(test trace, validation trace or None) of a checkpoint, with one-sentence errors."""
    test = ckpt / TEST_TRACE_FILE
    if not test.is_file():
        fail(
            f"{label(ckpt)} has no test_trace.npz; create it with `python -m met_core trace --checkpoint {ckpt} "
            f"--dataset DATA --out {test}`."
        )
    try:
        t = trace(str(test))
        v = trace(str(ckpt / VAL_TRACE_FILE)) if (ckpt / VAL_TRACE_FILE).is_file() else None
        t[0].check_model(checkpoint_sha256(ckpt), str(test), label(ckpt), "re-create the trace.", unhashed_ok=True)
    except METError as e:
        fail(user_message(e))
    return t, v


def calibration_set(ckpt: Path) -> tuple[TraceArrays, str] | None:
    """The trace thresholds are chosen on, and what it is: the held-out calibration trace when the checkpoint
    has one, else its validation split; None if it has neither (then nothing is calibrated)."""
    for name, what in ((CAL_TRACE_FILE, "held-out training images"), (VAL_TRACE_FILE, "validation images")):
        if (ckpt / name).is_file():
            try:
                t, a = trace(str(ckpt / name))
                t.check_model(
                    checkpoint_sha256(ckpt), str(ckpt / name), label(ckpt), "re-create the trace.", unhashed_ok=True
                )
            except METError as e:
                fail(user_message(e))
            return a, f"{len(a.labels):,} {what} ({name})"
    return None


@st.cache_data(show_spinner="Sweeping operating points on the calibration trace...")
def sweep_table(ckpt: str, policy: str) -> list[AppliedPoint]:
    """Every candidate operating point chosen on the calibration set, measured on test (Pareto front marked)."""
    (_, test), _ = traces_of(Path(ckpt))
    cal = calibration_set(Path(ckpt))
    return sweep_applied(cal[0] if cal else test, test, policy)


@st.cache_data(show_spinner=False)
def budget_presets(ckpt: str, policy: str) -> dict[float, WhatIfResult | str]:
    """Calibrated per-exit thresholds for 25 / 50 / 75 % of the last exit's GMACs (chosen on the calibration set)
    and what they give on test; or the sentence saying why a budget cannot be met (shown on a disabled button)."""
    (_, test), _ = traces_of(Path(ckpt))
    cal = calibration_set(Path(ckpt))
    basis = cal[0] if cal else test
    out: dict[float, WhatIfResult | str] = {}
    for b in BUDGETS:
        try:
            out[b] = apply(test, calibrate_budget(basis, b, policy), policy).measured
        except METError as e:
            out[b] = str(e)
    return out


@st.cache_data(show_spinner="Certifying thresholds on the calibration trace...")
def certified(ckpt: str, policy: str, max_loss: float, delta: float) -> CertifiedRule | None:
    """The cheapest certified thresholds (Learn-then-Test) on the calibration set; None without one."""
    cal = calibration_set(Path(ckpt))
    return certify_max_loss(cal[0], max_loss, delta, policy) if cal else None


@st.cache_resource(show_spinner=False)
def latency_profile(ckpt: str, mtime: float) -> LatencyProfile:
    """The checkpoint's measured latency profile (met profile), read once per file version."""
    return read_profile(Path(ckpt) / LATENCY_FILE)


def profile_of_quiet(ckpt: Path) -> LatencyProfile | None:
    """The latency profile beside a checkpoint, or None; METError if it is damaged."""
    f = ckpt / LATENCY_FILE
    return latency_profile(str(ckpt), f.stat().st_mtime) if f.is_file() else None


def profile_of(ckpt: Path) -> LatencyProfile | None:
    """The latency profile beside a checkpoint, or None; one sentence if it is damaged."""
    try:
        return profile_of_quiet(ckpt)
    except METError as e:
        fail(user_message(e))


@st.cache_resource(show_spinner=False)
def _ood_rule(path: str, mtime: float):
    from met_core.analysis.ood import load_ood

    return load_ood(path)


def models_that_accept(ckpt: Path, items: list[tuple[str, bytes]]) -> list[list[str]]:
    """For each (name, bytes) image, the other listed models with other classes whose out-of-distribution caution
    (met ood) does not flag it: where an image this model flags may belong (scores: engine.inference.score_images)."""
    from io import BytesIO

    from met_core.engine.inference import score_images

    mine = card(str(ckpt))["config"]["model"]["class_names"]
    out: list[list[str]] = [[] for _ in items]
    for p in checkpoints():
        if p == ckpt or card(str(p))["config"]["model"]["class_names"] == mine:
            continue
        try:
            rule = ood_rule(p)
            if rule is None:
                continue
            scores = score_images(model(str(p)), rule, [(n, BytesIO(b)) for n, b in items])
        except METError:
            continue  # a model that cannot be loaded is simply not suggested
        for i, sc in enumerate(scores):
            if sc is not None and sc <= rule.threshold:
                out[i].append(name(p))
    return out


def suggestion(models: list[str]) -> str:
    """The sentence under a flagged image: the other models whose own caution accepts it (models_that_accept)."""
    if not models:
        return "No other listed model with an out-of-distribution reference accepts it; the Models page lists all."
    return f"Not flagged by {', '.join(models)}: pick it on the Models page to try it there."


def ood_rule(ckpt: Path):
    """The checkpoint's out-of-distribution caution (met ood), or None; one sentence if its file is damaged."""
    from met_core.analysis.ood import OOD_FILE

    f = ckpt / OOD_FILE
    if not f.is_file():
        return None
    try:
        return _ood_rule(str(f), f.stat().st_mtime)
    except METError as e:
        fail(user_message(e))


@st.cache_data(show_spinner=False)
def reliability_curves(ckpt: str) -> list[ReliabilityCurve]:
    """Reliability diagram and ECE of each exit on the test trace."""
    (t, _), _ = traces_of(Path(ckpt))
    return exit_reliability(t)


def thumbnail(col: Any, root: Path | None, sample_id: str, caption: str | None = None) -> None:
    """A dataset image in a grid column (or the sentence saying why it cannot be read), with an optional caption."""
    from met_core.io.images import load_image

    if root is not None:
        try:
            col.image(load_image(root / sample_id), width="stretch")
        except METError as e:
            col.caption(md(user_message(e)))
    if caption:
        col.caption(md(caption))


def dataset_root(t: Trace) -> Path | None:
    """Where the trace's images are: the sidebar override, $MET_DATASET_ROOT, the recorded root, or ../shared."""
    from met_core.app import session

    return locate_dataset(t.meta.get("dataset_root"), session.local().dataset_root or None)


@st.cache_data(show_spinner=False)
def _digest(path: str, mtime: float, size: int) -> str:
    from met_core.io.traces import trace_digest

    return trace_digest(path)


def digest(path: Path) -> str:
    """A trace file's sha256, computed once per version of the file."""
    st_ = path.stat()
    return _digest(str(path), st_.st_mtime, st_.st_size)


SHIPPED_EMBEDDINGS = CHECKPOINTS / "embeddings"


@st.cache_resource(show_spinner=False)
def _aligned(a: str, b: str, k: int, da: str, db: str):
    from met_core.analysis.embeddings import aligned_pair

    (ta, _), (tb, _) = trace(a), trace(b)
    return aligned_pair(ta, tb, k, (da, db), [SHIPPED_EMBEDDINGS, embeddings_dir()], embeddings_dir())


def aligned(a: Path, b: Path, k: int):
    """The aligned 2-D embedding of two checkpoints' test-trace features at exit k: shipped, or fitted once and
    kept in the user's cache (keyed by the two trace files' digests), so every later view opens at once."""
    from met_core.analysis.embeddings import cache_name

    ta, tb = Path(test_trace_path(a)), Path(test_trace_path(b))
    da, db = digest(ta), digest(tb)
    name, _ = cache_name(da, db, k)
    if any((f / name).is_file() for f in (SHIPPED_EMBEDDINGS, embeddings_dir())):
        return _aligned(str(ta), str(tb), k, da, db)
    with st.spinner(
        f"Fitting an aligned UMAP of both models' features at exit {k + 1} (once for this pair: about "
        "10 s; it is kept on disk for every later view)..."
    ):
        return _aligned(str(ta), str(tb), k, da, db)


@st.cache_data(show_spinner=False)
def ladder_points(ckpt: str) -> dict[str, list[tuple[float, float]]]:
    """(GMACs, test accuracy) at every exit of the baselines beside the default model (the ablation ladder): only
    baselines traced on the same test images as the model's test trace, so no point mixes image sets."""
    from met_core.analysis.whatif import exit_accuracy_all

    out = {}
    base = CHECKPOINTS / "baselines"
    for p in sorted(base.glob(f"*/{TEST_TRACE_FILE}")) if base.is_dir() else []:
        try:
            t, a = trace(str(p))
        except METError:
            continue
        if same_test_images(Path(ckpt) / TEST_TRACE_FILE, p):
            out[label(p.parent)] = list(zip(a.gmacs.tolist(), exit_accuracy_all(a)))
    return out


@st.cache_data(show_spinner=False)
def same_test_images(a: Path, b: Path) -> bool:
    """Whether two trace files hold the same images in the same order (their sample ids)."""
    try:
        ta, tb = trace(str(a))[0], trace(str(b))[0]
    except METError:
        return False
    return len(ta.ids) == len(tb.ids) and bool((ta.ids == tb.ids).all())
