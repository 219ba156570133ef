"""MET Explorer: `streamlit run app/main.py`. Opens on the shipped default model, offline."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st  # noqa: E402

from app import state  # noqa: E402

st.set_page_config(page_title="MET Explorer", layout="wide")

PAGES = [
    st.Page("pages/how_met_works.py", title="How MET works", url_path="how"),
    st.Page("pages/whatif.py", title="Threshold what-if", url_path="whatif", default=True),
    st.Page("pages/samples.py", title="Explore samples", url_path="samples"),
    st.Page("pages/representations.py", title="Representations", url_path="representations"),
    st.Page("pages/models.py", title="Models", url_path="models"),
]
nav = st.navigation(PAGES)
with st.sidebar:
    st.caption(f"Model: **{state.label(state.current())}** (change it on the Models page)")
nav.run()
