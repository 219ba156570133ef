"""The app's typed view (met_core/app/view.py): every valid view survives its link, hostile links are one sentence
each, and a generated view rendered in one session, sent as its link to a fresh session, shows the same numbers
there."""

from __future__ import annotations

import html

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from met_core.analysis.policies import POLICIES, get_policy
from met_core.app.view import (
    COLOURS,
    COSTS,
    MAX_SELECTION_CHARS,
    SORTS,
    VERDICTS,
    Context,
    JourneyView,
    RepresentationsView,
    SamplesView,
    View,
    WhatIfView,
    read_link,
    write_link,
)
from met_core.io.traces import load_trace

from .conftest import ROOT

CKPT = ROOT / "checkpoints"
pytestmark = pytest.mark.skipif(
    not (CKPT / "cifar10-met" / "test_trace.npz").is_file(),
    reason="shipped checkpoints missing: run bench/rebuild_checkpoints.py",
)
# models traced on the same test images with features (what Representations can compare)
FEATURED = ("cifar10-met-nogr", "cifar10-full-met", "cifar10-full-met-nogr")


def cifar_context() -> Context:
    t = load_trace(CKPT / "cifar10-met" / "test_trace.npz")
    models = ("cifar10-met", *FEATURED, "cifar10-met-strong-gr", "hymenoptera-met")
    return Context(
        model="cifar10-met",
        models=models,
        num_exits=t.num_exits,
        class_names=tuple(t.class_names),
        ids=tuple(str(i) for i in t.ids),
        batch_sizes=(1, 8, 64, 256),
        certifiable=True,
        comparable=FEATURED,
        twin="cifar10-met-nogr",
    )


CTX = cifar_context() if (CKPT / "cifar10-met" / "test_trace.npz").is_file() else None
FEATURE_ROWS = tuple(int(r) for r in load_trace(CKPT / "cifar10-met" / "test_trace.npz").feature_index) if CTX else ()


def contexts(name: str | None) -> Context:
    assert name in (None, "cifar10-met"), name
    return CTX


@st.composite
def thresholds(draw, policy: str, k: int) -> float:
    pol = get_policy(policy)
    lo, hi = pol.ui_range(k)
    if pol.counts_exits:
        return float(draw(st.integers(int(lo), int(hi))))
    return draw(st.one_of(st.floats(lo, hi, allow_nan=False), st.sampled_from([lo, hi, pol.never])))


def subset(items, most: int = 5):
    return st.lists(st.sampled_from(items), max_size=most, unique=True).map(lambda x: tuple(sorted(x)))


