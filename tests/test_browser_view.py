"""Real browser, the app's one view: controls and numbers never disagree, a copied link shows a second browser the
same numbers on every page, a click on the curve adopts its thresholds, and a lasso opens its images in Explore
samples. Debian's Chromium through Selenium, `streamlit run met_core/app/main.py` on a free localhost port."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from met_core.analysis.calibration import sweep_applied
from met_core.analysis.whatif import TraceArrays, whatif
from met_core.io.traces import load_trace

from .conftest import DEFAULT_MODEL, ROOT
from .tools.browser import (
    CHROMIUM,
    DRIVER,
    main_text,
    make_browser,
    metric_value,
    no_exception,
    wait_text,
    wait_until,
)

ARTIFACTS = Path(os.environ.get("MET_ARTIFACTS", ROOT / "test-artifacts" / "screenshots"))
CK = ROOT / "checkpoints" / DEFAULT_MODEL
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(DRIVER).exists()) and not os.environ.get("CI"),
        reason="Debian chromium + chromium-driver not installed",
    ),
    pytest.mark.skipif(not (CK / "test_trace.npz").is_file(), reason="no shipped checkpoints"),
]


@pytest.fixture(scope="module")
def test_arrays() -> TraceArrays:
    return TraceArrays.from_trace(load_trace(CK / "test_trace.npz"))


@pytest.fixture()
def pair(tmp_path):
    """A sender and a recipient: two browsers with their own profiles (no shared session or storage)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    a, b = make_browser(tmp_path / "sender"), make_browser(tmp_path / "recipient")
    for d in (a, b):
        d.set_window_size(1500, 1100)
    yield a, b
    a.quit()
    b.quit()


def query(drv) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(drv.current_url).query).items()}


def click_label(drv, text: str) -> None:
    """Click a radio option, toggle or button by its visible text."""
    el = drv.find_element("xpath", f"//label[normalize-space(.)={text!r}] | //button[normalize-space(.)={text!r}]")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    el.click()


def type_into(drv, aria_label: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field = drv.find_element("css selector", f'input[aria-label="{aria_label}"]')
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text, Keys.ENTER)


