"""CIFAR-100 in memory: every image decoded once into one uint8 tensor.

50,000 images of 3x32x32 bytes are 150 MB, so there is no reason to decode a
PNG per sample in the hot loop. Augmentations (torchvision.transforms.v2)
work on the uint8 tensors directly, one sample at a time, in the DataLoader
workers.

An image folder is decoded once: the tensors go to data/cifar100-cache/ (git-ignored),
keyed by every file's path, size and modification time, and every later run, every
DDP process and scripts/check_transforms.py read them from there in about a second
instead of decoding 60,000 PNGs again.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # shared/ is the one place outside this folder we import from

from shared.cifar100 import IMAGE_FOLDER, find_cifar100  # noqa: E402
from shared.data import DATA_CACHE, DataNotFoundError  # noqa: E402

IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
# Where decoded image folders are cached; $CIFAR100_CACHE_DIR moves it (a scratch disk, the tests' temp folder).
CACHE_DIR = Path(os.environ.get("CIFAR100_CACHE_DIR") or DATA_CACHE / "cifar100-cache")  # None: no cache


@dataclass
class CifarTensors:
    train_images: torch.Tensor  # (N, 3, 32, 32) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]  # index = label id
    source: str  # where the images came from, for results.json


class TensorImageDataset(Dataset):
    """(image, label) pairs from in-memory tensors; `transform` runs per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except Exception as err:  # truncated or not an image at all
        raise DataNotFoundError(f"Could not read image {path}: {err}") from None
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DataNotFoundError(f"Image {path} is {array.shape[1]}x{array.shape[0]}, expected 32x32 as in CIFAR-100.")
    return array


def _read_split(folder: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode folder/<class>/* with a thread pool (PIL releases the GIL while decoding)."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataNotFoundError(f"No images found under {folder}/<class>/.")
    labels = torch.tensor(labels, dtype=torch.int64)
    cache_file = _cache_file(folder, paths)
    if cache_file is not None and cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            if cached["images"].shape == (len(paths), 3, IMAGE_SIZE, IMAGE_SIZE) and torch.equal(cached["labels"], labels):
                return cached["images"], labels
        except Exception:  # a broken or truncated cache file is decoded again and rewritten
            pass
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(_read_image, paths, chunksize=256))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if cache_file is not None:
        _write_cache(cache_file, images, labels)
    return images, labels


def _cache_file(folder: Path, paths: list[Path]) -> Path | None:
    """Where the decoded split is cached: the name holds a hash of the folder and of every file's
    path, size and modification time, so a changed, added or removed image means another file."""
    if CACHE_DIR is None:
        return None
    where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return Path(CACHE_DIR) / f"{folder.name}-{where}-{digest.hexdigest()[:16]}.pt"


def _write_cache(cache_file: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Atomically (several DDP processes may write at once); a cache that cannot be written costs
    only the decoding time of the next run, never this one."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        for stale in cache_file.parent.glob(cache_file.name.rsplit("-", 1)[0] + "-*.pt"):
            stale.unlink(missing_ok=True)  # the same folder with older files: that cache can never be valid again
        tmp = cache_file.with_suffix(f".{os.getpid()}.partial")
        torch.save({"images": images, "labels": labels}, tmp)
        tmp.replace(cache_file)
    except OSError as err:
        print(f"note: could not write the decoded-image cache {cache_file} ({err.strerror or err}); the next run "
              "decodes again", file=sys.stderr)


def _read_pickle(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    images = torch.from_numpy(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return images, torch.tensor(entry["fine_labels"], dtype=torch.int64)


def load_cifar100(data_dir: str | os.PathLike | None = None) -> CifarTensors:
    """Find CIFAR-100 (shared/cifar100.py) and load both splits into uint8 tensors."""
    source = find_cifar100(data_dir)
    if source.kind == IMAGE_FOLDER:
        # ImageFolder's rule: labels are the sorted class-folder names' indices;
        # for CIFAR-100's fine labels that is the standard id order.
        classes = sorted(d.name for d in (source.root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
        train = _read_split(source.root / "train", classes)
        test = _read_split(source.root / "test", classes)
    else:
        folder = source.root / "cifar-100-python"
        with open(folder / "meta", "rb") as f:
            classes = pickle.load(f, encoding="latin1")["fine_label_names"]
        train, test = _read_pickle(folder / "train"), _read_pickle(folder / "test")
    return CifarTensors(*train, *test, classes=list(classes), source=f"{source.kind} at {source.root} (via {source.found_via})")


def subset(data: CifarTensors, num_train: int, num_test: int, seed: int = 0) -> CifarTensors:
    """A random subset of each split (for --quick); all of a split if it is smaller."""
    g = torch.Generator().manual_seed(seed)
    train_idx = torch.randperm(len(data.train_labels), generator=g)[:num_train]
    test_idx = torch.randperm(len(data.test_labels), generator=g)[:num_test]
    return CifarTensors(
        data.train_images[train_idx], data.train_labels[train_idx],
        data.test_images[test_idx], data.test_labels[test_idx],
        classes=data.classes, source=data.source + f", subset {len(train_idx)}/{len(test_idx)}",
    )
