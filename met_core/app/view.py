"""The app's view as one typed value: what every page shows, and the link that reproduces it.

`View` holds the fields the pages share (model, compared model, exit policy, threshold mode, the global and
per-exit thresholds at full precision, the certified loss and risk, the cost axis and batch size) and each page's
own fields (`WhatIfView`, `SamplesView`, `JourneyView`, `RepresentationsView`). Nothing here imports Streamlit:
`met_core/app/session.py` keeps one `View` per browser session, draws the widgets from it and writes their changes back
through one callback, and writes the link from it.

Links are untrusted text. `read_link` is the one reader: every parameter is bounded in length, parsed, and
checked against what the app has (`Context`: the listed models, the model's exits, classes and test images); a
bad one is dropped with one sentence and the rest of the view still opens. `write_link` writes every field that
differs from the model's default view, so `read_link(write_link(v)) == v` for every valid view (tests/test_view.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from met_core.analysis.policies import DEFAULT_POLICY, POLICIES, get_policy
from met_core.errors import METError

MAX_PARAM_CHARS = 400
MAX_SELECTION_CHARS = 8000  # a lasso over the 1,000 feature rows: at most about 6,000 characters as ranges
MAX_LIST = 64

MODES = {"global": "One global threshold", "per-exit": "Per exit", "certified": "Certified (largest loss)"}
COSTS = {"gmacs": "GMACs", "time": "predicted time"}
VERDICTS = ("all", "correct", "wrong")
COLOURS = ("class", "correct", "exit taken")
SORTS = {
    "order": "test-set order",
    "conf-asc": "confidence, lowest first",
    "conf-desc": "confidence, highest first",
    "exit": "exit taken",
    "class": "true class",
}
CERT_LOSS = (0.1, 20.0)  # points of accuracy
CERT_DELTA = (0.01, 0.5)


@dataclass(frozen=True)
class Context:
    """What the model in use offers, against which a view is checked: listed model labels, its exits, classes and
    test images. Built by `met_core.app.state.context` from the checkpoint's config and test trace."""

    model: str
    models: tuple[str, ...]
    num_exits: int
    class_names: tuple[str, ...]
    ids: tuple[str, ...]  # test-trace sample ids, in trace order
    batch_sizes: tuple[int, ...] = ()  # the latency profile's (empty: no profile, no time axis)
    certifiable: bool = False  # a calibration set exists
    comparable: tuple[str, ...] = ()  # listed models with a test trace of the same classes (what-if comparisons)
    twin: str | None = None  # the default comparison on the what-if page (the model's no-graph-reg twin)

    @property
    def default_batch(self) -> int | None:
        if not self.batch_sizes:
            return None
        return 64 if 64 in self.batch_sizes else self.batch_sizes[-1]


@dataclass
class WhatIfView:
    cost: str = "gmacs"  # key of COSTS
    batch: int | None = None  # batch size of the time prediction (None: the profile's default)
    reliability: bool = False  # the reliability diagram is shown
    confusion: bool = False  # the confusion matrix is shown
    cell: tuple[int, int] | None = None  # the clicked confusion cell: (true class, predicted class)


@dataclass
class SamplesView:
    exits: tuple[int, ...] = ()  # 1-based exits taken; empty: all
    verdict: str = "all"
    classes: tuple[str, ...] = ()  # true classes; empty: all
    cell: tuple[int, int] | None = None  # (true, predicted) class indices, from a confusion cell
    rows: tuple[int, ...] = ()  # test-trace rows chosen elsewhere (a Representations selection); empty: all
    sort: str = "order"  # key of SORTS
    page: int = 1
    sample: str | None = None  # the test image whose detail is open


@dataclass
class JourneyView:
    image: str | None = None  # test image id (None: the first test image)
    step: int = 1  # 1-based exit the slider shows


@dataclass
class RepresentationsView:
    exit: int = 0  # 0-based
    colour: str = "class"
    compare: str | None = None  # model label; None: the page's default (the largest difference in lambda)
    rows: tuple[int, ...] = ()  # the selection highlighted in both panels (test-trace rows)


