"""Threshold what-if: the threshold controls beside the accuracy-versus-cost curve (a click on the curve adopts its
thresholds), the numbers of the thresholds in use (simulated), charts, exports and the real measurement."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from met_core.analysis.exit_rule import ExitRule
from met_core.analysis.intervals import MEANING, clopper_pearson
from met_core.analysis.latency import PREDICTED_NOTE, LatencyProfile, latency_pieces, predict_latency
from met_core.analysis.policies import CALIBRATABLE, POLICIES, get_policy
from met_core.analysis.whatif import WhatIfResult, exit_accuracy_all, outcomes, whatif
from met_core.app import jobs, session, state
from met_core.app.palette import HIGHLIGHT, OTHER, exit_style, model_colour
from met_core.app.safe import md, plot
from met_core.app.view import COSTS, MODES, View, number, parse_thresholds, threshold_range
from met_core.io.limits import MAX_CONFUSION_CLASSES
from met_core.io.traces import MAC_NOTE, SIMULATED_NOTE

CAL = "calibration set"  # the one name of the images thresholds are chosen on, on every title, legend and header
MAX_DRAWN_CLASSES = 100  # a confusion heatmap with a clickable marker per cell: 10,000 cells at most

ckpt = state.current()
(trace, arrays), _ = state.traces_of(ckpt)
k = arrays.num_exits
n_test = len(arrays.labels)
st.title("Threshold what-if")
st.caption(
    f"Every number on this page is **{SIMULATED_NOTE}** of {md(state.name(ckpt))} on {n_test:,} test images "
    f"({MAC_NOTE}). The button at the bottom measures the real batched early exit."
)


def curve_policy(policy: str) -> str:
    """The policy of the curve: the current one when its score is continuous, else max-softmax."""
    return policy if get_policy(policy).calibratable else CALIBRATABLE[0]


def adopt_point() -> None:
    """The curve's click callback: the clicked candidate's thresholds become the per-exit thresholds in use."""
    pts = session.selected_points("curve")
    idx = [p["customdata"] for p in pts if isinstance(p.get("customdata"), int)]
    if not idx:
        return
    v = session.view()
    policy = curve_policy(v.policy)
    rows = state.sweep_table(str(ckpt), policy)
    if 0 <= idx[0] < len(rows):
        if policy != v.policy:
            session.local().notice = (
                f"The curve's thresholds are {policy} thresholds ({v.policy} has no continuous "
                f"score to calibrate), so the policy is now {policy}."
            )
        session.update(lambda view: (view.set_policy(policy, session.context()), view.adopt(rows[idx[0]].thresholds)))


def adopt(thresholds: list) -> None:
    session.update(lambda view: view.adopt(thresholds))


def pick_cell() -> None:
    pts = session.selected_points("confusion")
    if pts and "x" in pts[0] and "y" in pts[0]:
        cell = (int(pts[0]["y"]), int(pts[0]["x"]))
        session.update(lambda view: setattr(view.whatif, "cell", cell))


def open_cell_in_samples(cell: tuple[int, int]) -> None:
    def change(view: View) -> None:
        s = view.samples
        s.cell, s.exits, s.verdict, s.classes, s.rows, s.page, s.sample = cell, (), "all", (), (), 1, None

    session.update(change)


def threshold_controls(v: View, pol, cal) -> None:
    """The policy, the mode and the thresholds: sliders for coarse moves and one exact entry, all bound to the
    view (an empty or invalid entry keeps the value in use and says so)."""
    session.bind(
        st.radio,
        "Exit policy",
        "policy",
        list(POLICIES),
        horizontal=True,
        help="; ".join(f"**{p}**: {x.help}" for p, x in POLICIES.items()),
    )
    modes = ["global"] + (["per-exit"] if k > 1 else [])
    if k > 1 and pol.calibratable and cal:
        modes.append("certified")
    if k == 1:
        st.info("This model has one exit: every image runs the whole network, whatever the threshold.")
    session.bind(st.radio, "Thresholds", "mode", modes, format_func=MODES.get, horizontal=True)
    lo, hi = pol.ui_range(k)
    fmt = "%d" if pol.counts_exits else "%.2f"

    if v.mode == "global":
        label = "Agreeing exits needed (patience)" if pol.counts_exits else f"Threshold on the {v.policy} score"
        end = (
            f" The right end ({number(hi)}) is above any score: every image goes to the last exit."
            if (pol.higher_is_confident and not pol.counts_exits)
            else ""
        )
        session.bind(
            st.slider,
            label,
            "threshold",
            lo,
            hi,
            step=pol.ui_step,
            format=fmt,
            help=pol.help + end,
            show=lambda t: float(np.clip(t, lo, hi)),
            convert=float,
        )
    elif v.mode == "per-exit":
        for j in range(k - 1):
            _per_exit_slider(j, lo, hi, pol, fmt)
    if v.mode in ("global", "per-exit"):
        count = 1 if v.mode == "global" else k - 1
        path = "threshold" if v.mode == "global" else "per_exit"
        rlo, rhi = threshold_range(v.policy, k)
        session.bind_entry(
            "Exact value" + ("" if count == 1 else "s, comma-separated"),
            path,
            show=lambda t: number(t) if count == 1 else ", ".join(map(number, t)),
            convert=lambda text: (
                parse_thresholds(text, v.policy, k, count)[0]
                if count == 1
                else parse_thresholds(text, v.policy, k, count)
            ),
            key=f"w:{path}:exact",
            label_visibility="collapsed",
            placeholder="exact value",
            help=f"At full precision, from {number(rlo)} to {number(rhi)}; what is used is exactly "
            "this. Enter or Use applies it.",
        )
    else:
        c1, c2 = st.columns(2)
        session.bind(
            c1.slider, "Largest accuracy loss against the last exit (points)", "cert_loss", 0.1, 20.0, step=0.1
        )
        session.bind(
            c2.slider,
            "Risk delta (the promise may fail with at most this probability)",
            "cert_delta",
            0.01,
            0.5,
            step=0.01,
        )
    if (text := session.notice()) is not None:
        st.warning(md(text))


def _per_exit_slider(j: int, lo: float, hi: float, pol, fmt: str) -> None:
    """Exit j's slider: writes one element of the per-exit thresholds."""

    def convert(t: float) -> tuple[float, ...]:
        pe = list(session.view().per_exit)
        pe[j] = float(t)
        return tuple(pe)

    session.bind(
        st.slider,
        f"exit {j + 1}",
        "per_exit",
        lo,
        hi,
        step=pol.ui_step,
        format=fmt,
        key=f"w:per_exit:{j}",
        show=lambda pe: float(np.clip(pe[j], lo, hi)),
        convert=convert,
    )


