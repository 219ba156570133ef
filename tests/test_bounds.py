"""Hostile inputs, by class, through the CLI in a subprocess under a memory bound (RLIMIT_AS: 1 GiB above what
the process maps after its imports) and a CPU-time bound (RLIMIT_CPU: 10 s of CPU after them, which holds on
a busy machine; a wall-clock net at 20 times that catches true hangs): each must end in a correct answer or
a one-sentence refusal (exit code 2), never a MemoryError, a traceback or a hang. Then property tests
(hypothesis) of the same mechanisms: config ranges, trace headers, image sizes, CLI flag ranges.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from met_core.cli import DERIVED, build_parser
from met_core.config import METConfig, RuntimeConfig, TrainConfig, config_from_dict, field_bounds
from met_core.errors import METError
from met_core.io.traces import load_trace

from .conftest import CIFAR_TEST, CIFAR_TRAIN, ROOT, run_cli, train_args

HARNESS = ROOT / "tests" / "tools" / "bounded_cli.py"
WALL_FACTOR = 20  # bounded_cli.WALL_FACTOR
SHIPPED_TRACE = ROOT / "checkpoints" / "hymenoptera-met" / "test_trace.npz"


def bounded(*args: str, mem_mib: int = 1024, seconds: int = 10, env: dict | None = None) -> subprocess.CompletedProcess:
    """`met ARGS` under the bounds (`seconds` of CPU time); asserts it was neither killed nor crashed (a refusal
    is exit code 2). The outer timeout only catches a harness that itself hangs: it allows the harness's own
    wall-clock net plus slow imports on a loaded machine."""
    proc = subprocess.run(
        [sys.executable, str(HARNESS), str(mem_mib), str(seconds), "--", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=WALL_FACTOR * seconds + 300,
    )
    assert proc.returncode in (0, 2), (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-2000:]
    return proc


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- images: judged by what preprocessing makes of them -------------------------------------------------


@pytest.mark.parametrize("size", [(1, 30_000), (40_000, 2), (7000, 7000)])
def test_images_whose_resize_or_decode_would_blow_up_are_refused_from_the_header(size, tiny_checkpoint, tmp_path):
    f = tmp_path / "strip.png"
    Image.new("L", size, 128).save(f, optimize=True)
    assert f.stat().st_size < 200_000  # small on disk
    proc = bounded("predict", "--checkpoint", str(tiny_checkpoint), str(f), "--json")
    out = json.loads(proc.stdout)  # predict answers per file: this one is refused in one sentence
    assert proc.returncode == 2 and "error" in out[0] and "\n" not in out[0]["error"]
    assert ("crop it closer to square" in out[0]["error"]) or ("over the limit" in out[0]["error"])


def test_a_wide_but_sane_image_is_answered(tiny_checkpoint, tmp_path):
    photo = Image.open(next((CIFAR_TEST / "cat").glob("*.jpg"))).convert("RGB").resize((640, 32))
    photo.save(tmp_path / "wide.png")
    out = json.loads(
        bounded("predict", "--checkpoint", str(tiny_checkpoint), str(tmp_path / "wide.png"), "--json").stdout
    )
    assert (
        "error" not in out[0]
        and out[0]["class"] in json.loads((tiny_checkpoint / "config.json").read_text())["model"]["class_names"]
    )


# --- traces: shapes and dtypes from the .npy headers, before any array is decompressed -------------------


def write_npz_with_header(path: Path, source: Path, name: str, shape: tuple[int, ...], dtype: str = "<f2") -> None:
    """A copy of a real trace whose array `name` claims `shape` in its header, with almost no data behind it."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.namelist():
            zout.writestr(item, buf.getvalue() + b"\0" * 1024 if item == f"{name}.npy" else zin.read(item))


@pytest.mark.parametrize(
    "name,shape", [("logits", (2_000_000_000, 4, 10)), ("features", (4, 10**6, 10**6)), ("ids", (10**9,))]
)
def test_trace_headers_that_promise_gigabytes_are_refused_before_reading(name, shape, tmp_path):
    bomb = tmp_path / "bomb.npz"
    write_npz_with_header(bomb, SHIPPED_TRACE, name, shape, "<U64" if name == "ids" else "<f2")
    assert bomb.stat().st_size < 2_000_000
    refused(bounded("whatif", "--trace", str(bomb)), "would take", "bytes once decompressed")


def test_trace_with_an_object_array_is_refused_as_a_pickle(tmp_path):
    bomb = tmp_path / "pickle.npz"
    write_npz_with_header(bomb, SHIPPED_TRACE, "labels", (153,), "|O")
    refused(bounded("whatif", "--trace", str(bomb)), "never unpickles")