@dataclass
class View:
    """Everything that changes what a page shows (see the module docstring). Thresholds are kept per policy in
    `remembered` (not in the link) so that switching policy and back restores them."""

    model: str
    compare: str | None = None
    policy: str = DEFAULT_POLICY
    mode: str = "global"  # key of MODES
    threshold: float = 0.8
    per_exit: tuple[float, ...] = ()  # one per exit but the last
    cert_loss: float = 1.0  # largest accuracy loss against the last exit, in points
    cert_delta: float = 0.1
    whatif: WhatIfView = field(default_factory=WhatIfView)
    samples: SamplesView = field(default_factory=SamplesView)
    journey: JourneyView = field(default_factory=JourneyView)
    representations: RepresentationsView = field(default_factory=RepresentationsView)
    large_type: bool = False  # larger text for a projector (in the link: a reload or a copied link keeps it)
    remembered: dict[str, tuple[float, tuple[float, ...]]] = field(default_factory=dict, compare=False)

    @classmethod
    def default(cls, ctx: Context) -> View:
        pol = get_policy(DEFAULT_POLICY)
        t = float(pol.default_threshold)
        return cls(model=ctx.model, compare=ctx.twin, threshold=t, per_exit=(t,) * (ctx.num_exits - 1))

    def thresholds(self) -> float | list[float | None]:
        """The thresholds of the global or per-exit mode, as met_core.analysis.whatif takes them (the certified mode's
        come from the calibration trace: met_core.app.state.thresholds_in_use)."""
        if self.mode == "per-exit":
            return [*self.per_exit, None]
        return self.threshold

    def set_policy(self, name: str, ctx: Context) -> None:
        """Switch policy: the old policy's thresholds are remembered, the new one's restored (or its defaults)."""
        if name == self.policy:
            return
        self.remembered[self.policy] = (self.threshold, self.per_exit)
        pol = get_policy(name)
        d = float(pol.default_threshold)
        self.policy = name
        self.threshold, self.per_exit = self.remembered.get(name, (d, (d,) * (ctx.num_exits - 1)))

    def set_mode(self, mode: str) -> None:
        """Switch the threshold mode. From one global threshold to per-exit ones, every exit starts at that threshold,
        so the numbers stay what they were until a slider moves (they jumped to the per-exit defaults); per-exit values
        set one by one (not all equal) are kept, as switching policy keeps each policy's."""
        if mode == "per-exit" and self.mode == "global" and len(set(self.per_exit)) <= 1:  # never set one by one
            self.per_exit = (self.threshold,) * len(self.per_exit)
        self.mode = mode

    def adopt(self, thresholds: list[float | None]) -> None:
        """Use these per-exit thresholds (a budget, a certified rule or a clicked curve point), at full precision."""
        self.mode = "per-exit"
        self.per_exit = tuple(float(t) for t in thresholds[:-1])

    def fit(self, ctx: Context) -> View:
        """The same view with every field made valid for `ctx` (the checks in one place): unknown or out-of-range
        values fall back to their defaults. Returns self."""
        d = View.default(ctx)
        k = ctx.num_exits
        if self.model != ctx.model:
            self.model = ctx.model
        if self.compare is not None and self.compare not in ctx.comparable:
            self.compare = d.compare
        if self.policy not in POLICIES:
            self.policy = DEFAULT_POLICY
        pol = get_policy(self.policy)
        modes = (
            ["global"]
            + (["per-exit"] if k > 1 else [])
            + (["certified"] if k > 1 and pol.calibratable and ctx.certifiable else [])
        )
        if self.mode not in modes:
            self.mode = "global"
        dflt = float(pol.default_threshold)
        if not valid_threshold(self.threshold, self.policy, k):
            self.threshold = dflt
        pe = [t for t in self.per_exit[: k - 1]]
        pe += [self.threshold] * (k - 1 - len(pe))
        self.per_exit = tuple(t if valid_threshold(t, self.policy, k) else dflt for t in pe)
        if not (CERT_LOSS[0] <= self.cert_loss <= CERT_LOSS[1]):
            self.cert_loss = d.cert_loss
        if not (CERT_DELTA[0] <= self.cert_delta <= CERT_DELTA[1]):
            self.cert_delta = d.cert_delta
        c = len(ctx.class_names)
        w = self.whatif
        if w.cost not in COSTS or (w.cost == "time" and not ctx.batch_sizes):
            w.cost = "gmacs"
        if w.batch is not None and w.batch not in ctx.batch_sizes:
            w.batch = None
        if w.cell is not None and not all(0 <= i < c for i in w.cell):
            w.cell = None
        s = self.samples
        s.exits = tuple(sorted({e for e in s.exits if 1 <= e <= k}))
        if s.verdict not in VERDICTS:
            s.verdict = "all"
        s.classes = tuple(x for x in dict.fromkeys(s.classes) if x in ctx.class_names)
        if s.cell is not None and not all(0 <= i < c for i in s.cell):
            s.cell = None
        s.rows = tuple(sorted({r for r in s.rows if 0 <= r < len(ctx.ids)}))
        if s.sort not in SORTS:
            s.sort = "order"
        s.page = max(1, int(s.page))
        if s.sample is not None and s.sample not in _id_set(ctx):
            s.sample = None
        j = self.journey
        if j.image is not None and j.image not in _id_set(ctx):
            j.image = None
        j.step = min(max(1, int(j.step)), k)
        r = self.representations
        if not 0 <= r.exit < k:
            r.exit = 0
        if r.colour not in COLOURS:
            r.colour = "class"
        if r.compare is not None and (r.compare not in ctx.models or r.compare == ctx.model):
            r.compare = None
        r.rows = tuple(sorted({x for x in r.rows if 0 <= x < len(ctx.ids)}))
        return self

    def for_model(self, ctx: Context) -> View:
        """The view after the model changed: the policy, mode and thresholds stay; what belongs to the old model's
        classes, images and comparisons starts afresh."""
        return replace(
            View.default(ctx),
            policy=self.policy,
            mode=self.mode,
            threshold=self.threshold,
            per_exit=self.per_exit,
            cert_loss=self.cert_loss,
            cert_delta=self.cert_delta,
            whatif=replace(WhatIfView(), cost=self.whatif.cost),
            large_type=self.large_type,
        ).fit(ctx)


