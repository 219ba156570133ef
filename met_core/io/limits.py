"""Resource bounds for untrusted input, in one place: how large a file, an image, a trace or a weights file
may be, and the readers that enforce them before anything large is allocated.

The budget: no single input makes a process allocate more than about 1 GiB above its baseline, or work
more than a few seconds, before it is answered or refused.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, TypeVar

from ..config import TaggedFile, config_from_dict
from ..errors import METError

T = TypeVar("T", bound=TaggedFile)

MAX_JSON_BYTES = 64 * 2**20  # config.json (sample ids of a full dataset fit), metrics.json, exit rules
MAX_TRACE_BYTES = 128 * 2**20  # a trace's arrays, decompressed: what-ifs derive ~6x the logits in float32 from
#                                them, which must stay within the budget (10,000 x 4 x 1,000 fp16 logits fit)
MAX_PATH_CHARS = 4096  # a folder typed into the app: longer than any real path
MAX_TEXT_CHARS = {"ids": 4096, "class_names": 200, "meta": 1_000_000}  # per string item of a trace's text arrays
MAX_TRAINED_BYTES = 512 * 2**20  # a checkpoint's model.safetensors: adapters and heads only
MAX_WEIGHTS_BYTES = 4 * 2**30  # a backbone weights file (ViT-L/14 in fp32 is 1.2 GB)
MAX_IMAGE_FILE_BYTES = 256 * 2**20  # an image file on disk
MAX_IMAGE_PIXELS = 40_000_000  # decoded pixels of one image (120 MB as RGB)
MAX_RESIZED_PIXELS = 16_000_000  # what resizing the short side to the model's size may produce before the crop
MAX_CONFUSION_CLASSES = 1_000  # a what-if's confusion matrix is C x C: at most 8 MB (per-class accuracy: any C)


def regular_file(path: str | os.PathLike, what: str, max_bytes: int, inside: Path | None = None) -> int:
    """The size of `path` if it is a regular file (links followed) of at most `max_bytes`, and, with `inside`,
    one whose real location lies inside that folder; else one sentence. FIFOs, devices and sockets never
    are read: their reads would never end."""
    path = Path(path)
    if inside is not None and not path.resolve().is_relative_to(inside.resolve()):
        raise METError(
            f"{path} resolves to {path.resolve()}, outside {inside}; MET reads no file out of the "
            "folder it was given: copy the file into it."
        )
    try:
        st = path.stat()
    except FileNotFoundError:
        raise METError(f"{path} is missing; {what} must be there.") from None
    except OSError as e:
        raise METError(f"{path} cannot be read ({e.strerror}); check its permissions.") from None
    if not stat.S_ISREG(st.st_mode):
        raise METError(f"{path} is not a regular file (a folder, device, pipe or socket); {what} must be a file.")
    if st.st_size > max_bytes:
        raise METError(
            f"{path} is {st.st_size:,} bytes, more than the {max_bytes:,} allowed for {what}; it is not "
            "a file MET wrote, or it is damaged."
        )
    return st.st_size


def read_bounded(path: str | os.PathLike, what: str, max_bytes: int, inside: Path | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (checked before and while reading)."""
    regular_file(path, what, max_bytes, inside)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise METError(f"{path} grew past {max_bytes:,} bytes while being read; {what} must be a stable file.")
    return data


def read_json(
    path: str | os.PathLike, what: str, again: str, max_bytes: int = MAX_JSON_BYTES, inside: Path | None = None
) -> Any:
    """A JSON file of bounded size (a regular file, inside `inside` if given), parsed; one sentence if not."""
    try:
        return json.loads(read_bounded(path, what, max_bytes, inside))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise METError(f"{path} is not valid JSON ({type(e).__name__}); {again}.") from None


def read_tagged_json(
    path: str | os.PathLike,
    what: str,
    fmt: str,
    again: str,
    max_bytes: int = MAX_JSON_BYTES,
    inside: Path | None = None,
) -> dict[str, Any]:
    """A small JSON object of a given format (exit rules, temperatures, latency profiles, export manifests):
    bounded, parsed and its `format` checked, in one sentence each; returned without the format key."""
    data = read_json(path, what, again, max_bytes, inside)
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise METError(f"{path} is not {what} of MET (format must be '{fmt}'); {again}.")
    data.pop("format")
    return data


def read_tagged_file(
    cls: type[T],
    path: str | os.PathLike,
    what: str,
    again: str,
    max_bytes: int = MAX_JSON_BYTES,
    inside: Path | None = None,
    ignore_unknown: bool = False,
) -> T:
    """A small file format declared as a `TaggedFile` dataclass: read with `read_tagged_json`, every field checked
    by `config_from_dict` (its type, Range and length), then the class's `check`; one sentence for the first fault,
    ending with what to do (`again`)."""
    data = read_tagged_json(path, what, cls.FORMAT, again, max_bytes, inside)
    try:
        record = config_from_dict(cls, data, str(path), ignore_unknown)
        record.check(str(path))
    except METError as e:
        raise METError(f"{str(e).rstrip('.')}; {again}.") from None
    return record


def check_image_size(
    width: int, height: int, name: str, resize_to: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> None:
    """Refuse an image before decoding it: by its own pixels, and by what resizing its short side to
    `resize_to` would make of it (a 1 x 40,000 strip becomes 112 x 4,480,000 pixels)."""
    if width < 1 or height < 1:
        raise METError(f"{name} has no pixels ({width}x{height}); remove or replace it.")
    if width * height > max_pixels:
        raise METError(f"{name} is {width}x{height} pixels, over the limit of {max_pixels:,}; downscale it first.")
    if resize_to is not None:
        short, long = min(width, height), max(width, height)
        resized = resize_to * (resize_to * long // short + 1)
        if resized > MAX_RESIZED_PIXELS:
            raise METError(
                f"{name} is {width}x{height} pixels: resized to {resize_to} px on its short side it would "
                f"become {resized:,} pixels (aspect ratio {long / short:,.0f}:1); crop it closer to "
                "square first."
            )
