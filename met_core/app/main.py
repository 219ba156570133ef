"""MET Explorer: `met app` (installed or in a checkout), or `streamlit run met_core/app/main.py` in a checkout.
Opens on the shipped default model, offline."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the folder holding met_core: a checkout runs uninstalled

import streamlit as st  # noqa: E402

from met_core.app import session, state  # noqa: E402
from met_core.app.safe import md  # noqa: E402

# Less empty space above the title, so that controls and their numbers share the first screen on a projector.
# Captions and Plotly's axis labels take the theme's own text colour (Streamlit fades captions to about 3.9:1 and
# Plotly draws ticks in grey at about 3.7:1; WCAG AA asks 4.5:1), in light and dark mode alike.
STYLE = """<style>
[data-testid='stMainBlockContainer'] { padding-top: 2.2rem; }
[data-testid='stCaptionContainer'] { color: inherit !important; opacity: 0.85; }
.js-plotly-plot .xtick text, .js-plotly-plot .ytick text, .js-plotly-plot .g-xtitle text,
.js-plotly-plot .g-ytitle text, .js-plotly-plot .legendtext, .js-plotly-plot .gtitle {
  fill: currentColor !important; fill-opacity: 0.9 !important; }
</style>"""
# Large type for the back of a room: Streamlit sizes its text in rem, so a larger root font scales every label,
# number and table; Plotly draws in pixels, so its ticks, legends and titles are enlarged on their own.
LARGE_TYPE = """<style>
html { font-size: 21px; }
.js-plotly-plot .xtick text, .js-plotly-plot .ytick text, .js-plotly-plot .legendtext { font-size: 15px !important; }
.js-plotly-plot .g-xtitle text, .js-plotly-plot .g-ytitle text, .js-plotly-plot .gtitle { font-size: 18px !important; }
</style>"""
st.set_page_config(page_title="MET Explorer", layout="wide")
st.html(STYLE)

PAGES = [
    st.Page(session.page("start"), title="Start here", default=True),  # the default page lives at the root, "/"
    st.Page(session.page("how_met_works"), title="How MET works", url_path="how"),
    st.Page(session.page("whatif"), title="Threshold what-if", url_path="whatif"),
    st.Page(session.page("samples"), title="Explore samples", url_path="samples"),
    st.Page(session.page("journey"), title="An image's journey", url_path="journey"),
    st.Page(session.page("representations"), title="Representations", url_path="representations"),
    st.Page(session.page("models"), title="Models", url_path="models"),
]
problems = session.begin()
nav = st.navigation(PAGES)
for p in problems:
    st.warning(md(p))
with st.sidebar:
    st.caption(f"Model: **{md(state.label(state.current()))}** (change it on the Models page)")
    st.caption("The address bar always holds this view; copy it to share it.")
    session.copy_link_button()
    session.bind(
        st.toggle,
        "Large type (projector)",
        "large_type",
        help="Larger text everywhere, for a projector or a screen far away; kept in the address bar, so a reload or "
        "a copied link keeps it.",
    )
if session.view().large_type:
    st.html(LARGE_TYPE)
try:
    nav.run()
finally:
    session.publish()