_ID_SETS: dict[int, frozenset[str]] = {}


def _id_set(ctx: Context) -> frozenset[str]:
    key = id(ctx.ids)
    if key not in _ID_SETS:
        if len(_ID_SETS) > 64:
            _ID_SETS.clear()
        _ID_SETS[key] = frozenset(ctx.ids)
    return _ID_SETS[key]


def threshold_range(policy: str, num_exits: int) -> tuple[float, float]:
    """(low, high) of a threshold a person may set for this policy: the policy's control range, widened to take its
    'never leaves' value (what a calibrated rule uses to skip an exit)."""
    pol = get_policy(policy)
    lo, hi = pol.ui_range(num_exits)
    if not pol.counts_exits:
        lo, hi = min(lo, pol.never), max(hi, pol.never)
    return lo, hi


def valid_threshold(t: Any, policy: str, num_exits: int) -> bool:
    """A finite number in the policy's range; a whole number for a count (patience)."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        return False
    lo, hi = threshold_range(policy, num_exits)
    return lo <= t <= hi and (not get_policy(policy).counts_exits or float(t).is_integer())


def number(v: float) -> str:
    """A threshold as text that reads back to the same float (shortest round trip; whole numbers without '.0')."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def parse_thresholds(text: str, policy: str, num_exits: int, count: int) -> tuple[float, ...]:
    """`count` comma-separated thresholds in the policy's range, or METError saying what they must be."""
    lo, hi = threshold_range(policy, num_exits)
    whole = " whole" if get_policy(policy).counts_exits else ""
    what = "one" if count == 1 else f"{count} comma-separated"
    try:
        vals = tuple(float(t) for t in _items(text))
    except (ValueError, METError):
        vals = ()
    if len(vals) != count or not all(valid_threshold(v, policy, num_exits) for v in vals):
        raise METError(f"{what}{whole} number{'s' if count > 1 else ''} between {number(lo)} and {number(hi)}")
    return vals


# ---- the link ----


def _items(text: str, most: int = MAX_LIST) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > most or not all(parts):
        raise METError(f"a list of at most {most} comma-separated values")
    return parts


def _rows(text: str, n: int) -> tuple[int, ...]:
    """Test-trace rows written as ranges: '3-7,10' is rows 3, 4, 5, 6, 7 and 10."""
    out: list[int] = []
    for part in _items(text, most=MAX_SELECTION_CHARS):
        a, _, b = part.partition("-")
        if not a.isdigit() or (b and not b.isdigit()) or int(b or a) < int(a) or int(b or a) >= n:
            raise METError(f"rows of the test trace from 0 to {n - 1}, as ranges like 3-7,10")
        out.extend(range(int(a), int(b or a) + 1))
    return tuple(out)


