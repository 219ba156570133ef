"""Untrusted text (class names, ids, folder names, config values, error messages that quote them) shown as text.

Streamlit renders Markdown in st.markdown / write / caption / titles / alerts, in widget labels, options and
tooltips, and in st.table cells; Plotly renders a subset of HTML in its labels. Every page passes text that
came from a file or a user through one of these two functions, so a class name like `![x](http://host/p.png)`
shows as those characters and makes no browser fetch anything.
"""

from __future__ import annotations

import html
import re

_PUNCT = re.compile(r"[!-/:-@\[-`{-~]")  # every ASCII punctuation character
_LINKLIKE = re.compile(r"(?i)(?<=[a-z])(?=://)|(?<=www)(?=\.)|(?=@)")  # where URLs and e-mail addresses begin
ZWSP = "\u200b"  # zero-width space: invisible, and no autolink matches across it


def md(text: object) -> str:
    """For anything Streamlit renders as Markdown: every ASCII punctuation character as a numeric character
    reference, line breaks flattened, and a zero-width space where a URL or an e-mail address would begin.
    The page shows the same characters, but no Markdown construct can match them: not emphasis, links or
    images, not Streamlit's directives or LaTeX, and not the autolinks it makes of URL-shaped text."""
    flat = _LINKLIKE.sub(ZWSP, " ".join(str(text).split()))
    return _PUNCT.sub(lambda m: f"&#{ord(m.group())};", flat)


def plot(text: object) -> str:
    """For Plotly titles, labels, legends and hover text: HTML-escaped."""
    return html.escape(" ".join(str(text).split()))