def presets_row(presets: dict, cal) -> None:
    if not presets:
        return
    st.caption(
        f"Calibrated budgets, as a share of the last exit's GMACs (chosen on the {CAL}: "
        f"{md(cal[1]) if cal else 'none; the test trace'}):"
    )
    cols = st.columns(len(presets))
    for col, (b, p) in zip(cols, presets.items(), strict=True):
        if isinstance(p, str):  # the reason this budget cannot be met
            col.button(
                f"{b:.0%}",
                key=f"preset{b}",
                disabled=True,
                width="stretch",
                help=md(f"No thresholds reach {b:.0%} of the GMACs: {p}"),
            )
        else:
            col.button(
                f"{b:.0%}",
                key=f"preset{b}",
                on_click=adopt,
                args=(p.thresholds,),
                width="stretch",
                help=f"Thresholds for {b:.0%} of the last exit's GMACs, chosen on the {CAL}",
            )


def in_use_line(policy: str, thresholds) -> str:
    """The rule in use in words, thresholds to 4 significant digits as the page's other numbers (the exact values are
    in the entry box)."""
    pol = get_policy(policy)
    cmp = ">=" if pol.higher_is_confident else "<="
    if pol.counts_exits:
        counts = [thresholds] * (k - 1) if isinstance(thresholds, (int, float)) else thresholds[:-1]
        return (
            "In use: an image leaves at the first exit where at least this many consecutive exits agree: "
            + "; ".join(f"exit {j + 1}: {t:.4g}" for j, t in enumerate(counts))
            + "; the last always answers. An exit counts only the exits up to it, so at exit 1 images leave only "
            "with a patience of 1."
        )
    if isinstance(thresholds, (int, float)):
        return f"In use: every exit but the last leaves when its {policy} score {cmp} {thresholds:.4g}."
    rules = [
        f"exit {j + 1}: nobody leaves" if t == pol.never else f"exit {j + 1} {cmp} {t:.4g}"
        for j, t in enumerate(thresholds[:-1])
    ]
    return "In use: " + "; ".join(rules) + "; the last exit always answers."