def _show_rows(rows: tuple[int, ...]) -> str:
    parts, i = [], 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
            j += 1
        parts.append(str(rows[i]) if i == j else f"{rows[i]}-{rows[j]}")
        i = j + 1
    return ",".join(parts)


def _choice(options: Any) -> Callable[[str, Context], str]:
    def parse(text: str, ctx: Context) -> str:
        if text not in options:
            raise METError("one of " + ", ".join(options))
        return text

    return parse


def _model(text: str, ctx: Context) -> str:
    if text not in ctx.models:
        raise METError("a model listed on the Models page")
    return text


def _compare(text: str, ctx: Context) -> str | None:
    if text != "none" and text not in ctx.comparable:
        raise METError("none or a listed model with a test trace of the same classes")
    return None if text == "none" else text


def _exit0(text: str, ctx: Context) -> int:
    if not text.isdigit() or not 1 <= int(text) <= ctx.num_exits:
        raise METError(f"an exit number from 1 to {ctx.num_exits}")
    return int(text) - 1


def _exits(text: str, ctx: Context) -> tuple[int, ...]:
    return tuple(_exit0(t, ctx) + 1 for t in _items(text))


def _classes(text: str, ctx: Context) -> tuple[str, ...]:
    got = tuple(_items(text, most=max(MAX_LIST, len(ctx.class_names))))
    if any(c not in ctx.class_names for c in got):
        raise METError("class names of the model")
    return got


def _cell(text: str, ctx: Context) -> tuple[int, int]:
    got = _items(text)
    if len(got) != 2 or any(c not in ctx.class_names for c in got):
        raise METError("a true and a predicted class name of the model, as true,predicted")
    return ctx.class_names.index(got[0]), ctx.class_names.index(got[1])


def _image(text: str, ctx: Context) -> str:
    if text not in _id_set(ctx):
        raise METError("the id of an image of the model's test trace")
    return text


def _int_in(lo: int, hi: int | None = None) -> Callable[[str, Context], int]:
    def parse(text: str, ctx: Context) -> int:
        if not text.isdigit() or int(text) < lo or (hi is not None and int(text) > hi):
            raise METError(f"a whole number of at least {lo}" + ("" if hi is None else f" and at most {hi}"))
        return int(text)

    return parse


def _batch(text: str, ctx: Context) -> int:
    if not text.isdigit() or int(text) not in ctx.batch_sizes:
        raise METError("a batch size of the model's latency profile: " + ", ".join(map(str, ctx.batch_sizes)))
    return int(text)


def _float_in(lo: float, hi: float) -> Callable[[str, Context], float]:
    def parse(text: str, ctx: Context) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not lo <= v <= hi:
            raise METError(f"a number from {number(lo)} to {number(hi)}")
        return v

    return parse


def _flag(text: str, ctx: Context) -> bool:
    if text not in ("0", "1"):
        raise METError("0 or 1")
    return text == "1"


@dataclass(frozen=True)
class Param:
    """One query parameter: the view field it holds (a dotted path), how its text is read (raising METError with
    what it must be) and written."""

    name: str
    path: str
    parse: Callable[[str, Context], Any]
    show: Callable[[Any], str] = str
    max_chars: int = MAX_PARAM_CHARS


def _join(values: Any) -> str:
    return ",".join(map(str, values))


def _join_numbers(values: Any) -> str:
    return ",".join(map(number, values))


def _show_exit0(k: int) -> str:
    return str(k + 1)


