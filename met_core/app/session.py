"""One browser session's view: the typed `View` (met_core/app/view.py) every page draws from, the widgets bound to
it, and the link written from it.

The flow of a run: `begin` (the first run of a session reads the link into a View; every run fits the view to the
model in use) -> the page draws widgets with `bind`, each seeded from its view field and writing its changes back
through one callback (`_changed`) before the next run starts -> `publish` writes the link from the view at the end
of the same run (and of every fragment run), so the address bar always names what the page shows.

Only this module touches `st.session_state`: one key for the session's `Session`, and one per bound widget,
named after the view field it shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from met_core.app import state
from met_core.app.view import Context, View, get, put, read_link, write_link
from met_core.errors import METError

KEY = "met_session"


@dataclass
class Local:
    """What belongs to this browser alone and so is never in a link."""

    dataset_root: str = ""  # where the trace's images are on this machine (Explore samples, sidebar)
    extra_checkpoints: list[str] = field(default_factory=list)  # folders added on the Models page
    new_checkpoint: str = ""  # the Models page's folder field
    trace_job: str | None = None  # id of this session's background trace (met_core/app/jobs.py)
    measure_job: str | None = None  # id of this session's background measurement of the real early exit
    journey_upload: bool = False  # the journey follows an uploaded image instead of a test image
    notice: str | None = None  # a one-time sentence about an entry that was not used


@dataclass
class Session:
    view: View
    problems: list[str]  # what the session's link got wrong, shown on its first run


def _session() -> Session:
    s = st.session_state.get(KEY)
    if s is None:
        local()  # the listed models include this session's added folders
        s = Session(*read_link({k: st.query_params[k] for k in st.query_params}, state.context))
        st.session_state[KEY] = s
    return s


def view() -> View:
    """This session's view (created from the link on the session's first run)."""
    return _session().view


VIEWS = Path(__file__).resolve().parent / "views"


def page(name: str) -> Path:
    """A page's script by name (`views/NAME.py`), as an absolute path: the same page whichever entry script
    started the app (`met app`, `streamlit run met_core/app/main.py`, or the checkout's `app/main.py`)."""
    return VIEWS / f"{name}.py"


def local() -> Local:
    """This browser's own settings (never in a link)."""
    return st.session_state.setdefault(KEY + ".local", Local())


def context() -> Context:
    """The context of the model the view names."""
    return state.context(view().model)


def begin() -> list[str]:
    """Start a run: the view exists and fits the model in use; the link's problems once, on the first run."""
    s = _session()
    ctx = state.context(s.view.model)
    if ctx.model != s.view.model:  # the model is no longer listed: the default one's view
        s.view = s.view.for_model(ctx)
    s.view.fit(ctx)
    problems, s.problems = s.problems, []
    return problems


def set_model(label: str) -> None:
    """Use another listed model on every page (its own classes, images and comparisons start afresh)."""
    s = _session()
    if label != s.view.model:
        s.view = s.view.for_model(state.context(label))


def update(change: Callable[[View], Any]) -> None:
    """Apply `change` to the view and fit it to the model (for buttons and chart clicks)."""
    v = view()
    change(v)
    v.fit(context())


def _changed(path: str, key: str, convert: Callable[[Any], Any], then: Callable[[View], Any] | None) -> None:
    """The one writer from widgets into the view (a widget's on_change callback, run before the next run)."""
    v = view()
    raw = st.session_state[key]
    try:
        value = convert(raw)
    except METError as e:
        entry = "The empty entry" if str(raw).strip() == "" else f"'{raw}'"
        local().notice = f"{entry} was not used: it must be {e}. The value in use is kept."
        return
    if path == "policy":
        v.set_policy(value, context())
    elif path == "mode":
        v.set_mode(value)
    elif path.startswith("local."):
        setattr(local(), path.removeprefix("local."), value)
    else:
        put(v, path, value)
    if then is not None:
        then(v)
    v.fit(context())


def bind(
    widget: Callable[..., Any],
    label: str,
    path: str,
    *args: Any,
    show: Callable[[Any], Any] = lambda x: x,
    convert: Callable[[Any], Any] = lambda x: x,
    then: Callable[[View], Any] | None = None,
    key: str | None = None,
    **kwargs: Any,
) -> Any:
    """Draw `widget(label, *args, **kwargs)` showing the view field at `path` (`local.NAME` for a Local field),
    as `show(value)`; a change is written back as `convert(widget value)` (a METError there keeps the old value and
    leaves a notice), then `then(view)` runs. Returns what the widget returns."""
    key = key or f"w:{path}"
    current = getattr(local(), path.removeprefix("local.")) if path.startswith("local.") else get(view(), path)
    want = show(current)
    # only when they differ: assigning a widget's value sends it to the browser, which would undo a key press
    # made there while this run was under way (fast arrow keys on a slider)
    if key not in st.session_state or st.session_state[key] != want:
        st.session_state[key] = want
    return widget(label, *args, key=key, on_change=_changed, args=(path, key, convert, then), **kwargs)


def bind_entry(
    label: str, path: str, show: Callable[[Any], str], convert: Callable[[str], Any], key: str, **kwargs: Any
) -> None:
    """A text entry for the view field at `path`, applied when submitted (Enter, or its Use button). It sits in a
    form, whose values the browser sends only on submit: a browser that has not yet received the value a slider
    just set cannot send its older copy back and overwrite the view with it (fast arrow keys on a loaded machine
    did that to a plain text input). A bad entry keeps the value in use and leaves a notice, as `bind` does."""
    want = show(get(view(), path))
    if key not in st.session_state or st.session_state[key] != want:
        st.session_state[key] = want
    with st.form(f"form:{key}", border=False, enter_to_submit=True):
        c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
        c1.text_input(label, key=key, **kwargs)
        c2.form_submit_button(
            "Use", key=f"{key}:use", on_click=_changed, args=(path, key, convert, None), width="stretch"
        )


def selected_points(chart_key: str) -> list[dict[str, Any]]:
    """The points selected (clicked, lassoed) on the Plotly chart drawn with `chart_key` (for its on_select
    callback)."""
    state_ = st.session_state.get(chart_key) or {}
    return list(state_.get("selection", {}).get("points", []))


def notice() -> str | None:
    """The sentence about the last entry that was not used (once)."""
    loc = local()
    text, loc.notice = loc.notice, None
    return text


def publish() -> None:
    """Write the view into the query string (nothing when it already says the same)."""
    want = write_link(view(), context())
    if {k: st.query_params[k] for k in st.query_params} != want:
        st.query_params.from_dict(want)


COPY_LINK = """<button class="met-copy" title="Copies the address of this view: whoever opens it sees the same view"
>Copy link</button>
<script>
if (!window.__metCopyLink) {  // one listener per page, whatever the number of reruns
  window.__metCopyLink = true;
  document.addEventListener("click", (e) => {
    const b = e.target.closest && e.target.closest(".met-copy");
    if (!b) return;
    const u = window.location.href;
    const done = () => { b.textContent = "Link copied"; setTimeout(() => { b.textContent = "Copy link"; }, 2000); };
    const fallback = () => {
      const t = document.createElement("textarea"); t.value = u; document.body.appendChild(t);
      t.select(); document.execCommand("copy"); t.remove(); done();
    };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(u).then(done, fallback);
    else fallback();
  });
}
</script>
<style>.met-copy { padding: 0.3rem 0.8rem; border-radius: 0.5rem; border: 1px solid rgba(128,128,128,0.6);
background: transparent; color: inherit; font: inherit; cursor: pointer; }</style>"""


def copy_link_button() -> None:
    """A button that copies the address bar, which `publish` keeps equal to the view's canonical link."""
    st.html(COPY_LINK, unsafe_allow_javascript=True)
