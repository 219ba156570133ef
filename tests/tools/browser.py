"""A real browser on the app: `streamlit run met_core/app/main.py` headless on a free port, Debian's Chromium through
Selenium. Shared by tests/test_browser.py and bench/app_speed.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, DRIVER = (
    shutil.which("chromium") or "/usr/bin/chromium",
    shutil.which("chromedriver") or "/usr/bin/chromedriver",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict | None = None, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`streamlit run met_core/app/main.py` on `port` (default: a free one); returns (process, url) once it answers."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "met_core" / "app" / "main.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("streamlit did not start within 60 s")
    warm = urllib.request.urlopen(url, timeout=30).read()  # first page load registers the pages
    assert warm
    return proc, url


def make_browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1500,1100",
        "--disable-dev-shm-usage",
    ):
        opts.add_argument(a)
    opts.add_argument(f"--user-data-dir={profile}")
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(120)
    return drv


def wait_text(drv, text: str, timeout: float = 90) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, timeout, poll_frequency=0.5).until(lambda d: text in d.find_element("tag name", "body").text)


def click_nav(drv, title: str) -> None:
    """Go to another page as a person does (the sidebar link), which keeps the session."""
    drv.find_element("xpath", f"//*[@data-testid='stSidebarNav']//a[contains(., \"{title}\")]").click()


def no_exception(drv) -> None:
    assert not drv.find_elements("css selector", '[data-testid="stException"]'), drv.find_element(
        "tag name", "body"
    ).text[:2000]


def metric_value(drv, label: str) -> str:
    for m in drv.find_elements("css selector", '[data-testid="stMetric"]'):
        if m.text.startswith(label):
            return m.find_element("css selector", '[data-testid="stMetricValue"]').text
    raise AssertionError(f"no metric {label}")


def wait_until(predicate, timeout: float = 60, what: str = "the page to change") -> None:
    """Poll `predicate()` until it is true (a bound on a hang, not a speed goal)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def main_text(drv) -> str:
    """What the page's main area shows as text (widgets' values, metrics, captions, chart labels)."""
    return drv.find_element("css selector", '[data-testid="stMainBlockContainer"]').text
