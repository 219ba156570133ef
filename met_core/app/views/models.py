"""Models: every checkpoint with its per-exit test and validation accuracy, cost, recipe and data (select a row
to use it on every page); run a model over a dataset folder; add a checkpoint folder."""

from pathlib import Path

import pandas as pd
import streamlit as st

from met_core.analysis.whatif import exit_accuracy_all
from met_core.app import jobs, session, state
from met_core.app.safe import md
from met_core.errors import METError, user_message
from met_core.io.limits import MAX_PATH_CHARS
from met_core.io.paths import runs_dir

st.title("Models")


def per_exit(values: list[float] | None, scale: float = 100, digits: int = 1) -> str:
    return " / ".join(f"{scale * v:.{digits}f}" for v in values) if values else ""


def row(p: Path) -> dict:
    sm = state.summary(p)
    train = state.card(str(p))["config"].get("train", {})
    test = None
    if state.has_test_trace(p):
        try:
            t, a = state.trace(state.test_trace_path(p))
            test = (exit_accuracy_all(a), len(a.labels), t.meta.get("dataset_root") or t.meta.get("dataset"))
        except METError as e:
            st.warning(md(f"{state.label(p)}: {user_message(e)}"))
    return {
        "checkpoint": sm.name,
        "trained on": f"{sm.training_data} + {sm.val_images:,} val. images of {sm.dataset or '?'}",
        "exits (blocks)": ", ".join(map(str, sm.exits)),
        "test accuracy per exit (%)": per_exit(test[0]) if test else "no test trace",
        "test images": f"{test[1]:,} of {test[2]}" if test else "",  # beside them: a 60-image trace is seen as one
        "val. accuracy per exit (%)": per_exit(sm.val_accuracy),
        "GMACs per exit": per_exit(sm.exit_gmacs, 1, 3),
        "graph reg. lambda": sm.graph_reg,
        "adapters": sm.adapters,
        "recipe": f"{train.get('epochs', '?')} epochs, lr {train.get('lr', '?')}, {sm.img_size} px, "
        f"head input {sm.head_input}, seed {train.get('seed', '?')}",
        "backbone": sm.backbone,
        "train time (s)": sm.train_time_s,
    }


paths, rows = [], []
for p in state.checkpoints():
    try:
        rows.append(row(p))
        paths.append(p)
    except METError as e:
        st.error(md(f"{state.label(p)}: {user_message(e)}"))
cur = state.current()
st.caption(
    "Select a row to use that model on every page. Test accuracy: every image at that exit, on the test "
    "trace; validation: the checkpoint's own held-out training images."
)

default_rows = [paths.index(cur)] if cur in paths else []
# one table per model in use, so its highlighted row is always that model (also after a trace picked a new one)
table_key = f"model_table-{state.label(cur)}"
event = st.dataframe(
    pd.DataFrame(rows),
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    height="content",  # every row, no empty one below
    key=table_key,
    selection_default={"selection": {"rows": default_rows}},
)
picked = list(event.selection.rows) if event else []
if picked and paths[picked[0]] != cur:  # a click on another row
    session.set_model(state.label(paths[picked[0]]))
    st.rerun()
st.write(f"Every page uses **{md(state.name(cur))}**.")

st.subheader("Run a model on a dataset")
st.caption(
    md(
        f"Traces the model over the images once (every exit's output; features of up to {jobs.FEATURES:,}), "
        f"then every page can use it. The result is kept in {runs_dir()} (set $MET_RUNS_DIR to move it)."
    )
)
job_id = session.local().trace_job
job = jobs.registry().get(job_id) if job_id else None
# a trace started before a reload or in another tab: shown (not polled: no load on the cores it uses) and cancellable,
# but it is not this session's (its end switches no model here); one trace at a time on the server's cores
other_id = None if job and job.running else jobs.running(jobs.TraceJob)
other = jobs.registry()[other_id] if other_id else None
# Enter in the dataset field does not start a trace that can take half an hour: the button does
with st.form("trace_form", enter_to_submit=False):
    c1, c2 = st.columns(2)
    model = c1.selectbox("Model", paths, index=paths.index(cur) if cur in paths else 0, format_func=state.label)
    data = c2.text_input(
        "Dataset: an ImageFolder path (one sub-folder per class) or a torchvision name",
        max_chars=MAX_PATH_CHARS,
        placeholder="/path/to/images  or  cifar10",
    )
    c3, c4 = st.columns(2)
    split = c3.radio("Split (torchvision names only)", ["test", "train"], horizontal=True)
    limit = c4.number_input("At most this many images (0: all)", 0, 10_000_000, 0, step=100)
    busy = bool(job and job.running) or other is not None
    go_ = st.form_submit_button(
        "Run the trace",
        disabled=busy,
        help="A trace is running on this app's cores: wait for it below, or cancel it" if busy else None,
    )
if go_:
    if not data.strip():
        st.error("Give a dataset folder or name first.")
    else:
        session.local().trace_job = jobs.trace(str(model), data.strip(), split, int(limit))
        st.rerun()


@st.fragment(run_every=0.5)
def poll() -> None:
    """While the session's trace runs: its progress bar and a cancel button; when it ends, the whole page again
    (with the new model in use when it succeeded)."""
    job = jobs.registry()[session.local().trace_job]
    if not job.running:
        if job.result:
            session.set_model(state.label(Path(job.result)))
        st.rerun(scope="app")
    describe(job)
    jobs.draw_progress(job, "cancel_trace")


def describe(job: jobs.TraceJob) -> None:
    limit = f"at most {job.limit:,} images" if job.limit else "every image"
    st.caption(md(f"Tracing {Path(job.checkpoint).name} over {job.dataset} ({job.split} split, {limit})."))


if job is not None and job.running:
    poll()
elif other is not None:
    st.info("A trace started in another tab, or before this page was reloaded, is running; reload to see how far.")
    describe(other)
    jobs.draw_progress(other, "cancel_trace")
elif job is not None and job.error:
    st.error(md(job.error))
elif job is not None and job.result:
    st.success(md(f"Traced {state.label(Path(job.result))}: it is listed in the table above."))

st.subheader("Add a checkpoint folder")
new = session.bind(
    st.text_input, "Folder with config.json and model.safetensors", "local.new_checkpoint", max_chars=MAX_PATH_CHARS
)
if st.button("Add", key="add_ckpt") and new:
    from met_core.nn.checkpoint import inspect_checkpoint  # torch (a model on the meta device): only on Add

    try:
        inspect_checkpoint(Path(new).expanduser())
    except METError as e:
        st.error(md(user_message(e)))
    else:
        session.local().extra_checkpoints.append(str(Path(new).expanduser().resolve()))
        st.success(md(f"added {new}"))
        st.rerun()
