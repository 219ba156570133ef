"""Representations: UMAP of the head inputs at an exit for any two models, in one shared frame."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from met_core.analysis.geometry import ClassSpread, class_spread
from met_core.analysis.whatif import exit_accuracy_all, outcomes
from met_core.app import session, state
from met_core.app.palette import CORRECT, WRONG, class_style, exit_style, model_colour
from met_core.app.safe import md, plot
from met_core.app.view import COLOURS
from met_core.errors import METError, user_message

ckpt = state.current()
(trace, arrays), _ = state.traces_of(ckpt)
st.title("Representations")
st.caption(
    "Head inputs z_k of a fixed, seeded subset of test images, stored in the traces. An aligned UMAP embeds "
    "both models' features so that each image sits at about the same place in both panels: one shared frame."
)


def lam(p) -> float:
    return state.summary(p).graph_reg or 0.0


def comparable(p) -> bool:
    """Traced on the same test images as the current model, with features stored."""
    if p == ckpt or not state.has_test_trace(p):
        return False
    t = state.trace(state.test_trace_path(p))[0]
    return len(t.feature_index) > 0 and len(t.ids) == len(trace.ids) and bool((t.ids == trace.ids).all())


if not len(trace.feature_index):
    state.fail(
        f"{state.label(ckpt)}'s trace stores no features; re-create it with `--features 1000`, or pick a "
        "model with features on the Models page."
    )
others = [p for p in state.checkpoints() if comparable(p)]
v = session.view()
r_view = v.representations
# by default its no-graph-regularization twin (the same data and recipe), else the model whose graph-regularization
# strength differs most from this one's
twin = state.by_label(session.context().twin) if session.context().twin else None
default_other = twin if twin in others else max(others, key=lambda p: abs(lam(p) - lam(ckpt)), default=None)
other = state.by_label(r_view.compare) if r_view.compare else default_other
if other not in others:  # not traced on the same images with features: the page's default, in the link too
    session.update(lambda view: setattr(view.representations, "compare", None))
    other = default_other
labels = [state.label(p) for p in others]
c1, c2, c3 = st.columns([2, 1, 1])  # the compared model's name with its training data needs the width
session.bind(
    c1.selectbox,
    "Compare with",
    "representations.compare",
    labels,
    show=lambda _: state.label(other) if other is not None else None,
    format_func=lambda x: f"{state.name(state.by_label(x))}, lambda {lam(state.by_label(x)):g}",
)
session.bind(
    c2.selectbox, "Exit", "representations.exit", list(range(arrays.num_exits)), format_func=lambda j: f"exit {j + 1}"
)
session.bind(c3.radio, "Colour by", "representations.colour", list(COLOURS), horizontal=True)
k, color_by = r_view.exit, r_view.colour


def features_at(path: str, k: int, rows: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    (t, _), _ = state.traces_of(state.Path(path))
    where = {int(r): j for j, r in enumerate(t.feature_index)}
    return t.features[k][[where[r] for r in rows]].astype(np.float32), t.labels[list(rows)]


@st.cache_data(show_spinner=False)
def spreads(path: str, rows: tuple[int, ...]) -> list[ClassSpread]:
    """Same-class and other-class mean cosine distance at every exit."""
    (t, _), _ = state.traces_of(state.Path(path))
    return [class_spread(*features_at(path, k, rows)) for k in range(t.num_exits)]


if other is None:
    state.fail("no second checkpoint traced on the same test images with features; trace one on the Models page.")
if k >= state.trace(state.test_trace_path(other))[1].num_exits:
    state.fail(f"{state.label(other)} has no exit {k + 1}; pick an earlier exit.")
try:
    pair = state.aligned(ckpt, other, k)
except METError as e:
    state.fail(user_message(e))
key_rows = tuple(int(r) for r in pair.rows)
fr = {"rows": pair.rows, "xy": [pair.xy_a, pair.xy_b]}
fr["knn"], fr["sil"] = list(pair.knn), list(pair.silhouette)
acc = [exit_accuracy_all(state.traces_of(p)[0][1]) for p in (ckpt, other)]
rows = fr["rows"]
policy, thresholds = state.thresholds_in_use()
names = [f"{state.name(p)}, lambda {lam(p):g}" for p in (ckpt, other)]
fig = make_subplots(
    1,
    2,
    shared_xaxes=True,
    shared_yaxes=True,
    subplot_titles=[  # short: two titles share one row at 1280 px
        plot(f"{state.label(p)} (lambda {lam(p):g}): kNN {100 * fr['knn'][j]:.1f}%")
        for j, p in enumerate((ckpt, other))
    ],
)
for j, ck in enumerate([ckpt, other]):
    (_, arr), _ = state.traces_of(ck)
    o = outcomes(arr, thresholds, policy)
    ex, corr = o.exits[rows], o.correct[rows]
    if color_by == "class":
        groups = [(plot(trace.class_names[c]), arr.labels[rows] == c, *class_style(c)) for c in range(arr.num_classes)]
    elif color_by == "correct":
        groups = [("correct", corr, *CORRECT), ("wrong", ~corr, *WRONG)]
    else:
        groups = [(f"exit {e + 1}", ex == e, *exit_style(e)) for e in range(arr.num_exits)]
    for name, sel, colour, symbol in groups:
        if not sel.any():
            continue
        fig.add_trace(
            go.Scattergl(
                x=fr["xy"][j][sel, 0],
                y=fr["xy"][j][sel, 1],
                mode="markers",
                name=name,
                legendgroup=name,
                showlegend=j == 0,
                marker=dict(size=5, color=colour, symbol=symbol),
                customdata=rows[sel],
                hovertext=[plot(t) for t in trace.ids[rows[sel]]],
            ),
            1,
            j + 1,
        )
    chosen = np.isin(rows, r_view.rows)
    if chosen.any():  # the selection, ringed at the same images in both panels
        fig.add_trace(
            go.Scattergl(
                x=fr["xy"][j][chosen, 0],
                y=fr["xy"][j][chosen, 1],
                mode="markers",
                name="selected",
                legendgroup="selected",
                showlegend=j == 0,
                hoverinfo="skip",
                marker=dict(size=9, color="rgba(0,0,0,0)", line=dict(width=1.5, color="#000")),
            ),
            1,
            j + 1,
        )


def select_points() -> None:
    """The lasso or box callback: the selected images (from either panel) become the view's selection."""
    pts = session.selected_points("umap")
    got = tuple(sorted({int(p["customdata"]) for p in pts if isinstance(p.get("customdata"), (int, float))}))
    if got:
        session.update(lambda view: setattr(view.representations, "rows", got))


