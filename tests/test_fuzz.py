"""Fuzzing the readers of untrusted input: image bytes, trace files and checkpoint configs.

Each reader, fed mutated real files, must either return a valid object or raise METError (one
sentence); any other exception is a bug. Every test counts the inputs it really tried and writes the
count to test-artifacts/fuzz_counts.json (the README quotes it).
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from met_core.analysis.whatif import TraceArrays, whatif
from met_core.errors import METError
from met_core.io.checkpoint import read_config
from met_core.io.images import load_image
from met_core.io.traces import REQUIRED, load_trace

from .conftest import CIFAR_TEST, HYMENOPTERA, ROOT

CKPT = ROOT / "checkpoints" / "hymenoptera-met"
COUNTS = ROOT / "test-artifacts" / "fuzz_counts.json"
EXAMPLES = int(os.environ.get("MET_FUZZ_EXAMPLES", 500))  # raise it for a longer hunt
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="MET_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _record(name: str, tried: int, accepted: int) -> None:
    COUNTS.parent.mkdir(exist_ok=True)
    counts = json.loads(COUNTS.read_text()) if COUNTS.is_file() else {}
    counts[name] = {"inputs": tried, "accepted": accepted, "refused_with_one_sentence": tried - accepted}
    COUNTS.write_text(json.dumps(counts, indent=2) + "\n")


def _one_sentence(e: METError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg


def _seed_images() -> list[bytes]:
    """Real files of each container: a JPEG photo, a CIFAR JPEG re-saved as PNG, a GIF, a 16-bit PNG."""
    from PIL import Image

    photo = next((HYMENOPTERA / "val" / "bees").glob("*.jpg")).read_bytes()
    gif = next(p for p in (HYMENOPTERA / "train").rglob("*") if p.suffix.lower() == ".gif").read_bytes()
    cifar = Image.open(next((CIFAR_TEST / "cat").glob("*.jpg")))
    png, png16 = io.BytesIO(), io.BytesIO()
    cifar.save(png, format="PNG")
    Image.fromarray(np.asarray(cifar.convert("L"), np.uint16) * 257).save(png16, format="PNG")
    return [photo, png.getvalue(), gif, png16.getvalue()]


@st.composite
def mutated_bytes(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "zero-run", "random"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "zero-run":
            data[pos : pos + draw(st.integers(1, 512))] = b"\0" * len(data[pos : pos + 512])
        else:
            data = bytearray(draw(st.binary(max_size=2048)))
    return bytes(data)


def test_fuzz_image_decoding():
    seeds, tried, ok = _seed_images(), [0], [0]

    @FUZZ
    @given(mutated_bytes(seeds))
    def run(data: bytes) -> None:
        tried[0] += 1
        try:
            img = load_image(io.BytesIO(data), name="upload.jpg", max_pixels=4_000_000)
        except METError as e:
            _one_sentence(e)
            return
        assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
        ok[0] += 1

    run()
    _record("image decoding", tried[0], ok[0])
    assert tried[0] >= 0.9 * EXAMPLES and 0 < ok[0] < tried[0]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12,
)


def _trace_arrays() -> dict[str, np.ndarray]:
    with np.load(CKPT / "test_trace.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@st.composite
def mutated_trace(draw, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(REQUIRED))
        op = draw(st.sampled_from(["drop", "nan", "inf", "cut", "dtype", "reshape", "text", "path-id", "shuffle"]))
        a = arrays.get(key)
        if op == "drop" or a is None:
            arrays.pop(key, None)
        elif op in ("nan", "inf") and a.dtype.kind == "f" and a.size:
            a = a.copy()
            a.flat[draw(st.integers(0, a.size - 1))] = np.nan if op == "nan" else -np.inf
            arrays[key] = a
        elif op == "cut" and a.ndim:
            arrays[key] = a[: draw(st.integers(0, max(0, len(a) - 1)))]
        elif op == "dtype":
            to = draw(st.sampled_from([np.int8, np.float32, np.bool_, np.uint64, "U3"]))
            with np.errstate(invalid="ignore"):
                arrays[key] = a.astype(to) if a.dtype.kind != "U" or to == "U3" else np.zeros(a.shape, to)
        elif op == "reshape":
            arrays[key] = a.reshape(-1) if a.ndim != 1 else a[:, None]
        elif op == "text":
            arrays[key] = np.asarray(draw(st.one_of(JSON.map(json.dumps), st.text(max_size=40))))
        elif op == "path-id" and key == "ids" and a.ndim == 1 and len(a):
            a = a.copy()
            a[0] = draw(st.sampled_from(["../../etc/passwd", "/etc/passwd", "", "bees/../../x.jpg"]))
            arrays[key] = a
        elif op == "shuffle" and a.ndim and len(a) > 1:
            arrays[key] = a[::-1].copy()
    return arrays


def test_fuzz_trace_reader(tmp_path):
    base, tried, ok = _trace_arrays(), [0], [0]

    @FUZZ
    @given(mutated_trace(base), st.booleans())
    def run(arrays: dict[str, np.ndarray], compressed: bool) -> None:
        tried[0] += 1
        path = tmp_path / "t.npz"
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        try:
            t = load_trace(path)
        except METError as e:
            _one_sentence(e)
            return
        r = whatif(TraceArrays.from_trace(t), 0.9)  # what the app computes first from a trace
        assert 0 <= r.accuracy <= 1 and np.isfinite(r.gmacs)
        ok[0] += 1

    run()
    _record("trace reader (array mutations)", tried[0], ok[0])
    assert tried[0] >= 0.9 * EXAMPLES and 0 < ok[0] < tried[0]


def test_fuzz_trace_file_bytes(tmp_path):
    base, tried = (CKPT / "val_trace.npz").read_bytes(), [0]

    @FUZZ
    @given(mutated_bytes([base]))
    def run(data: bytes) -> None:
        tried[0] += 1
        (tmp_path / "t.npz").write_bytes(data)
        try:
            load_trace(tmp_path / "t.npz")
        except METError as e:
            _one_sentence(e)

    run()
    _record("trace reader (file bytes)", tried[0], 0)
    assert tried[0] >= 0.9 * EXAMPLES


@st.composite
def mutated_config(draw, base: dict) -> dict | str:
    cfg = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "value", "model", "format", "weights", "raw"]))
        model = cfg.get("model") if isinstance(cfg, dict) else None
        if op == "drop" and isinstance(model, dict) and model:
            model.pop(draw(st.sampled_from(sorted(model))))
        elif op == "value" and isinstance(model, dict) and model:
            model[draw(st.sampled_from(sorted(model)))] = draw(JSON)
        elif op == "model" and isinstance(cfg, dict):
            cfg["model"] = draw(JSON)
        elif op == "format" and isinstance(cfg, dict):
            cfg["format"] = draw(JSON)
        elif op == "weights" and isinstance(model, dict):
            model["weights"] = draw(
                st.sampled_from(
                    [
                        "/etc/passwd",
                        "../other/model.safetensors",
                        "w.safetensors",
                        "sub/../../x.safetensors",
                        "default",
                        "none",
                    ]
                )
            )
        elif op == "raw":
            return draw(st.one_of(st.text(max_size=60), JSON.map(json.dumps)))
    return cfg


def test_fuzz_config_reader(tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(CKPT, d, ignore=shutil.ignore_patterns("*.npz", "*.safetensors"))
    base, tried, ok = json.loads((CKPT / "config.json").read_text()), [0], [0]

    @FUZZ
    @given(mutated_config(base))
    def run(cfg: dict | str) -> None:
        tried[0] += 1
        (d / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
        try:
            back = read_config(d)
        except METError as e:
            _one_sentence(e)
            return
        from met_core.config import METConfig, config_from_dict

        w = config_from_dict(METConfig, back["model"]).weights
        assert w in ("default", "none") or (d / w).resolve().is_relative_to(d.resolve())
        ok[0] += 1

    run()
    _record("checkpoint config reader", tried[0], ok[0])
    assert tried[0] >= 0.9 * EXAMPLES and 0 < ok[0] < tried[0]


@pytest.mark.parametrize("weights", ["/etc/passwd", "../elsewhere/backbone.safetensors"])
def test_config_paths_out_of_the_folder_are_refused(tmp_path, weights):
    d = tmp_path / "ck"
    shutil.copytree(CKPT, d, ignore=shutil.ignore_patterns("*.npz"))
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["weights"] = weights
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(METError, match="outside the checkpoint folder"):
        read_config(d)
