"""Launcher variables left in a shell (issue 22, item 4): every inconsistent or peerless distributed
environment is one sentence within the rendezvous timeout (MET_RENDEZVOUS_TIMEOUT), checked before any
rendezvous; a real two-process job still meets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from met_core.engine.distributed import DistContext, init_distributed, launcher_context
from met_core.errors import METError

from .conftest import ROOT
from .test_bounds import bounded, refused

LAUNCHER = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RESTART_COUNT",
)
TIMEOUT_S = 1.0  # the rendezvous timeout these tests run with
REACHED: list[bool] = []  # property examples that got as far as the rendezvous


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_issue_example_a_leftover_world_size_without_peers_is_one_sentence_within_the_timeout(tmp_path):
    env = {
        "WORLD_SIZE": "2",
        "RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "MET_RENDEZVOUS_TIMEOUT": "2",
    }
    proc = bounded(
        "trace",
        "--checkpoint",
        str(ROOT / "checkpoints" / "hymenoptera-met"),
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "t.npz"),
        env=env,
    )
    line = refused(
        proc,
        "WORLD_SIZE=2",
        "not all 2 processes met",
        "within 2 s",
        "MET_RENDEZVOUS_TIMEOUT",
        "torchrun",
        "unset WORLD_SIZE",
    )
    assert not (tmp_path / "t.npz").exists(), line


@pytest.mark.parametrize(
    "env,words",
    [
        ({"RANK": "3"}, "RANK=3 is set but WORLD_SIZE is unset"),
        ({"WORLD_SIZE": "1", "LOCAL_RANK": "1"}, "LOCAL_RANK=1 is set but WORLD_SIZE is 1"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK is unset"),
        (
            {"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
            "RANK=2 must be between",
        ),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500"}, "MASTER_ADDR is unset"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT is unset"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
        (
            {"WORLD_SIZE": "4", "RANK": "1", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            "LOCAL_WORLD_SIZE=8 must be between 1 and 4",
        ),
    ],
)
def test_inconsistent_launcher_variables_are_refused_before_any_rendezvous(env, words, monkeypatch):
    for name in LAUNCHER:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(METError, match=words.replace("(", r"\(")) as e:
        launcher_context()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon", "1e9"])
def test_a_bad_rendezvous_timeout_is_one_sentence(value, monkeypatch):
    from met_core.engine.distributed import rendezvous_timeout

    monkeypatch.setenv("MET_RENDEZVOUS_TIMEOUT", value)
    with pytest.raises(METError, match="MET_RENDEZVOUS_TIMEOUT"):
        rendezvous_timeout()


VALUES = {
    "WORLD_SIZE": st.sampled_from(["1", "2", "3", "0", "-2", "x", "", " 2"]),
    "RANK": st.sampled_from(["0", "1", "2", "-1", "r"]),
    "LOCAL_RANK": st.sampled_from(["0", "1", "3", "-1", ""]),
    "LOCAL_WORLD_SIZE": st.sampled_from(["1", "2", "4", "0"]),
    "GROUP_RANK": st.sampled_from(["0", "1"]),
    "MASTER_ADDR": st.sampled_from(["127.0.0.1", "localhost", "", "nonexistent.invalid", "::1"]),
    "MASTER_PORT": st.sampled_from(["free", "0", "65536", "http", "-5"]),
    "TORCHELASTIC_RUN_ID": st.sampled_from(["none", "leftover-job"]),
    "TORCHELASTIC_USE_AGENT_STORE": st.sampled_from(["True", "False"]),
    "TORCHELASTIC_RESTART_COUNT": st.sampled_from(["0", "3"]),
}


# a complete multi-process environment (the issue's example and its relatives), which reaches the rendezvous
COMPLETE = {
    "WORLD_SIZE": st.sampled_from(["2", "3"]),
    "RANK": st.sampled_from(["0", "1"]),
    "MASTER_ADDR": st.sampled_from(["127.0.0.1", "localhost", "nonexistent.invalid"]),
    "MASTER_PORT": st.just("free"),
}
EXTRA = {k: v for k, v in VALUES.items() if k.startswith(("TORCHELASTIC", "LOCAL", "GROUP"))}


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.fixed_dictionaries({}, optional=VALUES), st.fixed_dictionaries(COMPLETE, optional=EXTRA)))
def test_any_subset_of_launcher_variables_is_answered_within_the_timeout(env):
    """No peer ever comes: the answer is a single process or one sentence, within the timeout (plus the
    store's connection retries), never a hang. Half the examples are complete environments that reach the
    rendezvous. Run in a thread so that a hang fails the test instead of freezing the suite."""
    saved = {name: os.environ.pop(name, None) for name in (*LAUNCHER, "MET_RENDEZVOUS_TIMEOUT")}
    os.environ.update(
        {k: (str(free_port()) if v == "free" else v) for k, v in env.items()}, MET_RENDEZVOUS_TIMEOUT=str(TIMEOUT_S)
    )
    result: list = []

    def attempt() -> None:
        try:
            result.append(init_distributed("cpu"))
        except METError as e:
            result.append(e)
        except BaseException as e:  # anything else is a failure, reported below
            result.append(e)

    try:
        t0 = time.monotonic()
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(60 * TIMEOUT_S)  # a safety net only; the bound asserted is below
        took = time.monotonic() - t0
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    assert result, f"still waiting after {took:.0f} s with {env}"
    got = result[0]
    if isinstance(got, METError):
        assert "\n" not in str(got) and str(got).endswith("."), str(got)
        REACHED.append("processes met" in str(got))
    else:
        assert got == DistContext(), (env, got)  # nobody else is there: only a single process may go on
    assert took < 4 * TIMEOUT_S + 10, (env, took)  # the timeout, the store's connection retries, a busy machine


def test_the_property_examples_reached_the_rendezvous():
    if not REACHED:
        pytest.skip("the property test did not run in this session")
    assert sum(REACHED) >= 5, REACHED


SCRIPT = """
import torch
from met_core.engine.distributed import init_distributed, shutdown, sum_across
ctx = init_distributed("cpu")
print(ctx.rank, ctx.world_size, int(sum_across(torch.tensor([ctx.rank + 1]), ctx)))
shutdown(ctx)
"""


def test_two_processes_still_meet_when_one_starts_late():
    port = str(free_port())
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "MET_RENDEZVOUS_TIMEOUT": "120",
        "OMP_NUM_THREADS": "1",
    }
    late = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        env={**base, "RANK": "1", "LOCAL_RANK": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)  # rank 1 waits for rank 0's store
    first = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**base, "RANK": "0", "LOCAL_RANK": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out, err = late.communicate(timeout=600)
    assert first.returncode == 0 and late.returncode == 0, (first.stderr[-1500:], err[-1500:])
    assert first.stdout.split() == ["0", "2", "3"] and out.split() == ["1", "2", "3"]
