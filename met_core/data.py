"""Datasets: torchvision names, ImageFolder trees, VTAB-1k style sub-sampling, images -> tensors.

Every dataset is seen through `ImageDataset`: sample ids (paths relative to the root for folders),
integer labels, class names, and an image loader that always returns RGB.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms

from .errors import METError
from .paths import cache_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# name -> (torchvision class, kwargs for the train split, kwargs for the test split)
TORCHVISION_DATASETS: dict[str, tuple[str, dict, dict]] = {
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}),
    "fashion_mnist": ("FashionMNIST", {"train": True}, {"train": False}),
    "mnist": ("MNIST", {"train": True}, {"train": False}),
    "svhn": ("SVHN", {"split": "train"}, {"split": "test"}),
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "test"}),
    "oxford_pets": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "dtd": ("DTD", {"split": "train"}, {"split": "test"}),
    "food101": ("Food101", {"split": "train"}, {"split": "test"}),
    "stl10": ("STL10", {"split": "train"}, {"split": "test"}),
    "eurosat": ("EuroSAT", {}, {}),  # one split: sub-sample it
}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: palette/alpha images over white, 16-bit greyscale scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size and arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        return bg
    return img.convert("RGB")


MAX_PIXELS = 50_000_000  # refuse larger images before decoding them (decompression bombs)


def load_image(source: str | os.PathLike | IO[bytes], name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image (path or binary file object) as RGB: first frame of animations, EXIF orientation
    applied, size checked from the header before any pixel is decoded; one-sentence errors."""
    name = name or str(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise METError(f"{name} does not exist; check the path.")
    try:
        with Image.open(source) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise METError(f"{name} is {w}x{h} pixels, over the limit of {max_pixels:,}; downscale it first.")
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as e:  # PIL's own guard, hit when max_pixels is above its limit
        raise METError(f"{name} is refused as a decompression bomb ({e}); downscale it first.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        reason = str(e).replace(repr(source), repr(name))  # uploads: the file name, not a BytesIO repr
        raise METError(f"{name} is not a readable image ({type(e).__name__}: {reason}); remove or replace it.") from None


def make_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """The preprocessing a checkpoint records: bicubic resize of the short side, centre crop, normalise."""
    return transforms.Compose([
        transforms.Resize(img_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Samples with ids, labels and class names; items are (tensor, label, index)."""

    root: str
    ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    get_image: Callable[[int], Image.Image]
    transform: Callable | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img = self.get_image(i)
        return (self.transform(img) if self.transform else img), int(self.labels[i]), i

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        idx = [int(i) for i in indices]
        return ImageDataset(self.root, [self.ids[i] for i in idx], self.labels[idx], self.class_names,
                            lambda j, g=self.get_image, m=idx: g(m[j]), self.transform)


def open_dataset(spec: str, split: str = "train", download: bool = True, data_root: str | None = None) -> ImageDataset:
    """A folder path (ImageFolder layout `<class>/<file>`) or a torchvision dataset name."""
    if spec.lower() in TORCHVISION_DATASETS:
        return _torchvision_dataset(spec.lower(), split, download, data_root)
    path = Path(spec)
    if not path.exists():
        names = ", ".join(sorted(TORCHVISION_DATASETS))
        raise METError(f"dataset '{spec}' is neither an existing folder nor a known dataset name ({names}).")
    return image_folder(path)


def image_folder(root: Path) -> ImageDataset:
    """Scan `root/<class>/<file>`; non-image extensions are skipped, unreadable images fail when loaded."""
    if not root.is_dir():
        raise METError(f"{root} is not a folder; give an ImageFolder tree (one sub-folder per class).")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise METError(f"{root} has no class sub-folders; lay it out as {root}/<class>/<image>.")
    ids, labels = [], []
    for label, c in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / c)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    ids.append(os.path.relpath(os.path.join(dirpath, f), root))
                    labels.append(label)
    if not ids:
        raise METError(f"{root} has class folders but no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    root_s = str(root.resolve())
    return ImageDataset(root_s, ids, np.asarray(labels, dtype=np.int64), classes,
                        lambda i: load_image(os.path.join(root_s, ids[i])))


def _torchvision_dataset(name: str, split: str, download: bool, data_root: str | None) -> ImageDataset:
    import torchvision.datasets as tvd

    cls_name, train_kw, test_kw = TORCHVISION_DATASETS[name]
    root = Path(data_root) if data_root else cache_dir() / "datasets"
    kw = train_kw if split == "train" else test_kw
    try:
        ds = getattr(tvd, cls_name)(root=str(root), download=download, **kw)
    except Exception as e:  # network errors, missing files, checksum errors
        raise METError(f"could not get {name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       f"connect to the internet once or put its files under {root}.") from None
    labels = np.asarray(_tv_labels(ds), dtype=np.int64)
    classes = [str(c) for c in getattr(ds, "classes", sorted(set(labels.tolist())))]
    ids = [f"{name}/{split}/{i:06d}" for i in range(len(ds))]
    return ImageDataset(str(root), ids, labels, classes, lambda i: to_rgb(ds[i][0]))


def _tv_labels(ds) -> list[int]:
    for attr in ("targets", "labels", "_labels", "y"):
        if hasattr(ds, attr):
            return [int(v) for v in getattr(ds, attr)]
    return [int(ds[i][1]) for i in range(len(ds))]


def subsample_split(labels: np.ndarray, per_class: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """VTAB-1k style: `per_class` images per class (0 = all), each class split train/val, seeded.

    Returns sorted (train, val) index arrays. 100 per class with val_fraction 0.2 gives 80/20 per class.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if per_class:
            if len(idx) < per_class:
                raise METError(f"class {c} has only {len(idx)} images, fewer than --per-class {per_class}.")
            idx = idx[:per_class]
        n_val = int(round(val_fraction * len(idx)))
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))
