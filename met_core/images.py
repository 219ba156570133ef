"""Reading one image safely, without torch: the app's pages show pictures before any model is loaded."""
from __future__ import annotations

import os
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import METError
from .limits import MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, check_image_size, regular_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: palette/alpha images over white, 16-bit greyscale scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)  # float32: a 40-megapixel 16-bit image stays within bounds
        hi = float(arr.max()) if arr.size and arr.max() > 255 else 255.0
        arr *= 255.0 / hi
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        return bg
    return img.convert("RGB")


def load_image(source: str | os.PathLike | IO[bytes], name: str | None = None, resize_to: int | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image (path or binary file object) as RGB: first frame of animations, EXIF orientation
    applied; its size, and what resizing to `resize_to` would make of it, checked from the header before
    any pixel is decoded (limits.check_image_size); one-sentence errors."""
    name = name or str(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise METError(f"{name} does not exist; check the path.")
        regular_file(source, "an image", MAX_IMAGE_FILE_BYTES)  # a pipe named .jpg would block forever
    try:
        with Image.open(source) as img:
            check_image_size(*img.size, name, resize_to, max_pixels)
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as e:  # PIL's own guard
        raise METError(f"{name} is refused as a decompression bomb ({e}); downscale it first.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        reason = str(e).replace(repr(source), repr(name))  # uploads: the file name, not a BytesIO repr
        raise METError(f"{name} is not a readable image ({type(e).__name__}: {reason[:200]}); remove or replace "
                       "it.") from None
