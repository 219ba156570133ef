"""Devices and numeric precision: one place that turns `--device` and `--precision` into torch objects."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch

from ..errors import METError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'; under torchrun 'cuda' means this rank's GPU."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise METError(
                f"--device {spec} asks for a GPU, but torch sees no CUDA device here; use --device cpu "
                "(or auto), or install a CUDA build of torch."
            )
        index = local_rank if spec == "cuda" else int(spec[5:])
        if index >= torch.cuda.device_count():
            raise METError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                f"pick cuda:0..cuda:{torch.cuda.device_count() - 1}."
            )
        return torch.device("cuda", index)
    raise METError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}.")


def device_name(device: torch.device) -> str:
    """A human-readable name of the device, for logs and recorded configs."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast to bf16 / fp16 on the device; fp32 runs as written."""
    if precision == "fp32":
        yield
        return
    if precision not in AUTOCAST_DTYPES:
        raise METError(f"--precision must be fp32, bf16 or fp16, got {precision!r}.")
    with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits until the device has finished its queued work (CUDA), or does nothing (CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    """Wall seconds of fn(), the device's queued work finished before and after it (`sync`: `synchronizer`)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0