def headline(r: WhatIfResult, where) -> None:
    m = where.columns(2)
    m[0].metric(
        "Accuracy", f"{100 * r.accuracy:.2f}%", f"{100 * (r.accuracy - r.last_exit_accuracy):+.2f} pt vs last exit"
    )
    m[1].metric(
        "Mean GMACs",
        f"{r.gmacs:.4f}",
        f"{100 * (r.gmacs / r.last_exit_gmacs - 1):+.1f}% vs last exit",
        delta_color="inverse",
    )
    m = where.columns(2)
    m[0].metric("Speed-up", f"{r.speedup:.2f}x")
    m[1].metric("Leaving early", f"{100 * r.early_share:.1f}%")


@st.fragment
def live() -> None:
    v = session.view()
    pol = get_policy(v.policy)
    cal = state.calibration_set(ckpt)
    left, right = st.columns([2, 3], gap="medium")
    with left:
        threshold_controls(v, pol, cal)
        v = session.view()
        policy, thresholds = state.thresholds_in_use()
        r = whatif(arrays, thresholds, policy, detail=True, intervals=True)
        headline(r, st)
        st.caption(md(in_use_line(policy, r.thresholds)))
        if v.mode == "certified":
            c = state.certified(str(ckpt), policy, v.cert_loss / 100, v.cert_delta)
            (st.success if c.thresholds else st.warning)(md(c.message) + f" Calibration set: {md(cal[1])}.")
        presets = state.budget_presets(str(ckpt), v.policy) if pol.calibratable else {}
        presets_row(presets, cal)
    labels = [None, *session.context().comparable]
    with right:
        session.bind(
            st.selectbox,
            "Compare with",
            "compare",
            labels,
            format_func=lambda x: "nothing" if x is None else state.name(state.by_label(x)),
        )
        st.plotly_chart(
            curve_figure(r, policy),
            key="curve",
            on_select=adopt_point,
            selection_mode="points",
            config={"displayModeBar": False},
        )
        st.caption(
            f"Click a point to use its thresholds; hover shows its thresholds, exit shares and 95 % interval. "
            f"The curve's thresholds are chosen on the {CAL}, its numbers measured on the test trace."
        )
    details(r, policy)
    session.publish()  # a fragment run ends here: the link follows every slider move


