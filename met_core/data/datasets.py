"""Datasets: torchvision names, ImageFolder trees, VTAB-1k style sub-sampling, images -> tensors.

Every dataset is seen through `ImageDataset`: sample ids (paths relative to the root for folders),
integer labels, class names, and an image loader that always returns RGB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from ..errors import METError
from ..io.images import IMAGE_EXTENSIONS, load_image, to_rgb
from ..io.limits import check_image_size
from ..io.paths import cache_dir

if TYPE_CHECKING:
    from ..config import METConfig


@dataclass(frozen=True)
class NamedDataset:
    """A torchvision dataset by name: its class, the keyword arguments of each split, and the files it needs
    offline (`layout`, relative to the data root), so the offline message names exactly what to put where."""

    tv_class: str
    train_kw: dict[str, Any]
    test_kw: dict[str, Any]
    layout: str
    gz_raw: tuple[str, ...] = ()  # MNIST-style .gz files in <root>/<tv_class>/raw/ that MET extracts itself


_MNIST_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TORCHVISION_DATASETS: dict[str, NamedDataset] = {
    "cifar10": NamedDataset(
        "CIFAR10",
        {"train": True},
        {"train": False},
        "cifar-10-batches-py/ (cifar-10-python.tar.gz extracted: data_batch_1..5, test_batch, batches.meta)",
    ),
    "cifar100": NamedDataset(
        "CIFAR100",
        {"train": True},
        {"train": False},
        "cifar-100-python/ (cifar-100-python.tar.gz extracted: train, test, meta)",
    ),
    "fashion_mnist": NamedDataset(
        "FashionMNIST",
        {"train": True},
        {"train": False},
        "FashionMNIST/raw/ with " + ", ".join(_MNIST_RAW) + " (or the same names + .gz)",
        _MNIST_RAW,
    ),
    "mnist": NamedDataset(
        "MNIST",
        {"train": True},
        {"train": False},
        "MNIST/raw/ with " + ", ".join(_MNIST_RAW) + " (or the same names + .gz)",
        _MNIST_RAW,
    ),
    "svhn": NamedDataset("SVHN", {"split": "train"}, {"split": "test"}, "train_32x32.mat and test_32x32.mat"),
    "flowers102": NamedDataset(
        "Flowers102", {"split": "train"}, {"split": "test"}, "flowers-102/ with jpg/, imagelabels.mat and setid.mat"
    ),
    "oxford_pets": NamedDataset(
        "OxfordIIITPet", {"split": "trainval"}, {"split": "test"}, "oxford-iiit-pet/ with images/ and annotations/"
    ),
    "dtd": NamedDataset("DTD", {"split": "train"}, {"split": "test"}, "dtd/dtd/ with images/, imdb/ and labels/"),
    "food101": NamedDataset("Food101", {"split": "train"}, {"split": "test"}, "food-101/ with images/ and meta/"),
    "stl10": NamedDataset(
        "STL10", {"split": "train"}, {"split": "test"}, "stl10_binary/ (stl10_binary.tar.gz extracted)"
    ),
    "eurosat": NamedDataset("EuroSAT", {}, {}, "eurosat/2750/ with one folder per class"),  # one split: sub-sample it
}


SAMPLE_NAME = "met_sample"  # the key under which a dataset names an image (Image.info) for its transform's errors


class SizeGuard:
    """The first step of every transform: refuse an image whose resize would blow up (any source: dataset
    folders, torchvision datasets, uploads), before the resize allocates it."""

    def __init__(self, img_size: int) -> None:
        self.img_size = img_size

    def __call__(self, img: Image.Image) -> Image.Image:
        name = img.info.get(SAMPLE_NAME) or getattr(img, "filename", "") or "an image"
        check_image_size(*img.size, name, self.img_size)
        return img


_INTERPOLATION = {"bicubic": transforms.InterpolationMode.BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR}


def make_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic", augment: str = "none"
) -> Callable:
    """Resize the short side and centre-crop (augment 'none'), or random-resized crop and flip ('standard');
    then to a tensor, normalised."""
    interp = _INTERPOLATION[interpolation]
    geometry = (
        [transforms.RandomResizedCrop(img_size, interpolation=interp), transforms.RandomHorizontalFlip()]
        if augment == "standard"
        else [transforms.Resize(img_size, interpolation=interp), transforms.CenterCrop(img_size)]
    )
    return transforms.Compose([SizeGuard(img_size), *geometry, transforms.ToTensor(), transforms.Normalize(mean, std)])


def transform_for(cfg: METConfig, augment: str = "none") -> Callable:
    """The preprocessing a model's config records (training may add augmentation)."""
    return make_transform(cfg.img_size, cfg.mean, cfg.std, cfg.interpolation, augment)


