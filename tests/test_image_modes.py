"""Issue 22, item 1: every Pillow image mode gives the picture it holds (met_core.io.images.to_rgb), or one sentence.

The example: a float32 TIFF (mode F, values 0..1) of a bee was decoded nearly black and answered "ants 0.985",
the answer of an all-black image; its 8-bit copy says "bees 0.999". The property: images of every mode and
value range give the pixels of their 8-bit RGB rendering, computed here independently of met_core (within
rounding), or are refused in one sentence; equal pixels give the same class.
"""

from __future__ import annotations

import colorsys
import io
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageCms

from met_core.errors import METError
from met_core.io.images import load_image, to_rgb

from .conftest import HYMENOPTERA, ROOT, run_cli

HYM = ROOT / "checkpoints" / "hymenoptera-met"
BEE = HYMENOPTERA / "val" / "bees" / "1297972485_33266a18d9.jpg"  # its 8-bit grey copy: "bees 0.999" at the
#                                                                    last exit; an all-black image "ants 0.985"


def test_a_float_tiff_bee_is_the_bee_of_its_8bit_copy_in_the_cli_and_the_app(tmp_path):
    from met_core.engine.inference import predict_images
    from met_core.nn.checkpoint import load_checkpoint

    grey = Image.open(BEE).convert("L")
    grey.save(tmp_path / "bee-8bit.png")
    Image.fromarray(np.asarray(grey, np.float32) / 255).save(tmp_path / "bee-float.tif")  # mode F, 0..1
    rgb = np.asarray(Image.open(BEE).convert("RGB"), np.float32)
    luma = rgb @ np.float32([0.299, 0.587, 0.114]) / 255  # a float grey never rounded to 8 bits
    Image.fromarray(luma).save(tmp_path / "bee-float-unrounded.tif")
    Image.new("L", grey.size, 0).save(tmp_path / "black.png")
    assert Image.open(tmp_path / "bee-float.tif").mode == "F"
    names = ["bee-8bit.png", "bee-float.tif", "bee-float-unrounded.tif", "black.png"]

    out = json.loads(
        run_cli(
            "predict",
            "--checkpoint",
            str(HYM),
            "--json",
            "--threshold",
            "1.01",  # last exit
            *[str(tmp_path / n) for n in names],
        ).stdout
    )  # the CLI
    ref, black = out[0], out[3]
    assert (ref["class"], black["class"]) == ("bees", "ants") and ref["confidence"] > 0.99  # the numbers
    assert black["confidence"] == pytest.approx(0.985, abs=0.005)
    for r in out[1:3]:
        assert r["class"] == "bees" and abs(r["confidence"] - ref["confidence"]) < 1e-3, r

    model, _ = load_checkpoint(HYM)  # the app's upload path: binary file objects
    res = predict_images(model, [(n, io.BytesIO((tmp_path / n).read_bytes())) for n in names[:2]], 1.01)
    assert [r.class_name for r in res] == ["bees", "bees"]
    assert res[0].confidence == pytest.approx(res[1].confidence, abs=1e-6)  # the same pixels exactly


# --- the property -----------------------------------------------------------------------------------------


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return colour.astype(np.float64) * a + 255 * (1 - a)


def _grey(v: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(v, np.float64)[..., None], 3, axis=-1)