def details(r: WhatIfResult, policy: str) -> None:
    """Everything else the thresholds in use give: predicted time, intervals, charts, exports."""
    v = session.view()
    ci = r.intervals
    st.caption(
        f"95 % intervals on these {n_test:,} test images: accuracy {100 * ci.accuracy.lo:.2f} - "
        f"{100 * ci.accuracy.hi:.2f} %, mean GMACs {ci.gmacs.lo:.4f} - {ci.gmacs.hi:.4f}, speed-up "
        f"{ci.speedup.lo:.2f} - {ci.speedup.hi:.2f}x. What they mean: " + MEANING.removeprefix("95 % intervals: ")
    )
    prof = state.profile_of(ckpt)
    if prof is not None:
        t1, t2 = st.columns([1, 3])
        session.bind(t1.radio, "Cost shown as", "whatif.cost", list(COSTS), format_func=COSTS.get, horizontal=True)
        ctx = session.context()
        session.bind(
            t2.select_slider,
            "Batch size of the prediction",
            "whatif.batch",
            list(prof.batch_sizes),
            show=lambda b: b if b is not None else ctx.default_batch,
            convert=int,
        )
        batch = v.whatif.batch or ctx.default_batch
        if v.whatif.cost == "time":
            lp = predict_latency(prof, r.exit_fractions, batch)
            p = st.columns(3)
            p[0].metric(
                "Predicted time per image",
                f"{lp.ms_per_image:.2f} ms",
                f"{100 * (lp.ms_per_image / lp.full_ms_per_image - 1):+.1f}% vs last exit",
                delta_color="inverse",
            )
            p[1].metric("Predicted throughput", f"{lp.images_per_s:.0f} images/s")
            p[2].metric("Predicted speed-up", f"{lp.speedup:.2f}x")
            threads = "" if "threads" in prof.device_name else f"{prof.threads} threads, "
            st.caption(
                md(
                    f"{PREDICTED_NOTE} of this checkpoint on {prof.device_name} ({threads}{prof.precision}, "
                    f"torch {prof.torch_version}) at batch {batch}; the button at the bottom measures."
                )
            )
            st.plotly_chart(time_figure(r, prof, batch, policy), key="timecurve")

    g1, g2 = st.columns(2)
    names = [f"exit {j + 1} (block {e})" for j, e in enumerate(trace.meta.get("exits", range(1, k + 1)))]
    g1.plotly_chart(
        go.Figure(
            go.Bar(
                x=names,
                y=r.exit_fractions,
                text=[f"{100 * f:.1f}%" for f in r.exit_fractions],
                textposition="outside",
                cliponaxis=False,
                marker_color=[exit_style(j)[0] for j in range(k)],
            ),
            layout=dict(title="Share of images leaving at each exit", yaxis_tickformat=".0%", height=320),
        ),
        key="hist",
    )
    acc_all = exit_accuracy_all(arrays)
    fig = go.Figure(
        [
            go.Bar(name="all images at this exit", x=names, y=acc_all, marker_color=OTHER),
            go.Bar(
                name="images that leave here",
                x=names,
                y=[a or 0 for a in r.exit_accuracy],
                marker=dict(color=HIGHLIGHT, pattern_shape="/"),
            ),
        ],
        layout=dict(title="Accuracy per exit", yaxis_tickformat=".0%", height=320, barmode="group"),
    )
    g2.plotly_chart(fig, key="exitacc")
    # drawn on request: each Plotly figure costs the first view about 0.3 s in the browser
    if session.bind(
        st.toggle, "Show how far each exit's confidence can be trusted (reliability)", "whatif.reliability"
    ):
        reliability_chart()
    with st.expander("Per-class accuracy"):
        names_c = trace.class_names
        st.dataframe(
            pd.DataFrame(
                {
                    "class": names_c,
                    "accuracy (%)": 100 * np.asarray(r.per_class_accuracy),
                    "images": np.bincount(arrays.labels, minlength=len(names_c)),
                }
            ),
            hide_index=True,
            column_config={"accuracy (%)": st.column_config.NumberColumn(format="%.2f")},
        )
    if r.confusion is None or len(trace.class_names) > MAX_DRAWN_CLASSES:  # a drawing bounded by its cells
        st.caption(
            f"The confusion matrix is drawn for models of up to {MAX_DRAWN_CLASSES} classes; this one has "
            f"{len(trace.class_names):,} (per-class accuracy above; `met whatif --detail` writes the matrix "
            f"for up to {MAX_CONFUSION_CLASSES:,})."
        )
    elif session.bind(
        st.toggle, "Show the confusion matrix at these thresholds (click a cell to see its images)", "whatif.confusion"
    ):
        confusion(r, policy)
    export(r, policy)
    spread(policy)


