"""Explore samples: the test images behind the trace as a filtered, sorted, paged grid (each tile its prediction,
confidence and exit), a tile's detail in a dialog (its confidence ladder against the thresholds), and uploads."""

import io
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from met_core.analysis.policies import as_thresholds, get_policy
from met_core.analysis.whatif import outcomes
from met_core.app import session, state
from met_core.app.palette import HIGHLIGHT, OTHER, exit_style
from met_core.app.safe import md, plot
from met_core.app.view import SORTS, VERDICTS, View
from met_core.errors import METError, user_message
from met_core.io.images import IMAGE_EXTENSIONS, load_image

MAX_UPLOADS = 32
COLS, ROWS = 8, 3
GRID = COLS * ROWS

ckpt = state.current()
(trace, arrays), _ = state.traces_of(ckpt)
st.title("Explore samples")
policy, thresholds = state.thresholds_in_use()
pol = get_policy(policy)
st.caption(
    md(
        f"Exits at the thresholds in use ({policy}: {state.describe(thresholds)}); simulated from cached exit "
        "outputs. Change them on the Threshold what-if page."
    )
)

with st.sidebar:
    session.bind(
        st.text_input,
        "Dataset folder of the trace",
        "local.dataset_root",
        placeholder="the folder recorded in the trace",
        help="Where the images of this trace are on this machine; also settable with $MET_DATASET_ROOT.",
    )
root = state.dataset_root(trace)
out = outcomes(arrays, thresholds, policy)
ex, pred, correct, conf = out.exits, out.pred, out.correct, out.confidence
names = list(trace.class_names)


def first_page(view: View) -> None:
    view.samples.page = 1


def clear(field: str) -> None:
    session.update(lambda v: (setattr(v.samples, field, () if field == "rows" else None), first_page(v)))


def show(i: int) -> None:
    sid = str(trace.ids[i])
    session.update(lambda v: setattr(v.samples, "sample", sid))


def close_detail() -> None:
    session.update(lambda v: setattr(v.samples, "sample", None))


@st.dialog("Sample detail", width="large", on_dismiss=close_detail)
def detail(i: int) -> None:
    """The image, its prediction and its confidence ladder: each exit's score against its threshold."""
    c1, c2 = st.columns([1, 2])
    state.thumbnail(c1, root, str(trace.ids[i]))
    c1.markdown(
        md(
            f"{trace.ids[i]}: true class {names[arrays.labels[i]]}; leaves at exit {ex[i] + 1} predicting "
            f"{names[pred[i]]} ({'correct' if correct[i] else 'wrong'})"
        )
    )
    score = arrays.score(pol)[i]
    t = as_thresholds(thresholds, arrays.num_exits)
    x = [f"exit {j + 1}" for j in range(arrays.num_exits)]
    fig = go.Figure(
        go.Bar(
            x=x,
            y=score,
            text=[plot(names[c]) for c in arrays.probs[i].argmax(-1)],
            textposition="outside",
            name=f"{policy} score (bar text: the exit's predicted class)",
            marker=dict(
                color=[HIGHLIGHT if j == ex[i] else OTHER for j in range(arrays.num_exits)],
                pattern_shape=["/" if j == ex[i] else "" for j in range(arrays.num_exits)],
            ),
        )
    )
    shown_t = [float(v) if np.isfinite(v) else None for v in t]
    fig.add_scatter(
        x=x[:-1],
        y=shown_t[:-1],
        mode="markers",
        name="threshold",
        marker=dict(symbol="line-ew", size=40, line=dict(width=3, color="#888")),
    )
    verb = "at least" if pol.higher_is_confident else "at most"
    fig.update_layout(
        title=plot(f"Confidence ladder: an exit answers when its score is {verb} its threshold"),
        height=360,
        legend=dict(orientation="h", y=-0.15),
        yaxis_range=None if pol.counts_exits else [0, 1.05],
    )
    c2.plotly_chart(fig, key="ladder")


