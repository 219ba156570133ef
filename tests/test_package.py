"""The package: the `met` command, registries that carry their metadata, the exit-rule file, the model card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from met_core import __version__
from met_core.analysis.calibration import calibrate_budget
from met_core.analysis.exit_rule import ExitRule, read_exit_rule
from met_core.analysis.policies import CALIBRATABLE, POLICIES
from met_core.analysis.summary import ModelSummary
from met_core.analysis.whatif import TraceArrays, whatif
from met_core.errors import METError
from met_core.nn.backbones import BACKBONES, backbone_entry

from .conftest import CIFAR_TEST, HYMENOPTERA, ROOT, run_cli, train_args

MET = Path(sys.executable).parent / "met"  # the console script `pip install` puts beside the interpreter


def test_met_console_script_is_the_cli():
    assert MET.is_file(), "pip install -r requirements.txt (or pip install -e .) installs the met command"
    version = subprocess.run([str(MET), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.strip() == f"met_core {__version__}"
    helps = [
        subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout
        for cmd in ([str(MET), "whatif", "--help"], [sys.executable, "-m", "met_core", "whatif", "--help"])
    ]
    assert "--rule FILE" in helps[0] and helps[0].split("\n", 1)[1] == helps[1].split("\n", 1)[1]


@pytest.fixture(scope="module")
def real_arrays(tiny_checkpoint, tmp_path_factory) -> tuple[Path, TraceArrays]:
    out = tmp_path_factory.mktemp("trace") / "t.npz"
    run_cli(
        "trace",
        "--checkpoint",
        str(tiny_checkpoint),
        "--dataset",
        str(CIFAR_TEST),
        "--out",
        str(out),
        "--limit",
        "200",
        "--features",
        "0",
        "--quiet",
        "--workers",
        "0",
    )
    from met_core.io.traces import load_trace

    return out, TraceArrays.from_trace(load_trace(out))


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_carries_what_its_callers_need(name, real_arrays):
    pol = POLICIES[name]
    lo, hi = pol.ui_range(4)
    assert lo <= pol.default_threshold <= hi and 0 < pol.ui_step <= hi - lo
    _, arrays = real_arrays
    ends = [whatif(arrays, t, name).exit_fractions for t in (lo, hi)]
    assert {ends[0][-1], ends[1][-1]} >= {1.0} or pol.counts_exits  # one end sends all to the last exit
    if pol.calibratable:
        assert calibrate_budget(arrays, 0.9, name).gmacs <= 0.9 * arrays.gmacs[-1] + 1e-9
    else:
        assert name not in CALIBRATABLE
        with pytest.raises(METError, match="continuous score"):
            calibrate_budget(arrays, 0.9, name)


@pytest.mark.parametrize("name", [*BACKBONES, "vit_base_patch16_224.augreg_in21k", "deit_small_patch16_224"])
def test_backbone_entries_know_their_preprocessing(name):
    from timm.models import get_pretrained_cfg

    entry = backbone_entry(name)
    want = get_pretrained_cfg(entry.arch)
    assert entry.preprocessing.mean == tuple(want.mean) and entry.preprocessing.std == tuple(want.std)
    assert entry.preprocessing.interpolation == want.interpolation


def test_train_records_the_backbones_own_preprocessing(tmp_path):
    out = tmp_path / "vit"
    run_cli(
        *train_args(HYMENOPTERA / "val", 4, 32, "--backbone", "vit_base_patch16_224.augreg_in21k", "--weights", "none"),
        *("--exits", "6,12", "--batch-size", "4", "--out", str(out), "--workers", "0"),
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["mean"] == [0.5, 0.5, 0.5] == cfg["preprocessing"]["mean"]  # timm's, not ImageNet's
    assert cfg["preprocessing"]["interpolation"] == "bicubic" and cfg["runtime"]["device"] == "cpu"


def test_exit_rule_round_trip_and_cli(real_arrays, tmp_path):
    trace_path, arrays = real_arrays
    from met_core.io.traces import load_trace

    sha = load_trace(trace_path).meta["checkpoint_sha256"]
    rule = ExitRule("entropy", [0.2, 0.4, 0.6, None], "cifar-tiny", sha)
    f = tmp_path / "rule.json"
    f.write_text(rule.to_json())
    assert read_exit_rule(f) == rule
    via_rule = json.loads(run_cli("whatif", "--trace", str(trace_path), "--rule", str(f), "--json").stdout)
    assert via_rule == whatif(arrays, [0.2, 0.4, 0.6], "entropy").to_dict()
    f.write_text(ExitRule("entropy", [0.2, None], "other", "0" * 64).to_json())
    proc = run_cli("whatif", "--trace", str(trace_path), "--rule", str(f), check=False)
    assert proc.returncode == 2 and "exported for another checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    for bad in ('{"format": "met-exit-rule/1", "policy": "entropy", "thresholds": [NaN]}', "[1, 2]", "{" * 5000):
        f.write_text(bad)
        with pytest.raises(METError):
            read_exit_rule(f)


def test_info_prints_the_model_card_the_app_shows(tiny_checkpoint):
    proc = run_cli("info", "--checkpoint", str(tiny_checkpoint))
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    card = ModelSummary.build(tiny_checkpoint.name, cfg, metrics).card()
    assert proc.stdout.strip().splitlines() == [f"{k}: {v}" for k, v in card]
    assert any(k == "GMACs per exit" and "0.095" in v for k, v in card)


def test_whatif_result_is_typed_and_serialises_what_was_computed(real_arrays):
    _, arrays = real_arrays
    r = whatif(arrays, 0.7, detail=True)
    d = r.to_dict()
    assert d["accuracy"] == r.accuracy and np.asarray(d["confusion"]).sum() == len(arrays.labels)
    assert "confusion" not in whatif(arrays, 0.7).to_dict()
    assert r.early_share == pytest.approx(1 - r.exit_fractions[-1])
