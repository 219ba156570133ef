"""Issue 22, item 3: backbone weights whose position grid is not square (met_core.nn.backbones.pos_embed_grid).

The example: a `--weights` file whose position embedding is a 16 x 32 grid (pre-trained at 224 x 448) ended in
a RuntimeError from the resampling (the grid was assumed square, and the call sat outside the error handling).
Non-square grids are resampled from their own grid; a geometry that cannot be resampled is one sentence.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.layers import build_sincos2d_pos_embed, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from met_core.errors import METError
from met_core.nn.backbones import create_backbone, imgfocus_weights, load_resampled, pos_embed_grid

from .conftest import HYMENOPTERA, run_cli, train_args


def _tiny(img_size) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)


def _with_grid(pe_patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return torch.cat([cls, pe_patches[None]], dim=1)


@pytest.mark.parametrize("grid", [(16, 32), (32, 16), (8, 24), (16, 16)])
@pytest.mark.parametrize("kind", ["sincos", "random"])
def test_a_tiny_vit_pretrained_on_a_non_square_grid_is_resampled_from_its_own_grid(grid, kind):
    src = _tiny((grid[0] * 8, grid[1] * 8))  # pre-trained at 128 x 256 for 16 x 32
    state = {k: v.clone() for k, v in src.state_dict().items()}
    if kind == "sincos":  # smooth, like every trained embedding: the grid is read from the values
        patches = build_sincos2d_pos_embed(list(grid), 32).reshape(-1, 32)
        state["pos_embed"] = _with_grid(patches, state["pos_embed"][:, :1])
    model = _tiny(64)  # an 8 x 8 grid
    load_resampled(model, state, "w.safetensors")
    # random values have no grid to read: the layout closest to square, wider than tall (192 = 12 x 16)
    want_grid = grid if kind == "sincos" else {(32, 16): (16, 32), (8, 24): (12, 16)}.get(grid, grid)
    want = resample_abs_pos_embed(
        state["pos_embed"], new_size=[8, 8], old_size=list(want_grid), num_prefix_tokens=1, antialias=False
    )
    assert torch.equal(model.pos_embed.data, want)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])


def test_the_grid_of_real_dinov2_embeddings_resampled_to_any_layout_is_found():
    pe = load_file(str(imgfocus_weights()))["pos_embed"]  # 1 + 37 x 37
    assert pos_embed_grid(pe[0, 1:], "dinov2") == (37, 37)
    for grid in [(16, 32), (32, 16), (12, 16), (24, 18), (16, 64), (10, 40), (20, 20)]:
        r = resample_abs_pos_embed(pe, new_size=list(grid), old_size=[37, 37], num_prefix_tokens=1, antialias=False)
        assert pos_embed_grid(r[0, 1:], "f") == grid


def test_the_issue_example_dinov2_weights_pretrained_at_224x448(tmp_path):
    """The real DINOv2 ViT-S/14 weights as a model fine-tuned at 224 x 448 holds them: a 16 x 32 grid."""
    state = load_file(str(imgfocus_weights()))
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], new_size=[16, 32], old_size=[37, 37], num_prefix_tokens=1, antialias=False
    )
    path = tmp_path / "dinov2-224x448.safetensors"
    save_file(state, str(path))  # no metadata: the grid is read from the values
    model, _ = create_backbone("vit_small_patch14_dinov2", 56, str(path))
    want = resample_abs_pos_embed(
        state["pos_embed"], new_size=[4, 4], old_size=[16, 32], num_prefix_tokens=1, antialias=False
    )
    assert torch.equal(model.pos_embed.data, want)
    save_file(state, str(path), metadata={"grid_size": "32x16"})  # an explicit declaration wins over the values
    model, _ = create_backbone("vit_small_patch14_dinov2", 56, str(path))
    assert torch.equal(
        model.pos_embed.data,
        resample_abs_pos_embed(
            state["pos_embed"], new_size=[4, 4], old_size=[32, 16], num_prefix_tokens=1, antialias=False
        ),
    )


def test_a_tiny_random_vit_at_224x448_trains_through_the_cli_and_bad_geometry_is_one_sentence(tmp_path):
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=(224, 448))
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    assert state["pos_embed"].shape == (1, 1 + 14 * 28, 192)
    good = tmp_path / "tiny-224x448.safetensors"
    save_file(state, str(good))
    out = tmp_path / "ckpt"
    run_cli(
        *train_args(HYMENOPTERA / "train", 2, 32, "--backbone", "vit_tiny_patch16_224", "--weights", str(good)),
        *("--batch-size", "2", "--exits", "6,12", "--out", str(out)),
    )
    assert (out / "model.safetensors").is_file()

    bad = {  # what no resampling can fix: each one sentence, in the library and the CLI
        "prime": ({**state, "pos_embed": torch.randn(1, 1 + 509, 192)}, {}, "form no grid"),
        "declared": (state, {"grid_size": "16x32"}, "declares a 16x32 position grid but"),
        "malformed": (state, {"grid_size": "wide"}, "not ROWSxCOLUMNS"),
        "width": ({**state, "pos_embed": torch.randn(1, 1 + 14 * 28, 96)}, {}, "do not fit this backbone"),
        "flat": ({**state, "pos_embed": torch.randn(1 + 14 * 28, 192)}, {}, "do not fit this backbone"),
    }
    for name, (st, meta, words) in bad.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(st, str(path), metadata=meta or None)
        with pytest.raises(METError, match=words):
            create_backbone("vit_tiny_patch16_224", 32, str(path))
    proc = run_cli(
        "train",
        "--dataset",
        str(HYMENOPTERA / "train"),
        "--backbone",
        "vit_tiny_patch16_224",
        "--weights",
        str(tmp_path / "prime.safetensors"),
        "--img-size",
        "32",
        "--out",
        str(tmp_path / "x"),
        "--quiet",
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "form no grid" in lines[0], proc.stderr[-2000:]