def open_in_samples(chosen: tuple[int, ...]) -> None:
    def change(view) -> None:
        sv = view.samples
        sv.rows, sv.cell, sv.exits, sv.verdict, sv.classes, sv.page, sv.sample = chosen, None, (), "all", (), 1, None

    session.update(change)


fig.update_xaxes(matches="x")
fig.update_yaxes(matches="y")
fig.update_layout(height=560, dragmode="lasso")
st.plotly_chart(fig, key="umap", on_select=select_points, selection_mode=("lasso", "box"))
st.caption(
    "Draw a lasso or a box around points in either panel: the same images are ringed in both, and can be "
    "opened in Explore samples."
)
picked = list(r_view.rows)
if picked:
    st.subheader(f"{len(picked)} selected samples")
    b1, b2 = st.columns(2)
    if b1.button(
        f"Open these {len(picked):,} images in Explore samples",
        key="open_selection",
        on_click=open_in_samples,
        args=(tuple(picked),),
    ):
        st.switch_page(session.page("samples"))
    b2.button(
        "Clear the selection",
        key="clear_selection",
        on_click=session.update,
        args=(lambda view: setattr(view.representations, "rows", ()),),
    )
    lab = arrays.labels[picked]
    o = outcomes(arrays, thresholds, policy)
    ex, corr = o.exits[picked], o.correct[picked]
    st.write(
        md(
            f"accuracy at their exits ({names[0]}): {100 * corr.mean():.1f}%; "
            f"classes: " + ", ".join(f"{trace.class_names[c]} {n}" for c, n in zip(*np.unique(lab, return_counts=True)))
        )
    )
    st.dataframe(
        pd.DataFrame(
            {"id": trace.ids[picked], "class": np.asarray(trace.class_names)[lab], "exit": ex + 1, "correct": corr}
        ),
        hide_index=True,
    )
