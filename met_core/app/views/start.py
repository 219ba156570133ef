"""Start here: what MET and early exit are, what each page answers, and prepared views to try first."""

import numpy as np
import streamlit as st

from met_core.analysis.policies import get_policy
from met_core.analysis.whatif import outcomes
from met_core.app import session, state
from met_core.app.drawing import network_figure
from met_core.app.safe import md

ckpt = state.current()
cfg = state.card(str(ckpt))["config"]["model"]
st.title("MET Explorer")
st.markdown(
    "A Vision Transformer reads an image through a stack of blocks. **Early exit** puts small classifiers "
    "(*exits*) after some of the blocks: an easy image that an early exit already recognises with enough "
    "confidence leaves there, and the blocks after it never run; a hard image goes deeper. The compute saved is "
    "the point. **Multiple-Exit Tuning** (MET, Liu et al., 2024) adds those exits to a frozen, pre-trained "
    "network and trains only small adapters and the exits' heads."
)
st.plotly_chart(
    network_figure(
        cfg["exits"], state.card(str(ckpt))["metrics"].get("exit_gmacs", []), bool(cfg["adapters"]), font=15, height=240
    ),
    key="start_network",
    config={"displayModeBar": False},
)
st.caption(
    md(
        f"The model in use: {state.name(ckpt)} ({len(cfg['exits'])} exits after blocks "
        f"{', '.join(map(str, cfg['exits']))}); change it on the Models page."
    )
)

st.subheader("What each page answers")
st.markdown(
    "- **How MET works**: how is this model built, and what did its training choose?\n"
    "- **Threshold what-if**: how much accuracy does each amount of saved compute cost? Move the threshold, "
    "or click a point of the curve.\n"
    "- **Explore samples**: which images leave early, and which of them are wrong?\n"
    "- **An image's journey**: one image, exit by exit: where does it leave, and why?\n"
    "- **Representations**: what does graph regularization do to the early exits' features?\n"
    "- **Models**: which models are there, and how do they do on your own images?"
)

st.subheader("Try this")


def try_budget() -> None:
    policy = session.view().policy if get_policy(session.view().policy).calibratable else "max-softmax"
    preset = state.budget_presets(str(ckpt), policy).get(0.5)
    if not isinstance(preset, str) and preset is not None:
        session.update(lambda v: (v.set_policy(policy, session.context()), v.adopt(preset.thresholds)))


def try_hard_image() -> None:
    (_, arrays), _ = state.traces_of(ckpt)
    policy, thresholds = state.thresholds_in_use()
    o = outcomes(arrays, thresholds, policy)
    deep = np.flatnonzero(o.exits == arrays.num_exits - 1)
    i = int(deep[0]) if len(deep) else 0
    session.update(lambda v: (setattr(v.journey, "image", session.context().ids[i]), setattr(v.journey, "step", 1)))


c1, c2, c3 = st.columns(3)  # labels short enough for a 1280 px projector
if c1.button(
    "Half the compute: what does it cost?",
    key="try_budget",
    on_click=try_budget,
    help="Thresholds chosen on the calibration set for 50 % of the last exit's GMACs, on the what-if page",
):
    st.switch_page(session.page("whatif"))
if c2.button(
    "Follow a hard image",
    key="try_journey",
    on_click=try_hard_image,
    help="The first test image that only the last exit answers, on the journey page",
):
    st.switch_page(session.page("journey"))
if c3.button(
    "What graph regularization changes",
    key="try_reps",
    help="The first exit's features of this model and of its comparison, side by side",
):
    st.switch_page(session.page("representations"))
