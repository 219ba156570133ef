"""How MET works: the loaded model drawn from its real config, its model card, and the method in plain words."""

import pandas as pd
import streamlit as st

from met_core.app import state
from met_core.app.drawing import network_figure
from met_core.app.safe import md
from met_core.config import METConfig, TrainConfig, config_help

ckpt = state.current()
c = state.card(str(ckpt))
m, t, met, data = c["config"]["model"], c["config"].get("train", {}), c["metrics"], c["config"].get("data", {})
st.title("How MET works")
st.write(
    "**Multiple-Exit Tuning** (Liu et al., 2024) adapts a frozen, pre-trained Vision Transformer so that "
    "easy images can leave early. Below is the model this app has loaded, drawn from its real config."
)

gm = met.get("exit_gmacs", [])
st.plotly_chart(
    network_figure(m["exits"], gm, bool(m["adapters"])),
    key="architecture",
    width="stretch",
    config={"displayModeBar": False},
)
st.caption(
    "Every block is frozen; the E-adapters inside each block are trained, and each exit is a norm and a "
    "linear head after its block. The cost under each exit is what an image has spent when it leaves there."
)

st.subheader("Model card")
card = state.summary(ckpt).card()
st.dataframe([{"field": k, "value": v} for k, v in card], hide_index=True, height="content")  # no empty row

st.subheader("The ideas")
st.markdown("""
- **Early exit.** Exits sit after some blocks; each is a linear head on the block's output after the backbone's
  frozen final norm: the CLS token, the mean of the patch tokens, or both concatenated (this model's `head_input`
  below; the shipped CIFAR-10 models use both). At inference the exits are tried in order and an image stops at
  the first exit whose confidence reaches the threshold; the last exit always answers. An image that stops early
  skips all later blocks: that is the saving.
- **E-adapters.** Small bottleneck layers (`x + s * up(GELU(down(x)) * g_k)`) sit before the attention and before the
  MLP of every block. The down- and up-projections are **shared by all exits**; each exit owns only a diagonal `g_k`
  (a length-r scaling vector), so exits get their own features at almost no extra parameters.
- **Graph regularization.** Early-exit features are pulled together for images of the same class (the smoothness of a
  graph linking same-class images), so a linear head can separate the classes earlier. See the Representations page.
""")
st.subheader("The choices this model uses")
helps = config_help(METConfig) | config_help(TrainConfig)
choices = ["sharing", "exit_diagonals", "diagonal_mode", "adapter_dim", "adapter_scale", "head_input"]
rows = [{"option": k, "value": str(m.get(k)), "meaning": helps[k]} for k in choices]
rows += [
    {"option": k, "value": str(t.get(k)), "meaning": helps[k]}
    for k in ("graph_reg", "graph_reg_kind", "epochs", "lr", "head_lr", "seed")
]
st.table(pd.DataFrame([{k: md(v) for k, v in r.items()} for r in rows]).set_index("option"))  # wraps long text
