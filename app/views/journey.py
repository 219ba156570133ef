"""An image's journey: one image steps through the network exit by exit (blocks run, GMACs spent, the exit's
class probabilities, its score against the threshold) until it leaves, with the cost it saved."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app import state
from app.drawing import network_figure
from app.safe import md, plot
from met_core.errors import METError, user_message
from met_core.images import load_image
from met_core.journey import Journey, journey
from met_core.policies import get_policy

BIG = 22  # font size of the figures: readable on a projector

ckpt = state.current()
(trace, arrays), _ = state.traces_of(ckpt)
cfg = state.card(str(ckpt))["config"]["model"]
blocks, gmacs, names = cfg["exits"], arrays.gmacs.tolist(), list(trace.class_names)
policy, thresholds = state.thresholds_in_use()
pol = get_policy(policy)
st.title("An image's journey")
st.caption(md(f"{state.label(ckpt)}, policy {policy} at the what-if page's thresholds "
              f"({state.describe(thresholds)}). Each exit is tried in turn; the image leaves at the first exit "
              "whose score passes, and the blocks after it never run."))

source = st.radio("Image", ["A test image", "Upload an image"], horizontal=True, key=state.kept("journey_source"))
root = state.dataset_root(trace)
picture, path = None, None
if source == "A test image":
    ids = [str(i) for i in trace.ids]
    where = {s: i for i, s in enumerate(ids)}
    if st.session_state.get("journey_image") not in where:
        st.session_state["journey_image"] = ids[0]
    c1, c2 = st.columns([1, 2])
    cls = c1.selectbox("Class", names, index=int(arrays.labels[where[st.session_state["journey_image"]]]),
                       key="journey_class")
    of_class = [s for s, y in zip(ids, arrays.labels) if names[y] == cls]
    if st.session_state["journey_image"] not in of_class:
        st.session_state["journey_image"] = of_class[0]
    sid = c2.selectbox("Test image", of_class, key="journey_image")  # ids are plain text in a selectbox
    i = where[sid]
    if root is not None:
        path = root / sid
    probs, true = arrays.row_probs(i), int(arrays.labels[i])  # float64: what the what-if decides on
    st.caption("Probabilities from the test trace (the model's real outputs for this image, cached).")
else:
    up = st.file_uploader("An image (PNG, JPEG, ...)", key="journey_upload")
    if up is None:
        st.info("Upload an image to follow it through the network.")
        st.stop()
    try:
        from met_core.inference import predict_images

        with st.spinner("Running the real early exit on your image..."):
            pred = predict_images(state.model(str(ckpt)), [(up.name, up)], thresholds, policy)[0]
    except METError as e:
        state.fail(user_message(e))
    if pred.error:
        state.fail(pred.error)
    up.seek(0)
    picture, probs, true = up, np.asarray(pred.exit_probs[: pred.exit + 1]), None
    st.caption("Probabilities from running the model on your image now (real early exit: later exits never ran).")

j: Journey = journey(probs, gmacs, blocks, thresholds, policy)
left = j.steps[-1]
n = len(j.steps)
if st.session_state.get("journey_step", n) > n:
    st.session_state["journey_step"] = n
step = st.slider("Step through the exits", 1, n, n, key="journey_step", format="exit %d") if n > 1 else 1
s = j.steps[step - 1]

c_img, c_info = st.columns([1, 3])
with c_img:
    try:
        if picture is not None or path is not None:
            st.image(load_image(picture if picture is not None else path, name=None if path is None else str(path)),
                     width="stretch")
    except METError as e:
        st.caption(md(user_message(e)))
    if true is not None:
        st.markdown(f"### true class: {md(names[true])}")
with c_info:
    m = st.columns(4)
    m[0].metric("Blocks run", f"{s.block} of {blocks[-1]}")
    m[1].metric("GMACs spent", f"{s.gmacs:.3f}", f"{100 * s.gmacs / j.full_gmacs:.0f}% of the full network",
                delta_color="off")
    cmp = ">=" if pol.higher_is_confident else "<="
    m[2].metric(f"Exit {s.exit + 1} score ({policy})", f"{s.score:.3f}",
                "last exit: always answers" if s.threshold is None else f"needs {cmp} {s.threshold:.3f}",
                delta_color="off")
    m[3].metric("Decision", "leaves here" if s.leaves else "goes on")
    bar = go.Figure(go.Bar(x=[plot(c) for c in names], y=s.probs,
                           marker_color=["crimson" if c == s.predicted else "#7aa6d6" for c in range(len(names))]))
    bar.update_layout(title=f"Exit {s.exit + 1} (after block {s.block}): class probabilities", height=380,
                      font=dict(size=BIG - 6), title_font=dict(size=BIG), yaxis=dict(range=[0, 1]))
    st.plotly_chart(bar, key="journey_probs")

# the network: blocks run so far, blocks still ahead, and the blocks skipped after the exit the image leaves at
drawing = network_figure(blocks, gmacs, bool(cfg["adapters"]), font=BIG - 4, run_upto=s.block,
                         leaves_after=left.block)
st.plotly_chart(drawing, key="journey_network", width="stretch", config={"displayModeBar": False})
saved = (f"saving {j.saved_gmacs:.3f} GMACs ({100 * j.saved_share:.0f}% of the full network)"
         if j.saved_gmacs > 0 else "the whole network ran")
verdict = "" if true is None else (" (correct)" if j.predicted == true else f" (wrong: it is {names[true]})")
st.markdown(f"## Leaves at exit {j.exit + 1}, after block {left.block}: predicts **{md(names[j.predicted])}**"
            f"{md(verdict)}, {saved}.")
st.dataframe([{"exit": t.exit + 1, "after block": t.block, "GMACs so far": round(t.gmacs, 3),
               "predicted": names[t.predicted], "confidence": round(max(t.probs), 3), "score": round(t.score, 3),
               "threshold": "always answers" if t.threshold is None else round(t.threshold, 3),
               "leaves": t.leaves} for t in j.steps], hide_index=True)
