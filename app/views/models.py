"""Models: the shipped checkpoints and any folder the user adds; pick the one the other pages use."""
from pathlib import Path

import pandas as pd
import streamlit as st

from app import state
from app.safe import md
from met_core.checkpoint import inspect_checkpoint
from met_core.errors import METError

st.title("Models")
rows = []
for p in state.checkpoints():
    try:
        sm = state.summary(p)
    except METError as e:
        st.error(md(f"{state.label(p)}: {e}"))
        continue
    rows.append({"checkpoint": sm.name, "backbone": sm.backbone, "exits": ", ".join(map(str, sm.exits)),
                 "adapters": sm.adapters, "graph reg.": sm.graph_reg,
                 "val. accuracy per exit": " / ".join(f"{100 * a:.1f}" for a in sm.val_accuracy or []),
                 "GMACs per exit": " / ".join(f"{g:.3f}" for g in sm.exit_gmacs),
                 "trainable params": sm.trainable_parameters, "train time (s)": sm.train_time_s,
                 "test trace": state.has_test_trace(p)})
st.dataframe(pd.DataFrame(rows), hide_index=True)
paths = state.checkpoints()
cur = state.current()
choice = st.radio("Use this model on every page", paths, index=paths.index(cur) if cur in paths else 0,
                  format_func=lambda p: md(state.label(p)), key=state.kept("model_choice"))
if choice != cur:
    st.session_state["checkpoint"] = str(choice)
    st.rerun()

st.subheader("Add a checkpoint folder")
new = st.text_input("Folder with config.json and model.safetensors", key=state.kept("new_ckpt"))
if st.button("Add", key="add_ckpt") and new:
    try:
        inspect_checkpoint(Path(new).expanduser())
    except METError as e:
        st.error(md(e))
    else:
        st.session_state.setdefault("extra_checkpoints", []).append(str(Path(new).expanduser().resolve()))
        st.success(md(f"added {new}"))
        st.rerun()