st.dataframe(
    pd.DataFrame(
        [
            {
                "model": state.label(p),
                "graph reg. lambda": lam(p),
                # rounded as the sentence below states them
                f"kNN accuracy, exit {k + 1} (%)": round(100 * fr["knn"][j], 1),
                f"silhouette, exit {k + 1}": round(fr["sil"][j], 3),
                f"test accuracy, exit {k + 1} (%)": round(100 * acc[j][k], 1),
                "test accuracy, last exit (%)": round(100 * acc[j][-1], 1),
            }
            for j, p in enumerate((ckpt, other))
        ]
    ),
    hide_index=True,
)
d = fr["knn"][0] - fr["knn"][1]
st.write(
    md(
        f"At exit {k + 1}, on {len(key_rows):,} test images, kNN accuracy is {100 * fr['knn'][0]:.1f}% for {names[0]} "
        f"and {100 * fr['knn'][1]:.1f}% for {names[1]} ({100 * d:+.1f} points); silhouette {fr['sil'][0]:.3f} vs "
        f"{fr['sil'][1]:.3f}. What each pays or gains for it: test accuracy at this exit {100 * acc[0][k]:.1f}% vs "
        f"{100 * acc[1][k]:.1f}%, at the last exit {100 * acc[0][-1]:.1f}% vs {100 * acc[1][-1]:.1f}%."
        + ("" if pair.cached else " (The embedding was fitted now and kept on disk for every later view.)")
    )
)

fronts = go.Figure()
for n, p, a in zip(names, (ckpt, other), acc):
    colour = model_colour(state.label(p), session.context().models)
    front = sorted((r.test_gmacs, r.test_accuracy) for r in state.sweep_table(str(p), "max-softmax") if r.pareto)
    fronts.add_scatter(
        x=[g for g, _ in front],
        y=[x for _, x in front],
        mode="lines",
        line=dict(color=colour),
        name=plot(f"{n}: Pareto front (max-softmax, chosen on its calibration set)"),
    )
    fronts.add_scatter(
        x=state.traces_of(p)[0][1].gmacs,
        y=a,
        mode="markers",
        marker=dict(size=10, color=colour),
        name=plot(f"{n}: every image at one exit"),
    )
fronts.update_layout(
    title="What each model gives for its compute: test accuracy versus mean GMACs",
    height=400,
    xaxis_title="mean GMACs per image",
    yaxis_title="test accuracy",
    yaxis_tickformat=".0%",
    legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, font=dict(size=11)),
)
st.plotly_chart(fronts, key="fronts")

sp = [spreads(str(p), key_rows) for p in (ckpt, other)]
bars = go.Figure()
for j, (n, p) in enumerate(zip(names, (ckpt, other))):
    colour = model_colour(state.label(p), session.context().models)
    for kind, pattern in (("same_class", ""), ("other_class", "/")):
        bars.add_bar(
            x=[f"exit {e + 1}" for e in range(len(sp[j]))],
            y=[getattr(x, kind) for x in sp[j]],
            name=plot(f"{n}: {kind.replace('_', '-')} pairs"),
            offsetgroup=f"{j}{kind}",
            marker=dict(color=colour, pattern_shape=pattern, line=dict(width=1, color=colour)),
        )
bars.update_layout(
    title="How far apart the features are: mean cosine distance (2 - 2 cos) of same-class and of other-class pairs",
    barmode="group",
    height=380,
    yaxis_title="mean cosine distance",
)
st.plotly_chart(bars, key="spread")
if lam(ckpt) == lam(other):  # the comparison differs in something else: the caption must not credit the regulariser
    lead = (
        f"Both models have the same graph-regularization weight (lambda {lam(ckpt):g}): what differs here comes from "
        "their training data or recipe, not from the regulariser."
    )
else:
    lead = (
        "Graph regularization (the 'label' graph) pulls same-class features together; "
        f"{names[0] if lam(ckpt) > lam(other) else names[1]} has the larger lambda."
    )
st.caption(
    md(
        f"{lead} At exit {k + 1}, {names[0]} against {names[1]}: same-class distance {sp[0][k].same_class:.3f} vs "
        f"{sp[1][k].same_class:.3f}, other-class {sp[0][k].other_class:.3f} vs {sp[1][k].other_class:.3f}, ratio "
        f"{sp[0][k].ratio:.3f} vs {sp[1][k].ratio:.3f}. A lower ratio means classes easier to tell apart; when both "
        "distances shrink alike (the same ratio), the whole space only contracts, and kNN accuracy, the silhouette "
        "and the UMAP, which look at the space up to its scale, barely change."
    )
)
