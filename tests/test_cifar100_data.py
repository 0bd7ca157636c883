"""CIFAR-100 data: locating it (shared/cifar100.py) and loading it into tensors.

Also home of `make_image_folder`, the small learnable stand-in for CIFAR-100
that every cifar100 test trains on (the real images are not available in CI).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_version

import shared.cifar100 as locator
from shared.data import DataNotFoundError

# Written in non-alphabetical order on purpose: labels must follow the sorted
# folder names (ImageFolder's rule, which gives CIFAR-100's standard ids).
CLASS_COLOURS = {"zebra": (220, 40, 40), "apple": (40, 200, 40), "maple_tree": (40, 40, 220),
                 "bicycle": (220, 220, 40), "orchid": (200, 40, 200)}
CLASSES = sorted(CLASS_COLOURS)
TRAIN_PER_CLASS, TEST_PER_CLASS = 32, 10


def make_image_folder(root: Path, train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS) -> Path:
    """train/<class>/*.png and test/<class>/*.png, 32x32 RGB; each class has its own
    colour and stripe direction, so a small network can learn it in a few steps."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for index, (name, colour) in enumerate(CLASS_COLOURS.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 60, (32, 32, 3)) + np.array(colour) * 0.7
                if index % 2:
                    image[::4] = 255
                else:
                    image[:, ::4] = 255
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("cifar_images"))


@pytest.fixture
def no_cache(monkeypatch, tmp_path):
    """An empty repository cache and no network, so only what a test sets up is found."""
    monkeypatch.setattr(locator, "DATA_CACHE", tmp_path / "empty_cache")
    monkeypatch.setenv("DATA_OFFLINE", "1")
    monkeypatch.delenv("DATA_DIR", raising=False)


def test_explicit_data_dir_is_found(image_folder, no_cache):
    source = locator.find_cifar100(image_folder)
    assert (source.kind, source.root, source.found_via) == (locator.IMAGE_FOLDER, image_folder, "--data-dir")


def test_data_dir_env_and_cifar100_subfolder(image_folder, no_cache, monkeypatch, tmp_path):
    parent = tmp_path / "datasets"
    parent.mkdir()
    (parent / "cifar100").symlink_to(image_folder, target_is_directory=True)
    monkeypatch.setenv("DATA_DIR", str(parent))
    source = locator.find_cifar100()
    assert (source.root, source.found_via) == (parent / "cifar100", "DATA_DIR")


def test_repository_cache_is_used_when_nothing_else_is_given(image_folder, monkeypatch, tmp_path):
    monkeypatch.setattr(locator, "DATA_CACHE", image_folder)
    monkeypatch.setenv("DATA_OFFLINE", "1")
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert locator.find_cifar100().found_via == "repository cache"


def test_nothing_found_gives_one_clear_message(no_cache, tmp_path):
    # a mistyped --data-dir: refused as it is, never created by a download into it
    with pytest.raises(DataNotFoundError, match="no such folder"):
        locator.find_cifar100(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    # an existing folder without the data: where it looked and how to get it; nothing downloaded into it
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as err:
        locator.find_cifar100(tmp_path / "empty")
    message = str(err.value)
    assert str(tmp_path / "empty") in message and "not tried: --data-dir names the folder" in message
    assert "--data-dir" in message and "torchvision downloads it into data/" in message
    assert list((tmp_path / "empty").iterdir()) == []
    # nothing given: the repository cache, then the download, which DATA_OFFLINE skips
    with pytest.raises(DataNotFoundError) as err:
        locator.find_cifar100()
    assert "DATA_OFFLINE" in str(err.value) and "repository cache" in str(err.value)


def test_mismatched_class_folders_are_rejected(no_cache, tmp_path):
    root = make_image_folder(tmp_path / "broken", train_per_class=1, test_per_class=1)
    (root / "test" / "zebra").rename(root / "test" / "zzz")
    with pytest.raises(DataNotFoundError, match="different class folders"):
        locator.find_cifar100(root)


def test_image_folder_loads_with_alphabetical_labels(image_folder, no_cache):
    data_module = load_version("cifar100/v1-baseline", "scripts.data")
    data = data_module.load_cifar100(image_folder)
    assert data.classes == CLASSES
    assert data.train_images.shape == (len(CLASSES) * TRAIN_PER_CLASS, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8 and data.test_labels.dtype == torch.int64
    assert data.test_images.shape[0] == len(data.test_labels) == len(CLASSES) * TEST_PER_CLASS
    # Each label's images have that class's colour (noise 0..60 plus 0.7 x colour,
    # a quarter of the rows or columns white): the nearest expected mean colour
    # must be the label's own, so labels were not shuffled against images.
    expected = {name: 0.75 * (30 + 0.7 * torch.tensor(rgb, dtype=torch.float)) + 0.25 * 255 for name, rgb in CLASS_COLOURS.items()}
    for label, name in enumerate(data.classes):
        mean_rgb = data.train_images[data.train_labels == label].float().mean(dim=(0, 2, 3))
        nearest = min(expected, key=lambda n: (expected[n] - mean_rgb).norm())
        assert nearest == name and (expected[name] - mean_rgb).norm() < 5, (name, mean_rgb)

def test_torchvision_archive_layout(no_cache, tmp_path):
    """The pickled cifar-100-python/ layout that torchvision downloads."""
    folder = tmp_path / "tv" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 4)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n))}
        (folder / split).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i}" for i in range(100)]}))
    data_module = load_version("cifar100/v1-baseline", "scripts.data")
    data = data_module.load_cifar100(tmp_path / "tv")
    assert data.train_images.shape == (6, 3, 32, 32) and data.test_labels.tolist() == [0, 1, 2, 3]
    assert len(data.classes) == 100
    # channel-major rows: the first 1024 bytes are the red plane
    raw = pickle.loads((folder / "train").read_bytes())["data"]
    assert data.train_images[0, 0].flatten().tolist() == raw[0, :1024].tolist()


def test_corrupt_image_is_reported_by_name(no_cache, tmp_path):
    root = make_image_folder(tmp_path / "corrupt", train_per_class=2, test_per_class=1)
    bad = root / "train" / "apple" / "0001.png"
    bad.write_bytes(b"not a png")
    data_module = load_version("cifar100/v1-baseline", "scripts.data")
    with pytest.raises(DataNotFoundError, match="0001.png"):
        data_module.load_cifar100(root)


# ---------------------------------------------------------------------------
# Decoding once: the cache of decoded image folders
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1-baseline", "v2-diagnostics", "v3-ddp"])
def test_image_folder_is_decoded_once_then_read_from_the_cache(version, tmp_path, monkeypatch):
    """Second load, third load, another process: no image is decoded again. A changed file is."""
    folder = make_image_folder(tmp_path / "images", train_per_class=3, test_per_class=2)
    data = load_version(f"cifar100/{version}", "scripts.data")
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    first = data.load_cifar100(folder)
    cached = sorted(p.name for p in (tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 2 and cached[0].startswith("test-") and cached[1].startswith("train-")

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(data, "_read_image", no_decoding)
    again = data.load_cifar100(folder)
    assert torch.equal(again.train_images, first.train_images) and torch.equal(again.test_labels, first.test_labels)

    # A changed image: its split is decoded again, and the stale cache file goes.
    monkeypatch.undo()
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    changed = folder / "train" / sorted(CLASS_COLOURS)[0] / "0000.png"  # label 0, the first image
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    updated = data.load_cifar100(folder)
    assert updated.train_images[0].sum() == 0 and not torch.equal(updated.train_images, first.train_images)
    assert len(list((tmp_path / "cache").glob("train-*.pt"))) == 1


def test_a_broken_cache_file_is_rebuilt(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "images", train_per_class=2, test_per_class=1)
    data = load_version("cifar100/v2-diagnostics", "scripts.data")
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    first = data.load_cifar100(folder)
    for cache_file in (tmp_path / "cache").glob("*.pt"):
        cache_file.write_bytes(b"not a torch file")
    again = data.load_cifar100(folder)
    assert torch.equal(again.train_images, first.train_images)
    assert all(torch.load(f, weights_only=True)["images"].dtype == torch.uint8 for f in (tmp_path / "cache").glob("*.pt"))
