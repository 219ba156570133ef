"""The one reader of safetensors files (backbone weights and checkpoints' trained tensors), in any floating dtype.

Published weights come in bfloat16, float16, float32, float64 and the float8 types. Every tensor is read in the
dtype it is stored in, hashed on those stored bytes (so a file's digest does not depend on how it is used),
and cast to MET's compute dtype, float32 (bf16/fp16 precision is applied at run time by autocast). A dtype that
is not floating point (int8 or uint8 quantised weights, bool, complex), or one this torch cannot cast, is
refused in one sentence naming the tensor and its dtype, before the tensor is read: its values mean nothing
without a dequantisation recipe MET does not know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

from ..errors import METError

COMPUTE_DTYPE = torch.float32
# safetensors' names of floating-point dtypes (those torch reads today: F64 F32 F16 BF16 and the F8 family)
FLOAT_NAMES = ("F64", "F32", "F16", "BF16")
FLOAT_PREFIX = "F8_"
READABLE = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "C64": "complex64",
    "F4": "float4",
    "F6_E2M3": "float6",
    "F6_E3M2": "float6",
    "F8_E8M0": "float8_e8m0",
}


def is_floating(name: str) -> bool:
    """Whether a safetensors dtype name (its header's `dtype`) is a floating-point type."""
    return name in FLOAT_NAMES or name.startswith(FLOAT_PREFIX)


def hash_tensor(h: hashlib._Hash, name: str, t: torch.Tensor) -> None:
    """Add one tensor to a content hash: its name, shape and raw bytes as stored (any dtype)."""
    t = t.detach().to("cpu").contiguous()
    h.update(name.encode())
    h.update(str(tuple(t.shape)).encode())
    if t.numel():  # an empty tensor has no bytes (and a stride view() refuses)
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def tensors_sha256(state: dict[str, torch.Tensor], skip: Iterable[str] = ("head.",)) -> str:
    """A content hash of tensors (names, shapes and stored bytes; names starting with `skip` left out)."""
    h = hashlib.sha256()
    for k in sorted(state):
        if not k.startswith(tuple(skip)):
            hash_tensor(h, k, state[k])
    return h.hexdigest()


def load_floating(file: str, skip_hash: Iterable[str] = ("head.",)) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of a safetensors file cast to COMPUTE_DTYPE, and `tensors_sha256` of the tensors as stored.

    The dtypes are checked from the header before any tensor is read; a non-floating one is one sentence.
    safetensors' own errors (a damaged file) propagate for the caller's sentence.
    """
    from safetensors import safe_open

    skip = tuple(skip_hash)
    out: dict[str, torch.Tensor] = {}
    h = hashlib.sha256()
    with safe_open(file, framework="pt") as f:
        keys = sorted(f.keys())
        for k in keys:
            dtype = f.get_slice(k).get_dtype()
            if not is_floating(dtype):
                raise METError(
                    f"{file} stores {k} as {READABLE.get(dtype, dtype)} ({dtype}), not a floating-point "
                    "type; MET reads weights in float64, float32, float16, bfloat16 or float8 only: "
                    "dequantise the file first."
                )
        for k in keys:
            t = f.get_tensor(k)
            if not k.startswith(skip):
                hash_tensor(h, k, t)
            try:
                out[k] = t.to(COMPUTE_DTYPE)
            except (RuntimeError, TypeError) as e:
                raise METError(
                    f"{file} stores {k} as {t.dtype}, which this torch cannot cast to float32 "
                    f"({str(e)[:80]}); save the file in float32, float16 or bfloat16."
                ) from None
    return out, h.hexdigest()