def preprocessing_record(cfg: METConfig) -> dict[str, Any]:
    """What `transform_for(cfg)` does, as the checkpoint's `preprocessing` section."""
    return {
        "resize_short_side": cfg.img_size,
        "interpolation": cfg.interpolation,
        "crop": f"center {cfg.img_size}",
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "mode": "RGB",
    }


def decoded_bytes(num_images: int, img_size: int) -> int:
    """Memory that `decode_all` needs for this many images (float32, 3 channels)."""
    return num_images * 3 * img_size * img_size * 4


def decode_all(
    ds: ImageDataset, desc: str, progress: bool = True, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and preprocess a dataset once into (images, labels) tensors: the fast path for small sets."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False, num_workers=workers)
    xs, ys = [], []
    for x, y, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Samples with ids, labels and class names; items are (tensor, label, index)."""

    root: str
    ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    get_image: Callable[[int], Image.Image]
    transform: Callable | None = None
    notes: list[str] = field(default_factory=list)  # warnings about the data for the user (empty class folders)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img = self.get_image(i)
        if isinstance(img, Image.Image):  # the transform's refusals name the file (SizeGuard)
            img.info[SAMPLE_NAME] = os.path.join(self.root, self.ids[i])
        return (self.transform(img) if self.transform else img), int(self.labels[i]), i

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        idx = [int(i) for i in indices]
        return ImageDataset(
            self.root,
            [self.ids[i] for i in idx],
            self.labels[idx],
            self.class_names,
            lambda j, g=self.get_image, m=idx: g(m[j]),
            self.transform,
            self.notes,
        )


def open_dataset(spec: str, split: str = "train", download: bool = True, data_root: str | None = None) -> ImageDataset:
    """A folder path (ImageFolder layout `<class>/<file>`) or a torchvision dataset name."""
    if spec.lower() in TORCHVISION_DATASETS:
        return _torchvision_dataset(spec.lower(), split, download, data_root)
    path = Path(spec)
    if not path.exists():
        names = ", ".join(sorted(TORCHVISION_DATASETS))
        raise METError(f"dataset '{spec}' is neither an existing folder nor a known dataset name ({names}).")
    return image_folder(path)


# Folders and files that tools leave beside people's images and that get zipped up with datasets: never a class
# or a sample. Hidden names (a leading dot: .ipynb_checkpoints, .DS_Store, .git, macOS's ._photo.jpg twins) are
# skipped too, at every depth; what was skipped is reported in one note.
TOOL_MADE = frozenset(
    n.lower()
    for n in (
        "__MACOSX",
        "__pycache__",
        "@eaDir",
        "@__thumb",
        "@Recycle",
        "#recycle",
        "#snapshot",
        "$RECYCLE.BIN",
        "System Volume Information",
        "lost+found",
        "Thumbs.db",
        "ehthumbs.db",
        "desktop.ini",
    )
)


def skipped_name(name: str) -> bool:
    """Whether a folder or file name is hidden or tool-made (TOOL_MADE, case-insensitive)."""
    return name.startswith(".") or name.lower() in TOOL_MADE


def image_folder(root: Path) -> ImageDataset:
    """Scan `root/<class>/<file>`; non-image extensions are skipped, unreadable images fail when loaded; hidden
    and tool-made folders and files (`skipped_name`) are no class and no sample at any depth, and one note
    says what was skipped."""
    if not root.is_dir():
        raise METError(f"{root} is not a folder; give an ImageFolder tree (one sub-folder per class).")
    skipped = sorted(d.name for d in root.iterdir() if skipped_name(d.name))
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not skipped_name(d.name))
    if not classes:
        raise METError(f"{root} has no class sub-folders; lay it out as {root}/<class>/<image>.")
    ids, labels = [], []
    for label, c in enumerate(classes):
        walked = []
        for dirpath, dirnames, files in os.walk(root / c):
            rel = os.path.relpath(dirpath, root)
            skipped += [os.path.join(rel, n) for n in sorted(dirnames + files) if skipped_name(n)]
            dirnames[:] = [d for d in dirnames if not skipped_name(d)]  # never descended into
            walked.append((dirpath, files))
        for dirpath, files in sorted(walked):  # the order (and so the seeded splits) of earlier versions
            for f in sorted(files):
                if (
                    f.lower().endswith(IMAGE_EXTENSIONS)
                    and not skipped_name(f)
                    and os.path.isfile(os.path.join(dirpath, f))
                ):  # regular files only: no pipes or devices
                    ids.append(os.path.relpath(os.path.join(dirpath, f), root))
                    labels.append(label)
    if not ids:
        raise METError(f"{root} has class folders but no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    notes = (
        [
            f"warning: the class folder(s) {', '.join(repr(c[:40]) for c in empty[:5])} hold no images; they stay "
            "classes (no sample has their label), so class indices match the folder names."
        ]
        if empty
        else []
    )
    if skipped:
        notes.append(
            f"note: skipped {len(skipped)} hidden or tool-made folder(s) and file(s) "
            f"({', '.join(repr(s[:60]) for s in skipped[:3])}{', ...' if len(skipped) > 3 else ''}); "
            "they are never classes or samples."
        )
    root_s = str(root.resolve())
    return ImageDataset(
        root_s,
        ids,
        np.asarray(labels, dtype=np.int64),
        classes,
        lambda i: load_image(os.path.join(root_s, ids[i])),
        notes=notes,
    )


def _torchvision_dataset(name: str, split: str, download: bool, data_root: str | None) -> ImageDataset:
    import torchvision.datasets as tvd

    entry = TORCHVISION_DATASETS[name]
    root = Path(data_root) if data_root else cache_dir() / "datasets"
    _extract_gz(root / entry.tv_class / "raw", entry.gz_raw)
    kw = entry.train_kw if split == "train" else entry.test_kw
    try:
        ds = getattr(tvd, entry.tv_class)(root=str(root), download=download, **kw)
    except Exception as e:  # network errors, missing files, checksum errors
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise METError(
            f"could not get {name}: it is not on this machine and the download failed ({first}); connect to the "
            f"internet once, or put its files at {root}/{entry.layout} (on the command line, --data-root DIR "
            "picks another folder)."
        ) from None
    labels = np.asarray(_tv_labels(ds), dtype=np.int64)
    classes = [str(c) for c in getattr(ds, "classes", sorted(set(labels.tolist())))]
    ids = [f"{name}/{split}/{i:06d}" for i in range(len(ds))]
    return ImageDataset(str(root), ids, labels, classes, lambda i: to_rgb(ds[i][0]))


def _extract_gz(folder: Path, names: Sequence[str]) -> None:
    """Extract `name.gz` to `name` where only the .gz is there: torchvision wants MNIST-style files extracted,
    and would re-download a .gz whose checksum differs from its own (distribution packages recompress them)."""
    import gzip
    import shutil

    for name in names:
        gz, out = folder / f"{name}.gz", folder / name
        if gz.is_file() and not out.exists():
            tmp = out.with_suffix(".tmp")
            try:
                with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as e:
                tmp.unlink(missing_ok=True)
                raise METError(f"{gz} is not a readable .gz file ({type(e).__name__}); replace it.") from None
            tmp.replace(out)


def _tv_labels(ds) -> list[int]:
    for attr in ("targets", "labels", "_labels", "y"):
        if hasattr(ds, attr):
            return [int(v) for v in getattr(ds, attr)]
    return [int(ds[i][1]) for i in range(len(ds))]


def split_sizes(n: int, val_fraction: float) -> int:
    """Validation images of a class of `n`: round(val_fraction * n), but never all of them (a class keeps at
    least one training image)."""
    return min(int(round(val_fraction * n)), max(n - 1, 0))


def smallest_splittable_class(val_fraction: float) -> int:
    """The fewest images a class needs for `val_fraction` to give it one validation and one training image."""
    n = max(2, int(0.5 / val_fraction) + 1)  # round(x) >= 1 from x > 0.5; then a step or two for the rounding
    while n > 2 and split_sizes(n - 1, val_fraction) >= 1:
        n -= 1
    while split_sizes(n, val_fraction) < 1:
        n += 1
    return n


def subsample_split(
    labels: np.ndarray,
    per_class: int,
    val_fraction: float,
    seed: int,
    class_names: Sequence[str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """VTAB-1k style: `per_class` images per class (0 = all), each class split train/val, seeded.

    Returns sorted (train, val) index arrays. 100 per class with val_fraction 0.2 gives 80/20 per class.
    A split that cannot be made as asked is said once, through `warn`, with what to do: classes too small
    for `val_fraction` to give them a validation image (all of them: the run has no validation images),
    and a class is never left without a training image.
    """
    rng = np.random.default_rng(seed)
    train, val, without = [], [], []
    classes = np.unique(labels)
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        if per_class:
            if len(idx) < per_class:
                raise METError(f"class {c} has only {len(idx)} images, fewer than --per-class {per_class}.")
            idx = idx[:per_class]
        n_val = split_sizes(len(idx), val_fraction)
        if val_fraction > 0 and n_val == 0:
            without.append(int(c))
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    if without and warn is not None:
        need = smallest_splittable_class(val_fraction)
        if len(without) == len(classes):
            warn(
                f"warning: --val-fraction {val_fraction:g} gives no validation image to any class (each has fewer "
                f"than {need} images), so this run has no validation images: no validation accuracy is reported "
                f"and `met trace --split val` has nothing to trace; give each class at least {need} images, or "
                "pass --val-fraction 0 to train on all of them without this warning."
            )
        else:
            names = [str(class_names[c]) if class_names is not None else str(c) for c in without]
            warn(
                f"warning: --val-fraction {val_fraction:g} gives no validation image to {len(without)} of "
                f"{len(classes)} classes ({', '.join(repr(n[:40]) for n in names[:5])}"
                f"{' ...' if len(names) > 5 else ''}: fewer than {need} images each); the validation accuracy "
                "covers the other classes only."
            )
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def dataset_for_checkpoint(
    cfg: dict[str, Any],
    dataset: str | None,
    split: str,
    download: bool,
    data_root: str | None = None,
    holdout: int = 0,
    seed: int = 0,
) -> ImageDataset:
    """The dataset a trace runs over: an explicit one; the checkpoint's own validation images ('val', by id);
    or `holdout` images of its training split that it never trained or validated on ('holdout', seeded):
    a calibration set of useful size, never drawn from the test split."""
    from ..io.paths import locate_dataset

    data = cfg.get("data", {})
    if split not in ("val", "holdout"):
        if not dataset:
            raise METError(
                "pass --dataset (a folder or a dataset name), or --split val / holdout for the checkpoint's own images."
            )
        return open_dataset(dataset, split=split, download=download, data_root=data_root)
    found = locate_dataset(data.get("root"))
    src = dataset or (str(found) if found else data.get("dataset"))
    if not src:
        raise METError("this checkpoint records no dataset; pass --dataset.")
    ds = open_dataset(src, split=data.get("split", "train"), download=download, data_root=data_root)
    where = {sid: i for i, sid in enumerate(ds.ids)}
    used = {where[s] for s in data.get("train_ids", []) + data.get("val_ids", []) if s in where}
    free = np.setdiff1d(np.arange(len(ds)), np.fromiter(used, dtype=np.int64, count=len(used)))
    if split == "val":
        if not data.get("val_ids"):
            fraction = cfg.get("train", {}).get("val_fraction")
            raise METError(
                "this checkpoint was trained without validation images"
                + (f" (--val-fraction {fraction:g} gave none)" if isinstance(fraction, (int, float)) else "")
                + ", so --split val has nothing to trace; trace "
                + (
                    f"some of the {len(free):,} images it never saw (--split holdout --holdout N) or "
                    if len(free)
                    else ""
                )
                + "a test split."
            )
        missing = [s for s in data["val_ids"] if s not in where]
        if missing:
            raise METError(
                f"the checkpoint's validation images are not all in {src} ({len(missing)} of "
                f"{len(data['val_ids'])} missing); pass the dataset it was trained on."
            )
        return ds.subset([where[s] for s in data["val_ids"]])
    if not len(free):
        raise METError(
            f"the checkpoint trained or validated on all {len(ds):,} images of {src}, so none is left "
            "for --split holdout; trace another split (a test split), or train with --per-class below "
            "the class sizes to leave images out."
        )
    if holdout < 1:
        raise METError(
            f"--split holdout needs --holdout N: how many of the {len(free):,} images the checkpoint "
            "never saw to trace."
        )
    if holdout > len(free):
        raise METError(
            f"--holdout {holdout:,} asks for more than the {len(free):,} images of {src} the checkpoint "
            f"never saw; pass --holdout {len(free)} or fewer."
        )
    return ds.subset(np.sort(np.random.default_rng(seed).choice(free, size=holdout, replace=False)))


def seeded_subset(ds: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """`n` images of `ds` drawn without replacement by `seed`, in the dataset's order (all of it when n is 0 or at
    least its size): the subset `met trace --limit`, `met bench-exit --limit` and the app's measurement use."""
    if not n or n >= len(ds):
        return ds
    return ds.subset(np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False)))
