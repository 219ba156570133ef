"""Real browser: text the app shows reaches WCAG AA contrast (4.5:1) in light and dark mode (captions, widget labels,
metric labels, Plotly's tick labels and legends), measured on the colours the browser computes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import DEFAULT_MODEL, ROOT
from .tools.browser import CHROMIUM, DRIVER, make_browser, start_server, wait_text, wait_until

ARTIFACTS = Path(os.environ.get("MET_ARTIFACTS", ROOT / "test-artifacts" / "screenshots"))
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(DRIVER).exists()) and not os.environ.get("CI"),
        reason="Debian chromium + chromium-driver not installed",
    ),
    pytest.mark.skipif(
        not (ROOT / "checkpoints" / "cifar10-met" / "test_trace.npz").is_file(), reason="no shipped checkpoints"
    ),
]

# the WCAG 2 contrast ratio of each element's text against what lies behind it (opacity and alpha blended in)
CONTRAST = """
const parse = (c) => { const m = (c.match(/[\\d.]+/g) || [0, 0, 0]).map(Number);
  return {r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1}; };
const behind = (el) => { for (let e = el; e; e = e.parentElement) {
  const p = parse(getComputedStyle(e).backgroundColor); if (p.a > 0.5) return p; }
  return parse(getComputedStyle(document.body).backgroundColor); };
const opacity = (el) => { let o = 1;
  for (let e = el; e; e = e.parentElement) o *= parseFloat(getComputedStyle(e).opacity); return o; };
const lum = (p) => {
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(p.r) + 0.7152 * f(p.g) + 0.0722 * f(p.b); };
const ratio = (el) => { const cs = getComputedStyle(el); const svg = el instanceof SVGElement;
  const fg = parse(svg ? cs.fill : cs.color); const bg = behind(el);
  const a = fg.a * opacity(el) * (svg ? parseFloat(cs.fillOpacity) : 1);
  const mix = {r: fg.r * a + bg.r * (1 - a), g: fg.g * a + bg.g * (1 - a), b: fg.b * a + bg.b * (1 - a)};
  const l1 = lum(mix), l2 = lum(bg); return (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05); };
const groups = {
  caption: '[data-testid="stCaptionContainer"] p',
  "widget label": '[data-testid="stWidgetLabel"] p',
  "metric label": '[data-testid="stMetricLabel"] p',
  "plot tick": '.js-plotly-plot .xtick text, .js-plotly-plot .ytick text',
  "plot legend": '.js-plotly-plot .legendtext',
};
const out = {};
for (const [name, sel] of Object.entries(groups)) {
  const els = [...document.querySelectorAll(sel)].filter((e) => (e.textContent || "").trim());
  out[name] = els.length ? Math.min(...els.map(ratio)) : null; }
return out;
"""


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_text_and_plot_labels_reach_4_5_to_1_in_light_and_dark_mode(tmp_path, mode):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    proc, url = start_server({"STREAMLIT_THEME_BASE": mode})
    drv = make_browser(tmp_path / "profile")
    try:
        worst: dict[str, float] = {}
        for page, ready in (
            ("whatif", "Accuracy versus mean GMACs"),
            ("representations", "kNN accuracy is"),
            ("journey", "Leaves at exit"),
        ):
            drv.get(f"{url}/{page}")
            wait_text(drv, ready, timeout=180)
            wait_until(
                lambda: drv.find_elements("css selector", ".js-plotly-plot .xtick text"),
                timeout=60,
                what="the charts' tick labels",
            )
            for name, r in drv.execute_script(CONTRAST).items():
                if r is not None:
                    worst[name] = min(r, worst.get(name, r))
            drv.save_screenshot(str(ARTIFACTS / f"contrast-{mode}-{page}.png"))
        assert set(worst) >= {"caption", "widget label", "metric label", "plot tick", "plot legend"}, worst
        assert all(r >= 4.5 for r in worst.values()), worst
    finally:
        drv.quit()
        proc.terminate()
        proc.wait(10)


# every text element whose content is wider or taller than its box (cut off with an ellipsis, or spilling out)
CLIPPED = """
const sel = '[data-testid="stMetricValue"], [data-testid="stMetricLabel"], [data-testid="stMetricDelta"], ' +
  'button, [data-testid="stWidgetLabel"], [data-testid="stMarkdownContainer"], ' +
  '[data-testid="stCaptionContainer"], h1, h2, h3, [data-testid="stTab"]';
