"""Concurrent users: 8 browser sessions at once on one `streamlit run` server, sharing one model object.

Each session (a headless Chromium) moves the what-if slider twice and uploads real photos (real early
exit on the shared ants/bees model). It must see exactly what one session alone sees, with no error,
and the server's peak memory must stay bounded. Figures go to test-artifacts/concurrency.json and
are quoted in the README.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import HYMENOPTERA, ROOT
from .test_browser import have_browser, metric_value
from .tools.browser import click_nav, make_browser, start_server, wait_text

SESSIONS = 8
STEPS = (10, 25)  # arrow-key presses on the global threshold slider, one move after the other
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not have_browser, reason="Debian chromium + chromium-driver not installed"),
    pytest.mark.skipif(
        not (ROOT / "checkpoints" / "hymenoptera-met" / "test_trace.npz").is_file(), reason="no shipped checkpoints"
    ),
]


def _mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak since start) of a process, in MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def settle(drv, quiet_s: float = 1.5, timeout: float = 120) -> None:
    """Wait until the app has stopped running for `quiet_s` (the status widget shows 'Running...')."""
    deadline, calm_since = time.time() + timeout, None
    while time.time() < deadline:
        running = drv.find_elements("css selector", '[data-testid="stStatusWidget"]')
        if running:
            calm_since = None
        elif calm_since is None:
            calm_since = time.time()
        elif time.time() - calm_since >= quiet_s:
            return
        time.sleep(0.2)
    raise AssertionError("the app kept running")


def shown(drv) -> tuple[str, str, str]:
    rng = drv.find_element("css selector", '[data-testid="stSlider"] input[type="range"]')
    return rng.get_attribute("value"), metric_value(drv, "Accuracy"), metric_value(drv, "Mean GMACs")


def expected() -> dict[int, tuple[str, str, str]]:
    """What the what-if page must show after each slider move: met_core's own numbers (0.8 start, 0.01 steps)."""
    from met_core.analysis.whatif import TraceArrays, whatif
    from met_core.io.traces import load_trace

    arrays = TraceArrays.from_trace(load_trace(ROOT / "checkpoints" / "hymenoptera-met" / "test_trace.npz"))
    out, pressed = {}, 0
    for steps in STEPS:
        pressed += steps
        t = round(0.8 - 0.01 * pressed, 2)
        r = whatif(arrays, t)
        out[steps] = (f"{t:g}", f"{100 * r.accuracy:.2f}%", f"{r.gmacs:.4f}")
    return out


EXPECTED: dict[int, tuple[str, str, str]] = {}


def session(url: str, photos: list, profile) -> dict:
    """One user; returns what they saw: slider value and metrics per step, the upload table, any errors."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    drv = make_browser(profile)
    seen: dict = {"errors": []}
    try:
        drv.get(f"{url}/whatif")
        wait_text(drv, "Accuracy versus mean GMACs", timeout=240)
        for steps in STEPS:
            want = EXPECTED[steps]
            # the threshold typed into the exact entry (arrow keys on the slider can be lost on a loaded machine:
            # see the closing note of the session that changed this)
            # the entry is redrawn after each answer: on a loaded machine it can be missing for a moment
            field = WebDriverWait(drv, 180, poll_frequency=0.5).until(
                lambda d: d.find_element("css selector", 'input[aria-label="Exact value"]')
            )
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(Keys.DELETE)
            field.send_keys(want[0], Keys.ENTER)
            try:  # the app answers asynchronously: wait for the numbers met_core gives, then record what is shown
                WebDriverWait(drv, 180, poll_frequency=0.5).until(lambda d, w=want: shown(d) == w)
            except TimeoutException:
                pass
            seen[f"after {steps} steps"] = shown(drv)
        click_nav(drv, "Explore samples")
        wait_text(drv, "images match", timeout=240)
        settle(drv)
        drv.find_element("xpath", "//*[@role='tab' and contains(., 'Upload images')]").click()
        WebDriverWait(drv, 60).until(lambda d: d.find_elements("css selector", 'input[type="file"]'))
        drv.find_element("css selector", 'input[type="file"]').send_keys("\n".join(str(p) for p in photos))
        wait_text(drv, f"Real early exit on {len(photos)} image(s)", timeout=240)
        settle(drv)
        table = WebDriverWait(drv, 60).until(lambda d: d.find_elements("css selector", '[data-testid="stTable"]'))[0]
        seen["upload"] = [
            [c.text for c in tr.find_elements("css selector", "th, td")][:5]  # file .. GMACs, not timing
            for tr in table.find_elements("css selector", "tbody tr")
        ]
        seen["errors"] += [
            e.text
            for e in drv.find_elements(
                "css selector", '[data-testid="stException"], [data-testid="stAlertContentError"]'
            )
        ]
    except Exception as e:  # a session that breaks is an error to count, not a crash of the test
        seen["errors"].append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        drv.quit()
    return seen


def test_eight_concurrent_browser_sessions_see_what_one_session_sees(tmp_path):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(ROOT / "checkpoints" / "hymenoptera-met", ckpts / "hymenoptera-met")
    photos = (
        sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[:4]
        + sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:2]
    )
    EXPECTED.update(expected())
    proc, url = start_server({"MET_CHECKPOINTS": str(ckpts)})
    try:
        rss_start = _mb(proc.pid, "VmRSS")
        alone = session(url, photos, tmp_path / "alone")  # also loads the shared model and traces once
        assert alone["errors"] == [] and len(alone["upload"]) == len(photos), alone
        assert all(alone[f"after {k} steps"] == EXPECTED[k] for k in STEPS), (alone, EXPECTED)
        rss_one = _mb(proc.pid, "VmHWM")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(SESSIONS) as pool:
            seen = list(pool.map(lambda i: session(url, photos, tmp_path / f"s{i}"), range(SESSIONS)))
        seconds = time.perf_counter() - t0
        rss_peak = _mb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(10)
    errors = [e for s in seen for e in s["errors"]]
    different = sum(s != alone for s in seen)
    figures = {
        "sessions": SESSIONS,
        "requests_per_session": "page load, 2 slider moves, page switch, upload of 6 photos",
        "requests": SESSIONS * 5,
        "errors": len(errors),
        "sessions_seeing_other_answers": different,
        "wall_s": round(seconds, 1),
        "server_rss_start_mb": round(rss_start),
        "server_peak_rss_one_session_mb": round(rss_one),
        "server_peak_rss_8_sessions_mb": round(rss_peak),
    }
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / "concurrency.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(figures)
    assert errors == [] and different == 0, (errors[:3], [s for s in seen if s != alone][:1], alone)
    # bounded: 8 sessions cost less than 8 more copies of the model would (86 MB of backbone weights each)
    assert rss_peak - rss_one < 8 * 86, figures
