import json
import re

import pytest

from met_core.cli import SUBCOMMANDS

from .conftest import CIFAR_TEST, run_cli, train_args


@pytest.mark.parametrize("sub", [name for name, *_ in SUBCOMMANDS])
def test_every_subcommand_has_help(sub):
    proc = run_cli(sub, "--help")
    assert "usage:" in proc.stdout and ("--checkpoints DIR" if sub == "app" else "--json") in proc.stdout


def test_info_json(tiny_checkpoint):
    info = json.loads(run_cli("info", "--checkpoint", str(tiny_checkpoint), "--json").stdout)
    assert len(info["exit_gmacs"]) == 4 and info["exit_gmacs"] == sorted(info["exit_gmacs"])
    assert "1 multiply-add = 1" in info["mac_note"]
    assert info["parameters"]["trainable"] < 0.02 * info["parameters"]["frozen"]
    assert info["config"]["model"]["backbone"] == "dinov2_s14_imgfocus"
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())  # the split's ids are counted, not listed
    assert info["config"]["data"]["train_ids"] == f"{len(cfg['data']['train_ids'])} ids"


def test_trace_json_on_real_test_images(tiny_checkpoint, tmp_path):
    out = tmp_path / "test.npz"
    res = json.loads(
        run_cli(
            "trace",
            "--checkpoint",
            str(tiny_checkpoint),
            "--dataset",
            str(CIFAR_TEST),
            "--out",
            str(out),
            "--limit",
            "30",
            "--features",
            "10",
            "--json",
            "--quiet",
        ).stdout
    )
    assert res["samples"] == 30 and res["features"] == 10 and len(res["exit_accuracy"]) == 4
    from met_core.io.traces import load_trace

    t = load_trace(out)
    assert len(set(t.labels.tolist())) > 3  # a seeded random subset, not the first class folder
    assert t.meta["split"] == "test" and len(t.meta["checkpoint_sha256"]) == 64


def test_train_prints_trainable_parameter_count(tiny_checkpoint):
    # the fixture trained through the CLI; re-run the cheapest train to read its stderr
    proc = run_cli(*train_args(CIFAR_TEST, 2, 28, "--out", str(tiny_checkpoint.parent / "again")))
    assert re.search(r"trainable parameters: 172,296 \(0\.80% of the 21,5\d\d,\d{3} frozen", proc.stderr)


