"""Compute accounting in GMACs (one multiply-add = 1), analytic, with a flop-counter cross-check.

Counted: the matrix products (patch embedding, q/k/v, attention scores and mixing, projection, MLP,
adapter projections, heads). Not counted: norms, activations, softmax, additions, the diagonal scaling.
`torch.utils.flop_counter` counts the same operations at 2 FLOPs per MAC. The unit's label is
met_core.io.traces.MAC_NOTE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import SITES_PER_BLOCK

if TYPE_CHECKING:
    from .model import METModel


def vit_block_macs(tokens: int, dim: int, mlp_hidden: int) -> int:
    """One transformer block: qkv, q@k^T, attn@v, projection, two MLP layers."""
    return tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * mlp_hidden


def cost_breakdown(model: METModel) -> dict[str, int]:
    """MACs of each piece at the model's input size."""
    b = model.backbone
    pe = b.patch_embed
    grid = pe.grid_size[0] * pe.grid_size[1]
    tokens = grid + b.num_prefix_tokens
    in_ch = pe.proj.in_channels
    kh, kw = pe.proj.kernel_size
    adapter = model.adapters.macs_per_token() * tokens * SITES_PER_BLOCK if model.adapters is not None else 0
    return {
        "patch_embed": grid * in_ch * kh * kw * b.embed_dim,
        "block": vit_block_macs(tokens, b.embed_dim, b.blocks[0].mlp.fc1.out_features),
        "adapters_per_block": adapter,
        "head": model.feature_dim * model.cfg.num_classes,
    }


def exit_macs(model: METModel) -> list[int]:
    """Cumulative MACs to leave at each exit: stem, the blocks run so far, every head passed.

    Stage-wise diagonals run each block once; per-exit paths recompute blocks 1..e_j for every
    exit j reached, and that recomputation is counted.
    """
    c = cost_breakdown(model)
    per_block = c["block"] + c["adapters_per_block"]
    out, blocks_run = [], 0
    for k, e in enumerate(model.cfg.exits):
        blocks_run += len(model.stages[k]) if model.cfg.diagonal_mode == "stage" else e
        out.append(c["patch_embed"] + blocks_run * per_block + (k + 1) * c["head"])
    return out


def exit_gmacs(model: METModel) -> list[float]:
    return [m / 1e9 for m in exit_macs(model)]


def measured_macs(model: METModel, upto: int | None = None) -> int:
    """MACs of one image through exits 0..upto as counted by torch's flop counter (FLOPs / 2).

    The counter has no formula for the CPU fused-attention kernel, so timm's explicit-matmul
    attention is used while counting.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = model.backbone.patch_embed.img_size
    x = torch.zeros(1, 3, *size)
    attns = [blk.attn for blk in model.backbone.blocks]
    fused = [a.fused_attn for a in attns]
    try:
        for a in attns:
            a.fused_attn = False
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.forward_head(model.forward_features(x, upto=upto))
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
    return counter.get_total_flops() // 2
