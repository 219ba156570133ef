"""The view in the URL: model, compared model, policy, thresholds, exit, colouring, filters and image live in the
query string (the page is the URL's path), so a copied link opens the same view for someone else.

A link is untrusted text: every parameter goes through one reader that bounds its length and checks its value
against what this app has (a listed model, a policy, a threshold in the policy's range, a class of the trace);
a bad one is dropped with one sentence and the rest of the view still opens.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from app import state
from met_core.errors import METError
from met_core.policies import POLICIES, as_thresholds, get_policy

MAX_PARAM_CHARS = 400
MAX_LIST = 64
COLOURS = ("class", "correct", "exit taken")
VERDICTS = ("all", "correct", "wrong")
MODES = ("One global threshold", "Per-exit thresholds")


def _num_exits() -> int:
    return len(state.card(str(state.current()))["config"]["model"]["exits"])


def _class_names() -> list[str]:
    return list(state.card(str(state.current()))["config"]["model"].get("class_names") or [])


def _items(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > MAX_LIST or not all(parts):
        raise METError(f"a list of at most {MAX_LIST} comma-separated values")
    return parts


def _model(text: str) -> str:
    p = state.by_label(text)
    if p is None:
        raise METError("a model listed on the Models page")
    return str(p)


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise METError("one of " + ", ".join(options))
        return text
    return parse


def _exit(text: str) -> int:
    k = _num_exits()
    if not text.isdigit() or not 1 <= int(text) <= k:
        raise METError(f"an exit number from 1 to {k}")
    return int(text) - 1


def _exits(text: str) -> list[int]:
    return [_exit(t) + 1 for t in _items(text)]


def _classes(text: str) -> list[str]:
    names, got = _class_names(), _items(text)
    if any(c not in names for c in got):
        raise METError("class names of the model")
    return got


def _thresholds(text: str) -> list[float]:
    """One global threshold or one per exit but the last, each in the current policy's range."""
    pol = get_policy(st.session_state.get("policy") or "max-softmax")
    k = _num_exits()
    lo, hi = pol.ui_range(k)
    try:
        vals = [float(t) for t in _items(text)]
    except ValueError:
        vals = []
    must = (f"one threshold or {k - 1} comma-separated thresholds between {lo:g} and {hi:g}"
            + (" (whole numbers)" if pol.counts_exits else ""))
    if len(vals) not in (1, k - 1) or not all(lo <= v <= hi for v in vals):
        raise METError(must)
    try:
        as_thresholds(vals, k, pol)  # the policy's own check (patience: whole counts)
    except METError:
        raise METError(must) from None
    return vals


@dataclass(frozen=True)
class Param:
    """A query parameter: the session key it sets, how it is read (raising METError with what it must be) and
    how the session value is written back."""

    name: str
    key: str
    parse: Callable[[str], Any]
    show: Callable[[Any], str] = str


def _label_of(path: Any) -> str:
    return "" if path is None else state.label(Path(path))


def _join(values: Any) -> str:
    return ",".join(map(str, values))


# order matters: the model first (the other checks depend on it), the policy before the thresholds
PARAMS = (
    Param("model", "checkpoint", _model, _label_of),
    Param("compare", "compare", lambda t: Path(_model(t)), _label_of),
    Param("policy", "policy", _choice(tuple(POLICIES))),
    Param("t", "_url_thresholds", _thresholds, _join),
    Param("exit", "rep_exit", _exit, lambda k: str(k + 1)),
    Param("colour", "rep_color", _choice(COLOURS)),
    Param("exits", "f_exit", _exits, _join),
    Param("verdict", "f_correct", _choice(VERDICTS)),
    Param("classes", "f_class", _classes, _join),
    Param("image", "journey_image", lambda t: t),
)


def restore() -> list[str]:
    """Once per session, on its first run: the view the URL names, in session state; one sentence per bad value."""
    if st.session_state.get("_url_restored"):
        return []
    st.session_state["_url_restored"] = True
    problems = []
    for p in PARAMS:
        text = st.query_params.get(p.name)
        if text is None:
            continue
        try:
            if len(text) > MAX_PARAM_CHARS:
                raise METError(f"at most {MAX_PARAM_CHARS} characters")
            value = p.parse(text)
        except METError as e:
            problems.append(f"The link's {p.name} was ignored: it must be {e}.")
            continue
        st.session_state[p.key] = value
        if p.name == "compare":
            st.session_state["rep_other"] = value
    _apply_thresholds()
    return problems


def _apply_thresholds() -> None:
    """A link's thresholds set the what-if page's controls: one value is the global slider, several the
    per-exit boxes."""
    vals = st.session_state.pop("_url_thresholds", None)
    if vals is None:
        return
    policy = st.session_state.get("policy") or "max-softmax"
    st.session_state["whatif_thresholds"] = vals[0] if len(vals) == 1 else [*vals, None]  # for the other pages
    if len(vals) == 1:
        st.session_state["mode"] = MODES[0]
        st.session_state[f"g{policy}"] = vals[0]
    else:
        st.session_state["mode"] = MODES[1]
        for j, v in enumerate(vals):
            st.session_state[f"t{policy}{j}"] = v


def current_thresholds() -> list[float] | None:
    """The thresholds the what-if controls hold now (global or per exit), as written to the URL."""
    policy = st.session_state.get("policy")
    if not policy:
        return None
    if st.session_state.get("mode") == MODES[1]:
        vals = [st.session_state.get(f"t{policy}{j}") for j in range(_num_exits() - 1)]
        return None if any(v is None for v in vals) else [float(v) for v in vals]
    g = st.session_state.get(f"g{policy}")
    return None if g is None else [float(g)]


def publish() -> None:
    """Write the session's view into the query string (only what is set; nothing when unchanged)."""
    want: dict[str, str] = {}
    for p in PARAMS:
        value = current_thresholds() if p.name == "t" else st.session_state.get(p.key)
        if p.name == "compare":
            value = st.session_state.get("compared", value)  # the page shown last says which comparison
        if value in (None, [], ""):
            continue
        want[p.name] = p.show(value)
    if dict(st.query_params) != want:
        st.query_params.from_dict(want)