@st.composite
def views(draw, rows_from: tuple[int, ...] = ()) -> View:
    ctx = CTX
    k, c = ctx.num_exits, len(ctx.class_names)
    policy = draw(st.sampled_from(list(POLICIES)))
    modes = ["global", "per-exit"] + (["certified"] if get_policy(policy).calibratable else [])
    cell = st.one_of(st.none(), st.tuples(st.integers(0, c - 1), st.integers(0, c - 1)))
    image = st.one_of(st.none(), st.sampled_from(ctx.ids[:200]))
    rows = subset(rows_from or tuple(range(len(ctx.ids))), 40)
    return View(
        model=ctx.model,
        compare=draw(st.sampled_from([None, *ctx.comparable])),
        policy=policy,
        mode=draw(st.sampled_from(modes)),
        threshold=draw(thresholds(policy, k)),
        per_exit=tuple(draw(thresholds(policy, k)) for _ in range(k - 1)),
        cert_loss=draw(st.floats(0.1, 20.0)),
        cert_delta=draw(st.floats(0.01, 0.5)),
        whatif=WhatIfView(
            cost=draw(st.sampled_from(list(COSTS))),
            batch=draw(st.sampled_from([None, 1, 64, 256])),
            reliability=draw(st.booleans()),
            confusion=draw(st.booleans()),
            cell=draw(cell),
        ),
        samples=SamplesView(
            exits=draw(subset(range(1, k + 1))),
            verdict=draw(st.sampled_from(VERDICTS)),
            classes=tuple(draw(st.lists(st.sampled_from(ctx.class_names), max_size=5, unique=True))),
            cell=draw(cell),
            rows=draw(rows),
            sort=draw(st.sampled_from(list(SORTS))),
            page=draw(st.integers(1, 3)),
            sample=draw(image),
        ),
        journey=JourneyView(image=draw(image), step=draw(st.integers(1, k))),
        representations=RepresentationsView(
            exit=draw(st.integers(0, k - 1)),
            colour=draw(st.sampled_from(COLOURS)),
            compare=draw(st.sampled_from([None, *FEATURED])),
            rows=draw(rows),
        ),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(views())
def test_every_valid_view_survives_its_link(v):
    v.fit(CTX)
    link = write_link(v, CTX)
    back, problems = read_link(link, contexts)
    assert problems == [] and back == v, (link, problems)
    assert all(len(t) <= (MAX_SELECTION_CHARS if n in ("rows", "rsel") else 400) for n, t in link.items())


def test_the_default_view_has_a_short_link_and_full_precision_survives():
    assert write_link(View.default(CTX), CTX) == {"model": "cifar10-met"}
    v = View.default(CTX)
    v.adopt([0.8438759967684746, 0.9000000000000001, 1.000001, None])
    link = write_link(v, CTX)
    assert link["te"] == "0.8438759967684746,0.9000000000000001,1.000001" and link["mode"] == "per-exit"
    assert read_link(link, contexts)[0].per_exit == v.per_exit


def test_switching_policy_and_back_restores_the_thresholds():
    v = View.default(CTX)
    v.threshold, v.per_exit = 0.55, (0.5, 0.6, 0.7)
    v.set_policy("entropy", CTX)
    assert (v.threshold, v.per_exit) == (0.3, (0.3, 0.3, 0.3))
    v.set_policy("max-softmax", CTX)
    assert (v.threshold, v.per_exit) == (0.55, (0.5, 0.6, 0.7))


@pytest.mark.parametrize(
    "query,dropped",
    [
        ({"t": "0.0"}, []),  # a threshold of 0 is a threshold, not 'unset'
        ({"t": "abc"}, ["t"]),
        ({"te": "0.5,0.5"}, ["te"]),  # 2 values for 4 exits
        ({"policy": "patience", "t": "1.5"}, ["t"]),  # patience counts whole exits
        ({"sample": "../../etc/passwd"}, ["sample"]),
        ({"rows": "5-3"}, ["rows"]),
        ({"rows": "9999-10000"}, ["rows"]),
        ({"rows": "1," * 5000}, ["rows"]),
        ({"cell": "cat"}, ["cell"]),
        ({"compare": "hymenoptera-met"}, ["compare"]),  # other classes: nothing to compare
        ({"batch": "3"}, ["batch"]),
        ({"mode": "per-exit", "t": "0.7"}, []),
    ],
)
def test_a_hostile_or_odd_link_drops_only_its_bad_parameters(query, dropped):
    v, problems = read_link({"model": "cifar10-met", **query}, contexts)
    assert [p.split("'s ")[1].split("= ")[0] for p in problems] == dropped, problems
    assert all(p.startswith("The link's ") and p.endswith(".") and "\n" not in p for p in problems)
    if query.get("t") == "0.0":
        assert v.threshold == 0.0


def test_an_old_style_link_with_one_threshold_per_exit_opens_per_exit_mode():
    v, problems = read_link({"t": "0.6,0.7,0.9"}, contexts)
    assert not problems and v.mode == "per-exit" and v.per_exit == (0.6, 0.7, 0.9)


# ---- rendered in the app: a generated view, its link, a fresh session ----

PAGES = ("views/whatif.py", "views/samples.py", "views/journey.py", "views/representations.py")


def what_a_person_reads(at: AppTest) -> list[str]:
    """The page's text and numbers (titles, metrics, captions, Markdown, alerts), as shown."""
    out = [f"{m.label}={m.value}" for m in at.metric]
    for kind in ("title", "subheader", "caption", "markdown", "warning", "info", "success", "error"):
        out += [f"{kind}:{html.unescape(e.value)}" for e in getattr(at, kind)]
    return out


def render(at: AppTest) -> dict[str, list[str]]:
    shown = {}
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.message for e in at.exception])
        shown[page] = what_a_person_reads(at)
    return shown


@pytest.mark.slow
@settings(
    max_examples=5,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: slow
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(views(rows_from=FEATURE_ROWS))
def test_a_rendered_view_sent_as_a_link_opens_the_same_view_and_numbers(v):
    from met_core.app.session import KEY, Session

    v.fit(CTX)
    sender = AppTest.from_file(str(ROOT / "met_core" / "app" / "main.py"), default_timeout=240)
    sender.session_state[KEY] = Session(v, [])
    sender.run()
    seen = render(sender)
    sent = sender.session_state[KEY].view
    link = dict(sender.query_params)
    assert link == write_link(sent, CTX)  # the address bar names what the sender's pages show

    recipient = AppTest.from_file(str(ROOT / "met_core" / "app" / "main.py"), default_timeout=240)
    recipient.query_params.update(link)
    recipient.run()
    assert not recipient.warning, [w.value for w in recipient.warning]
    got = render(recipient)
    assert recipient.session_state[KEY].view == sent
    for page in PAGES:
        assert got[page] == seen[page], page
