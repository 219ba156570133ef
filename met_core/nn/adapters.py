"""E-adapters: shared down/up projections with an exit-specific diagonal in the bottleneck.

An adapter adds `s * up(act(down(x)) * g_k)` to the token stream before the attention and before the
MLP of every block. `down`/`up` are shared by all exits (per site, or one pair for the whole network);
`g_k` is a length-r vector owned by exit k. `up` starts at zero, so training starts from the
pre-trained network.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import SITES_PER_BLOCK


class EAdapters(nn.Module):
    """All E-adapters of a network. `forward(x, site, exit_idx)` returns x plus the adapter's update."""

    def __init__(
        self,
        depth: int,
        dim: int,
        num_exits: int,
        r: int = 8,
        scale: float = 1.0,
        sharing: str = "site",
        exit_diagonals: bool = True,
    ) -> None:
        super().__init__()
        self.sharing = sharing
        self.scale = scale
        n_pairs = SITES_PER_BLOCK * depth if sharing == "site" else 1
        self.down = nn.ModuleList(nn.Linear(dim, r) for _ in range(n_pairs))
        self.up = nn.ModuleList(nn.Linear(r, dim) for _ in range(n_pairs))
        for up in self.up:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.act = nn.GELU()
        self.diag = nn.Parameter(torch.ones(num_exits, r)) if exit_diagonals else None

    def pair_index(self, site: int) -> int:
        """Which shared (down, up) pair serves a site: its own under 'site' sharing, the one pair under 'global'."""
        return site if self.sharing == "site" else 0

    def forward(self, x: torch.Tensor, site: int, exit_idx: int) -> torch.Tensor:
        """x + s * up(GELU(down(x)) * g_k) at adapter site `site` (0-based, two per block) for exit k = `exit_idx`:
        tokens (B, T, D) -> (B, T, D), the bottleneck (B, T, r). Source: MET's E-adapter (arXiv 2409.13999; our
        reading in docs/method.md)."""
        j = self.pair_index(site)
        h = self.act(self.down[j](x))
        if self.diag is not None:
            h = h * self.diag[exit_idx]
        return x + self.scale * self.up[j](h)

    def macs_per_token(self) -> int:
        """Multiply-adds one adapter site spends per token (the two projections)."""
        return 2 * self.down[0].in_features * self.down[0].out_features
