"""Explore samples: the dataset behind the trace as a filtered grid, a sample's confidence ladder, and uploads."""
import io
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import state
from app.safe import md, plot
from met_core.errors import METError, user_message
from met_core.images import IMAGE_EXTENSIONS
from met_core.whatif import outcomes

MAX_UPLOADS = 32
GRID = 24

ckpt = state.current()
(trace, arrays), _ = state.traces_of(ckpt)
st.title("Explore samples")
policy, thresholds = state.thresholds_in_use()
st.caption(f"Exits at the what-if page's current thresholds ({policy}: {state.describe(thresholds)}); simulated from "
           "cached exit outputs.")

with st.sidebar:
    st.text_input("Dataset folder of the trace", key=state.kept("dataset_root_override"),
                  placeholder=trace.meta.get("dataset_root", ""),
                  help="Where the images of this trace are; also settable with $MET_DATASET_ROOT.")
root = state.dataset_root(trace)
out = outcomes(arrays, thresholds, policy)
ex, pred, correct = out.exits, out.pred, out.correct

tab_browse, tab_upload = st.tabs(["Browse the test set", "Upload images"])
with tab_browse:
    if root is None:
        st.warning(md(f"The images of this trace are not on disk (recorded folder: {trace.meta.get('dataset_root')}). "
                   "Put the dataset there, or give its folder in the sidebar or in $MET_DATASET_ROOT "
                   "(CIFAR-10: torchvision downloads it; this repo's tests use ../shared/datasets/cifar10/test)."))
    c1, c2, c3 = st.columns(3)
    exits_sel = c1.multiselect("Exit taken", list(range(1, arrays.num_exits + 1)), key=state.kept("f_exit"))
    corr_sel = c2.radio("Prediction", ["all", "correct", "wrong"], horizontal=True, key=state.kept("f_correct"))
    cls_sel = c3.multiselect("Class", trace.class_names, key=state.kept("f_class"))
    mask = np.ones(len(ex), bool)
    if exits_sel:
        mask &= np.isin(ex + 1, exits_sel)
    if corr_sel != "all":
        mask &= correct == (corr_sel == "correct")
    if cls_sel:
        mask &= np.isin(arrays.labels, [trace.class_names.index(c) for c in cls_sel])
    idx = np.flatnonzero(mask)
    st.write(f"{len(idx):,} of {len(ex):,} images match; showing {min(GRID, len(idx))}.")
    page = st.number_input("Page", 1, max(1, -(-len(idx) // GRID)), 1, key=state.kept("f_page")) - 1
    cols = st.columns(8)
    for j, i in enumerate(idx[page * GRID:(page + 1) * GRID]):
        col = cols[j % 8]
        state.thumbnail(col, root, str(trace.ids[i]))
        mark = "✓" if correct[i] else "✗"
        if col.button(f"{mark} exit {ex[i] + 1}", key=f"s{i}", help=md(trace.ids[i])):
            st.session_state["sample"] = int(i)
    i = st.session_state.get("sample")
    if i is not None and i < len(ex):
        st.subheader(md(f"{trace.ids[i]}: true class {trace.class_names[arrays.labels[i]]}"))
        p = arrays.probs[i]
        conf = p.max(-1)
        names = [f"exit {j + 1}" for j in range(arrays.num_exits)]
        fig = go.Figure(
            go.Bar(
                x=names,
                y=conf,
                text=[plot(trace.class_names[c]) for c in p.argmax(-1)],
                marker_color=["crimson" if j == ex[i] else "steelblue" for j in range(arrays.num_exits)],
            )
        )
        if isinstance(thresholds, (int, float)) and policy == "max-softmax":
            fig.add_hline(y=thresholds, line_dash="dot", annotation_text="threshold")
        fig.update_layout(
            title=plot(f"Confidence ladder: leaves at exit {ex[i] + 1} predicting {trace.class_names[pred[i]]}"),
            yaxis_range=[0, 1],
            height=320,
        )
        st.plotly_chart(fig, key="ladder")

with tab_upload:
    files = st.file_uploader(
        "Images (any common format)",
        accept_multiple_files=True,
        key="uploads",
        type=[e.lstrip(".") for e in IMAGE_EXTENSIONS],
    )
    if files:
        if len(files) > MAX_UPLOADS:
            st.warning(f"{len(files)} files uploaded; only the first {MAX_UPLOADS} are answered.")
            files = files[:MAX_UPLOADS]
        try:
            model = state.model(str(ckpt))
        except METError as e:
            state.fail(user_message(e))
        from met_core.inference import predict_images  # torch: only once someone uploads

        t0 = time.perf_counter()
        results = predict_images(model, [(f.name, io.BytesIO(f.getvalue())) for f in files], thresholds, policy)
        elapsed = time.perf_counter() - t0
        ok = [r for r in results if r.error is None]
        for r in results:
            if r.error is not None:
                st.error(md(r.error))
        if ok:
            st.table(
                pd.DataFrame(
                    [
                        {
                            "file": md(r.file),
                            "class": md(r.class_name),
                            "exit": r.exit + 1,
                            "confidence": round(r.confidence, 4),
                            "GMACs": round(r.gmacs, 4),
                            "of full": f"{100 * r.gmacs / r.gmacs_full:.0f}%",
                            "ms per image": round(1e3 * r.seconds, 1),
                        }
                        for r in ok
                    ]
                ).set_index("file")
            )  # static: ≤ 32 rows
            st.caption(f"Real early exit on {len(ok)} image(s) in {elapsed:.2f} s in total (preprocessing included).")
            classes = [plot(c) for c in model.cfg.class_names]
            for n, r in enumerate(ok[:4]):  # two uploads may share a name: keys by position
                probs = [p for p in r.exit_probs if p is not None]
                fig = go.Figure([go.Bar(name=f"exit {j + 1}", x=classes, y=p) for j, p in enumerate(probs)])
                fig.update_layout(title=plot(f"{r.file}: per-exit probabilities (computed exits only)"),
                                  barmode="group", height=300)
                st.plotly_chart(fig, key=f"upload{n}")
