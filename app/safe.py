"""Untrusted text (class names, ids, folder names, config values, error messages that quote them) shown as text.

Streamlit renders Markdown in st.markdown / write / caption / titles / alerts, in widget labels, options and
tooltips, and in st.table cells; Plotly renders a subset of HTML in its labels. Every page passes text that
came from a file or a user through one of these two functions, so a class name like `![x](http://host/p.png)`
shows as those characters and makes no browser fetch anything.
"""
from __future__ import annotations

import html
import re

_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character: CommonMark escapes all of them


def md(text: object) -> str:
    """For anything Streamlit renders as Markdown: punctuation backslash-escaped, line breaks flattened."""
    return _PUNCT.sub(r"\\\1", " ".join(str(text).split()))


def plot(text: object) -> str:
    """For Plotly titles, labels, legends and hover text: HTML-escaped."""
    return html.escape(" ".join(str(text).split()))
