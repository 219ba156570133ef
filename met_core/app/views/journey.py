"""An image's journey: one image steps through the network exit by exit (blocks run, GMACs spent, the exit's
class probabilities, its score against the threshold) until it leaves, with the cost it saved."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from met_core.analysis.journey import Journey, journey
from met_core.analysis.policies import get_policy
from met_core.app import session, state
from met_core.app.drawing import network_figure
from met_core.app.palette import HIGHLIGHT, OTHER
from met_core.app.safe import md, plot
from met_core.errors import METError, user_message
from met_core.io.images import load_image

BIG = 22  # font size of the figures: readable on a projector

ckpt = state.current()
(trace, arrays), _ = state.traces_of(ckpt)
cfg = state.card(str(ckpt))["config"]["model"]
blocks, gmacs, names = cfg["exits"], arrays.gmacs.tolist(), list(trace.class_names)
policy, thresholds = state.thresholds_in_use()
pol = get_policy(policy)
st.title(
    "An image's journey",
    help=md(
        f"{state.name(ckpt)}, policy {policy} at the thresholds in use ({state.describe(thresholds)}). Each exit is "
        "tried in turn; the image leaves at the first exit whose score passes, and the blocks after it never run."
    ),
)
v = session.view()
c0, c1, c2 = st.columns([1.2, 1, 2])
session.bind(
    c0.radio,
    "Image",
    "local.journey_upload",
    [False, True],
    horizontal=True,
    format_func=lambda up: "Upload one" if up else "A test image",
)
root = state.dataset_root(trace)
picture, path = None, None
if not session.local().journey_upload:
    ids = session.context().ids
    sid = v.journey.image or ids[0]
    i = ids.index(sid)

    def pick_class(name: str) -> str:
        """A class chosen: its first test image."""
        c = names.index(name)
        return ids[int(np.flatnonzero(arrays.labels == c)[0])]

    session.bind(
        c1.selectbox,
        "Class",
        "journey.image",
        names,
        key="w:journey.class",
        show=lambda image: names[int(arrays.labels[ids.index(image or ids[0])])],
        convert=pick_class,
        then=lambda view: setattr(view.journey, "step", 1),
    )
    of_class = [ids[r] for r in np.flatnonzero(arrays.labels == arrays.labels[i])]
    session.bind(
        c2.selectbox,
        "Test image",
        "journey.image",
        of_class,
        show=lambda image: image or ids[0],
        then=lambda view: setattr(view.journey, "step", 1),
    )  # ids are plain text in a selectbox
    if root is not None:
        path = root / sid
    probs, true = arrays.row_probs(i), int(arrays.labels[i])  # float64: what the what-if decides on
    source = "Probabilities from the test trace (the model's real outputs for this image, cached)."
else:
    up = c1.file_uploader("An image (PNG, JPEG, ...)", key="journey_upload")
    if up is None:
        st.info("Upload an image to follow it through the network.")
        st.stop()
    try:
        from met_core.engine.inference import predict_images

        with st.spinner("Running the real early exit on your image..."):
            pred = predict_images(state.model(str(ckpt)), [(up.name, up)], thresholds, policy)[0]
    except METError as e:
        state.fail(user_message(e))
    if pred.error:
        state.fail(pred.error)
    rule = state.ood_rule(ckpt)
    if rule is not None:
        from met_core.engine.inference import score_images

        up.seek(0)
        score = score_images(state.model(str(ckpt)), rule, [(up.name, up)])[0]
        if score is not None and score > rule.threshold:
            up.seek(0)
            others = state.models_that_accept(ckpt, [(up.name, up.read())])[0]
            st.warning(
                md(
                    f"Probably not one of this model's classes (distance {score:.4f} > {rule.threshold:.4f}): "
                    "whatever it predicts is a guess among its classes. "
                    + rule.describe()
                    + ". "
                    + state.suggestion(others)
                )
            )
    st.caption("An upload stays in this browser tab: a copied link opens this model and step with a test image.")
    up.seek(0)
    picture, probs, true = up, np.asarray(pred.exit_probs[: pred.exit + 1]), None
    source = "Probabilities from running the model on your image now (real early exit: later exits never ran)."

j: Journey = journey(probs, gmacs, blocks, thresholds, policy)
left = j.steps[-1]
n = len(j.steps)
step = min(v.journey.step, n)
if v.journey.step > n:  # it leaves before that step (another threshold): the view, and so the link, says so too
    session.update(lambda view: setattr(view.journey, "step", n))
if n > 1:
    b1, b2, b3 = st.columns([1.4, 5, 1.4], vertical_alignment="center")
    b1.button(
        "◀ Previous exit",
        key="journey_prev",
        disabled=step <= 1,
        width="stretch",
        on_click=session.update,
        args=(lambda view: setattr(view.journey, "step", max(1, min(view.journey.step, n) - 1)),),
    )
    session.bind(
        b2.slider,
        "Step through the exits",
        "journey.step",
        1,
        n,
        format="exit %d",
        show=lambda k: min(k, n),
        label_visibility="collapsed",
    )
    b3.button(
        "Next exit ▶",
        key="journey_next",
        disabled=step >= n,
        width="stretch",
        on_click=session.update,
        args=(lambda view: setattr(view.journey, "step", min(n, view.journey.step + 1)),),
    )
s = j.steps[step - 1]
# the left and right arrow keys press Previous / Next (unless the focus is in a text field or on a control that
# uses the arrows itself)
st.html(
    """<script>