def choose(drv, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label`."""
    box = drv.find_element("xpath", f"//*[@data-testid='stSelectbox'][.//label[normalize-space(.)={label!r}]]")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.find_element("css selector", "button[aria-label='Open']").click()
    xpath = f"//*[@role='option'][normalize-space(.)={option!r}]"
    wait_until(lambda: drv.find_elements("xpath", xpath), what=f"the option {option}")
    drv.find_element("xpath", xpath).click()


def settle(drv, seconds: float = 1.5) -> None:
    """Wait until the app has finished its run (no 'running' indicator) and a little after."""
    time.sleep(0.5)
    wait_until(
        lambda: not drv.find_elements("css selector", '[data-testid="stStatusWidgetRunningIcon"]'),
        timeout=120,
        what="the app's run to finish",
    )
    time.sleep(seconds)


def chart(drv, index_or_title: int | str):
    """A Plotly chart of the page (by position or by text in it), scrolled into view, and its drag area."""
    charts = drv.find_elements("css selector", '[data-testid="stPlotlyChart"]')
    c = (
        charts[index_or_title]
        if isinstance(index_or_title, int)
        else next(x for x in charts if index_or_title in x.text)
    )
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", c)
    time.sleep(1)
    return c, c.find_elements("css selector", ".nsewdrag")[0]


def slider_text(drv) -> str:
    return drv.find_element("css selector", '[data-testid="stSlider"]').text


def test_per_exit_zero_then_global_then_an_unrelated_click_keeps_slider_and_numbers_equal(server, pair, test_arrays):
    """The desync sequence of issue 21: per-exit 0, back to one global threshold, then 'predicted time'."""
    drv, _ = pair
    drv.get(f"{server}/whatif")
    wait_text(drv, "Accuracy versus mean GMACs", timeout=180)
    click_label(drv, "Per exit")
    wait_until(lambda: query(drv).get("mode") == "per-exit", what="per-exit mode in the link")
    settle(drv)
    type_into(drv, "Exact values, comma-separated", "0, 0.8, 0.8")
    wait_until(lambda: query(drv).get("te") == "0,0.8,0.8", what="the typed thresholds in the link")
    settle(drv)
    r0 = whatif(test_arrays, [0.0, 0.8, 0.8, None])
    assert metric_value(drv, "Accuracy") == f"{100 * r0.accuracy:.2f}%"
    click_label(drv, "One global threshold")
    wait_until(lambda: "mode" not in query(drv), what="global mode in the link")
    settle(drv)
    r = whatif(test_arrays, 0.8)
    assert "0.80" in slider_text(drv) and metric_value(drv, "Accuracy") == f"{100 * r.accuracy:.2f}%"
    click_label(drv, "predicted time")
    wait_text(drv, "Predicted time per image")
    settle(drv)
    assert "0.80" in slider_text(drv) and metric_value(drv, "Accuracy") == f"{100 * r.accuracy:.2f}%"
    assert query(drv).get("cost") == "time" and "t" not in query(drv)
    # an empty entry keeps the value in use and says so
    type_into(drv, "Exact value", "")
    wait_text(drv, "The empty entry was not used")
    assert metric_value(drv, "Accuracy") == f"{100 * r.accuracy:.2f}%"
    no_exception(drv)
    drv.save_screenshot(str(ARTIFACTS / "whatif-desync-sequence.png"))


def _whatif(drv) -> None:
    from selenium.webdriver.common.keys import Keys

    rng = drv.find_element("css selector", '[data-testid="stSlider"] input[type="range"]')
    drv.execute_script("arguments[0].focus();", rng)  # react-aria keeps the range input visually hidden
    for _ in range(12):
        drv.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    wait_until(lambda: query(drv).get("t") == "0.68", what="t=0.68 in the link")
    settle(drv)
    click_label(drv, "Show the confusion matrix at these thresholds (click a cell to see its images)")
    wait_until(lambda: query(drv).get("cm") == "1", what="the confusion matrix in the link")


def _samples(drv) -> None:
    choose(drv, "Sort by", "confidence, lowest first")
    wait_until(lambda: query(drv).get("sort") == "conf-asc", what="the sort in the link")
    settle(drv)
    click_label(drv, "Next")
    wait_until(lambda: query(drv).get("page") == "2", what="page 2 in the link")


def _journey(drv) -> None:
    click_label(drv, "Next exit ▶")
    wait_until(lambda: query(drv).get("step") == "2", what="step 2 in the link")


def _representations(drv) -> None:
    choose(drv, "Exit", "exit 3")
    wait_until(lambda: query(drv).get("exit") == "3", what="exit 3 in the link")
    settle(drv)
    click_label(drv, "correct")
    wait_until(lambda: query(drv).get("colour") == "correct", what="the colouring in the link")


@pytest.mark.parametrize(
    "page,ready,act",
    [
        ("whatif", "Accuracy versus mean GMACs", _whatif),
        ("samples", "images match", _samples),
        ("journey", "Leaves at exit", _journey),
        ("representations", "kNN accuracy is", _representations),
    ],
)
def test_a_copied_link_shows_a_fresh_browser_the_same_page(server, pair, page, ready, act):
    sender, recipient = pair
    sender.get(f"{server}/{page}")
    wait_text(sender, ready, timeout=180)
    settle(sender)
    act(sender)
    settle(sender, 2.5)
    no_exception(sender)
    # the Copy link button copies the address bar (the clipboard call is caught to read what it was given)
    sender.execute_script(
        "window.__copied = null; navigator.clipboard.writeText = (t) => "
        "{ window.__copied = t; return Promise.resolve(); };"
    )
    click_label(sender, "Copy link")
    wait_until(lambda: sender.execute_script("return window.__copied;"), what="the copied link")
    link = sender.execute_script("return window.__copied;")
    assert link == sender.current_url and urlparse(link).path.endswith(f"/{page}")
    seen = main_text(sender)
    recipient.get(link)
    wait_text(recipient, ready, timeout=180)
    settle(recipient, 2.5)
    no_exception(recipient)
    assert query(recipient) == query(sender)
    assert main_text(recipient) == seen
    recipient.save_screenshot(str(ARTIFACTS / f"link-recipient-{page}.png"))


def test_a_click_on_the_curve_adopts_that_points_thresholds(server, pair, test_arrays):
    from selenium.webdriver.common.action_chains import ActionChains

    drv, _ = pair
    drv.get(f"{server}/whatif")
    wait_text(drv, "Accuracy versus mean GMACs", timeout=180)
    settle(drv)
    curve, area = chart(drv, "Accuracy versus mean GMACs")
    front = curve.find_elements("css selector", ".scatterlayer .trace")[2]  # candidates, band, Pareto front
    points = front.find_elements("css selector", "path.point")
    target = points[len(points) // 3]
    dx = target.location["x"] + target.size["width"] / 2 - (area.location["x"] + area.size["width"] / 2)
    dy = target.location["y"] + target.size["height"] / 2 - (area.location["y"] + area.size["height"] / 2)
    ActionChains(drv).move_to_element_with_offset(area, dx, dy).click().perform()
    wait_until(lambda: query(drv).get("mode") == "per-exit", what="the clicked point's thresholds in the link")
    settle(drv)
    got = [float(t) for t in query(drv)["te"].split(",")]
    cal = TraceArrays.from_trace(load_trace(CK / "cal_trace.npz"))
    candidates = [p.thresholds[:-1] for p in sweep_applied(cal, test_arrays, "max-softmax") if p.pareto]
    assert got in candidates
    r = whatif(test_arrays, [*got, None])
    assert metric_value(drv, "Accuracy") == f"{100 * r.accuracy:.2f}%"
    assert metric_value(drv, "Mean GMACs") == f"{r.gmacs:.4f}"
    no_exception(drv)
    drv.save_screenshot(str(ARTIFACTS / "whatif-curve-click.png"))


def test_a_lasso_on_representations_opens_the_same_images_in_explore_samples(server, pair):
    from selenium.webdriver.common.action_chains import ActionChains

    drv, _ = pair
    drv.get(f"{server}/representations")
    wait_text(drv, "kNN accuracy is", timeout=180)
    settle(drv)
    _, area = chart(drv, 0)  # the left panel's drag area
    w, h = area.size["width"], area.size["height"]
    (
        ActionChains(drv)
        .move_to_element_with_offset(area, -w / 3, -h / 3)
        .click_and_hold()
        .move_by_offset(w / 3, 0)
        .move_by_offset(w / 3, 0)
        .move_by_offset(0, h / 3)
        .move_by_offset(0, h / 3)
        .move_by_offset(-w / 3, 0)
        .move_by_offset(-w / 3, 0)
        .move_by_offset(0, -h / 3)
        .move_by_offset(0, -h / 3 + 2)
        .release()
        .perform()
    )
    wait_until(lambda: "rsel" in query(drv), what="the selection in the link")
    wait_text(drv, "selected samples")
    settle(drv)
    rsel = query(drv)["rsel"]
    n = int(next(s.text for s in drv.find_elements("css selector", "h3") if "selected samples" in s.text).split()[0])
    assert n > 0
    drv.save_screenshot(str(ARTIFACTS / "representations-lasso.png"))
    click_label(drv, f"Open these {n:,} images in Explore samples")
    wait_text(drv, "images selected on the Representations page", timeout=120)
    settle(drv)
    assert urlparse(drv.current_url).path.endswith("/samples") and query(drv)["rows"] == rsel
    assert f"{n:,} of 10,000 images match" in main_text(drv)
    no_exception(drv)
    drv.save_screenshot(str(ARTIFACTS / "samples-from-lasso.png"))


def test_a_confusion_cell_opens_its_images_in_explore_samples(server, pair, test_arrays):
    from selenium.webdriver.common.action_chains import ActionChains

    from met_core.analysis.whatif import outcomes

    drv, _ = pair
    drv.get(f"{server}/whatif?cm=1")
    wait_text(drv, "Confusion matrix at these thresholds", timeout=180)
    settle(drv)
    _, area = chart(drv, "Confusion matrix")
    w, h = area.size["width"], area.size["height"]
    true, pred = 3, 5  # cat predicted as dog
    ActionChains(drv).move_to_element_with_offset(
        area, (pred + 0.5) / 10 * w - w / 2, (true + 0.5) / 10 * h - h / 2
    ).click().perform()
    wait_text(drv, "test images of class cat predicted as dog", timeout=60)
    o = outcomes(test_arrays, 0.8)
    count = int(((test_arrays.labels == true) & (o.pred == pred)).sum())
    assert query(drv)["cell"] == "cat,dog"
    settle(drv)
    click_label(drv, f"Open these {count:,} images in Explore samples")
    wait_text(drv, "Showing the confusion cell true cat, predicted dog", timeout=120)
    settle(drv)
    assert f"{count:,} of 10,000 images match" in main_text(drv) and query(drv)["scell"] == "cat,dog"
    no_exception(drv)
    drv.save_screenshot(str(ARTIFACTS / "confusion-cell-in-samples.png"))


def test_a_page_that_stops_with_a_sentence_keeps_the_view_in_the_address(server, pair):
    """Representations of a model with no second model on its test images stops with one sentence; the address
    (and so the Copy link) still names that model and its thresholds, and opens the same page elsewhere."""
    sender, recipient = pair
    sender.get(f"{server}/models?model=hymenoptera-met&t=0.7")
    wait_text(sender, "Run a model on a dataset", timeout=180)
    link = sender.find_element("css selector", '[data-testid="stSidebarNav"] a[href$="/representations"]')
    link.click()  # the sidebar: a page switch clears the address, the page writes it back
    wait_text(sender, "no second checkpoint traced on the same test images", timeout=180)
    wait_until(lambda: query(sender).get("model") == "hymenoptera-met", timeout=60, what="the model in the address")
    assert query(sender).get("t") == "0.7"
    recipient.get(sender.current_url)
    wait_text(recipient, "no second checkpoint traced on the same test images", timeout=180)
    assert query(recipient) == query(sender)


def test_fast_arrow_keys_on_the_slider_leave_slider_entry_numbers_and_link_agreeing(server, pair, test_arrays):
    """The newcomer's finding: ten arrow-key presses 0.1 s apart on the threshold slider left the exact entry, the
    link and the slider on different values. However many presses the browser delivers, once the page settles
    the slider, the entry, the numbers and the link all name the same threshold."""
    from selenium.webdriver.common.keys import Keys

    drv, _ = pair
    drv.get(f"{server}/whatif?t=0.5")
    wait_text(drv, "Accuracy versus mean GMACs", timeout=180)
    settle(drv)
    thumb = drv.find_element("css selector", '[data-testid="stSlider"] input[type="range"]')
    drv.execute_script("arguments[0].focus();", thumb)
    for _ in range(10):
        drv.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
        time.sleep(0.1)
    time.sleep(6)
    settle(drv)
    shown_t = float(
        drv.find_element("css selector", '[data-testid="stSlider"] input[type="range"]').get_attribute("value")
    )
    entry = drv.find_element("css selector", 'input[aria-label="Exact value"]').get_attribute("value")
    assert 0.5 < shown_t <= 0.6 and float(entry) == shown_t, (shown_t, entry)
    assert float(query(drv).get("t", "0.8")) == shown_t, (query(drv), shown_t)
    r = whatif(test_arrays, shown_t)
    assert metric_value(drv, "Accuracy") == f"{100 * r.accuracy:.2f}%"
    no_exception(drv)