def reliability_chart() -> None:
    curves = state.reliability_curves(str(ckpt))
    st.write(
        "Expected calibration error per exit (the mean gap between confidence and accuracy; 0 is perfect): "
        + " / ".join(f"exit {j + 1}: {c.ece:.3f}" for j, c in enumerate(curves))
        + ". `met reliability --fit-on CAL --out temperatures.json` fits per-exit temperatures."
    )
    rel = go.Figure(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"), name="perfectly calibrated")
    )
    for j, c in enumerate(curves):
        colour, symbol = exit_style(j)
        rel.add_scatter(
            x=c.confidence,
            y=c.accuracy,
            mode="lines+markers",
            name=f"exit {j + 1}",
            line=dict(color=colour),
            marker=dict(symbol=symbol, size=9, color=colour),
        )
    rel.update_layout(
        xaxis_title="confidence (top-1 probability)",
        yaxis_title="accuracy",
        height=380,
        title="Reliability diagram (test trace, 15 bins)",
    )
    st.plotly_chart(rel, key="reliability")


def spread(policy: str) -> None:
    """How far the calibrated 50 % budget moves when the calibration set is resampled."""
    if not get_policy(policy).calibratable:
        return
    sp = state.budget_spread(str(ckpt), policy, 0.5)
    if sp is not None:
        st.caption(
            f"How far a calibrated choice can move: the 50 % budget, chosen again on {sp.reps} resamples of "
            f"the {sp.validation_images:,} images of the {CAL}, gives {100 * sp.accuracy[0]:.2f} - "
            f"{100 * sp.accuracy[2]:.2f} % test accuracy at {sp.gmacs[0]:.3f} - {sp.gmacs[2]:.3f} mean "
            "GMACs (5th - 95th percentile)."
        )


def confusion(r: WhatIfResult, policy: str) -> None:
    """The confusion matrix at the thresholds in use; a clicked cell opens its images in Explore samples."""
    names_c = [plot(c) for c in trace.class_names]
    c = len(names_c)
    z = np.asarray(r.confusion)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(c)),
            y=list(range(c)),
            colorscale="Blues",
            text=z,
            texttemplate="%{text}",
            hoverinfo="skip",
        )
    )
    # plotly heatmaps report no selection to Streamlit, so an invisible square marker on every cell takes the click
    ti, pj = np.divmod(np.arange(c * c), c)
    fig.add_scatter(
        x=pj,
        y=ti,
        mode="markers",
        marker=dict(symbol="square", size=24, opacity=0.01),
        showlegend=False,
        text=z.ravel(),
        hovertemplate="true %{y}, predicted %{x}: %{text} images<extra></extra>",
    )
    cell = session.view().whatif.cell
    if cell is not None:
        fig.add_shape(
            type="rect",
            x0=cell[1] - 0.5,
            x1=cell[1] + 0.5,
            y0=cell[0] - 0.5,
            y1=cell[0] + 0.5,
            line=dict(color="#d55e00", width=3),
        )
    fig.update_layout(
        title="Confusion matrix at these thresholds (click a cell to see its images)",
        height=520,
        xaxis=dict(title="predicted", tickvals=list(range(c)), ticktext=names_c),
        yaxis=dict(title="true class", tickvals=list(range(c)), ticktext=names_c, autorange="reversed"),
        clickmode="event+select",
    )
    st.plotly_chart(fig, key="confusion", on_select=pick_cell, selection_mode="points")
    if cell is None:
        return
    true, pred = cell
    o = outcomes(arrays, r.thresholds, policy)
    count = int(((arrays.labels == true) & (o.pred == pred)).sum())
    st.markdown(
        f"**{count:,} test images of class {md(trace.class_names[true])} predicted as {md(trace.class_names[pred])}**"
    )
    if count and st.button(
        f"Open these {count:,} images in Explore samples", key="open_cell", on_click=open_cell_in_samples, args=(cell,)
    ):
        st.switch_page(session.page("samples"))