if (!window.__metJourneyKeys) {
  window.__metJourneyKeys = true;
  document.addEventListener("keydown", (e) => {
    if (!["ArrowLeft", "ArrowRight"].includes(e.key) || e.altKey || e.ctrlKey || e.metaKey) return;
    const t = e.target; if (t && (t.closest("input, textarea, select, [role=slider], [role=combobox]"))) return;
    const label = e.key === "ArrowRight" ? "Next exit" : "Previous exit";
    const b = [...document.querySelectorAll("button")].find((x) => x.innerText.includes(label) && !x.disabled);
    if (b) { e.preventDefault(); b.click(); }
  });
}
</script>""",
    unsafe_allow_javascript=True,
)

# the network: blocks run so far, blocks still ahead, and the blocks skipped after the exit the image leaves at
drawing = network_figure(
    blocks, gmacs, bool(cfg["adapters"]), font=BIG - 6, run_upto=s.block, leaves_after=left.block, height=165
)
st.plotly_chart(drawing, key="journey_network", width="stretch", config={"displayModeBar": False})
c_img, c_num, c_bar = st.columns([0.9, 1.9, 2.2])
with c_img:
    try:
        if picture is not None or path is not None:
            st.image(
                load_image(picture if picture is not None else path, name=None if path is None else str(path)),
                width=150,
            )
    except METError as e:
        st.caption(md(user_message(e)))
    if true is not None:
        st.markdown(f"#### true class: {md(names[true])}")
    st.caption(source)
with c_num:
    m = [*st.columns(2), *st.columns(2)]
    m[0].metric("Blocks run", f"{s.block} of {blocks[-1]}")
    m[1].metric(
        "GMACs spent",
        f"{s.gmacs:.3f}",
        f"{100 * s.gmacs / j.full_gmacs:.0f}% of all",
        delta_color="off",
        delta_arrow="off",
    )
    cmp = ">=" if pol.higher_is_confident else "<="
    m[2].metric(
        f"Exit {s.exit + 1} score",
        f"{s.score:.3f}",
        help=f"The {policy} score of this exit.",
        delta="last exit: answers" if s.threshold is None else f"needs {cmp} {s.threshold:.3f}",
        delta_color="off",
        delta_arrow="off",
    )
    m[3].metric("Decision", "leaves" if s.leaves else "goes on")
    bar = go.Figure(
        go.Bar(
            x=[plot(c) for c in names],
            y=s.probs,
            name="class probability",
            marker=dict(
                color=[HIGHLIGHT if c == s.predicted else OTHER for c in range(len(names))],
                pattern_shape=["/" if c == s.predicted else "" for c in range(len(names))],
            ),
        )
    )
    if s.threshold is not None and policy == "max-softmax":  # the score is the top probability: the bar to beat
        bar.add_hline(
            y=s.threshold,
            line_dash="dash",
            line_width=2,
            line_color="#888",
            annotation_text=f"threshold {s.threshold:.2f}",
            annotation_position="top right",
            annotation_yshift=4,
        )
    bar.update_layout(
        title=f"Exit {s.exit + 1}: class probabilities",
        height=250,
        font=dict(size=BIG - 6),
        title_font=dict(size=BIG - 2),
        yaxis=dict(range=[0, 1]),
        margin=dict(t=40, b=10, l=10, r=10),
    )
    c_bar.plotly_chart(bar, key="journey_probs", config={"displayModeBar": False})

saved = (
    f"saving {j.saved_gmacs:.3f} GMACs ({100 * j.saved_share:.0f}% of the full network)"
    if j.saved_gmacs > 0
    else "the whole network ran"
)
verdict = "" if true is None else (" (correct)" if j.predicted == true else f" (wrong: it is {md(names[true])})")
st.markdown(
    f"### Leaves at exit {j.exit + 1}, after block {left.block}: predicts **{md(names[j.predicted])}**"
    f"{verdict}, {saved}."
)
st.dataframe(
    [
        {
            "exit": t.exit + 1,
            "after block": t.block,
            "GMACs so far": round(t.gmacs, 3),
            "predicted": names[t.predicted],
            "confidence": round(max(t.probs), 3),
            "score": round(t.score, 3),
            "threshold": "always answers" if t.threshold is None else round(t.threshold, 3),
            "leaves": t.leaves,
        }
        for t in j.steps
    ],
    hide_index=True,
)