const main = document.querySelector('[data-testid="stMain"]') || document.body;
return [...main.querySelectorAll(sel)]
  .filter((e) => e.offsetParent !== null && (e.innerText || '').trim())
  .filter((e) => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 2)
  .map((e) => `${e.tagName} '${e.innerText.trim().slice(0, 60)}' ${e.scrollWidth}x${e.scrollHeight} in ` +
              `${e.clientWidth}x${e.clientHeight}`);
"""

PAGES = (
    ("", "Try this"),
    ("how", "Model card"),
    ("whatif", "Accuracy versus mean GMACs"),
    ("samples", "images match"),
    ("journey", "Leaves at exit"),
    ("representations", "kNN accuracy is"),
    ("models", "Add a checkpoint folder"),
)


def projector(drv) -> None:
    """A 1280 x 720 viewport (the window's size minus the browser's own bars)."""
    drv.set_window_size(1280, 720)
    w, h = drv.execute_script("return [window.innerWidth, window.innerHeight];")
    drv.set_window_size(1280 + 1280 - w, 720 + 720 - h)


@pytest.mark.parametrize("page,ready", PAGES)
def test_every_page_at_1280_by_720_has_no_clipped_or_overflowing_text(server, tmp_path, page, ready):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    drv = make_browser(tmp_path / "profile")
    try:
        projector(drv)
        drv.get(f"{server}/{page}")
        wait_text(drv, ready, timeout=180)
        wait_until(
            lambda: not drv.find_elements("css selector", '[data-testid="stStatusWidgetRunningIcon"]'),
            timeout=120,
            what="the page's run to finish",
        )
        import time

        time.sleep(2)
        drv.save_screenshot(str(ARTIFACTS / f"projector-{page or 'start'}.png"))
        clipped = drv.execute_script(CLIPPED)
        assert clipped == [], clipped
    finally:
        drv.quit()


def test_the_journey_fits_a_projector_and_steps_with_buttons_and_arrow_keys(server, tmp_path):
    from selenium.webdriver.common.keys import Keys

    from met_core.analysis.whatif import TraceArrays, outcomes
    from met_core.io.traces import load_trace

    trace = load_trace(ROOT / "checkpoints" / DEFAULT_MODEL / "test_trace.npz")
    o = outcomes(TraceArrays.from_trace(trace), 0.8)
    i = int(next(j for j in range(len(o.exits)) if o.exits[j] == 3))  # an image that leaves at the last exit
    drv = make_browser(tmp_path / "profile")
    try:
        projector(drv)
        drv.get(f"{server}/journey?image={trace.ids[i]}")
        wait_text(drv, "Leaves at exit 4", timeout=180)

        def shown_step() -> str | None:
            """The 'Blocks run' figure, or None while the page is redrawing it."""
            try:
                return next(
                    (
                        m.text.split("\n")[1]
                        for m in drv.find_elements("css selector", '[data-testid="stMetric"]')
                        if m.text.startswith("Blocks run")
                    ),
                    None,
                )
            except Exception:  # an element replaced while it was read
                return None

        wait_until(lambda: shown_step() == "3 of 12", what="exit 1 first")  # it starts at exit 1
        parts = {
            "Previous": "//button[contains(., 'Previous exit')]",
            "Next": "//button[contains(., 'Next exit')]",
            "image": "//*[@data-testid='stImage']",
            "decision": "//*[@data-testid='stMetric'][.//p[.='Decision']]",
            "drawing": "(//*[@data-testid='stPlotlyChart'])[1]",
        }
        for name, xp in parts.items():
            r = drv.find_element("xpath", xp).rect
            assert r["y"] >= 0 and r["y"] + r["height"] <= 720, (name, r)  # in the first screen, no scrolling
        drv.find_element("xpath", parts["Next"]).click()
        wait_until(lambda: shown_step() == "6 of 12", what="exit 2 after Next")
        drv.find_element("tag name", "body").send_keys(Keys.ARROW_RIGHT)
        wait_until(lambda: shown_step() == "9 of 12", what="exit 3 after the right arrow key")
        drv.find_element("tag name", "body").send_keys(Keys.ARROW_RIGHT)
        wait_until(lambda: shown_step() == "12 of 12", what="exit 4 after the right arrow key")
        assert not drv.find_element("xpath", parts["Next"]).is_enabled()  # the exit where it leaves: the last step
        drv.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT)
        wait_until(lambda: shown_step() == "9 of 12", what="exit 3 after the left arrow key")
        drv.save_screenshot(str(ARTIFACTS / "projector-journey-stepped.png"))
    finally:
        drv.quit()