def test_labels_of_a_small_integer_type_give_the_same_per_class_numbers(tmp_path):
    t = load_trace(SHIPPED_TRACE)
    with np.load(SHIPPED_TRACE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["labels"] = arrays["labels"].astype(np.uint8)
    np.savez_compressed(tmp_path / "u8.npz", **arrays)
    want = json.loads(run_cli("whatif", "--trace", str(SHIPPED_TRACE), "--detail", "--json").stdout)
    got = json.loads(bounded("whatif", "--trace", str(tmp_path / "u8.npz"), "--detail", "--json").stdout)
    assert got["per_class_accuracy"] == want["per_class_accuracy"] and got["confusion"] == want["confusion"]
    assert load_trace(tmp_path / "u8.npz").labels.dtype == np.int64 and (t.labels >= 0).all()


# --- checkpoints: sizes against sane limits and the safetensors header, files regular and inside -------


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("num_classes", 10**8, ["num_classes must be at least 2 and at most 100,000"]),
        ("img_size", 100_000, ["img_size must be"]),
        ("img_size", 0, ["img_size must be"]),
        ("adapter_dim", -3, ["adapter_dim must be"]),
        ("exits", [0, 12], ["exits must be"]),
        ("exits", list(range(1, 200)), ["exits has 199 entries"]),
        ("class_names", ["x" * 10_000] * 10, ["class_names has an entry of 10,000 characters"]),
        ("num_classes", 90_000, ["does not match its config.json", "heads"]),  # in range, but not what the file holds
        ("adapter_dim", 4000, ["does not match its config.json"]),
    ],
)
def test_checkpoint_configs_with_absurd_or_mismatched_sizes_are_refused_before_building(
    key, value, words, tiny_checkpoint, tmp_path
):
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"][key] = value
    if key == "num_classes":
        cfg["model"]["class_names"] = []
    (ck / "config.json").write_text(json.dumps(cfg))
    refused(bounded("info", "--checkpoint", str(ck), mem_mib=512), *words)