@pytest.mark.parametrize(
    "args,match",
    [
        (["info", "--checkpoint", "/no/such/dir"], "does not exist"),
        (["trace", "--checkpoint", ".", "--out", "x.npz"], "config.json is missing"),
        (["train", "--dataset", "/no/such/data", "--out", "/tmp/x"], "neither an existing folder"),
        (["train", "--dataset", str(CIFAR_TEST), "--out", "/tmp/x", "--exits", "3,6"], "last exit"),
        (["whatif", "--trace", "t.npz", "--thresholds", "0.5,,0.7"], "an empty value between commas in '0.5,,0.7'"),
        (["trace", "--checkpoint", ".", "--split", "evil", "--out", "x.npz"], "invalid choice: 'evil'"),
        (["train", "--dataset", str(CIFAR_TEST), "--out", "/tmp/x", "--precision", "fp16"], "emulated on the CPU"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, match):
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "device,match",
    [
        ("cuda", "torch sees no CUDA device"),
        ("cuda:7", "torch sees no CUDA"),
        ("tpu", "--device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_asking_for_a_device_that_is_not_there_is_one_sentence(device, match, tiny_checkpoint, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_cli(
        "trace",
        "--checkpoint",
        str(tiny_checkpoint),
        "--dataset",
        str(CIFAR_TEST),
        "--out",
        str(tmp_path / "t.npz"),
        "--device",
        device,
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and match in lines[0], proc.stderr[-500:]
    assert not (tmp_path / "t.npz").exists()


def test_met_app_passes_streamlits_flags_on_and_other_subcommands_refuse_unknown_ones():
    from met_core.cli import APP_MAIN, app_command, build_parser

    args, extra = build_parser().parse_known_args(
        ["app", "--server.port", "8502", "--checkpoints", "ck", "--browser.gatherUsageStats=true"]
    )
    assert args.checkpoints == "ck" and extra == ["--server.port", "8502", "--browser.gatherUsageStats=true"]
    cmd = app_command(extra)
    assert cmd[1:5] == ["-m", "streamlit", "run", str(APP_MAIN)] and APP_MAIN.is_file()
    assert cmd[5:] == ["--client.toolbarMode", "minimal", *extra]  # the project's settings unless given
    proc = run_cli("whatif", "--trace", "t.npz", "--server.port", "8502", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: unrecognized arguments: --server.port 8502."
    proc = run_cli("app", "--checkpoints", "no/such/folder", check=False)
    assert proc.returncode == 2 and "is not a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_every_out_is_checked_before_any_work(tiny_checkpoint, tmp_path):
    """A trace written over a checkpoint's own weights destroyed the model; a folder or an unwritable place given as
    --out failed with a traceback after the work (issue-style inputs from a newcomer's session)."""
    import shutil

    ck = shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    (tmp_path / "a-file").write_text("x")
    trace = ["trace", "--checkpoint", str(ck), "--split", "val", "--out"]
    cases = [
        (trace + [str(ck / "model.safetensors")], "a trace is written as a .npz file"),
        (trace + [str(tmp_path)], "is a folder; a trace is one file"),
        (trace + [str(tmp_path / "a-file" / "t.npz")], "cannot write in"),
        (["profile", "--checkpoint", str(ck), "--out", str(ck / "config.json")], "would overwrite the checkpoint"),
        (["export", "--checkpoint", str(ck), "--out", str(ck), "--threshold", "0.8"], "an export needs its own folder"),
        (train_args(CIFAR_TEST, 2, 28, "--out", ck), "already holds a checkpoint; pass --overwrite"),
        (train_args(CIFAR_TEST, 2, 28, "--out", tmp_path / "a-file"), "is a file; a checkpoint is a folder"),
    ]
    for args, match in cases:
        proc = run_cli(*args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and match in lines[0], (args, proc.stderr[-800:])
        assert "trainable parameters" not in proc.stderr  # refused before training started
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before  # the checkpoint is untouched


def test_train_overwrite_removes_what_the_old_weights_made_only_when_they_change(tmp_path):
    out = tmp_path / "ck"
    args = train_args(CIFAR_TEST, 2, 28, "--batch-size", "10", "--out", out)
    run_cli(*args)
    run_cli("trace", "--checkpoint", str(out), "--split", "val", "--features", "0", "--out", str(out / "val_trace.npz"))
    again = run_cli(*args, "--overwrite")  # seeded: the same weights, so their trace still holds
    assert (out / "val_trace.npz").is_file() and "removed" not in again.stderr
    other = run_cli(*args, "--overwrite", "--seed", "1")
    assert not (out / "val_trace.npz").exists()
    assert f"note: removed val_trace.npz from {out} (made for the weights this run replaces)" in other.stderr


def test_whatif_text_shows_the_intervals_and_detail_it_was_asked_for():
    """--intervals and --detail printed the same four lines as without them (only --json had them)."""
    from .conftest import DEFAULT_MODEL, ROOT

    args = ["whatif", "--trace", str(ROOT / "checkpoints" / DEFAULT_MODEL / "test_trace.npz"), "--threshold", "0.8"]
    res = json.loads(run_cli(*args, "--intervals", "--detail", "--json").stdout)
    text = run_cli(*args, "--intervals", "--detail").stdout.splitlines()
    lo, hi = res["intervals"]["accuracy"]
    assert text[4].startswith(f"intervals: accuracy {100 * lo:.1f}-{100 * hi:.1f}%,")
    assert text[7] == res["intervals"]["meaning"]
    assert text[8].startswith(f"accuracy per class: airplane {100 * res['per_class_accuracy'][0]:.1f}%, ")
    assert text[10].split() == ["airplane", *map(str, res["confusion"][0])]
    assert len(run_cli(*args).stdout.splitlines()) == 4


@pytest.mark.parametrize("sub", ["predict", "trace", "profile", "bench-exit"])
def test_precision_with_the_onnx_engine_is_one_sentence_not_ignored(sub, tiny_checkpoint, tmp_path):
    """--precision bf16 was silently ignored by --engine onnx (the graphs run in fp32)."""
    extra = {
        "predict": [str(CIFAR_TEST / "cat" / "0001.jpg")],
        "trace": ["--out", str(tmp_path / "t.npz")],
        "profile": [],
        "bench-exit": ["--dataset", str(CIFAR_TEST)],
    }[sub]
    args = [sub, "--checkpoint", str(tiny_checkpoint), "--engine", "onnx", "--precision", "bf16", *extra]
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: --precision bf16 applies to the PyTorch engine; the ONNX export runs in fp32 (or int8 graphs from met "
        "export --quantize int8): drop --precision, or use --engine pytorch."
    ]
