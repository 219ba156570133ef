"""Reading one image safely, without torch: the app's pages show pictures before any model is loaded."""

from __future__ import annotations

import os
from typing import IO

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from ..errors import METError
from .limits import MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, check_image_size, regular_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# The one conversion from any Pillow mode to the 8-bit RGB picture it holds (`to_rgb`). Each mode's rule:
#   RGB                    as is; RGBX: the padding byte dropped
#   1, L                   grey (1: 0 black, 1 white) repeated in R, G and B
#   P                      the palette's colours
#   CMYK, YCbCr, LAB, HSV  Pillow's colour conversion (CMYK without an ICC profile)
#   I;16, I;16L, I;16B,    0..65535 (their 16 bits) to 0..255
#   I;16N
#   I (32-bit integers)    the bit depth the file declares when it is 16 or less (16-bit TIFFs; PNG and PGM,
#                          which Pillow opens at 16 bits); else (32-bit containers, images built in memory) the
#                          smallest of 8, 16 or 31 bits that holds the largest value; negative values: refused
#   F (32-bit floats)      values in [0, 1] as 0..1 (an overshoot of half an 8-bit level is clipped); else whole
#                          numbers in 0..255 as 8-bit and in 0..65535 as 16-bit values; anything else (other
#                          ranges, NaN, infinities): refused, since no range can be told from the values alone
#   alpha                  LA, PA, RGBA, P with transparency, and a transparent colour key (`transparency` of
#                          1, L, RGB, I and I;16 images): composited over white
#   La, RGBa               premultiplied alpha: composited over white (colour + 255 - alpha)
#   any other mode         refused
# Refusals are one sentence (METError) naming the file and what to save it as: never a silent wrong picture.
FLOAT_SLACK = 0.5 / 255  # a float image in [0, 1] may overshoot by half an 8-bit level (resampling, rounding)
_PILLOW_RGB = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_STRAIGHT_ALPHA = ("LA", "PA", "RGBA")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def declared_bits(img: Image.Image) -> int | None:
    """Bits per sample an integer greyscale file declares (its mode 'I' says only 32-bit container), or None:
    PNG and PGM are 16-bit (Pillow scales a PGM's maxval to 16 bits), a TIFF says it in BitsPerSample (one bit
    less when SampleFormat says signed)."""
    if img.format in ("PNG", "PPM"):
        return 16
    tags = getattr(img, "tag_v2", None)
    if tags is None or 258 not in tags:
        return None
    bits = tags[258][0] if isinstance(tags[258], tuple) else tags[258]
    fmt = tags.get(339, 1)
    signed = (fmt[0] if isinstance(fmt, tuple) else fmt) == 2
    return int(bits) - int(signed)


def _grey_levels(img: Image.Image, name: str, bits: int | None) -> np.ndarray:
    """An I, I;16 or F image as float32 grey levels in 0..255 (before rounding), by the rules above."""
    arr = np.array(img, dtype=np.float32)  # a float32 copy: a 40-megapixel image stays within bounds
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode == "F":
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise METError(
                f"{name} holds NaN or infinite pixel values; save it with finite values, or as an 8- or 16-bit image."
            )
        if lo >= -FLOAT_SLACK and hi <= 1 + FLOAT_SLACK:
            arr *= 255.0
            return arr
        if lo >= 0 and hi <= 65535 and np.array_equal(arr, np.round(arr)):
            full = 255.0 if hi <= 255 else 65535.0
        else:
            raise METError(
                f"{name} is a floating-point image with values from {lo:.4g} to {hi:.4g}, and MET reads "
                "floats only as 0..1 (or whole numbers 0..255 or 0..65535); rescale it to 0..1, or save "
                "it as an 8- or 16-bit image."
            )
    elif img.mode in _SIXTEEN_BIT:
        full = 65535.0
    else:  # I: 32-bit signed integers
        if lo < 0:
            raise METError(
                f"{name} holds negative pixel values (down to {lo:.0f}), so MET cannot tell which value "
                "is black; save it as an 8- or 16-bit image."
            )
        if bits is None or bits > 16:
            bits = 8 if hi <= 255 else 16 if hi <= 65535 else 31
        full = float(2**bits - 1)
    arr *= 255.0 / full
    return arr


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    return np.rint(arr, out=arr).clip(0, 255).astype(np.uint8)


def _over_white(rgb: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """`rgb` (straight colours) composited over white where `alpha` (mode L) is below 255."""
    if alpha is None or alpha.getextrema() == (255, 255):
        return rgb
    bg = Image.new("RGB", rgb.size, (255, 255, 255))
    bg.paste(rgb, mask=alpha)
    return bg


def to_rgb(img: Image.Image, name: str = "the image", bits: int | None = None) -> Image.Image:
    """The 8-bit RGB picture any Pillow image holds, by the rules above, or one sentence (METError) naming
    `name`. `bits`: what the file declares for a mode-I image (`declared_bits`)."""
    mode, key = img.mode, img.info.get("transparency")
    if mode in ("La", "RGBa"):  # premultiplied: colour + (255 - alpha) is the colour over white
        *colour, alpha = img.split()
        inv = ImageChops.invert(alpha)
        bands = [ImageChops.add(c, inv) for c in colour]
        return Image.merge("RGB", bands * 3 if len(bands) == 1 else bands)
    if mode in ("I", "F", *_SIXTEEN_BIT):
        grey = Image.fromarray(_to_uint8(_grey_levels(img, name, bits)), "L")
        alpha = None
        if key is not None and mode != "F" and isinstance(key, int):
            alpha = Image.fromarray(np.where(np.asarray(img) == key, 0, 255).astype(np.uint8), "L")
        return _over_white(grey.convert("RGB"), alpha)
    if (
        mode in _STRAIGHT_ALPHA
        or (key is not None and mode in ("1", "L", "P", "RGB"))
        or (mode == "P" and img.palette is not None and img.palette.mode == "RGBA")
    ):
        rgba = img.convert("RGBA")
        return _over_white(rgba.convert("RGB"), rgba.getchannel("A"))
    if mode in _PILLOW_RGB:
        return img.convert("RGB")
    raise METError(f"{name} has the image mode {mode!r}, which MET does not read; save it as an 8-bit RGB image.")


def load_image(
    source: str | os.PathLike | IO[bytes],
    name: str | None = None,
    resize_to: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
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
            return to_rgb(ImageOps.exif_transpose(img), name, declared_bits(img))
    except Image.DecompressionBombError as e:  # PIL's own guard
        raise METError(f"{name} is refused as a decompression bomb ({e}); downscale it first.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        reason = str(e).replace(repr(source), repr(name))  # uploads: the file name, not a BytesIO repr
        raise METError(f"{name} is not a readable image ({reason[:200].rstrip('.')}); remove or replace it.") from None