@pytest.mark.parametrize(
    "what", ["fifo-config", "zero-link-weights", "outside-link-weights", "huge-config", "dir-config"]
)
def test_special_files_links_and_huge_files_in_a_checkpoint_folder_are_refused(what, tiny_checkpoint, tmp_path):
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    if what == "fifo-config":
        (ck / "config.json").unlink()
        os.mkfifo(ck / "config.json")
    elif what == "zero-link-weights":
        (ck / "model.safetensors").unlink()
        (ck / "model.safetensors").symlink_to("/dev/zero")
    elif what == "outside-link-weights":
        shutil.move(ck / "model.safetensors", tmp_path / "elsewhere.safetensors")
        (ck / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    elif what == "huge-config":
        with open(ck / "config.json", "a") as f:
            f.write(" " * (70 * 2**20))
    else:
        (ck / "config.json").unlink()
        (ck / "config.json").mkdir()
    words = {
        "fifo-config": "not a regular file",
        "zero-link-weights": "resolves to /dev/zero, outside",
        "outside-link-weights": "outside",
        "huge-config": "more than the",
        "dir-config": "not a regular file",
    }
    refused(bounded("info", "--checkpoint", str(ck)), words[what])


def test_an_unwritable_cache_folder_is_one_sentence_naming_the_variable(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    refused(
        bounded(
            "info", "--checkpoint", str(tiny_checkpoint), env={"MET_CACHE_DIR": str(blocker / "cache")}, seconds=60
        ),
        "MET_CACHE_DIR",
    )


# --- degenerate but valid -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_exit_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "one-exit"
    run_cli(*train_args(CIFAR_TRAIN, 4, 56, "--batch-size", "20", "--exits", "12", "--out", str(out), "--workers", "0"))
    return out


def test_a_one_exit_model_works_through_every_subcommand(one_exit_checkpoint, tmp_path):
    ck = str(one_exit_checkpoint)
    info = json.loads(run_cli("info", "--checkpoint", ck, "--json").stdout)
    assert len(info["exit_gmacs"]) == 1
    tr = tmp_path / "t.npz"
    run_cli(
        "trace",
        "--checkpoint",
        ck,
        "--dataset",
        str(CIFAR_TEST),
        "--limit",
        "40",
        "--features",
        "10",
        "--out",
        str(tr),
        "--quiet",
        "--workers",
        "0",
    )
    r = json.loads(run_cli("whatif", "--trace", str(tr), "--threshold", "0.5", "--json").stdout)
    assert r["exit_fractions"] == [1.0] and r["speedup"] == 1.0
    c = json.loads(run_cli("calibrate", "--trace", str(tr), "--budget", "1.0", "--json").stdout)
    assert c["accuracy"] == r["accuracy"]
    assert len(json.loads(run_cli("calibrate", "--trace", str(tr), "--sweep", "--json").stdout)) >= 1
    assert (
        "below the first exit's cost" in run_cli("calibrate", "--trace", str(tr), "--budget", "0.5", check=False).stderr
    )
    photo = next((CIFAR_TEST / "dog").glob("*.jpg"))
    p = json.loads(run_cli("predict", "--checkpoint", ck, str(photo), "--json").stdout)
    assert p[0]["exit"] == 0
    b = json.loads(
        run_cli(
            "bench-exit",
            "--checkpoint",
            ck,
            "--dataset",
            str(CIFAR_TEST),
            "--limit",
            "16",
            "--batch",
            "8",
            "--repeats",
            "1",
            "--json",
            "--quiet",
        ).stdout
    )
    assert b[0]["predicted_speedup"] == 1.0
    run_cli(
        "profile",
        "--checkpoint",
        ck,
        "--batch",
        "1,4",
        "--repeats",
        "1",
        "--out",
        str(tmp_path / "lat.json"),
        "--quiet",
    )
    w = json.loads(
        run_cli("whatif", "--trace", str(tr), "--profile", str(tmp_path / "lat.json"), "--batch", "4", "--json").stdout
    )
    assert w["latency"]["speedup"] == pytest.approx(1.0)


def test_an_empty_class_folder_is_a_warning_not_an_error(tmp_path):
    data = tmp_path / "data"
    for c in ("cat", "dog"):
        (data / c).mkdir(parents=True)
        for f in sorted((CIFAR_TRAIN / c).glob("*.jpg"))[:4]:
            shutil.copy(f, data / c / f.name)
    (data / "empty-class").mkdir()
    proc = run_cli(
        "train",
        "--dataset",
        str(data),
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--backbone",
        "vit_tiny_patch16_224",
        "--weights",
        "none",
        "--val-fraction",
        "0.5",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--workers",
        "0",
    )
    assert "warning: the class folder(s) 'empty-class' hold no images" in proc.stderr
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model"]["class_names"] == ["cat", "dog", "empty-class"]


# --- property tests -----------------------------------------------------------------------------------

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SIZE_FIELDS = ["img_size", "num_classes", "adapter_dim", "adapter_scale", "exits"]


@PROPS
@given(
    st.dictionaries(
        st.sampled_from(SIZE_FIELDS),
        st.one_of(
            st.integers(-(10**12), 10**12),
            st.floats(allow_nan=True, allow_infinity=True),
            st.lists(st.integers(-(10**6), 10**6), max_size=80),
        ),
        max_size=4,
    )
)
def test_any_model_config_is_valid_and_in_range_or_refused_in_one_sentence(values):
    try:
        cfg = config_from_dict(METConfig, values)
        cfg.validate()
    except METError as e:
        assert "\n" not in str(e) and len(str(e)) < 400
        return
    bounds = field_bounds(METConfig)
    for k, v in values.items():
        for item in v if isinstance(v, list) else [v]:
            assert bounds[k].contains(item)


@PROPS
@given(
    shape=st.lists(st.integers(0, 2**40), min_size=1, max_size=4),
    dtype=st.sampled_from(["<f2", "<f8", "<i8", "<U200", "|u1"]),
    name=st.sampled_from(["logits", "labels", "ids", "features", "gmacs", "feature_index"]),
)
def test_any_trace_header_is_read_within_bounds_or_refused(shape, dtype, name, tmp_path_factory):
    path = tmp_path_factory.mktemp("hdr") / "t.npz"
    write_npz_with_header(path, SHIPPED_TRACE, name, tuple(shape), dtype)
    try:
        load_trace(path)
    except METError as e:
        assert "\n" not in str(e)


@PROPS
@given(w=st.integers(1, 60_000), h=st.integers(1, 60_000))
def test_images_of_any_aspect_ratio_give_a_model_input_or_one_sentence(w, h):
    from met_core.data.datasets import transform_for
    from met_core.io.images import load_image

    if w * h > 20_000_000:  # the header check alone decides those; building them here would be slow
        w, h = max(1, w // 1000), h
    buf = io.BytesIO()
    Image.new("L", (w, h), 200).save(buf, "PNG")
    cfg = METConfig(img_size=56)
    try:
        x = transform_for(cfg)(load_image(io.BytesIO(buf.getvalue()), "gen.png", resize_to=56))
    except METError as e:
        assert "\n" not in str(e) and ("square" in str(e) or "over the limit" in str(e))
        return
    assert tuple(x.shape) == (3, 56, 56)


NUMERIC_FLAGS = {
    f"--{k.replace('_', '-')}": b
    for cls in (METConfig, TrainConfig, RuntimeConfig)
    for k, b in field_bounds(cls).items()
    if k not in ("exits", "mean", "std", *DERIVED)
}


@PROPS
@given(
    flag=st.sampled_from(sorted(NUMERIC_FLAGS)),
    value=st.one_of(
        st.integers(-(10**15), 10**15),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "", "  3", "1_000"]),
    ),
)
def test_cli_numbers_are_in_range_or_refused_at_parse_time(flag, value, capsys):
    bounds = NUMERIC_FLAGS[flag]
    try:
        args = build_parser().parse_args(["train", "--dataset", "d", "--out", "o", flag, str(value)])
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        assert e.code == 2 and len(err) == 1 and err[0].startswith(f"error: argument {flag}: "), err
        return
    parsed = getattr(args, flag[2:].replace("-", "_"))
    assert bounds.contains(parsed)
