import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from met_core.data.datasets import make_transform, open_dataset, subsample_split
from met_core.errors import METError
from met_core.io.images import load_image

from .conftest import CIFAR_TRAIN, HYMENOPTERA


def test_hymenoptera_folder_every_file_loads_as_rgb():
    """Real photos of many sizes, one palette GIF and one .jpeg: all come out RGB tensors."""
    ds = open_dataset(str(HYMENOPTERA / "val"))
    assert ds.class_names == ["ants", "bees"] and len(ds) == 153
    assert any(i.lower().endswith(".gif") for i in open_dataset(str(HYMENOPTERA / "train")).ids)
    ds.transform = make_transform(56, (0.5,) * 3, (0.5,) * 3)
    x, y, i = ds[0]
    assert x.shape == (3, 56, 56) and y == 0 and ds.ids[i].startswith("ants/")
    tr = open_dataset(str(HYMENOPTERA / "train"))
    gif = next(k for k, sid in enumerate(tr.ids) if sid.lower().endswith(".gif"))
    assert tr.get_image(gif).mode == "RGB"


def test_to_rgb_handles_all_modes(tmp_path):
    for mode, value in [
        ("P", 3),
        ("L", 128),
        ("RGBA", (10, 20, 30, 0)),
        ("I;16", 40000),
        ("CMYK", (0, 0, 0, 0)),
        ("LA", (5, 5)),
    ]:
        path = tmp_path / f"img_{mode.replace(';', '')}.{'tif' if mode in ('I;16', 'CMYK') else 'png'}"
        Image.new(mode, (5, 4), value).save(path)
        img = load_image(path)
        assert img.mode == "RGB" and img.size == (5, 4)


def test_vtab_subsample_is_seeded_and_stratified():
    ds = open_dataset(str(CIFAR_TRAIN))
    tr, va = subsample_split(ds.labels, 100, 0.2, seed=0)
    assert len(tr) == 800 and len(va) == 200 and not set(tr) & set(va)
    assert (np.bincount(ds.labels[tr]) == 80).all() and (np.bincount(ds.labels[va]) == 20).all()
    tr2, va2 = subsample_split(ds.labels, 100, 0.2, seed=0)
    assert (tr == tr2).all() and (va == va2).all()
    assert not (subsample_split(ds.labels, 100, 0.2, seed=1)[0] == tr).all()


def test_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(METError, match="neither an existing folder"):
        open_dataset(str(tmp_path / "nope"))
    with pytest.raises(METError, match="no class sub-folders"):
        open_dataset(str(tmp_path))
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(METError, match="no image files"):
        open_dataset(str(tmp_path))
    (tmp_path / "cat" / "fake.jpg").write_text("text renamed to jpg")
    ds = open_dataset(str(tmp_path))
    with pytest.raises(METError, match="fake.jpg is not a readable image"):
        ds.get_image(0)
    with pytest.raises(METError, match="could not get cifar10"):
        open_dataset("cifar10", download=False, data_root=str(tmp_path / "empty"))


def test_hostile_image_files(tmp_path):
    photo = next((HYMENOPTERA / "val" / "ants").glob("*.jpg"))
    data = photo.read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    for f, match in [("empty.jpg", "not a readable image"), ("cut.jpg", "not a readable image")]:
        with pytest.raises(METError, match=match):
            load_image(tmp_path / f)
    with pytest.raises(METError, match="over the limit"):
        load_image(photo, max_pixels=10_000)  # refused from the header, before decoding


def test_exif_orientation_and_animation(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = load_image(tmp_path / "anim.gif")
    assert first.getpixel((0, 0))[0] > 200 and first.getpixel((0, 0))[2] < 50  # the first (red) frame


def test_locate_dataset_falls_back_to_shared(tmp_path, monkeypatch):
    from met_core.io.paths import locate_dataset

    monkeypatch.delenv("MET_DATASET_ROOT", raising=False)
    moved = "/some/other/machine/shared/datasets/cifar10/test"  # as recorded on the machine that built a trace
    assert locate_dataset(moved).resolve() == (HYMENOPTERA.parent / "cifar10" / "test").resolve()
    assert locate_dataset(moved, override=str(tmp_path)) == tmp_path
    monkeypatch.setenv("MET_DATASET_ROOT", str(HYMENOPTERA))
    assert locate_dataset(moved) == HYMENOPTERA
    monkeypatch.delenv("MET_DATASET_ROOT")
    assert locate_dataset("/nowhere/at/all") is None


FASHION_DEB = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (.ci/run installs it)


def test_offline_named_dataset_message_names_the_exact_layout(tmp_path):
    with pytest.raises(METError) as e:
        open_dataset("fashion_mnist", split="test", download=False, data_root=str(tmp_path))
    msg = str(e.value)
    assert f"{tmp_path}/FashionMNIST/raw/ with train-images-idx3-ubyte" in msg and "--data-root" in msg
    assert "\n" not in msg


@pytest.mark.skipif(
    not FASHION_DEB.is_dir() and os.environ.get("CI") != "true",
    reason="apt-get install dataset-fashion-mnist (CI installs it)",
)
def test_fashion_mnist_idx_files_from_a_distribution_package_work_where_the_message_says(tmp_path):
    """A new user's path: copy the original IDX .gz files where the message says; no download is tried."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in FASHION_DEB.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    ds = open_dataset("fashion_mnist", split="test", download=True, data_root=str(tmp_path))
    assert len(ds) == 10_000 and len(ds.class_names) == 10 and ds.class_names[0] == "T-shirt/top"
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    img = ds.get_image(0)
    assert img.mode == "RGB" and img.size == (28, 28)
