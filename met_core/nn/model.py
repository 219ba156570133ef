"""The MET wrapper around an unmodified, frozen timm VisionTransformer.

The wrapper walks the backbone's own modules (patch embedding, blocks, final norm) and inserts the
E-adapters between them, so the backbone's code and weights stay untouched (Multiple-Exit Tuning,
Yu et al., arXiv 2409.13999). API after timm, with one difference: timm's `forward_features` returns the
final token sequence (B, T, D) and `forward_head` pools it; here `forward_features` returns every exit's pooled
head input z_k (B, D') and `forward_head` maps each to its logits, since each exit pools its own tokens.

Shapes: B images, T tokens (prefix + patches), D the backbone width, D' the head input width (D, or 2D for
'cls+mean'), K exits, C classes. Tensors are float32 unless run under autocast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..config import SITES_PER_BLOCK, METConfig, config_from_dict
from ..errors import METError
from ..io.limits import MAX_TRAINED_BYTES
from .adapters import EAdapters

if TYPE_CHECKING:
    import numpy as np

    from ..analysis.policies import Policy

DEFAULT_EXITS = 4  # exits of a new model unless its config names them


def default_exits(depth: int, k: int = DEFAULT_EXITS) -> list[int]:
    """`k` evenly spaced exits over `depth` blocks (1-based), the last after the last block."""
    return [round(depth * (j + 1) / k) for j in range(k)]


def build_model(given: dict[str, Any], class_names: list[str], seed: int = 0) -> METModel:
    """A new METModel (what `met train` trains) from the METConfig values `given`, for these classes: the backbone's
    own preprocessing (mean, std, interpolation) and `default_exits` unless given, the backbone weights' hash
    recorded, torch seeded by `seed` before the adapters and heads are initialised. METError (one sentence) for a
    config out of range or not fitting the backbone."""
    from .backbones import backbone_entry, create_backbone

    pre = backbone_entry(given.get("backbone") or METConfig.backbone).preprocessing
    own = {"mean": list(pre.mean), "std": list(pre.std), "interpolation": pre.interpolation}
    base = config_from_dict(
        METConfig, {**own, **given, "num_classes": len(class_names), "class_names": list(class_names)}
    )
    backbone, digest = create_backbone(base.backbone, base.img_size, base.weights)
    depth = len(backbone.blocks)
    if given.get("exits") is None:
        base.exits = default_exits(depth)
    mcfg = dataclasses.replace(base, weights_sha256=digest)
    mcfg.validate(depth)
    torch.manual_seed(seed)
    return METModel(backbone, mcfg)


class METModel(nn.Module):
    """A frozen ViT with exits after `cfg.exits`, E-adapters and one linear head per exit.

    Raises METError when `cfg` does not fit the backbone (`METConfig.validate`) or the heads would exceed
    limits.MAX_TRAINED_BYTES.
    """

    def __init__(self, backbone: VisionTransformer, cfg: METConfig) -> None:
        super().__init__()
        self.depth = len(backbone.blocks)
        cfg.validate(self.depth)
        self.cfg = cfg
        self.backbone = backbone.requires_grad_(False).eval()
        dim = backbone.embed_dim
        self.adapters = (
            EAdapters(
                self.depth, dim, len(cfg.exits), cfg.adapter_dim, cfg.adapter_scale, cfg.sharing, cfg.exit_diagonals
            )
            if cfg.adapters
            else None
        )
        self.feature_dim = 2 * dim if cfg.head_input == "cls+mean" else dim
        head_bytes = len(cfg.exits) * (self.feature_dim + 1) * cfg.num_classes * 4  # float32, before allocating
        on_meta = torch.empty(0).device.type == "meta"  # shapes only (checkpoint.expected_shapes): no memory
        if head_bytes > MAX_TRAINED_BYTES and not on_meta:
            raise METError(
                f"{len(cfg.exits)} heads of {self.feature_dim:,} x {cfg.num_classes:,} classes would take "
                f"{head_bytes:,} bytes, more than the {MAX_TRAINED_BYTES:,} a checkpoint's trained tensors "
                "may hold (training needs 4 times that); use fewer exits or classes"
                + (", or --head-input cls (half as wide)." if cfg.head_input == "cls+mean" else ".")
            )
        self.heads = nn.ModuleList(nn.Linear(self.feature_dim, cfg.num_classes) for _ in cfg.exits)
        starts = [0] + list(cfg.exits[:-1])
        self.stages = [range(s, e) for s, e in zip(starts, cfg.exits)]  # 0-based block indices per exit

    @property
    def num_exits(self) -> int:
        return len(self.cfg.exits)

    def train(self, mode: bool = True) -> METModel:
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout / drop-path, whatever the wrapper's mode
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors (adapters, heads): what a checkpoint stores."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def num_parameters(self) -> dict[str, int]:
        trainable = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("backbone."))
        frozen = sum(p.numel() for p in self.backbone.parameters())
        return {"trainable": trainable, "frozen": frozen}

    # --- pieces, shared by the all-exits and the early-exit forward ------------------------------
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, position embedding and pre-norm: the part before any adapter.
        x: (B, 3, H, W) normalised images, H = W = cfg.img_size -> tokens (B, T, D)."""
        b = self.backbone
        return b.norm_pre(b.patch_drop(b._pos_embed(b.patch_embed(x))))

    def forward_block(self, x: torch.Tensor, i: int, exit_idx: int) -> torch.Tensor:
        """Block i (0-based) with its two adapter sites, using exit `exit_idx`'s diagonal: (B, T, D) -> (B, T, D)."""
        blk = self.backbone.blocks[i]
        if self.adapters is not None:
            x = self.adapters(x, SITES_PER_BLOCK * i, exit_idx)
        x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
        if self.adapters is not None:
            x = self.adapters(x, SITES_PER_BLOCK * i + 1, exit_idx)
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))

    def forward_stage(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Tokens after exit k's blocks (k 0-based), from the tokens after exit k-1 (stem output for k = 0):
        (B, T, D) -> (B, T, D).

        Stage-wise diagonals: a continuing image reuses what it has. Per-exit path: exit k's
        representation runs every block up to e_k with g_k, so `x` must be the stem output.
        """
        blocks = self.stages[k] if self.cfg.diagonal_mode == "stage" else range(self.cfg.exits[k])
        for i in blocks:
            x = self.forward_block(x, i, k)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Head input: the frozen final norm, then the CLS token, the mean of patch tokens, or both
        (`cfg.head_input`): tokens (B, T, D) -> (B, D'), D' = 2D for 'cls+mean' (DINOv2's linear evaluation).

        LayerNorm acts per token, so for the CLS input only that token is normalised.
        """
        if self.cfg.head_input == "cls":
            return self.backbone.norm(x[:, 0])
        x = self.backbone.norm(x)
        mean = x[:, self.backbone.num_prefix_tokens :].mean(dim=1)
        return mean if self.cfg.head_input == "mean" else torch.cat([x[:, 0], mean], dim=-1)

    # --- timm-style API ---------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Head inputs z_k of exits 0..upto (0-based; all exits by default): K' tensors (B, D').

        Unlike timm's `forward_features` (the final tokens, before pooling), this returns each exit's pooled
        head input: what the exit heads, the graph regulariser and the OOD caution read. x: (B, 3, H, W).
        """
        last = self.num_exits - 1 if upto is None else upto
        stem = self.forward_stem(x)
        tokens, feats = stem, []
        for k in range(last + 1):
            tokens = self.forward_stage(tokens if self.cfg.diagonal_mode == "stage" else stem, k)
            feats.append(self.pool(tokens))
        return feats

    def forward_head(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Logits (B, C) of each exit from its head input (B, D'), for as many exits as `feats` holds."""
        return [head(z) for head, z in zip(self.heads, feats)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every exit: x (B, 3, H, W) -> (K, B, C), every image through every block (training, tracing)."""
        return torch.stack(self.forward_head(self.forward_features(x)))

    # --- real early exit --------------------------------------------------------------------------
    @torch.no_grad()
    def forward_early_exit(
        self, x: torch.Tensor, thresholds: np.ndarray, policy: Policy, replay: np.ndarray | None = None
    ) -> EarlyExitResult:
        """Run block by block; at each exit the images whose score passes leave the batch and stop computing.

        Only the images still running continue (batch compaction). Same classes and exits as
        computing every exit and applying the rule afterwards. `replay` (N,), 0-based exit per image: each
        image leaves there whatever its score (a recorded exit pattern replayed, e.g. for timing random
        weights); the work done is the same as the rule's would be.

        x: (B, 3, H, W); thresholds: (K,) float64 as `policies.as_thresholds` gives them (the last is ignored);
        policy: a registered `policies.Policy`. Returns an EarlyExitResult of B rows. Decisions are taken on
        float64 probabilities (`policies.exit_probs`), as the simulated what-if takes them.
        """
        from ..analysis.policies import EarlyExitBook

        book = EarlyExitBook(x.shape[0], self.num_exits, self.cfg.num_classes, policy, thresholds, replay)
        stem = self.forward_stem(x)
        tokens = stem
        for k in range(self.num_exits):
            tokens = self.forward_stage(tokens if self.cfg.diagonal_mode == "stage" else stem, k)
            leave = book.leave(k, self.heads[k](self.pool(tokens)).float().cpu().numpy())
            if book.active.size == 0:
                break
            keep = torch.from_numpy(~leave).to(tokens.device)
            tokens = tokens[keep]
            stem = stem[keep]
        return EarlyExitResult(*book.result())


@dataclass
class EarlyExitResult:
    """Per image: predicted class, exit index, confidence, and the per-exit probabilities it computed
    (NaN beyond its exit)."""

    classes: np.ndarray  # (N,) int64, the class predicted at the exit it left at
    exits: np.ndarray  # (N,) int64, 0-based exit index
    confidence: np.ndarray  # (N,) float64, the top probability there
    probs: np.ndarray  # (N, K, C) float64 probabilities; NaN at exits the image never reached