@st.cache_data(show_spinner=False)
def curve_rows(path: str, policy: str) -> pd.DataFrame:
    """The sweep's candidates chosen on the calibration set, measured on test, with what a hover shows: the
    thresholds, the share leaving at each exit and the accuracy's 95 % interval."""
    (_, test), _ = state.traces_of(Path(path))
    rows = state.sweep_table(path, policy)
    n = len(test.labels)
    out = []
    for i, p in enumerate(rows):
        w = whatif(test, p.thresholds, policy)
        lo, hi = clopper_pearson(np.round(p.test_accuracy * n), n)
        out.append(
            {
                "i": i,
                "gmacs": p.test_gmacs,
                "accuracy": p.test_accuracy,
                "pareto": p.pareto,
                "hover": plot(f"thresholds {' / '.join(number(t) for t in p.thresholds[:-1])}")
                + "<br>"
                + "leaving at each exit: "
                + " / ".join(f"{100 * f:.1f}%" for f in w.exit_fractions)
                + "<br>"
                + f"accuracy {100 * p.test_accuracy:.2f}% (95 % interval {100 * float(lo):.2f} - "
                f"{100 * float(hi):.2f}%), {p.test_gmacs:.4f} GMACs<br>chosen on the {CAL}: accuracy "
                f"{100 * p.cal_accuracy:.2f}%",
                "lo": float(lo),
                "hi": float(hi),
            }
        )
    return pd.DataFrame(out)


def time_figure(r: WhatIfResult, prof: LatencyProfile, batch: int, policy: str) -> go.Figure:
    """The Pareto front of the accuracy-versus-GMACs curve, with its cost as predicted time on the profile."""
    pol = curve_policy(policy)
    rows = state.sweep_table(str(ckpt), pol)
    front = [p for p in rows if p.pareto]
    front.sort(key=lambda p: p.test_gmacs)
    pts = [whatif(arrays, p.thresholds, pol) for p in front]
    ms = [predict_latency(prof, p.exit_fractions, batch).ms_per_image for p in pts]
    colour = model_colour(state.label(ckpt), session.context().models)
    fig = go.Figure(
        go.Scatter(
            x=ms,
            y=[p.accuracy for p in pts],
            mode="lines+markers",
            line=dict(color=colour),
            name=f"Pareto front (chosen on the {CAL})",
        )
    )
    fig.add_scatter(
        x=[predict_latency(prof, r.exit_fractions, batch).ms_per_image],
        y=[r.accuracy],
        mode="markers",
        name="thresholds in use",
        marker=STAR | dict(color=colour),
    )
    fig.update_layout(
        title=plot(f"Accuracy versus predicted time per image ({prof.device_name}, batch {batch})"),
        xaxis_title="predicted ms per image",
        yaxis_title="accuracy",
        yaxis_tickformat=".0%",
        height=420,
    )
    return fig


STAR = dict(size=18, symbol="star", line=dict(width=1.5, color="#000"))


