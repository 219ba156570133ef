"""The built wheel, installed outside the checkout: it holds every subpackage and the app, `met --version` runs,
`met app` serves the app (its health endpoint answers), and the installed app, finding no checkpoint, says in one
sentence how to get one. The venv sees the machine's site-packages (torch, Streamlit: nothing is downloaded), never
the checkout."""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from met_core import __version__

from .conftest import ROOT

pytestmark = pytest.mark.slow
SUBPACKAGES = [
    "met_core.io",
    "met_core.analysis",
    "met_core.nn",
    "met_core.data",
    "met_core.engine",
    "met_core.app",
    "met_core.app.views",
    "met_core.cli",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A venv (with the system site-packages) holding the wheel built from a clean copy of the sources; its bin
    folder and an environment in which the checkout is not importable."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building in the checkout would leave build/ there, and stale files in later wheels
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "met_core", src / "met_core", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run = {"capture_output": True, "text": True, "cwd": tmp}
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        timeout=300,
        **run,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp / "dist").glob("met_explorer-*.whl"))
    venv = tmp / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], timeout=300, **run)
    assert made.returncode == 0, made.stderr[-2000:]
    bin_ = venv / ("Scripts" if os.name == "nt" else "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MET_CHECKPOINTS", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    inst = subprocess.run(
        [
            str(bin_ / "python"),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--force-reinstall",
            "-q",
            "--no-index",
            str(wheel),
        ],
        timeout=300,
        env=env,
        **run,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    return bin_, env


def test_the_wheel_holds_every_subpackage_and_runs_outside_the_checkout(installed, tmp_path):
    bin_, env = installed
    version = subprocess.run(
        [str(bin_ / "met"), "--version"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert version.returncode == 0 and version.stdout.strip() == f"met_core {__version__}", version.stderr[-2000:]
    code = (
        "import importlib, json, sys, met_core; from met_core.io.paths import checkout_root; "
        f"[importlib.import_module(m) for m in {SUBPACKAGES!r}]; "
        "print(json.dumps({'file': met_core.__file__, 'path': sys.path, 'checkout': str(checkout_root())}))"
    )
    proc = subprocess.run(
        [str(bin_ / "python"), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).resolve().is_relative_to(bin_.parent.resolve()), seen["file"]  # the venv's copy
    assert str(ROOT) not in seen["path"] and seen["checkout"] == "None"


def test_met_app_serves_the_installed_app(installed, tmp_path):
    bin_, env = installed
    folder = tmp_path / "my-checkpoints"
    folder.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            str(bin_ / "met"),
            "app",
            "--checkpoints",
            str(folder),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        answer, deadline = None, time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        assert answer == b"ok", f"exit {proc.poll()}"
    finally:
        proc.send_signal(signal.SIGTERM)  # `met app` became the Streamlit server (exec): this stops it
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"checkpoints from {folder.resolve()}" in out, out[-2000:]


def test_the_installed_app_without_checkpoints_says_how_to_get_one(installed, tmp_path):
    """AppTest on the installed main.py, with an empty checkpoint folder: one sentence, no traceback."""
    bin_, env = installed
    empty, runs = tmp_path / "none", tmp_path / "runs"
    empty.mkdir()
    runs.mkdir()
    code = (
        "import json, pathlib, met_core.app; from streamlit.testing.v1 import AppTest; "
        "at = AppTest.from_file(str(pathlib.Path(met_core.app.__file__).parent / 'main.py'), default_timeout=120); "
        "at.run(); print(json.dumps({'errors': [e.value for e in at.error], "
        "'exceptions': [e.message for e in at.exception]}))"
    )
    proc = subprocess.run(
        [str(bin_ / "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "MET_CHECKPOINTS": str(empty), "MET_RUNS_DIR": str(runs)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not seen["exceptions"], seen
    assert len(seen["errors"]) == 1, seen
    message = html.unescape(seen["errors"][0])  # the app encodes text for Markdown (met_core/app/safe.py)
    assert "No checkpoints found under" in message and "met train" in message and "met app --checkpoints" in message
    assert "Traceback" not in message and message.count(". ") == 0, message
