"""PyTorch's own distributed engine, as MET uses it under `torchrun`: one process per device.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs as one process and every helper
here is the identity. The helpers keep multi-process results equal to a single process's: gathers return
rows in rank order, and sums of disjoint contributions are exact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import METError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0


def env_int(name: str, default: int) -> int:
    """An integer from torchrun's environment, with one sentence when it is not one."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise METError(f"environment variable {name}={value[:40]!r} is not an integer; unset it or let torchrun "
                       "set it.") from None


def init_distributed(device_type: str) -> DistContext:
    """Join the torchrun job if there is one (NCCL for CUDA, gloo for CPU); a single process otherwise."""
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    ctx = DistContext(env_int("RANK", 0), world, env_int("LOCAL_RANK", 0))
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        except (ValueError, RuntimeError) as e:
            raise METError(f"WORLD_SIZE={world} asks for several processes, but the process group could not start "
                           f"({str(e).splitlines()[0][:160]}); launch with torchrun, or unset WORLD_SIZE.") from None
    return ctx


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_rows(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """All ranks' rows of `x`, concatenated in rank order; differentiable (gradients flow back to each rank).

    Shards may differ in length by a few rows: they are padded to the longest for the collective.
    """
    if not ctx.enabled:
        return x
    sizes = torch.zeros(ctx.world_size, dtype=torch.long, device=x.device)
    sizes[ctx.rank] = len(x)
    dist.all_reduce(sizes)
    longest = int(sizes.max())
    padded = torch.cat([x, x.new_zeros((longest - len(x), *x.shape[1:]))]) if len(x) < longest else x
    if padded.requires_grad:
        from torch.distributed.nn.functional import all_gather  # its backward sums every rank's gradient
        parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        dist.all_gather(parts, padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes, strict=True)])


def sum_across(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise sum over ranks (in place on a copy); the identity for one process."""
    if not ctx.enabled:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x
