"""MET Explorer: `streamlit run app/main.py`. Opens on the shipped default model, offline."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st  # noqa: E402

from app import state, urlstate  # noqa: E402
from app.safe import md  # noqa: E402

st.set_page_config(page_title="MET Explorer", layout="wide")

PAGES = [
    st.Page("views/how_met_works.py", title="How MET works", url_path="how"),
    st.Page("views/whatif.py", title="Threshold what-if", url_path="whatif", default=True),
    st.Page("views/samples.py", title="Explore samples", url_path="samples"),
    st.Page("views/journey.py", title="An image's journey", url_path="journey"),
    st.Page("views/representations.py", title="Representations", url_path="representations"),
    st.Page("views/models.py", title="Models", url_path="models"),
]
state.keep_widget_state()
problems = urlstate.restore()
nav = st.navigation(PAGES)
for p in problems:
    st.warning(md(p))
with st.sidebar:
    st.caption(f"Model: **{md(state.label(state.current()))}** (change it on the Models page)")
    st.caption("The address bar holds this view: copy it to share it.")
urlstate.publish()
nav.run()
