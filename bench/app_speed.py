"""Benchmark the app: the first view of every page on a fresh server (< 5 s each), cold start to the what-if page
(backbone not loaded), and a slider move to updated numbers in a real browser (median < 150 ms, p90 < 250 ms).

    python bench/app_speed.py [--no-browser]

First view per page: for each page a fresh `streamlit run` (new process: empty caches, an empty user cache, so
only shipped files help); the time from asking for the page's URL to its last element being shown, in a
browser that has opened the app before (Streamlit's and Plotly's scripts cached: the goal) and in one that never
has (printed beside it). Needs Debian's chromium and chromium-driver (`--no-browser` skips this part).

Cold start: a fresh Python process imports the app and renders the start page and then the what-if page on the
shipped default checkpoint with AppTest; a pass also proves that neither `met_core.nn.backbones` nor torch was
imported, so those pages never load the backbone. Slider in a browser: the what-if page's threshold slider is moved
one step at a time with the arrow keys (30 moves); each move is timed in the page, from the key press to the
Accuracy metric showing its new value (the goal). AppTest's whole-page re-run after a slider move is printed beside
it (an upper bound: in a browser only the page's fragment re-runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COLD_GOAL_S, SLIDER_GOAL_MS, SLIDER_P90_GOAL_MS, PAGE_GOAL_S = 5.0, 150.0, 250.0, 5.0
# url path -> the text the page shows last
PAGES = {
    "": "Try this",
    "how": "The choices this model uses",
    "whatif": "Measure the real batched early exit",
    "samples": "images match",
    "journey": "Leaves at exit",
    "representations": "kNN accuracy is",
    "models": "Add a checkpoint folder",
}

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, %(root)r)
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(%(main)r, default_timeout=60)
at.run()
at.switch_page("views/whatif.py").run()
first = time.perf_counter() - t0
assert not at.exception, [e.message for e in at.exception]
# the backbone module (and with it torch and timm) was never even imported
assert "met_core.nn.backbones" not in sys.modules and "torch" not in sys.modules, "the first page loaded the backbone"
times = []
for i in range(30):
    t = time.perf_counter()
    at.slider(key="w:threshold").set_value(0.5 + 0.015 * i).run()
    times.append(1e3 * (time.perf_counter() - t))
    assert not at.exception
print(json.dumps({"cold_start_s": first, "slider_ms": times}))
"""


def first_views(warm_browser: bool) -> dict[str, float]:
    """Seconds from requesting each page on a fresh server (new process, empty caches) to its last element being
    shown. A cold browser also fetches and compiles Streamlit's and Plotly's scripts; a warm one (a person who has
    opened the app before) has them cached: the same port and browser profile, warmed on a throwaway server."""
    from tests.tools.browser import free_port, make_browser, start_server, wait_text

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        port, profile = free_port(), Path(tmp) / "profile"

        def visit(path: str) -> float:
            env = {"MET_CACHE_DIR": os.path.join(tmp, "cache", path), "MET_RUNS_DIR": os.path.join(tmp, "runs")}
            proc, url = start_server(env, port)
            drv = make_browser(profile if warm_browser else Path(tmp) / f"cold-{path}")
            try:
                t0 = time.perf_counter()
                drv.get(f"{url}/{path}")
                wait_text(drv, PAGES[path], timeout=120)
                return time.perf_counter() - t0
            finally:
                drv.quit()
                proc.terminate()
                proc.wait(10)

        if warm_browser:
            visit("how")  # fills the browser's cache of static files
        for path in PAGES:
            out[path or "start"] = visit(path)
    return out