def _saved(img: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


CASES = [
    "1",
    "L",
    "LA",
    "P",
    "P-transparent",
    "PA",
    "RGB",
    "RGBA",
    "RGBX",
    "La",
    "RGBa",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I;16",
    "I;16B",
    "I;16-declared-in-PGM",
    "I",
    "F",
]


def _case(case: str, px: np.ndarray, fmt_pick: int, scale: float, offset: float, special: int):
    """(what load_image / to_rgb reads, the 8-bit RGB rendering computed here or None if it must be refused,
    the rounding tolerance in levels)."""
    h, w, _ = px.shape
    rgb, a, g = px[..., :3], px[..., 3], px[..., 0]
    if case == "1":
        return _saved(Image.fromarray(g > 127), ["PNG", "TIFF"][fmt_pick % 2]), _grey((g > 127) * 255.0), 0
    if case == "L":
        return _saved(Image.fromarray(g), ["PNG", "TIFF"][fmt_pick % 2]), _grey(g), 0
    if case == "LA":
        img = Image.fromarray(np.stack([g, a], -1), "LA")
        return _saved(img, ["PNG", "TIFF"][fmt_pick % 2]), _over_white(_grey(g), a), 1
    if case in ("P", "P-transparent", "PA"):
        p = Image.fromarray(rgb).quantize(8)
        idx, pal = np.asarray(p), np.asarray(p.getpalette()[:768], np.float64).reshape(-1, 3)
        colour = pal[idx]
        if case == "P":
            return _saved(p, ["PNG", "TIFF"][fmt_pick % 2]), colour, 0
        if case == "P-transparent":
            t = int(idx.flat[0])
            return _saved(p, "PNG", transparency=t), np.where((idx == t)[..., None], 255.0, colour), 0
        pa = Image.merge("PA", [p, Image.fromarray(a)])
        pa.putpalette(p.getpalette())
        return _saved(pa, "TIFF"), _over_white(colour, a), 1
    if case == "RGB":
        return _saved(Image.fromarray(rgb), ["PNG", "TIFF", "PPM", "BMP"][fmt_pick % 4]), rgb, 0
    if case == "RGBA":
        return _saved(Image.fromarray(px, "RGBA"), ["PNG", "TIFF"][fmt_pick % 2]), _over_white(rgb, a), 1
    if case == "RGBX":
        return _saved(Image.fromarray(px, "RGBA").convert("RGBX"), "TIFF"), rgb, 0
    if case in ("La", "RGBa"):  # premultiplied: no format writes them, so the image itself
        colour = (rgb[..., :1] if case == "La" else rgb).astype(np.float64)
        pm = np.rint(colour * a[..., None] / 255).astype(np.uint8)
        img = Image.frombytes(case, (w, h), np.concatenate([pm, a[..., None]], -1).tobytes())
        return img, (_grey(pm[..., 0]) if case == "La" else pm) + (255.0 - a[..., None]), 1
    if case == "CMYK":  # any ink values: the uncalibrated rendering (255 - C)(255 - K) / 255
        cmyk = np.concatenate([255 - rgb, a[..., None]], -1)
        want = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255
        return _saved(Image.fromarray(cmyk, "CMYK"), "TIFF"), want, 1
    if case == "YCbCr":  # JFIF: the decoder of every JPEG
        y, cb, cr = (px[..., i].astype(np.float64) for i in range(3))
        want = np.stack(
            [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], -1
        ).clip(0, 255)
        return _saved(Image.fromarray(rgb, "YCbCr"), "TIFF"), want, 2
    if case == "LAB":  # ICC colour management (lcms), the reference for CIELAB
        img = Image.fromarray(rgb, "LAB")
        t = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return _saved(img, "TIFF"), np.asarray(ImageCms.applyTransform(img, t), np.float64), 0
    if case == "HSV":  # no format writes HSV: the image itself; colorsys is the reference
        want = np.array([[colorsys.hsv_to_rgb(*(v / 255 for v in p)) for p in row] for row in rgb]) * 255
        return Image.fromarray(rgb, "HSV"), want, 2
    v16 = (px[..., 0].astype(np.uint32) * 256 + px[..., 1]).astype(np.uint16)  # full 16-bit values
    if case in ("I;16", "I;16B"):
        img = (
            Image.fromarray(v16)
            if case == "I;16"  # Pillow's convert("I;16B") clips at 255: built from bytes
            else Image.frombytes("I;16B", (w, h), v16.astype(">u2").tobytes())
        )
        return _saved(img, ["PNG", "TIFF"][fmt_pick % 2] if case == "I;16" else "TIFF"), _grey(v16 / 257.0), 1
    if case == "I;16-declared-in-PGM":  # a PGM of 16-bit samples, even if they are all small: the file says 16
        small = v16 >> (special % 16)
        return _saved(Image.fromarray(small.astype(np.uint16)), "PPM"), _grey(small / 257.0), 1
    if case == "I":  # a 32-bit container: the smallest of 8, 16 or 31 bits that holds the values
        vals = [g.astype(np.int64), v16.astype(np.int64), v16.astype(np.int64) * 32768 + g, g.astype(np.int64) - 128][
            special % 4
        ]
        img = _saved(Image.fromarray(vals.astype(np.int32)), "TIFF")
        if vals.min() < 0:
            return img, None, 0
        full = 255 if vals.max() <= 255 else 65535 if vals.max() <= 65535 else 2**31 - 1
        return img, _grey(vals * (255 / full)), 1
    # F: floats of any range, NaN and infinities
    base = px[..., 0].astype(np.float64) / 255
    vals = [
        base,
        np.round(base * 255),
        np.round(base * 65535),
        base * scale + offset,
        np.where(px[..., 1] > 200, np.nan, base),
        np.where(px[..., 1] > 200, np.inf, base),
    ][special % 6]
    vals = vals.astype(np.float32)
    img = _saved(Image.fromarray(vals), "TIFF")
    lo, hi = float(np.min(vals)), float(np.max(vals))
    if not np.isfinite(vals).all():
        return img, None, 0
    if lo >= -0.5 / 255 and hi <= 1 + 0.5 / 255:
        return img, _grey(vals.clip(0, 1) * 255.0), 1
    if lo >= 0 and hi <= 65535 and (vals == np.round(vals)).all():
        return img, _grey(vals * (255 / (255 if hi <= 255 else 65535))), 1
    return img, None, 0


@settings(
    max_examples=int(os.environ.get("MET_MODE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    case=st.sampled_from(CASES),
    px=st.integers(1, 9).flatmap(
        lambda h: st.integers(1, 9).flatmap(lambda w: arrays(np.uint8, (h, w, 4), elements=st.integers(0, 255)))
    ),
    fmt_pick=st.integers(0, 3),
    scale=st.floats(0.001, 1e6),
    offset=st.floats(-1e3, 1e3),
    special=st.integers(0, 1000),
)
def test_every_mode_and_value_range_gives_its_8bit_rendering_or_one_sentence(
    case, px, fmt_pick, scale, offset, special
):
    src, want, tol = _case(case, px, fmt_pick, scale, offset, special)
    try:
        img = load_image(src, f"{case}.img") if isinstance(src, io.BytesIO) else to_rgb(src, f"{case}.img")
    except METError as e:
        assert want is None, (case, str(e))
        msg = str(e)
        assert "\n" not in msg and msg.startswith(f"{case}.img ") and msg.endswith(".")
        return
    assert want is not None, f"{case} should have been refused"
    got = np.asarray(img, np.float64)
    assert img.mode == "RGB" and got.shape == want.shape
    assert np.abs(got - np.rint(want)).max() <= tol, (case, got.tolist(), np.rint(want).tolist())


def test_an_unknown_or_future_mode_is_one_sentence():
    img = Image.new("L", (2, 2))
    img._mode = "XYZ"  # a mode MET has no rule for (Pillow adds one now and then)
    with pytest.raises(METError, match="has the image mode 'XYZ', which MET does not read; save it as an 8-bit RGB"):
        to_rgb(img, "odd.tif")
