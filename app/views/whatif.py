"""Threshold what-if: a live slider over the cached trace (simulated), presets, curves, exports, real measurement."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import state, urlstate
from app.safe import md, plot
from met_core.errors import METError, user_message
from met_core.exit_rule import ExitRule
from met_core.flops import MAC_NOTE
from met_core.intervals import MEANING, clopper_pearson
from met_core.latency import PREDICTED_NOTE, LatencyProfile, predict_latency
from met_core.limits import MAX_CONFUSION_CLASSES
from met_core.policies import CALIBRATABLE, POLICIES, get_policy
from met_core.traces import SIMULATED_NOTE
from met_core.whatif import WhatIfResult, exit_accuracy_all, outcomes, whatif

ckpt = state.current()
(trace, arrays), _ = state.traces_of(ckpt)
k = arrays.num_exits
st.title("Threshold what-if")
st.caption(
    f"Every number on this page is **{SIMULATED_NOTE}** of {md(state.label(ckpt))} on {len(arrays.labels):,} test "
    f"images ({MAC_NOTE}). The button at the bottom measures the real batched early exit."
)

c1, c2 = st.columns([2, 3])
policy = c1.radio(
    "Exit policy",
    list(POLICIES),
    horizontal=True,
    key=state.kept("policy"),
    help="; ".join(f"**{p}**: {v.help}" for p, v in POLICIES.items()),
)
pol = get_policy(policy)
cal_policy = policy if pol.calibratable else CALIBRATABLE[0]  # the curve needs a continuous score
others = [
    p
    for p in state.checkpoints()
    if p != ckpt
    and state.has_test_trace(p)
    and state.card(str(p))["config"]["model"]["num_classes"] == arrays.num_classes
]
default_cmp = next((i + 1 for i, p in enumerate(others) if p.name == f"{ckpt.name}-nogr"), 0)
compare = c2.selectbox(
    "Compare with",
    [None] + others,
    index=default_cmp,
    key=state.kept("compare"),
    format_func=lambda p: "nothing" if p is None else state.label(p),  # selectbox options are plain text
)
st.session_state["compared"] = compare


CERTIFIED = "Certified (largest loss)"
MAX_DRAWN_CLASSES = 100  # a confusion heatmap with a clickable marker per cell: 10,000 cells at most


def apply_preset(thresholds: list, lo: float, hi: float) -> None:
    """Preset button callback: switch to per-exit thresholds and fill them in (runs before the widgets exist)."""
    st.session_state["mode"] = "Per-exit thresholds"
    for j, v in enumerate(thresholds[:-1]):
        st.session_state[f"t{policy}{j}"] = float(np.clip(v, lo, hi))


@st.fragment
def live() -> None:
    lo, hi = pol.ui_range(k)
    step, default = pol.ui_step, float(pol.default_threshold)
    st.session_state.setdefault("mode", "One global threshold")
    st.session_state.setdefault(f"g{policy}", default)
    for j in range(k - 1):
        st.session_state.setdefault(f"t{policy}{j}", default)
    modes = ["One global threshold", "Per-exit thresholds"] if k > 1 else ["One global threshold"]
    cal = state.calibration_set(ckpt)
    if k > 1 and pol.calibratable and cal:
        modes.append(CERTIFIED)
    if k == 1:
        st.info("This model has one exit: every image runs the whole network, whatever the threshold.")
        st.session_state["mode"] = modes[0]
    mode = st.radio("Thresholds", modes, horizontal=True, key=state.kept("mode"))
    presets = state.budget_presets(str(ckpt), policy) if pol.calibratable else {}
    if presets:
        cols = st.columns(len(presets) + 1)
        cols[0].write(f"Calibrated budgets (chosen on {md(cal[1]) if cal else 'the test trace'}):")
        for col, (b, p) in zip(cols[1:], presets.items(), strict=True):
            if isinstance(p, str):  # the reason this budget cannot be met
                col.button(f"{b:.0%} of the last exit's GMACs", key=f"preset{b}", disabled=True, help=md(p))
            else:
                col.button(
                    f"{b:.0%} of the last exit's GMACs",
                    key=f"preset{b}",
                    on_click=apply_preset,
                    args=(p.thresholds, lo, hi),
                )
    # filled at the end of this run: the resampling (about 0.5 s) then overlaps the browser drawing the charts
    spread_slot = st.empty() if presets and not isinstance(presets.get(0.5), str) else None
    if mode == CERTIFIED:
        c1, c2 = st.columns(2)
        loss = c1.number_input("Largest accuracy loss against the last exit (points)", 0.1, 20.0, 1.0, 0.1,
                               key=state.kept("cert_loss"))
        delta = c2.number_input("Risk delta (the promise may fail with at most this probability)", 0.01, 0.5, 0.1,
                                0.01, key=state.kept("cert_delta"))
        c = state.certified(str(ckpt), policy, loss / 100, delta)
        (st.success if c.thresholds else st.warning)(md(c.message) + f" Calibration set: {md(cal[1])}.")
        thresholds = c.thresholds or [pol.never] * (k - 1) + [None]
    elif mode == "One global threshold":
        thresholds: float | list[float] = st.slider(
            f"Confidence threshold ({policy})", lo, hi, step=step, key=state.kept(f"g{policy}"), help=pol.help
        )
    else:
        cols = st.columns(k - 1)
        thresholds = [
            c.number_input(f"exit {j + 1}", lo, hi, step=step, key=state.kept(f"t{policy}{j}"))
            for j, c in enumerate(cols)
        ]
    r = whatif(arrays, thresholds, policy, detail=True, intervals=True)
    live_results(r, thresholds, spread_slot)


def show_spread(slot) -> None:
    """How far the calibrated 50 % budget moves when the calibration set is resampled (caption in `slot`)."""
    sp = state.budget_spread(str(ckpt), policy, 0.5)
    if sp is not None:
        slot.caption(f"How far a calibrated choice can move: the 50 % budget, chosen again on {sp.reps} resamples of "
                     f"the {sp.validation_images:,} calibration images, gives {100 * sp.accuracy[0]:.2f} - "
                     f"{100 * sp.accuracy[2]:.2f} % test accuracy at {sp.gmacs[0]:.3f} - {sp.gmacs[2]:.3f} mean "
                     "GMACs (5th - 95th percentile).")


def live_results(r: WhatIfResult, thresholds: float | list[float], spread_slot) -> None:
    """Everything the current thresholds give: metrics, predicted time, intervals, charts, exports."""
    st.session_state["whatif_thresholds"] = r.thresholds
    state.remember()  # a slider move re-runs only this fragment: keep its value and the link in step
    urlstate.publish()
    m = st.columns(4)
    m[0].metric(
        "Accuracy", f"{100 * r.accuracy:.2f}%", f"{100 * (r.accuracy - r.last_exit_accuracy):+.2f} pt vs last exit"
    )
    m[1].metric(
        "Mean GMACs",
        f"{r.gmacs:.4f}",
        f"{100 * (r.gmacs / r.last_exit_gmacs - 1):+.1f}% vs last exit",
        delta_color="inverse",
    )
    m[2].metric("Speed-up", f"{r.speedup:.2f}x")
    m[3].metric("Leaving early", f"{100 * r.early_share:.1f}%")
    prof = state.profile_of(ckpt)
    if prof is not None:
        t1, t2 = st.columns([1, 3])
        cost = t1.radio("Cost shown as", ["GMACs", "predicted time"], horizontal=True, key=state.kept("cost_axis"))
        batch = int(t2.select_slider("Batch size of the prediction", prof.batch_sizes, value=prof.batch_sizes[-1]
                                     if 64 not in prof.batch_sizes else 64, key=state.kept("cost_batch")))
        if cost == "predicted time":
            lp = predict_latency(prof, r.exit_fractions, batch)
            p = st.columns(3)
            p[0].metric("Predicted time per image", f"{lp.ms_per_image:.2f} ms",
                        f"{100 * (lp.ms_per_image / lp.full_ms_per_image - 1):+.1f}% vs last exit",
                        delta_color="inverse")
            p[1].metric("Predicted throughput", f"{lp.images_per_s:.0f} images/s")
            p[2].metric("Predicted speed-up", f"{lp.speedup:.2f}x")
            st.caption(md(f"{PREDICTED_NOTE} of this checkpoint on {prof.device_name} ({prof.threads} threads, "
                          f"{prof.precision}, torch {prof.torch_version}) at batch {batch}; `bench-exit` measures."))
            st.plotly_chart(time_figure(r, prof, batch), key="timecurve")
    ci = r.intervals
    st.caption(f"95 % intervals on these {len(arrays.labels):,} test images: accuracy {100 * ci.accuracy.lo:.2f} - "
               f"{100 * ci.accuracy.hi:.2f} %, mean GMACs {ci.gmacs.lo:.4f} - {ci.gmacs.hi:.4f}, speed-up "
               f"{ci.speedup.lo:.2f} - {ci.speedup.hi:.2f}x. {MEANING}")

    g1, g2 = st.columns(2)
    names = [f"exit {j + 1} (block {e})" for j, e in enumerate(trace.meta.get("exits", range(1, k + 1)))]
    g1.plotly_chart(
        go.Figure(
            go.Bar(x=names, y=r.exit_fractions, text=[f"{100 * f:.1f}%" for f in r.exit_fractions]),
            layout=dict(title="Share of images leaving at each exit", yaxis_tickformat=".0%", height=320),
        ),
        key="hist",
    )
    acc_all = exit_accuracy_all(arrays)
    fig = go.Figure(
        [
            go.Bar(name="all images at this exit", x=names, y=acc_all),
            go.Bar(name="images that leave here", x=names, y=[a or 0 for a in r.exit_accuracy]),
        ],
        layout=dict(title="Accuracy per exit", yaxis_tickformat=".0%", height=320, barmode="group"),
    )
    g2.plotly_chart(fig, key="exitacc")

    st.plotly_chart(curve_figure(r, thresholds), key="curve")
    # drawn on request: each Plotly figure costs the first view about 0.3 s in the browser
    if st.toggle("Show how far each exit's confidence can be trusted (reliability)", key=state.kept("show_rel")):
        curves = state.reliability_curves(str(ckpt))
        st.write("Expected calibration error per exit (the mean gap between confidence and accuracy; 0 is perfect): "
                 + " / ".join(f"exit {j + 1}: {c.ece:.3f}" for j, c in enumerate(curves))
                 + ". `met reliability --fit-on CAL --out temperatures.json` fits per-exit temperatures.")
        rel = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"),
                                   name="perfectly calibrated"))
        for j, c in enumerate(curves):
            rel.add_scatter(x=c.confidence, y=c.accuracy, mode="lines+markers", name=f"exit {j + 1}")
        rel.update_layout(xaxis_title="confidence (top-1 probability)", yaxis_title="accuracy", height=380,
                          title="Reliability diagram (test trace, 15 bins)")
        st.plotly_chart(rel, key="reliability")
    with st.expander("Per-class accuracy"):
        names_c = trace.class_names
        st.dataframe(
            pd.DataFrame(
                {
                    "class": names_c,
                    "accuracy": r.per_class_accuracy,
                    "images": np.bincount(arrays.labels, minlength=len(names_c)),
                }
            ),
            hide_index=True,
        )
    if r.confusion is None or len(trace.class_names) > MAX_DRAWN_CLASSES:  # a drawing bounded by its cells
        st.caption(f"The confusion matrix is drawn for models of up to {MAX_DRAWN_CLASSES} classes; this one has "
                   f"{len(trace.class_names):,} (per-class accuracy above; `met whatif --detail` writes the matrix "
                   f"for up to {MAX_CONFUSION_CLASSES:,}).")
    elif st.toggle("Show the confusion matrix at these thresholds (click a cell to see its images)",
                   key=state.kept("show_confusion")):
        confusion(r)
    export(r)
    if spread_slot is not None:
        show_spread(spread_slot)


def confusion(r: WhatIfResult) -> None:
    """The confusion matrix at the current thresholds; clicking a cell shows the images in it."""
    names_c = [plot(c) for c in trace.class_names]
    c = len(names_c)
    z = np.asarray(r.confusion)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(c)), y=list(range(c)), colorscale="Blues", text=z,
                               texttemplate="%{text}", hoverinfo="skip"))
    # plotly heatmaps report no selection to Streamlit, so an invisible square marker on every cell takes the click
    ti, pj = np.divmod(np.arange(c * c), c)
    fig.add_scatter(x=pj, y=ti, mode="markers", marker=dict(symbol="square", size=24, opacity=0.01),
                    showlegend=False, text=z.ravel(),
                    hovertemplate="true %{y}, predicted %{x}: %{text} images<extra></extra>")
    fig.update_layout(title="Confusion matrix at these thresholds (click a cell to see its images)", height=520,
                      xaxis=dict(title="predicted", tickvals=list(range(c)), ticktext=names_c),
                      yaxis=dict(title="true class", tickvals=list(range(c)), ticktext=names_c, autorange="reversed"),
                      clickmode="event+select")
    event = st.plotly_chart(fig, key="confusion", on_select="rerun", selection_mode="points")
    pts = event.selection.points if event else []
    if not pts:
        return
    true, pred = int(pts[0]["y"]), int(pts[0]["x"])
    o = outcomes(arrays, r.thresholds, policy)
    idx = np.flatnonzero((arrays.labels == true) & (o.pred == pred))
    st.markdown(f"**{len(idx):,} test images of class {md(trace.class_names[true])} predicted as "
                f"{md(trace.class_names[pred])}**" + (f" (showing {min(16, len(idx))})" if len(idx) else ""))
    root = state.dataset_root(trace)
    cols = st.columns(8)
    for j, i in enumerate(idx[:16]):
        state.thumbnail(cols[j % 8], root, str(trace.ids[i]), f"{trace.ids[i]}, exit {o.exits[i] + 1}")


def sweep_frame(path: Path) -> pd.DataFrame:
    return pd.DataFrame([p.to_dict() for p in state.sweep_table(str(path), cal_policy)])


def time_figure(r: WhatIfResult, prof: LatencyProfile, batch: int) -> go.Figure:
    """The Pareto front of the accuracy-versus-GMACs curve, with its cost as predicted time on the profile."""
    front = sweep_frame(ckpt).query("pareto").sort_values("test_gmacs")
    pts = [whatif(arrays, th, cal_policy) for th in front.thresholds]
    ms = [predict_latency(prof, p.exit_fractions, batch).ms_per_image for p in pts]
    fig = go.Figure(go.Scatter(x=ms, y=[p.accuracy for p in pts], mode="lines+markers",
                               name="Pareto front (chosen on calibration)"))
    fig.add_scatter(x=[predict_latency(prof, r.exit_fractions, batch).ms_per_image], y=[r.accuracy], mode="markers",
                    name="current thresholds", marker=dict(size=16, color="red", symbol="star"))
    fig.update_layout(title=plot(f"Accuracy versus predicted time per image ({prof.device_name}, batch {batch})"),
                      xaxis_title="predicted ms per image", yaxis_title="accuracy", yaxis_tickformat=".0%", height=420)
    return fig


def curve_figure(r: WhatIfResult, thresholds: float | list[float]) -> go.Figure:
    rows = sweep_frame(ckpt)
    front = rows[rows.pareto].sort_values("test_gmacs")
    fig = go.Figure()
    fig.add_scatter(
        x=rows.test_gmacs,
        y=rows.test_accuracy,
        mode="markers",
        name="candidate thresholds",
        marker=dict(size=4, color="#bbb"),
    )
    n = len(arrays.labels)
    lo, hi = clopper_pearson(np.round(front.test_accuracy.to_numpy() * n), n)
    fig.add_scatter(x=np.concatenate([front.test_gmacs, front.test_gmacs[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                    fill="toself", line=dict(width=0), fillcolor="rgba(31,119,180,0.15)", hoverinfo="skip",
                    name="95 % interval (test sample)")
    fig.add_scatter(x=front.test_gmacs, y=front.test_accuracy, mode="lines+markers",
                    name=plot(f"{state.label(ckpt)} (Pareto front, chosen on calibration)"))
    if compare is not None:
        (_, arr_b), _ = state.traces_of(compare)
        rows_b = sweep_frame(compare)
        fb = rows_b[rows_b.pareto].sort_values("test_gmacs")
        fig.add_scatter(
            x=fb.test_gmacs, y=fb.test_accuracy, mode="lines", name=plot(state.label(compare)), line=dict(dash="dash")
        )
        rb = whatif(arr_b, thresholds, policy)
        fig.add_scatter(
            x=[rb.gmacs],
            y=[rb.accuracy],
            mode="markers",
            name=plot(f"{state.label(compare)} at this threshold"),
            marker=dict(size=12, symbol="diamond"),
        )
    for name, pts in state.ladder_points(str(ckpt)).items():
        fig.add_scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=name, marker=dict(symbol="x", size=9)
        )
    for b, p in state.budget_presets(str(ckpt), cal_policy).items():
        if isinstance(p, str):
            continue
        fig.add_scatter(
            x=[p.gmacs],
            y=[p.accuracy],
            mode="markers+text",
            text=[f"{b:.0%}"],
            textposition="top center",
            name=f"budget {b:.0%}",
            marker=dict(size=10, symbol="square"),
            showlegend=False,
        )
    fig.add_scatter(
        x=[r.gmacs],
        y=[r.accuracy],
        mode="markers",
        name="current thresholds",
        marker=dict(size=16, color="red", symbol="star"),
    )
    fig.update_layout(
        title="Accuracy versus mean GMACs (test trace; thresholds chosen on validation)",
        xaxis_title=f"mean GMACs per image ({MAC_NOTE})",
        yaxis_title="accuracy",
        yaxis_tickformat=".0%",
        height=460,
    )
    return fig


def export(r: WhatIfResult) -> None:
    c1, c2, c3 = st.columns(3)
    rows = sweep_frame(ckpt)
    rows["thresholds"] = rows.thresholds.map(json.dumps)
    c1.download_button("Sweep as CSV", rows.to_csv(index=False), f"{ckpt.name}-sweep.csv", "text/csv")
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
    if c3.button(
        "Measure the real batched early exit", key="measure", help="runs the model on 256 test images, batch 64"
    ):
        measure(r.thresholds)


def measure(thresholds: list) -> None:
    from met_core.data import decode_all, open_dataset, transform_for
    from met_core.inference import measure_speedup

    root = state.dataset_root(trace)
    if root is None:
        st.warning(
            "The test images are not on disk, so the real early exit cannot be measured; set the dataset "
            "folder on the Explore samples page."
        )
        return
    with st.spinner("Running real batched early exit vs the full network on 256 images..."):
        try:
            mdl = state.model(str(ckpt))
            ds = open_dataset(str(root))
            ds = ds.subset(np.sort(np.random.default_rng(0).choice(len(ds), min(256, len(ds)), replace=False)))
            ds.transform = transform_for(mdl.cfg)
            x, _ = decode_all(ds, "decode", progress=False)
            res = measure_speedup(mdl, x, thresholds, policy, batch_size=64, repeats=3)
        except METError as e:
            st.error(md(user_message(e)))
            return
    st.success(
        f"Real early exit: measured speed-up {res.measured_speedup:.2f}x vs predicted "
        f"{res.predicted_speedup:.2f}x on {res.images} images ({100 * res.early_exit_share:.0f}% left early)."
    )


live()