v = session.view()
s = v.samples
tab_browse, tab_upload = st.tabs(["Browse the test set", "Upload images"])
with tab_browse:
    if root is None:
        st.warning(
            md(
                f"The images of this trace are not on disk (recorded folder: {trace.meta.get('dataset_root')}). "
                "Put the dataset there, or give its folder in the sidebar or in $MET_DATASET_ROOT "
                "(CIFAR-10: torchvision downloads it; this repo's tests use ../shared/datasets/cifar10/test)."
            )
        )
    c1, c2, c3, c4 = st.columns([2, 2, 3, 2])
    session.bind(
        c1.multiselect,
        "Exit taken",
        "samples.exits",
        list(range(1, arrays.num_exits + 1)),
        show=list,
        convert=tuple,
        then=first_page,
    )
    session.bind(
        c2.selectbox,
        "Prediction",
        "samples.verdict",
        list(VERDICTS),
        then=first_page,
        format_func={"all": "correct and wrong", "correct": "correct only", "wrong": "wrong only"}.get,
    )
    session.bind(c3.multiselect, "True class", "samples.classes", names, show=list, convert=tuple, then=first_page)
    session.bind(c4.selectbox, "Sort by", "samples.sort", list(SORTS), format_func=SORTS.get, then=first_page)
    mask = np.ones(len(ex), bool)
    if s.exits:
        mask &= np.isin(ex + 1, s.exits)
    if s.verdict != "all":
        mask &= correct == (s.verdict == "correct")
    if s.classes:
        mask &= np.isin(arrays.labels, [names.index(c) for c in s.classes])
    if s.cell is not None:
        mask &= (arrays.labels == s.cell[0]) & (pred == s.cell[1])
        c, b = st.columns([4, 1])
        c.info(
            md(
                f"Showing the confusion cell true {names[s.cell[0]]}, predicted {names[s.cell[1]]} "
                "(opened from the what-if page)."
            )
        )
        b.button("Show all cells", key="clear_cell", on_click=clear, args=("cell",))
    if s.rows:
        sel = np.zeros(len(ex), bool)
        sel[list(s.rows)] = True
        mask &= sel
        c, b = st.columns([4, 1])
        c.info(f"Showing the {len(s.rows):,} images selected on the Representations page.")
        b.button("Show all images", key="clear_rows", on_click=clear, args=("rows",))
    idx = np.flatnonzero(mask)
    order = {
        "order": idx,
        "conf-asc": idx[np.argsort(conf[idx], kind="stable")],
        "conf-desc": idx[np.argsort(-conf[idx], kind="stable")],
        "exit": idx[np.argsort(ex[idx], kind="stable")],
        "class": idx[np.argsort(arrays.labels[idx], kind="stable")],
    }[s.sort]
    pages = max(1, -(-len(order) // GRID))
    if s.page > pages:
        s.page = pages
    p1, p2, p3, p4 = st.columns([3, 1, 2, 1], vertical_alignment="center")
    p1.write(f"{len(order):,} of {len(ex):,} images match; page {s.page} of {pages:,}.")
    p2.button(
        "Previous",
        key="prev_page",
        disabled=s.page <= 1,
        on_click=session.update,
        args=(lambda v: setattr(v.samples, "page", v.samples.page - 1),),
    )
    if pages > 1:  # a slider cannot show a value it does not have
        session.bind(p3.slider, "Page", "samples.page", 1, pages, label_visibility="collapsed")
    p4.button(
        "Next",
        key="next_page",
        disabled=s.page >= pages,
        on_click=session.update,
        args=(lambda v: setattr(v.samples, "page", v.samples.page + 1),),
    )
    cols = st.columns(COLS)
    for j, i in enumerate(order[(s.page - 1) * GRID : s.page * GRID]):
        col = cols[j % COLS]
        state.thumbnail(col, root, str(trace.ids[i]))
        mark = "✓" if correct[i] else "✗"
        col.caption(f"{mark} {md(names[pred[i]])} {conf[i]:.2f} · exit {ex[i] + 1}")
        col.button(
            "Details",
            key=f"s{i}",
            on_click=show,
            args=(int(i),),
            type="tertiary",
            help=md(f"{trace.ids[i]}, true class {names[arrays.labels[i]]}: image and confidence ladder"),
        )
    if s.sample is not None:
        detail(session.context().ids.index(s.sample))

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
        from met_core.engine.inference import (
            predict_images,  # torch: only once someone uploads
            score_images,
        )

        items = [(f.name, f.getvalue()) for f in files]
        t0 = time.perf_counter()
        # one at a time: each upload's own time (a batch would give every row the batch's average)
        results = [predict_images(model, [(n, io.BytesIO(b))], thresholds, policy)[0] for n, b in items]
        elapsed = time.perf_counter() - t0
        rule = state.ood_rule(ckpt)
        scores = score_images(model, rule, [(n, io.BytesIO(b)) for n, b in items]) if rule else [None] * len(items)
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
                            "ms": f"{1e3 * r.seconds:.0f}",
                        }
                        for r in ok
                    ]
                ).set_index("file")
            )  # static: ≤ 32 rows
            st.caption(
                f"Real early exit on {len(ok)} image(s), one at a time, in {elapsed:.2f} s in total "
                "(preprocessing included; the ms column is each image's own time)."
            )
            if rule is not None:
                st.caption(md("Caution mark: " + rule.describe() + "."))
            else:
                st.caption(
                    "This model has no out-of-distribution reference (`met ood`), so no upload is checked "
                    "for being one of its classes."
                )
            flagged = [
                i
                for i, (r, sc) in enumerate(zip(results, scores))
                if r.error is None and sc is not None and sc > rule.threshold
            ]
            elsewhere = dict(zip(flagged, state.models_that_accept(ckpt, [items[i] for i in flagged])))
            cols = st.columns(4)
            for n, (r, (name, data), score) in enumerate(zip(results, items, scores)):
                if r.error is not None:
                    continue
                col = cols[n % 4]
                col.image(load_image(io.BytesIO(data), name), width="stretch")
                col.markdown(
                    md(f"{r.file}: {r.class_name} ({r.confidence:.2f}) at exit {r.exit + 1}, {1e3 * r.seconds:.0f} ms")
                )
                if score is not None and score > rule.threshold:
                    col.warning(
                        md(
                            f"Probably not one of this model's classes (distance {score:.4f} > "
                            f"{rule.threshold:.4f}): the answer is a guess among "
                            f"{', '.join(model.cfg.class_names[:10])}. " + state.suggestion(elsewhere[n])
                        )
                    )
            classes = [plot(c) for c in model.cfg.class_names]
            for n, r in enumerate(ok[:4]):  # two uploads may share a name: keys by position
                probs = [p for p in r.exit_probs if p is not None]
                fig = go.Figure(
                    [
                        go.Bar(name=f"exit {j + 1}", x=classes, y=p, marker_color=exit_style(j)[0])
                        for j, p in enumerate(probs)
                    ]
                )
                fig.update_layout(
                    title=plot(f"{r.file}: per-exit probabilities (computed exits only)"), barmode="group", height=300
                )
                st.plotly_chart(fig, key=f"upload{n}")
