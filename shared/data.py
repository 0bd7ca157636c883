"""Find (or fetch) a data set, in the order CONVENTIONS.md gives.

    1. an explicit directory (``--data-dir``)
    2. the ``DATA_DIR`` environment variable
    3. the repository's ``data/`` cache (git-ignored)
    4. a system copy (Debian's ``dataset-fashion-mnist`` package)
    5. a download into the repository's ``data/`` cache

When nothing works, ``DataNotFoundError`` carries one message that says where
we looked and how to get the data; ``train.py`` prints it and exits with code 2.
Set ``DATA_OFFLINE=1`` to skip step 5 (useful on machines without network).
"""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_CACHE = REPO_ROOT / "data"

# Debian's package `dataset-fashion-mnist` puts the four original .gz files here.
FASHION_MNIST_SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
FASHION_MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


class DataNotFoundError(RuntimeError):
    """The data set is nowhere to be found; the message tells the user what to do."""


def offline() -> bool:
    return os.environ.get("DATA_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def _candidate_dirs(data_dir: str | os.PathLike | None, system_dirs: list[Path]) -> list[tuple[str, Path]]:
    """Where to look, in order; an explicit --data-dir is the only place looked at."""
    if data_dir is not None:
        return [("--data-dir", Path(data_dir).expanduser())]
    candidates = []
    if os.environ.get("DATA_DIR"):
        candidates.append(("DATA_DIR", Path(os.environ["DATA_DIR"]).expanduser()))
    candidates.append(("repository cache", DATA_CACHE))
    candidates.extend(("system copy", d) for d in system_dirs)
    return candidates


def _fashion_mnist_raw_dir(base: Path) -> Path | None:
    """The folder that holds the four idx files (plain or .gz) under `base`, if any.

    Accepted layouts: the files directly in `base` (Debian's package), or
    torchvision's `base/FashionMNIST/raw/`.
    """
    for folder in (base / "FashionMNIST" / "raw", base):
        if all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES):
            return folder
    return None


def _torchvision_root(raw_dir: Path, fallback_root: Path) -> Path:
    """A root that `torchvision.datasets.FashionMNIST(root)` reads without downloading.

    torchvision wants the unpacked files in `root/FashionMNIST/raw/`. If `raw_dir`
    is already that, use it in place; otherwise unpack (or copy) the files once
    into `fallback_root/FashionMNIST/raw/`.
    """
    if raw_dir.name == "raw" and raw_dir.parent.name == "FashionMNIST":
        if all((raw_dir / f).is_file() for f in FASHION_MNIST_FILES):
            return raw_dir.parent.parent
    target = fallback_root / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        out = target / name
        if out.is_file():
            continue
        tmp = target / f".{name}.{os.getpid()}.partial"  # per process: parallel runs may unpack at once
        if (raw_dir / name).is_file():
            shutil.copyfile(raw_dir / name, tmp)
        else:
            with gzip.open(raw_dir / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        tmp.replace(out)  # atomic: an interrupted unpack never leaves a truncated file behind
    return fallback_root


def try_download(dataset_class, root: Path) -> str | None:
    """Download both splits of a torchvision data set into `root`.

    Returns None on success, else why not, for the "where we looked" message:
    no network, a proxy, a full disk all end in the same advice, so every
    exception is turned into one line instead of a traceback.
    """
    if offline():
        return "skipped because DATA_OFFLINE is set"
    try:
        dataset_class(str(root), train=True, download=True)
        dataset_class(str(root), train=False, download=True)
    except Exception as err:
        return f"failed ({type(err).__name__}: {err})"
    return None


def fashion_mnist_root(data_dir: str | os.PathLike | None = None, system_dirs: list[Path] | None = None) -> Path:
    """Return a root folder for `torchvision.datasets.FashionMNIST(root, download=False)`."""
    system_dirs = FASHION_MNIST_SYSTEM_DIRS if system_dirs is None else system_dirs
    candidates = _candidate_dirs(data_dir, system_dirs)
    for _, base in candidates:
        raw = _fashion_mnist_raw_dir(base)
        if raw is not None:
            # Unpack next to an explicit/env folder if we may write there, else into the cache.
            writable = base if (base != DATA_CACHE and os.access(base, os.W_OK) and base not in system_dirs) else DATA_CACHE
            try:
                return _torchvision_root(raw, writable)
            except OSError as err:
                raise DataNotFoundError(f"Found Fashion-MNIST in {raw} but could not unpack it into {writable}: {err}") from None

    download_root = candidates[0][1] if data_dir is not None else DATA_CACHE
    from torchvision.datasets import FashionMNIST

    download_error = try_download(FashionMNIST, download_root)
    if download_error is None:
        return download_root

    looked = "\n".join(f"  - {label}: {path}" for label, path in candidates)
    raise DataNotFoundError(
        "Fashion-MNIST was not found. Looked in:\n"
        f"{looked}\n"
        f"  - download into {download_root}: {download_error}\n"
        "Get it in one of these ways:\n"
        "  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (no network needed afterwards)\n"
        "  - run once with network access: the files are downloaded into data/\n"
        "  - copy the four *-ubyte(.gz) files into a folder and pass --data-dir FOLDER (or set DATA_DIR)"
    )
