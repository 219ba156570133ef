"""Issue 22, item 2: safetensors files in any floating dtype (met_core.nn.tensorfiles.load_floating), or one sentence.

The example: a backbone `--weights` file stored in bfloat16 (the usual format of published weights) ended in
`TypeError: Got unsupported ScalarType BFloat16` while hashing. bf16 weights must give the fp32 weights'
logits within bf16 rounding, and train.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from met_core.errors import METError
from met_core.nn.backbones import create_backbone, imgfocus_weights, read_weights
from met_core.nn.checkpoint import load_checkpoint
from met_core.nn.tensorfiles import tensors_sha256

from .conftest import HYMENOPTERA, ROOT, run_cli, train_args

HYM = ROOT / "checkpoints" / "hymenoptera-met"
BF16_EPS = 2.0**-8  # bfloat16 keeps 8 significant bits: a relative rounding of at most 2^-9 per weight


def _images(n: int = 4, size: int = 56) -> torch.Tensor:
    from met_core.data.datasets import make_transform
    from met_core.io.images import load_image

    tf = make_transform(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    files = (
        sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[: n // 2]
        + sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[: n - n // 2]
    )
    return torch.stack([tf(load_image(f)) for f in files])


def test_bf16_backbone_weights_give_the_fp32_logits_within_bf16_rounding_and_train(tmp_path):
    from met_core.config import METConfig
    from met_core.nn.model import METModel

    fp32 = load_file(str(imgfocus_weights()))  # the real DINOv2 ViT-S/14 weights
    bf16_file = tmp_path / "dinov2-bf16.safetensors"
    save_file({k: v.bfloat16() for k, v in fp32.items()}, str(bf16_file))

    b32, d32 = create_backbone("dinov2_s14_imgfocus", 56)
    b16, d16 = create_backbone("dinov2_s14_imgfocus", 56, str(bf16_file))
    assert len(d16) == 64 and d16 != d32  # hashed on the stored bf16 bytes: other weights than the fp32 file
    assert d16 == read_weights(bf16_file)[1]  # the same digest every time
    assert b16.blocks[0].attn.qkv.weight.dtype == torch.float32  # cast to the compute dtype
    assert torch.equal(b16.blocks[5].mlp.fc1.weight, fp32["blocks.5.mlp.fc1.weight"].bfloat16().float())

    cfg = METConfig(img_size=56, num_classes=2)
    torch.manual_seed(0)
    m32 = METModel(b32, cfg).eval()
    m16 = METModel(b16, cfg).eval()
    m16.load_state_dict(m32.trainable_state_dict(), strict=False)  # the same heads and adapters
    x = _images()
    with torch.no_grad():
        out32, out16 = m32(x), m16(x)
    for a, b in zip(out32, out16):  # every exit's logits, within bf16 rounding of 12 blocks of weights
        assert (a - b).abs().max() <= 4 * BF16_EPS * a.abs().max() + 1e-3, (a, b)
        assert torch.equal(a.argmax(-1), b.argmax(-1))

    # a tiny training run on the bf16 file, and the checkpoint it writes loads with that file only
    out = tmp_path / "ckpt"
    run_cli(*train_args(HYMENOPTERA / "train", 2, 28, "--weights", str(bf16_file), "--batch-size", "2", "--out", out))
    model, cfg_dict = load_checkpoint(out, weights=str(bf16_file))
    assert cfg_dict["model"]["weights_sha256"] == read_weights(bf16_file)[1]
    with pytest.raises(METError, match="trained on other backbone weights"):
        load_checkpoint(out, weights=str(imgfocus_weights()))


def test_a_checkpoint_stored_in_bf16_answers_like_its_fp32_original_and_int8_is_one_sentence(tmp_path):
    x = _images(4, 112)
    ref, _ = load_checkpoint(HYM)
    for dtype in (torch.bfloat16, torch.int8):
        ck = tmp_path / str(dtype).split(".")[1]
        shutil.copytree(HYM, ck, ignore=shutil.ignore_patterns("*.npz"))
        save_file(
            {k: v.to(dtype) for k, v in load_file(str(HYM / "model.safetensors")).items()},
            str(ck / "model.safetensors"),
        )
        if dtype == torch.int8:
            with pytest.raises(METError) as e:
                load_checkpoint(ck)
            msg = str(e.value)
            assert "\n" not in msg and "stores" in msg and "as int8 (I8), not a floating-point type" in msg
            continue
        model, _ = load_checkpoint(ck)
        with torch.no_grad():
            a, b = ref(x)[-1], model(x)[-1]
        assert torch.equal(a.argmax(-1), b.argmax(-1)) and (a.softmax(-1) - b.softmax(-1)).abs().max() < 0.02


DTYPES = [
    d
    for d in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        getattr(torch, "float8_e4m3fnuz", None),
        getattr(torch, "float8_e5m2fnuz", None),
        getattr(torch, "float8_e8m0fnu", None),
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.complex64,
    )
    if d is not None
]


@settings(
    max_examples=int(os.environ.get("MET_DTYPE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=1, max_size=4),
    shapes=st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=4, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_safetensors_of_every_floating_dtype_load_as_float32_or_refuse_in_one_sentence(
    dtypes, shapes, seed, tmp_path_factory
):
    rng = np.random.default_rng(seed)
    state = {}
    for i, d in enumerate(dtypes):
        v = torch.from_numpy(rng.normal(0, 3, size=shapes[i]).astype(np.float32))
        state[f"blocks.{i}.w"] = (v > 0) if d == torch.bool else v.to(d)
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_file(state, str(path))
    bad = [d for d in dtypes if not d.is_floating_point]
    try:
        got, digest = read_weights(path)
    except METError as e:
        msg = str(e)
        assert bad, msg
        assert "\n" not in msg and msg.endswith(".") and "not a floating-point type" in msg
        assert any(
            f" as {torch_name} (" in msg
            for torch_name in ("int8", "uint8", "int16", "int32", "int64", "bool", "complex64")
        ), msg
        return
    assert not bad
    assert digest == tensors_sha256(state) and len(digest) == 64  # hashed on the stored bytes
    for k, v in state.items():
        assert got[k].dtype == torch.float32 and got[k].shape == v.shape
        torch.testing.assert_close(got[k], v.float(), rtol=0, atol=0, equal_nan=True)  # float8: NaN past its range


def test_weights_none_on_a_checkpoint_trained_on_pretrained_weights_is_one_sentence():
    """`--weights none` skipped the hash check and answered with a random backbone (a newcomer's session)."""
    with pytest.raises(METError, match="--weights none builds a random backbone"):
        load_checkpoint(HYM, weights="none")
    proc = run_cli("info", "--checkpoint", str(HYM), "--weights", "none", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "random backbone" in proc.stderr
