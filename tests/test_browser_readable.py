"""Real browser: text the app shows reaches WCAG AA contrast (4.5:1) in light and dark mode (captions, widget labels,
metric labels, Plotly's tick labels and legends), measured on the colours the browser computes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import ROOT
from .tools.browser import CHROMIUM, DRIVER, make_browser, start_server, wait_text, wait_until

ARTIFACTS = Path(os.environ.get("MET_ARTIFACTS", ROOT / "test-artifacts" / "screenshots"))
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()) and not os.environ.get("CI"),
                       reason="Debian chromium + chromium-driver not installed"),
    pytest.mark.skipif(not (ROOT / "checkpoints" / "cifar10-met" / "test_trace.npz").is_file(),
                       reason="no shipped checkpoints"),
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
        for page, ready in (("whatif", "Accuracy versus mean GMACs"), ("representations", "kNN accuracy is"),
                            ("journey", "Leaves at exit")):
            drv.get(f"{url}/{page}")
            wait_text(drv, ready, timeout=180)
            wait_until(lambda: drv.find_elements("css selector", ".js-plotly-plot .xtick text"), timeout=60,
                       what="the charts' tick labels")
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
