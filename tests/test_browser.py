"""Real browser: `streamlit run met_core/app/main.py` headless on a free localhost port, driven by Debian's Chromium.

Visits every page, moves the slider, uploads a real photo, and saves screenshots to
$MET_ARTIFACTS (default: test-artifacts/screenshots).
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from met_core.app.safe import ZWSP

from .conftest import HYMENOPTERA, ROOT
from .tools.browser import (
    CHROMIUM,
    DRIVER,
    click_nav,
    make_browser,
    metric_value,
    no_exception,
    start_server,
    wait_text,
)

ARTIFACTS = Path(os.environ.get("MET_ARTIFACTS", ROOT / "test-artifacts" / "screenshots"))
have_browser = Path(CHROMIUM).exists() and Path(DRIVER).exists()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not have_browser and not os.environ.get("CI"), reason="Debian chromium + chromium-driver not installed"
    ),
    pytest.mark.skipif(
        not (ROOT / "checkpoints" / "cifar10-met" / "test_trace.npz").is_file(), reason="no shipped checkpoints"
    ),
]


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    drv = make_browser(ARTIFACTS.parent / "chrome-profile")
    yield drv
    drv.quit()


@pytest.mark.parametrize(
    "path,text",
    [
        ("", "Try this"),
        ("how", "Model card"),
        ("whatif", "Accuracy versus mean GMACs"),
        ("samples", "images match"),
        ("journey", "Leaves at exit"),
        ("representations", "kNN accuracy is"),
        ("models", "Add a checkpoint folder"),
    ],
)
def test_every_page_renders(server, browser, path, text):
    browser.get(f"{server}/{path}")
    wait_text(browser, text, timeout=180)
    time.sleep(1.5)
    no_exception(browser)
    assert "Page not found" not in browser.find_element("tag name", "body").text  # every page has its own address
    nav = browser.find_element("css selector", '[data-testid="stSidebarNav"]').text
    assert "Threshold what-if" in nav and "Explore samples" in nav, nav  # st.navigation, not a legacy pages/ folder
    browser.save_screenshot(str(ARTIFACTS / f"{path or 'start'}.png"))


def test_slider_moves_the_numbers(server, browser):
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server}/whatif")
    wait_text(browser, "Accuracy versus mean GMACs")
    before = metric_value(browser, "Mean GMACs")
    rng = browser.find_element("css selector", '[data-testid="stSlider"] input[type="range"]')
    browser.execute_script("arguments[0].focus();", rng)  # react-aria keeps the range input visually hidden
    for _ in range(15):
        browser.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    deadline = time.time() + 30
    while metric_value(browser, "Mean GMACs") == before and time.time() < deadline:
        time.sleep(0.5)
    assert metric_value(browser, "Mean GMACs") != before
    no_exception(browser)
    browser.save_screenshot(str(ARTIFACTS / "whatif-after-slider.png"))


def test_upload_a_real_photo(server, browser):
    browser.get(f"{server}/samples")
    wait_text(browser, "images match")
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element("xpath", "//*[@role='tab' and contains(., 'Upload images')]").click()
    photo = next((HYMENOPTERA / "val" / "ants").glob("*.jpg"))
    # the tab's uploader renders after the click: wait for it instead of racing it
    WebDriverWait(browser, 60).until(lambda d: d.find_elements("css selector", 'input[type="file"]'))
    browser.find_element("css selector", 'input[type="file"]').send_keys(str(photo))
    wait_text(browser, "Real early exit on 1 image(s)", timeout=180)
    no_exception(browser)
    browser.save_screenshot(str(ARTIFACTS / "upload.png"))


def hostile_checkpoint(root: Path, port: int) -> tuple[Path, list[str]]:
    """hymenoptera-met renamed by a stranger: Markdown image and link syntax and HTML in its class names and in
    its folder name, every URL pointing at a local server that counts requests. Traces re-tied to the new hash."""
    from met_core.io.checkpoint import TEST_TRACE_FILE, VAL_TRACE_FILE, checkpoint_hash
    from met_core.io.traces import load_trace, save_trace

    names = [
        f"![ant](http://127.0.0.1:{port}/ant.png) [click me](http://127.0.0.1:{port}/link)",
        f"<img src=http://127.0.0.1:{port}/bee.png> **bees** :red[alarm] $x^2$",
    ]
    ck = root / "**bold** [folder](x)"
    shutil.copytree(ROOT / "checkpoints" / "hymenoptera-met", ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["class_names"] = names
    (ck / "config.json").write_text(json.dumps(cfg))
    sha = checkpoint_hash(ck)
    for name in (TEST_TRACE_FILE, VAL_TRACE_FILE):
        t = load_trace(ck / name)
        t.class_names, t.meta = names, {**t.meta, "checkpoint_sha256": sha}
        save_trace(ck / name, t)
    return ck, names


def test_untrusted_class_names_reach_the_browser_as_text_and_fetch_nothing(tmp_path):
    import http.server
    import threading

    hits: list[str] = []

    class Counter(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    trap = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counter)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    port = trap.server_address[1]
    ck, names = hostile_checkpoint(tmp_path / "checkpoints", port)
    proc, url = start_server({"MET_CHECKPOINTS": str(ck.parent)})
    drv = make_browser(tmp_path / "profile")
    try:
        drv.get(f"{url}/whatif")
        wait_text(drv, "Accuracy versus mean GMACs", timeout=180)
        body = drv.find_element("tag name", "body").text.replace(ZWSP, "")
        assert ck.name in body  # the folder name, literally, in the sidebar and the caption
        drv.get(f"{url}/samples")
        wait_text(drv, "images match", timeout=120)
        drv.find_element("xpath", "//*[@role='tab' and contains(., 'Upload images')]").click()
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(drv, 60).until(lambda d: d.find_elements("css selector", 'input[type="file"]'))
        photo = next((HYMENOPTERA / "val" / "bees").glob("*.jpg"))
        drv.find_element("css selector", 'input[type="file"]').send_keys(str(photo))
        wait_text(drv, "Real early exit on 1 image(s)", timeout=180)
        time.sleep(2)
        no_exception(drv)
        body = drv.find_element("tag name", "body").text.replace(ZWSP, "")  # invisible: breaks autolinks
        assert any(n in body for n in names), body[:3000]  # the predicted class, as the characters it is
        html = drv.page_source
        pointing = [
            e.get_attribute("outerHTML")[:300]
            for e in drv.find_elements("css selector", "img, a, link, script, iframe")
            if f"127.0.0.1:{port}" in (e.get_attribute("src") or "") + (e.get_attribute("href") or "")
        ]
        assert not pointing, pointing
        drv.save_screenshot(str(ARTIFACTS / "hostile-class-names.png"))
        assert "<strong>bees</strong>" not in html
    finally:
        drv.quit()
        proc.terminate()
        proc.wait(10)
        trap.shutdown()
    assert hits == [], hits  # no request left the page for the stranger's server


def test_trace_a_folder_in_the_app_then_see_its_numbers_on_the_whatif_page(server, browser, tmp_path):
    from met_core.analysis.whatif import TraceArrays, whatif
    from met_core.io.traces import load_trace

    from .conftest import CIFAR_TEST, DEFAULT_MODEL

    folder = tmp_path / "my cifar photos"
    for c in sorted(p.name for p in CIFAR_TEST.iterdir()):
        (folder / c).mkdir(parents=True)
        for f in sorted((CIFAR_TEST / c).iterdir())[:3]:
            (folder / c / f.name).symlink_to(f)
    browser.get(f"{server}/models")
    from selenium.webdriver.support.ui import WebDriverWait

    wait_text(browser, "Run a model on a dataset")
    field = WebDriverWait(browser, 60).until(lambda d: d.find_elements("css selector", 'input[aria-label^="Dataset"]'))
    field[0].send_keys(str(folder))
    browser.find_element("xpath", "//button[contains(., 'Run the trace')]").click()
    wait_text(browser, "it is listed in the table above", timeout=240)
    no_exception(browser)
    browser.save_screenshot(str(ARTIFACTS / "models-traced-a-folder.png"))
    run = next(Path(os.environ["MET_RUNS_DIR"]).glob(f"{DEFAULT_MODEL}@my_cifar_photos-*"))
    click_nav(browser, "Threshold what-if")
    wait_text(browser, "on 30 test images")
    wait_text(browser, "Accuracy versus mean GMACs")
    r = whatif(TraceArrays.from_trace(load_trace(run / "test_trace.npz")), 0.8)
    assert metric_value(browser, "Accuracy") == f"{100 * r.accuracy:.2f}%"
    assert metric_value(browser, "Mean GMACs") == f"{r.gmacs:.4f}"
    browser.save_screenshot(str(ARTIFACTS / "whatif-on-the-traced-folder.png"))


def test_the_journey_of_a_test_image_matches_the_real_early_exit(server, browser):
    from urllib.parse import quote

    from met_core.engine.inference import predict_images
    from met_core.io.traces import load_trace
    from met_core.nn.checkpoint import load_checkpoint

    from .conftest import CIFAR_TEST, DEFAULT_MODEL

    ck = ROOT / "checkpoints" / DEFAULT_MODEL
    trace = load_trace(ck / "test_trace.npz")
    conf = trace.probs().max(-1)
    # an image whose confidences are not within float16 rounding of the threshold at any exit
    i = next(i for i in range(len(conf)) if (abs(conf[i] - 0.8) > 0.02).all() and conf[i, 0] < 0.8)
    sid = str(trace.ids[i])
    p = predict_images(load_checkpoint(ck)[0], [(sid, CIFAR_TEST / sid)], 0.8, "max-softmax")[0]
    block = trace.meta["exits"][p.exit]
    browser.get(f"{server}/journey?image={quote(sid)}&step=4")  # the last step: where it leaves
    wait_text(browser, "Leaves at exit", timeout=180)
    no_exception(browser)
    body = browser.find_element("tag name", "body").text.replace(ZWSP, "")
    assert f"Leaves at exit {p.exit + 1}, after block {block}: predicts {p.class_name}" in body, body[-1500:]
    assert metric_value(browser, "Blocks run") == f"{block} of 12"
    browser.save_screenshot(str(ARTIFACTS / "journey.png"))