# the order matters: the policy before the thresholds (their range depends on it)
PARAMS: tuple[Param, ...] = (
    Param("compare", "compare", _compare, lambda v: "none" if v is None else v),
    Param("policy", "policy", _choice(tuple(POLICIES))),
    Param("mode", "mode", _choice(tuple(MODES))),
    Param("t", "threshold", lambda t, c: t, number),  # read with the per-exit values below (old links: t=a,b,c)
    Param("te", "per_exit", lambda t, c: t, _join_numbers),
    Param("loss", "cert_loss", _float_in(*CERT_LOSS), number),
    Param("delta", "cert_delta", _float_in(*CERT_DELTA), number),
    Param("cost", "whatif.cost", _choice(tuple(COSTS))),
    Param("batch", "whatif.batch", _batch),
    Param("rel", "whatif.reliability", _flag, lambda v: "1" if v else "0"),
    Param("cm", "whatif.confusion", _flag, lambda v: "1" if v else "0"),
    Param("cell", "whatif.cell", _cell),
    Param("exits", "samples.exits", _exits, _join),
    Param("verdict", "samples.verdict", _choice(VERDICTS)),
    Param("classes", "samples.classes", _classes, _join),
    Param("scell", "samples.cell", _cell),
    Param("rows", "samples.rows", lambda t, c: _rows(t, len(c.ids)), _show_rows, MAX_SELECTION_CHARS),
    Param("sort", "samples.sort", _choice(tuple(SORTS))),
    Param("page", "samples.page", _int_in(1)),
    Param("sample", "samples.sample", _image),
    Param("image", "journey.image", _image),
    Param("step", "journey.step", lambda t, c: _int_in(1, c.num_exits)(t, c)),
    Param("exit", "representations.exit", _exit0, _show_exit0),
    Param("colour", "representations.colour", _choice(COLOURS)),
    Param("rcompare", "representations.compare", _model),
    Param("large", "large_type", _flag, lambda v: "1" if v else "0"),
    Param("rsel", "representations.rows", lambda t, c: _rows(t, len(c.ids)), _show_rows, MAX_SELECTION_CHARS),
)
_CELL_PARAMS = {"cell", "scell"}


def get(view: View, path: str) -> Any:
    obj: Any = view
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def put(view: View, path: str, value: Any) -> None:
    *head, last = path.split(".")
    obj: Any = view
    for part in head:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def read_link(query: Mapping[str, str], context: Callable[[str | None], Context]) -> tuple[View, list[str]]:
    """The view a link names, and one sentence per parameter that was dropped. `context(label)` gives the context
    of a listed model (None: the default model); the model is read first, the other checks depend on it."""
    problems: list[str] = []

    def bounded(name: str, most: int) -> str | None:
        text = query.get(name)
        if text is not None and len(text) > most:
            problems.append(f"The link's {name}= was ignored: it must be at most {most} characters.")
            return None
        return text

    label = bounded("model", MAX_PARAM_CHARS)
    ctx = context(None)
    if label is not None:
        if label in ctx.models:
            ctx = context(label)
        else:
            problems.append(
                "The link's model= was ignored: it names no model this app lists (a folder added on the Models page "
                "stays for that browser session only: add it again there)."
            )
    view = View.default(ctx)
    raw: dict[str, Any] = {}
    for p in PARAMS:
        text = bounded(p.name, p.max_chars)
        if text is None:
            continue
        try:
            raw[p.name] = p.parse(text, ctx)
        except METError as e:
            problems.append(f"The link's {p.name}= was ignored: it must be {e}.")
    if "policy" in raw:
        view.set_policy(raw.pop("policy"), ctx)
    _read_thresholds(view, raw, ctx, problems)
    for p in PARAMS:
        if p.name in raw:
            put(view, p.path, raw[p.name])
    return view.fit(ctx), problems


def _read_thresholds(view: View, raw: dict[str, Any], ctx: Context, problems: list[str]) -> None:
    """t= (one global threshold; or, in older links, one per exit but the last) and te= (per exit)."""
    k = ctx.num_exits
    for name in ("t", "te"):
        text = raw.pop(name, None)
        if text is None:
            continue
        counts = (1, k - 1) if name == "t" else (k - 1,)
        try:
            n = len(_items(text)) if len(text) <= MAX_PARAM_CHARS else 0
            vals = parse_thresholds(text, view.policy, k, n if n in counts else counts[-1])
        except METError as e:
            problems.append(f"The link's {name}= was ignored: it must be {e}.")
            continue
        if name == "t" and len(vals) == 1:
            view.threshold = vals[0]
        else:
            view.per_exit = vals
            if name == "t" and "mode" not in raw:  # an older link: several values in t= meant per-exit mode
                raw["mode"] = "per-exit"


def write_link(view: View, ctx: Context) -> dict[str, str]:
    """The query parameters of a view: every field that differs from the model's default view (the model always)."""
    d = View.default(ctx)
    d.set_policy(view.policy, ctx)  # the thresholds a link without t= or te= gets for this policy
    out = {"model": view.model}
    for p in PARAMS:
        v = get(view, p.path)
        if v == (DEFAULT_POLICY if p.name == "policy" else get(d, p.path)):
            continue
        if p.name in _CELL_PARAMS:
            out[p.name] = f"{ctx.class_names[v[0]]},{ctx.class_names[v[1]]}"
        else:
            out[p.name] = p.show(v)
    return out