def curve_figure(r: WhatIfResult, policy: str) -> go.Figure:
    pol = curve_policy(policy)
    models = session.context().models
    colour = model_colour(state.label(ckpt), models)
    rows = curve_rows(str(ckpt), pol)
    front = rows[rows.pareto].sort_values("gmacs")
    rest = rows[~rows.pareto]
    fig = go.Figure()
    fig.add_scatter(
        x=rest.gmacs,
        y=rest.accuracy,
        mode="markers",
        name="other candidates",
        marker=dict(size=7, color="#999"),
        customdata=rest.i,
        hovertext=rest.hover,
        hovertemplate="%{hovertext}<extra></extra>",
    )
    fig.add_scatter(
        x=np.concatenate([front.gmacs, front.gmacs[::-1]]),
        y=np.concatenate([front.hi, front.lo[::-1]]),
        fill="toself",
        line=dict(width=0),
        fillcolor=colour,
        opacity=0.3,
        hoverinfo="skip",
        name="95 % interval (test sample)",
    )
    fig.add_scatter(
        x=front.gmacs,
        y=front.accuracy,
        mode="lines+markers",
        marker=dict(size=8, color=colour),
        line=dict(color=colour),
        name=plot(f"{state.name(ckpt)}, Pareto front"),
        customdata=front.i,
        hovertext=front.hover,
        hovertemplate="%{hovertext}<extra></extra>",
    )
    compare = state.by_label(session.view().compare) if session.view().compare else None
    if compare is not None:
        (_, arr_b), _ = state.traces_of(compare)
        same = state.same_test_images(Path(state.test_trace_path(ckpt)), Path(state.test_trace_path(compare)))
        where = "" if same else f", on its own {len(arr_b.labels):,} test images"
        fb = curve_rows(str(compare), pol)
        fb = fb[fb.pareto].sort_values("gmacs")
        c_b = model_colour(state.label(compare), models)
        fig.add_scatter(
            x=fb.gmacs,
            y=fb.accuracy,
            mode="lines",
            name=plot(f"{state.name(compare)}{where}"),
            line=dict(dash="dash", color=c_b),
            hoverinfo="skip",
        )
        rb = whatif(arr_b, r.thresholds, policy)
        fig.add_scatter(
            x=[rb.gmacs],
            y=[rb.accuracy],
            mode="markers",
            hoverinfo="skip",
            name=plot(f"{state.name(compare)} at these thresholds{where}"),
            marker=dict(size=13, symbol="diamond", color=c_b, line=dict(width=1, color="#000")),
        )
    for name, pts in state.ladder_points(str(ckpt)).items():
        fig.add_scatter(
            x=[p[0] for p in pts],
            y=[p[1] for p in pts],
            mode="markers",
            name=plot(name),
            marker=dict(symbol="x", size=10, color=model_colour(name, models)),
            hoverinfo="skip",
        )
    for b, p in state.budget_presets(str(ckpt), pol).items():
        if isinstance(p, str):
            continue
        fig.add_scatter(
            x=[p.gmacs],
            y=[p.accuracy],
            mode="markers+text",
            text=[f"{b:.0%}"],
            hoverinfo="skip",
            textposition="top center",
            name=f"budget {b:.0%}",
            showlegend=False,
            marker=dict(size=10, symbol="square", color=colour, line=dict(width=1, color="#000")),
        )
    fig.add_scatter(
        x=[r.gmacs],
        y=[r.accuracy],
        mode="markers",
        name="thresholds in use",
        hoverinfo="skip",
        marker=STAR | dict(color=colour),
    )
    fig.update_layout(
        title=f"Accuracy versus mean GMACs on {n_test:,} test images"
        + (  # on a second line: one line was cut off at 1500 px
            ""
            if pol == policy
            else f"<br><sup>the curve: {pol} thresholds ({policy} has no continuous score); the star: the {policy} "
            "rule in use</sup>"
        ),
        xaxis_title=f"mean GMACs per image ({MAC_NOTE})",
        yaxis_title="accuracy",
        yaxis_tickformat=".0%",
        height=540,
        margin=dict(t=50 if pol == policy else 75, b=10),
        clickmode="event+select",
        legend=dict(orientation="h", yanchor="top", y=-0.3, x=0, font=dict(size=11)),
    )
    return fig


def export(r: WhatIfResult, policy: str) -> None:
    c1, c2 = st.columns(2)
    pol = curve_policy(policy)
    rows = pd.DataFrame([p.to_dict() for p in state.sweep_table(str(ckpt), pol)])
    rows["thresholds"] = rows.thresholds.map(json.dumps)
    rows.insert(0, "policy", pol)
    c1.download_button(
        "Sweep as CSV",
        rows.to_csv(index=False),
        f"{ckpt.name}-sweep.csv",
        "text/csv",
        help=f"Every candidate chosen on the {CAL} (cal_ columns) and measured on test (test_ columns)",
    )
    rule = ExitRule(
        policy,
        r.thresholds,
        state.label(ckpt),
        state.checkpoint_sha256(ckpt),
        {"accuracy": r.accuracy, "gmacs": r.gmacs, "speedup": r.speedup, "exit_fractions": r.exit_fractions},
        SIMULATED_NOTE,
    )
    c2.download_button(
        "Thresholds as JSON",
        rule.to_json(),
        f"{ckpt.name}-thresholds.json",
        "application/json",
        help="an exit rule: `met predict --rule FILE` and `met bench-exit --rule FILE` read it",
    )


