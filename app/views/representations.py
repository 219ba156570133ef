"""Representations: UMAP of the head inputs at an exit, with and without graph regularization, in one shared frame."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app import state
from app.safe import md, plot
from met_core.data import load_image
from met_core.errors import METError, user_message
from met_core.geometry import aligned_umap, knn_accuracy, silhouette
from met_core.policies import DEFAULT_POLICY
from met_core.whatif import outcomes

ckpt = state.current()
(trace, arrays), _ = state.traces_of(ckpt)
st.title("Representations")
st.caption("Head inputs z_k of a fixed, seeded subset of test images, stored in the traces. An aligned UMAP embeds "
           "both models' features so that each image sits at about the same place in both panels: one shared frame.")
if not len(trace.feature_index):
    state.fail(f"{state.label(ckpt)}'s trace stores no features; re-create it with `--features 2000`.")
others = [p for p in state.checkpoints() if p != ckpt and state.has_test_trace(p)]
default_other = next((i for i, p in enumerate(others) if p.name == f"{ckpt.name}-nogr"), 0)
c1, c2, c3 = st.columns(3)
other = c1.selectbox("Compare with", others, index=default_other if others else None, key=state.kept("rep_other"),
                     format_func=state.label)  # selectbox options are plain text
k = c2.selectbox(
    "Exit", list(range(arrays.num_exits)), format_func=lambda j: f"exit {j + 1}", key=state.kept("rep_exit")
)
color_by = c3.radio("Colour by", ["class", "correct", "exit taken"], horizontal=True, key=state.kept("rep_color"))


@st.cache_data(show_spinner="Fitting an aligned UMAP on both models' features (first time only, about a minute)...")
def frames(a: str, b: str, k: int) -> dict:
    (ta, _), _ = state.traces_of(state.Path(a))
    (tb, _), _ = state.traces_of(state.Path(b))
    common, ia, ib = np.intersect1d(ta.feature_index, tb.feature_index, return_indices=True)
    if len(common) < 20:
        raise METError("the two traces share fewer than 20 feature samples; trace both on the same dataset.")
    fa, fb = ta.features[k][ia].astype(np.float32), tb.features[k][ib].astype(np.float32)
    xy_a, xy_b = aligned_umap([fa, fb])
    y = ta.labels[common]
    return {
        "rows": common,
        "xy": [xy_a, xy_b],
        "knn": [knn_accuracy(fa, y), knn_accuracy(fb, y)],
        "sil": [silhouette(fa, y), silhouette(fb, y)],
    }


if other is None:
    state.fail("no second checkpoint with a trace to compare with; add one on the Models page.")
if k >= state.trace(state.test_trace_path(other))[1].num_exits:
    state.fail(f"{state.label(other)} has no exit {k + 1}; pick an earlier exit.")
try:
    fr = frames(str(ckpt), str(other), k)
except METError as e:
    state.fail(user_message(e))
rows = fr["rows"]
policy = st.session_state.get("policy", DEFAULT_POLICY)
thresholds = st.session_state.get("whatif_thresholds") or state.default_thresholds(policy)
names = [state.label(ckpt), state.label(other)]
fig = make_subplots(
    1,
    2,
    shared_xaxes=True,
    shared_yaxes=True,
    subplot_titles=[
        f"{n}: kNN acc {100 * fr['knn'][j]:.1f}%, silhouette {fr['sil'][j]:.3f}" for j, n in enumerate(names)
    ],
)
for j, ck in enumerate([ckpt, other]):
    (_, arr), _ = state.traces_of(ck)
    o = outcomes(arr, thresholds, policy)
    ex, corr = o.exits[rows], o.correct[rows]
    values = {
        "class": np.asarray(trace.class_names)[arr.labels[rows]],
        "correct": np.where(corr, "correct", "wrong"),
        "exit taken": np.char.add("exit ", (ex + 1).astype(str)),
    }[color_by]
    for v in np.unique(values):
        sel = values == v
        fig.add_trace(
            go.Scattergl(
                x=fr["xy"][j][sel, 0],
                y=fr["xy"][j][sel, 1],
                mode="markers",
                name=plot(v),
                legendgroup=str(v),
                showlegend=j == 0,
                marker=dict(size=4),
                customdata=rows[sel],
                hovertext=[plot(t) for t in trace.ids[rows[sel]]],
            ),
            1,
            j + 1,
        )
fig.update_xaxes(matches="x")
fig.update_yaxes(matches="y")
fig.update_layout(height=560, dragmode="lasso")
event = st.plotly_chart(fig, key="umap", on_select="rerun", selection_mode=("lasso", "box"))
d = fr["knn"][0] - fr["knn"][1]
st.write(md(
    f"At exit {k + 1}, kNN accuracy is {100 * fr['knn'][0]:.1f}% for {names[0]} and {100 * fr['knn'][1]:.1f}% "
    f"for {names[1]} ({100 * d:+.1f} points); silhouette {fr['sil'][0]:.3f} vs {fr['sil'][1]:.3f}."
))

picked = sorted({int(p["customdata"]) for p in (event.selection.points if event else []) if "customdata" in p})
if picked:
    st.subheader(f"{len(picked)} selected samples")
    lab = arrays.labels[picked]
    o = outcomes(arrays, thresholds, policy)
    ex, corr = o.exits[picked], o.correct[picked]
    st.write(md(
        f"accuracy at their exits ({names[0]}): {100 * corr.mean():.1f}%; "
        f"classes: " + ", ".join(f"{trace.class_names[c]} {n}" for c, n in zip(*np.unique(lab, return_counts=True)))
    ))
    st.dataframe(
        pd.DataFrame(
            {"id": trace.ids[picked], "class": np.asarray(trace.class_names)[lab], "exit": ex + 1, "correct": corr}
        ),
        hide_index=True,
    )
    root = state.dataset_root(trace)
    if root is not None:
        cols = st.columns(8)
        for j, i in enumerate(picked[:16]):
            try:
                cols[j % 8].image(load_image(root / str(trace.ids[i])), caption=md(trace.ids[i]), width="stretch")
            except METError as e:
                cols[j % 8].caption(md(user_message(e)))
