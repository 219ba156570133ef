"""PyTorch's own distributed engine, as MET uses it under `torchrun`: one process per device.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs as one process and every helper
here is the identity. The helpers keep multi-process results equal to a single process's: gathers return
rows in rank order, and sums of disjoint contributions are exact.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import PrefixStore
from torch.distributed.constants import default_pg_timeout

from ..errors import METError


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


# how long the processes of a job wait for each other before giving up (seconds); the collectives after the
# rendezvous keep torch's own timeout
RENDEZVOUS_TIMEOUT_S = 60.0
MAX_RENDEZVOUS_TIMEOUT_S = 86_400.0
UNSET = "unset WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for a single process"


def env_int(name: str, default: int, lo: int = 0, hi: int | None = None) -> int:
    """An integer in [lo, hi] from the launcher's environment, with one sentence when it is not one."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise METError(
            f"environment variable {name}={value[:40]!r} is not an integer; unset it or let torchrun set it."
        ) from None
    if n < lo or (hi is not None and n > hi):
        within = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise METError(f"environment variable {name}={n} must be {within}; {UNSET}, or let torchrun set them.")
    return n


def rendezvous_timeout() -> float:
    """Seconds the processes of a job wait for each other: MET_RENDEZVOUS_TIMEOUT, or 60."""
    value = os.environ.get("MET_RENDEZVOUS_TIMEOUT")
    if value is None or not value.strip():
        return RENDEZVOUS_TIMEOUT_S
    try:
        t = float(value)
    except ValueError:
        t = float("nan")
    if not 0 < t <= MAX_RENDEZVOUS_TIMEOUT_S:  # NaN too
        raise METError(
            f"environment variable MET_RENDEZVOUS_TIMEOUT={value[:40]!r} must be a number of seconds "
            f"above 0 and at most {MAX_RENDEZVOUS_TIMEOUT_S:,.0f}; unset it for "
            f"{RENDEZVOUS_TIMEOUT_S:.0f} s."
        )
    return t


def launcher_context() -> DistContext:
    """This process's place in the job from the launcher's variables, checked for consistency before any
    rendezvous: a single process when WORLD_SIZE is unset or 1 (and then no rank may point elsewhere), else a
    rank below WORLD_SIZE with the address (MASTER_ADDR, MASTER_PORT) where the processes meet."""
    world = env_int("WORLD_SIZE", 1, lo=1)
    if world == 1:
        stray = [f"{name}={os.environ[name]}" for name in ("RANK", "LOCAL_RANK") if env_int(name, 0, lo=-(2**63)) != 0]
        if stray:
            raise METError(
                f"{' and '.join(stray)} is set but WORLD_SIZE is {os.environ.get('WORLD_SIZE', 'unset')}, "
                f"so there is no such process; {UNSET}, or launch with torchrun."
            )
        return DistContext()
    rank = env_int("RANK", 0, hi=world - 1)
    local_world = env_int("LOCAL_WORLD_SIZE", world, lo=1, hi=world)
    local_rank = env_int("LOCAL_RANK", rank % local_world, hi=local_world - 1)
    if "RANK" not in os.environ:
        raise METError(
            f"WORLD_SIZE={world} asks for {world} processes but RANK is unset, so this process has no "
            f"place among them; launch with torchrun --nproc_per_node {world}, or {UNSET}."
        )
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name, "").strip():
            raise METError(
                f"WORLD_SIZE={world} asks for {world} processes but {name} is unset, so they have no "
                f"place to meet; launch with torchrun --nproc_per_node {world}, or {UNSET}."
            )
    env_int("MASTER_PORT", 0, lo=1, hi=65_535)
    return DistContext(rank, world, local_rank)


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """torch's C++ store logs its connection retries (with C++ stack frames) straight to file descriptor 2;
    they are sent to a temporary file instead, so a failed rendezvous is one sentence."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _rendezvous(ctx: DistContext, timeout: float) -> dist.Store:
    """Meet every process of the job at MASTER_ADDR:MASTER_PORT within `timeout` seconds (torch's env://
    rendezvous, then a count of arrivals, which also holds when a launcher's agent serves the store)."""
    from torch.distributed.rendezvous import rendezvous

    limit = timedelta(seconds=timeout)
    store, _, _ = next(rendezvous("env://", rank=ctx.rank, world_size=ctx.world_size, timeout=limit))
    store.set_timeout(limit)
    key = f"met/joined/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if store.add(key, 1) >= ctx.world_size:
        store.set(key + "/all", "1")
    store.wait([key + "/all"], limit)
    store.set_timeout(default_pg_timeout)  # what follows are the job's collectives, on torch's own timeout
    return store


def init_distributed(device_type: str) -> DistContext:
    """Join the torchrun job if there is one (NCCL for CUDA, gloo for CPU); a single process otherwise.

    The launcher's variables are checked first (`launcher_context`); then the processes must all arrive
    within MET_RENDEZVOUS_TIMEOUT seconds (default 60), or the run ends in one sentence: a WORLD_SIZE left in
    a shell without torchrun never waits for peers that will not come."""
    ctx = launcher_context()
    if not ctx.enabled or dist.is_initialized():
        return ctx
    timeout = rendezvous_timeout()
    where = f"{os.environ['MASTER_ADDR'].strip()[:60]}:{os.environ['MASTER_PORT'].strip()}"
    try:
        with _native_stderr_quiet():
            store = _rendezvous(ctx, timeout)
            dist.init_process_group(
                "nccl" if device_type == "cuda" else "gloo",
                store=PrefixStore("default_pg", store),
                rank=ctx.rank,
                world_size=ctx.world_size,
            )
    except (ValueError, RuntimeError) as e:
        timed_out = "timed out" in str(e).lower()
        why = (
            f"not all {ctx.world_size} processes met at {where} within {timeout:g} s (MET_RENDEZVOUS_TIMEOUT)"
            if timed_out
            else f"the process group could not start at {where} ({' '.join(str(e).split())[:160]})"
        )
        raise METError(
            f"WORLD_SIZE={ctx.world_size} and RANK={ctx.rank} ask for a multi-process job, but {why}; "
            f"launch every process with torchrun --nproc_per_node {ctx.world_size}, or {UNSET}."
        ) from None
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