# in the page: the time from each key press to the Accuracy metric showing a new value
WATCH = """
const root = document.querySelector('[data-testid="stMainBlockContainer"]');
const acc = () => { const m = [...root.querySelectorAll('[data-testid="stMetric"]')]
    .find(e => e.innerText.startsWith('Accuracy'));
  return m ? m.querySelector('[data-testid="stMetricValue"]').innerText : null; };
window.__last = acc(); window.__times = []; window.__key = null;
document.addEventListener('keydown', () => { window.__key = performance.now(); }, true);
new MutationObserver(() => { const a = acc();
  if (a !== null && a !== window.__last && window.__key !== null) {
    window.__times.push(performance.now() - window.__key); window.__last = a; window.__key = null; } })
  .observe(root, {subtree: true, childList: true, characterData: true});
"""


def slider_in_browser(moves: int = 30) -> list[float]:
    """Milliseconds from a key press on the threshold slider to the new Accuracy figure, per move."""
    from selenium.webdriver.common.keys import Keys

    from tests.tools.browser import make_browser, start_server, wait_text, wait_until

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server({"MET_CACHE_DIR": os.path.join(tmp, "cache"), "MET_RUNS_DIR": tmp})
        drv = make_browser(Path(tmp) / "profile")
        try:
            drv.get(f"{url}/whatif")
            wait_text(drv, PAGES["whatif"], timeout=120)
            time.sleep(3)
            drv.execute_script(WATCH)
            rng = drv.find_element("css selector", '[data-testid="stSlider"] input[type="range"]')
            drv.execute_script("arguments[0].focus();", rng)
            for i in range(moves):
                key = Keys.ARROW_LEFT if (i // 10) % 2 == 0 else Keys.ARROW_RIGHT  # 0.80 -> 0.70 -> 0.80 -> 0.70
                drv.switch_to.active_element.send_keys(key)
                wait_until(
                    lambda n=i + 1: drv.execute_script("return window.__times.length;") >= n,
                    timeout=60,
                    what="the new Accuracy figure",
                )
                time.sleep(0.3)
            return [float(t) for t in drv.execute_script("return window.__times;")]
        finally:
            drv.quit()
            proc.terminate()
            proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-browser", action="store_true", help="skip the per-page first views (no Chromium here)")
    args = ap.parse_args()
    ok = True
    if not args.no_browser:
        cold, warm = first_views(warm_browser=False), first_views(warm_browser=True)
        for page in warm:
            print(
                f"first view of {page} on a fresh server: {warm[page]:.2f} s with the browser's static files cached "
                f"(goal < {PAGE_GOAL_S} s); {cold[page]:.2f} s from a browser that never opened the app"
            )
        ok = all(s < PAGE_GOAL_S for s in warm.values())
        moves = slider_in_browser()
        med, p90 = statistics.median(moves), sorted(moves)[int(0.9 * len(moves))]
        print(
            f"slider move to the new Accuracy figure in the browser ({len(moves)} moves): median {med:.0f} ms, "
            f"p90 {p90:.0f} ms (goal: median < {SLIDER_GOAL_MS:.0f} ms, p90 < {SLIDER_P90_GOAL_MS:.0f} ms)"
        )
        ok = ok and med < SLIDER_GOAL_MS and p90 < SLIDER_P90_GOAL_MS
    main = ROOT / "met_core" / "app" / "main.py"
    out = subprocess.run(
        [sys.executable, "-c", CHILD % {"root": str(ROOT), "main": str(main)}], capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode != 0:
        print(out.stderr[-3000:])
        print("FAIL")
        return 1
    r = json.loads(out.stdout.strip().splitlines()[-1])
    cold, med = r["cold_start_s"], statistics.median(r["slider_ms"])
    p90 = sorted(r["slider_ms"])[int(0.9 * len(r["slider_ms"]))]
    print(
        f"cold start to the first page (fresh process, imports included, backbone not loaded): {cold:.2f} s "
        f"(goal < {COLD_GOAL_S} s)"
    )
    print(f"slider move, AppTest whole-page re-run (an upper bound): median {med:.0f} ms, p90 {p90:.0f} ms")
    ok = ok and cold < COLD_GOAL_S
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