def start_measuring() -> None:
    policy, thresholds = state.thresholds_in_use()
    session.local().measure_job = jobs.measure(str(ckpt), str(state.dataset_root(trace)), thresholds, policy)


@st.fragment(run_every=0.5)
def measuring(job: jobs.Job) -> None:
    """While this session's measurement runs: its progress and Cancel; when it ends, the page again."""
    if not job.running:
        st.rerun(scope="app")
    jobs.draw_progress(job, "cancel_measure")


def measure_panel() -> None:
    """Measure the real batched early exit in the background (progress in images, time left, Cancel), then
    compare it with what the GMACs and the latency profile predict, piece by piece."""
    st.subheader("Measured, not simulated")
    job_id = session.local().measure_job
    job = jobs.registry().get(job_id) if job_id else None
    if job is not None and job.checkpoint != str(ckpt):  # measured for another model: not this page's
        job = None
    busy = job is not None and job.running
    root = state.dataset_root(trace)
    if root is None:
        st.button(
            "Measure the real batched early exit",
            key="measure",
            disabled=True,
            help="The test images are not on disk: set their folder in the sidebar of Explore samples",
        )
        return
    st.button(
        "Measure the real batched early exit",
        key="measure",
        disabled=busy,
        on_click=start_measuring,
        help=f"Runs the model on {jobs.MEASURE_IMAGES} seeded test images at batch {jobs.MEASURE_BATCH}, the "
        "early exit and the full network in turn, in the background" + (" (running now)" if busy else ""),
    )
    if busy:
        measuring(job)
    elif job is not None and job.error:
        st.error(md(job.error))
    elif job is not None and job.result is not None:
        explain(job.result, job.policy, job.thresholds)


def explain(res, policy: str, thresholds: list) -> None:
    """The measured speed-up beside the GMACs' and the latency profile's predictions, and where the time goes."""
    st.success(
        f"Measured for {md(state.name(ckpt))}: {res.measured_speedup:.2f}x faster than the full network on "
        f"{res.images} images at batch "
        f"{res.batch_size} ({100 * res.early_exit_share:.0f}% left early; {policy} at "
        f"{md(state.describe(thresholds))}). GMACs predicted {res.predicted_speedup:.2f}x."
    )
    prof = state.profile_of(ckpt)
    if prof is None:
        st.caption(
            "GMACs count only the blocks; the stem, the exit heads and moving the continuing images on also "
            "take time. `met profile` measures those pieces and explains the gap here."
        )
        return
    b = res.batch_size
    lp = predict_latency(prof, res.exit_fractions, b)
    rows = [
        {
            "piece": p.piece,
            "GMACs": "not counted" if p.gmacs is None else f"{p.gmacs:.3f}",
            "ms per batch": f"{p.ms_per_batch:.2f}",
        }
        for p in latency_pieces(prof, arrays.gmacs, b)
    ]
    st.write(
        f"Why measured and predicted differ: the GMACs count only the blocks. The latency profile of this "
        f"checkpoint ({md(prof.device_name)}) also times the pieces the GMACs leave out, "
        f"and predicts {lp.speedup:.2f}x at batch {b} against {res.measured_speedup:.2f}x measured (and "
        f"{res.predicted_speedup:.2f}x from GMACs). Each piece at batch {b}, as the profile measured it:"
    )
    st.dataframe(pd.DataFrame(rows), hide_index=True)


live()
measure_panel()
