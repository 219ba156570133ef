"""Early exit outside PyTorch: per-stage ONNX graphs and the onnxruntime runner give PyTorch's answers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from met_core.config import METConfig, config_from_dict
from met_core.data.datasets import decode_all, open_dataset, transform_for
from met_core.engine.export import OnnxEarlyExit, config_gmacs, export_onnx, open_export
from met_core.engine.inference import early_exit
from met_core.errors import METError
from met_core.io.checkpoint import checkpoint_hash, read_config
from met_core.nn.checkpoint import load_checkpoint
from met_core.nn.model import METModel

from .conftest import CIFAR_TEST, run_cli, tiny_vit

THRESHOLD = 0.25  # the tiny checkpoint is barely trained: a low threshold lets images leave at every exit


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "onnx"
    info = json.loads(
        run_cli(
            "export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--threshold", str(THRESHOLD), "--json"
        ).stdout
    )
    assert info["stages"] == [f"stage_{k}.onnx" for k in range(1, 5)]
    return out


@pytest.fixture(scope="module")
def images(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    ds = open_dataset(str(CIFAR_TEST))
    ds = ds.subset(np.random.default_rng(0).choice(len(ds), 64, replace=False))
    ds.transform = transform_for(model.cfg)
    return model, decode_all(ds, "decode", progress=False)[0]


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_runner_gives_pytorchs_classes_exits_and_probabilities(batch, exported, images, tiny_checkpoint):
    model, x = images
    runner = OnnxEarlyExit(exported)
    assert runner.manifest.checkpoint_sha256 == checkpoint_hash(tiny_checkpoint)
    ref = early_exit(model, x, THRESHOLD, batch_size=batch)
    got = runner(x.numpy(), batch_size=batch)
    assert (got.exits == ref.exits).all() and (got.classes == ref.classes).all()
    assert len(set(ref.exits.tolist())) > 1  # images leave at more than one exit: compaction is exercised
    np.testing.assert_allclose(got.probs, ref.probs, atol=1e-4, equal_nan=True)


def test_predict_and_bench_exit_run_on_the_onnx_engine(exported, tiny_checkpoint):
    photos = [str(next((CIFAR_TEST / c).glob("*.jpg"))) for c in ("cat", "ship", "frog")]
    common = ["predict", "--checkpoint", str(tiny_checkpoint), *photos, "--threshold", str(THRESHOLD), "--json"]
    a = json.loads(run_cli(*common).stdout)
    b = json.loads(run_cli(*common, "--engine", "onnx", "--onnx", str(exported)).stdout)
    assert [(r["class"], r["exit"]) for r in a] == [(r["class"], r["exit"]) for r in b]
    rows = json.loads(
        run_cli(
            "bench-exit",
            "--checkpoint",
            str(tiny_checkpoint),
            "--dataset",
            str(CIFAR_TEST),
            "--limit",
            "32",
            "--batch",
            "8",
            "--repeats",
            "1",
            "--threshold",
            str(THRESHOLD),
            "--engine",
            "onnx",
            "--onnx",
            str(exported),
            "--json",
            "--quiet",
        ).stdout
    )
    assert rows[0]["measured_speedup"] > 0 and rows[0]["batch_size"] == 8


def test_export_refuses_what_cannot_be_run_stage_by_stage_and_graphs_outside_the_folder(exported, tmp_path):
    model = METModel(
        tiny_vit(depth=4), METConfig(img_size=32, exits=[2, 4], num_classes=3, diagonal_mode="per-exit-path")
    )
    with pytest.raises(METError, match="cannot be exported stage by stage"):
        export_onnx(model, tmp_path / "x", "max-softmax", 0.5, "", [0.1, 0.2])
    manifest = json.loads((exported / "exits.json").read_text())
    manifest["stages"][0] = "../" * 30 + "etc/passwd"
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in exported.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "exits.json").write_text(json.dumps(manifest))
    with pytest.raises(METError, match="outside"):
        OnnxEarlyExit(bad)


def test_onnx_engine_has_its_own_latency_profile_used_by_bench_exit(exported, tiny_checkpoint):
    from met_core.analysis.latency import read_profile

    run_cli(
        "profile",
        "--checkpoint",
        str(tiny_checkpoint),
        "--engine",
        "onnx",
        "--onnx",
        str(exported),
        "--batch",
        "1,4",
        "--repeats",
        "2",
        "--quiet",
    )
    prof = read_profile(exported / "latency.json", 4)  # beside the graphs, not the checkpoint's PyTorch profile
    assert prof.engine == "onnx" and prof.batch_sizes == [1, 4] and prof.stem_ms == [0.0, 0.0]
    fresh = int(
        subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )  # the CLI's own default
    assert prof.torch_version.startswith("onnxruntime") and prof.threads == fresh
    assert all(t > 0 for t in sum(prof.stage_ms, []) + prof.compact_ms + prof.full_pass_ms)
    for j, full in enumerate(prof.full_pass_ms):  # the pieces sum to one measured whole pass
        assert sum(r[j] for r in prof.stage_ms + prof.head_ms) == pytest.approx(full, rel=1e-6)
    rows = json.loads(
        run_cli(
            "bench-exit",
            "--checkpoint",
            str(tiny_checkpoint),
            "--dataset",
            str(CIFAR_TEST),
            "--limit",
            "8",
            "--batch",
            "4",
            "--repeats",
            "1",
            "--threshold",
            str(THRESHOLD),
            "--engine",
            "onnx",
            "--onnx",
            str(exported),
            "--json",
            "--quiet",
        ).stdout
    )
    assert rows[0]["profile"]["ms_per_image"] > 0


def test_onnx_sessions_use_the_given_threads_all_graph_optimisations_and_sleeping_threads():
    import onnxruntime as ort

    from met_core.engine.export import session_options

    so = session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


INT8_AGREEMENT_FLOOR = 0.8  # per exit, int8 class == fp32 class; the tiny checkpoint is barely trained (close logits):
# measured 0.84-0.95 on these 64 images


def test_int8_export_agrees_with_fp32_at_every_exit_above_the_floor(exported, images, tiny_checkpoint, tmp_path):
    info = json.loads(
        run_cli(
            "export",
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / "int8"),
            "--threshold",
            str(THRESHOLD),
            "--quantize",
            "int8",
            "--json",
        ).stdout
    )
    assert info["quantization"] == "int8"
    assert sum(f.stat().st_size for f in (tmp_path / "int8").glob("*.onnx")) < sum(
        f.stat().st_size for f in exported.glob("*.onnx")
    )
    # the quantization bench/int8.py chose on held-out images: int8 matrix products with one weight scale per
    # output channel (dynamic: no activation scales stored)
    graph = onnx.load(str(tmp_path / "int8" / "stage_1.onnx")).graph
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) > 0
    scales = [i for i in graph.initializer if i.name.endswith("_scale")]
    assert scales and all(len(i.dims) == 1 and i.dims[0] > 1 for i in scales)
    _, x = images
    never = [2.0, 2.0, 2.0, None]  # every image to the last exit: every exit's probabilities
    fp32 = OnnxEarlyExit(exported)(x.numpy(), never).probs.argmax(-1)
    int8 = OnnxEarlyExit(tmp_path / "int8")(x.numpy(), never).probs.argmax(-1)
    agreement = (fp32 == int8).mean(0)
    print("int8 / fp32 agreement per exit:", agreement)
    assert (agreement >= INT8_AGREEMENT_FLOOR).all()
    # the what-if recomputed from the int8 exits: a trace made by the int8 engine
    out = tmp_path / "int8_trace.npz"
    info = json.loads(
        run_cli(
            "trace",
            "--checkpoint",
            str(tiny_checkpoint),
            "--engine",
            "onnx",
            "--onnx",
            str(tmp_path / "int8"),
            "--dataset",
            str(CIFAR_TEST),
            "--limit",
            "32",
            "--out",
            str(out),
            "--json",
            "--quiet",
        ).stdout
    )
    assert info["samples"] == 32 and len(info["exit_accuracy"]) == 4 and info["features"] == 0
    w = json.loads(run_cli("whatif", "--trace", str(out), "--threshold", str(THRESHOLD), "--json").stdout)
    assert 0 <= w["accuracy"] <= 1 and sum(w["exit_fractions"]) == pytest.approx(1)


# --- a damaged or edited export folder: one sentence before any image is run, from the library and from the CLI ---


def copy_export(src: Path, dest: Path) -> Path:
    """An export folder `dest` like `src`: its graphs hard-linked (a damage unlinks a graph before writing it, so
    `src` is never touched), exits.json copied."""
    dest.mkdir()
    for f in src.iterdir():
        if f.suffix == ".onnx":
            os.link(f, dest / f.name)
        else:
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


def replace_graph(folder: Path, name: str, data: bytes) -> None:
    (folder / name).unlink()
    (folder / name).write_bytes(data)


def swap_graphs(folder: Path, a: str, b: str) -> None:
    (folder / a).rename(folder / "tmp.onnx")
    (folder / b).rename(folder / a)
    (folder / "tmp.onnx").rename(folder / b)


def edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "exits.json").read_text())
    edit(m)
    (folder / "exits.json").write_text(json.dumps(m))


REEXPORT = re.escape(": re-export with met export.")
DAMAGES = {  # name: (what is done to a copy of a real export, the sentence that must come back)
    "stage truncated": (
        lambda d: replace_graph(d, "stage_3.onnx", (d / "stage_3.onnx").read_bytes()[:100_000]),
        r"stage_3\.onnx is damaged or not an ONNX graph \(\w+\)" + REEXPORT,
    ),
    "stage random bytes": (
        lambda d: replace_graph(d, "stage_2.onnx", np.random.default_rng(0).bytes(100_000)),
        r"stage_2\.onnx is damaged or not an ONNX graph \(\w+\)" + REEXPORT,
    ),
    "stages 1 and 2 swapped": (
        lambda d: swap_graphs(d, "stage_1.onnx", "stage_2.onnx"),
        r"stage_1\.onnx takes \(batch, \d+, \d+\), not images \(batch, 3, H, W\), so it cannot be the first stage: "
        r"the stage graphs are out of order or not of one export; re-export with met export\.",
    ),
    "class names cut to 3": (
        lambda d: edit_manifest(d, lambda m: m.update(class_names=m["class_names"][:3])),
        r"exits\.json names 3 classes but \S+stage_1\.onnx returns 10 logits per image" + REEXPORT,
    ),
    "img_size 224": (
        lambda d: edit_manifest(d, lambda m: m.update(img_size=224)),
        r"exits\.json says img_size is 224 but \S+stage_1\.onnx takes 56x56 images" + REEXPORT,
    ),
    "gmacs decreasing": (
        lambda d: edit_manifest(d, lambda m: m.update(gmacs=[5, 4, 3, 2])),
        r"exits\.json has GMACs \[5, 4, 3, 2\], but they must be positive and non-decreasing over the exits; "
        r"export the checkpoint again\.",
    ),
    "gmacs doubled": (
        lambda d: edit_manifest(d, lambda m: m.update(gmacs=[2 * g for g in m["gmacs"]])),
        r"exits\.json says gmacs is \[[^]]+\] but the checkpoint \S+ says \[[^]]+\]" + REEXPORT,
    ),
    "preprocessing mean": (
        lambda d: edit_manifest(d, lambda m: m["preprocessing"].update(mean=[0.5, 0.5, 0.5])),
        r"exits\.json says preprocessing mean is \[0\.5, 0\.5, 0\.5\] but the checkpoint \S+ says "
        r"\[0\.485, 0\.456, 0\.406\]" + REEXPORT,
    ),
    "preprocessing std": (
        lambda d: edit_manifest(d, lambda m: m["preprocessing"].update(std=[0.5, 0.5, 0.5])),
        r"exits\.json says preprocessing std is \[0\.5, 0\.5, 0\.5\] but the checkpoint \S+ says "
        r"\[0\.229, 0\.224, 0\.225\]" + REEXPORT,
    ),
    "preprocessing interpolation": (
        lambda d: edit_manifest(d, lambda m: m["preprocessing"].update(interpolation="bilinear")),
        r"exits\.json says preprocessing interpolation is 'bilinear' but the checkpoint \S+ says 'bicubic'" + REEXPORT,
    ),
    "class names reordered": (
        lambda d: edit_manifest(d, lambda m: m["class_names"].reverse()),
        r"exits\.json says class_names is \['truck', .* but the checkpoint \S+ says \['airplane', .*" + REEXPORT,
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_or_edited_export_is_refused_in_one_sentence(damage, exported, tiny_checkpoint, tmp_path):
    do, sentence = DAMAGES[damage]
    folder = copy_export(exported, tmp_path / "onnx")
    do(folder)
    with pytest.raises(METError, match=sentence):
        open_export(tiny_checkpoint, folder)
    photo = str(next((CIFAR_TEST / "cat").glob("*.jpg")))
    proc = run_cli(
        "predict", "--checkpoint", str(tiny_checkpoint), "--engine", "onnx", "--onnx", str(folder), photo, check=False
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and re.search(sentence, lines[0]), proc.stderr


def test_the_intact_export_passes_every_check_and_a_failing_run_is_one_sentence(exported, tiny_checkpoint):
    runner = open_export(tiny_checkpoint, exported)  # graphs, manifest and checkpoint agree
    cfg = config_from_dict(METConfig, read_config(tiny_checkpoint)["model"])
    assert config_gmacs(cfg) == pytest.approx(runner.manifest.gmacs, rel=1e-9)  # what the checkpoint check counts
    with pytest.raises(METError, match=r"stage_1\.onnx failed to run \(\w+: .*\); if the export is damaged, re-export"):
        runner.run_stage(0, np.zeros((1, 3, 8, 8), np.float32))
