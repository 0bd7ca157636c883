"""Find (or fetch) CIFAR-100, in the order CONVENTIONS.md gives.

    1. an explicit directory (``--data-dir``)
    2. the ``DATA_DIR`` environment variable
    3. the repository's ``data/`` cache (git-ignored)
    4. a download into the repository's ``data/`` cache (torchvision)

Two layouts are accepted in each place:

* an image folder: ``train/<class>/*.png`` and ``test/<class>/*.png`` (what
  ``torchvision.datasets.ImageFolder`` reads; the folder itself or its
  ``cifar100/`` subfolder), class folders named by the fine labels so that
  their alphabetical order gives the standard label ids;
* torchvision's pickled archive: ``cifar-100-python/{train,test,meta}``.

There is no system copy to look for (no distribution packages CIFAR-100).
When nothing works, ``DataNotFoundError`` says where we looked and how to get
the data; the training scripts print it and exit with code 2.
Set ``DATA_OFFLINE=1`` to skip the download.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shared.data import DATA_CACHE, DataNotFoundError, try_download

IMAGE_FOLDER = "imagefolder"
TORCHVISION = "torchvision"


@dataclass(frozen=True)
class Cifar100Source:
    """Where CIFAR-100 was found: ``kind`` is IMAGE_FOLDER or TORCHVISION."""

    kind: str
    root: Path  # image folder: the folder holding train/ and test/; torchvision: the folder holding cifar-100-python/
    found_via: str  # "--data-dir", "DATA_DIR", "repository cache" or "download"


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_folder_problem(root: Path) -> str | None:
    """Why `root` is not a usable train/ + test/ image folder, or None if it is."""
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        return "no train/ and test/ folders"
    train_classes, test_classes = _class_dirs(root / "train"), _class_dirs(root / "test")
    if not train_classes:
        return "train/ has no class folders"
    if train_classes != test_classes:
        # Labels are the alphabetical index of the class folder: a class missing
        # on one side would shift every later label id on that side.
        only = sorted(set(train_classes) ^ set(test_classes))
        return f"train/ and test/ hold different class folders (e.g. {only[:3]})"
    return None


def _torchvision_ok(root: Path) -> bool:
    folder = root / "cifar-100-python"
    return all((folder / name).is_file() for name in ("train", "test", "meta"))


def _candidates(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """Where to look, in order; an explicit --data-dir is the only place looked at."""
    if data_dir is not None:
        if not Path(data_dir).expanduser().is_dir():  # never create a mistyped folder by downloading into it
            raise DataNotFoundError(f"no such folder: {data_dir}")
        return [("--data-dir", Path(data_dir).expanduser())]
    candidates = []
    if os.environ.get("DATA_DIR"):
        candidates.append(("DATA_DIR", Path(os.environ["DATA_DIR"]).expanduser()))
    candidates.append(("repository cache", DATA_CACHE))
    return candidates


def find_cifar100(data_dir: str | os.PathLike | None = None) -> Cifar100Source:
    """Return where CIFAR-100 lies, downloading it into ``data/`` as a last resort."""
    candidates = _candidates(data_dir)
    looked = []
    for label, base in candidates:
        for root in (base, base / "cifar100"):
            problem = _image_folder_problem(root) if root.is_dir() else "does not exist"
            if problem is None:
                print(f"data: CIFAR-100 image folder {root} ({label})")
                return Cifar100Source(IMAGE_FOLDER, root, label)
            looked.append(f"  - {label}: {root} (image folder: {problem})")
        if _torchvision_ok(base):
            print(f"data: CIFAR-100 archive {base / 'cifar-100-python'} ({label})")
            return Cifar100Source(TORCHVISION, base, label)
        looked.append(f"  - {label}: {base / 'cifar-100-python'} (torchvision archive: not there)")

    download_root = DATA_CACHE
    from torchvision.datasets import CIFAR100

    if data_dir is not None:  # the user named this folder: download nothing into it
        download_error = "not tried: --data-dir names the folder to use; leave it away to download into data/"
    else:
        download_error = try_download(CIFAR100, download_root)
    if download_error is None:
        print(f"data: CIFAR-100 downloaded into {download_root}")
        return Cifar100Source(TORCHVISION, download_root, "download")

    raise DataNotFoundError(
        "CIFAR-100 was not found. Looked in:\n"
        + "\n".join(looked)
        + f"\n  - download into {download_root}: {download_error}\n"
        "Get it in one of these ways:\n"
        "  - run once with network access: torchvision downloads it into data/ (about 160 MB)\n"
        "  - pass --data-dir FOLDER (or set DATA_DIR) where FOLDER holds train/<class>/*.png and test/<class>/*.png,\n"
        "    or torchvision's cifar-100-python/ folder"
    )
