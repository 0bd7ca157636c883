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
import hashlib
import os
import shutil
import zlib
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
        if not Path(data_dir).expanduser().is_dir():  # never create a mistyped folder by downloading into it
            raise DataNotFoundError(f"no such folder: {data_dir}")
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


def _torchvision_root(raw_dir: Path, unpack_root: Path) -> tuple[Path, str]:
    """A root that `torchvision.datasets.FashionMNIST(root)` reads without downloading, and
    how it was got ("in place" or "unpacked into ...").

    torchvision wants the unpacked files in `root/FashionMNIST/raw/`. If `raw_dir`
    is already that, use it in place; otherwise unpack (or copy) the files once
    into `unpack_root/FashionMNIST/raw/`, always inside the repository's data/.
    """
    if raw_dir.name == "raw" and raw_dir.parent.name == "FashionMNIST":
        if all((raw_dir / f).is_file() for f in FASHION_MNIST_FILES):
            return raw_dir.parent.parent, "used in place"
    target = unpack_root / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    unpacked = False
    for name in FASHION_MNIST_FILES:
        out = target / name
        if out.is_file():
            continue
        unpacked = True
        tmp = target / f".{name}.{os.getpid()}.partial"  # per process: parallel runs may unpack at once
        if (raw_dir / name).is_file():
            shutil.copyfile(raw_dir / name, tmp)
        else:
            packed = raw_dir / f"{name}.gz"
            try:
                with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (EOFError, zlib.error, gzip.BadGzipFile) as err:  # a cut download, a broken copy
                tmp.unlink(missing_ok=True)
                raise DataNotFoundError(
                    f"{packed} is corrupt or truncated ({type(err).__name__}: {err}). Get a fresh copy of it "
                    "(Debian: sudo apt-get install --reinstall dataset-fashion-mnist), or pass --data-dir "
                    "to a folder with intact files.") from None
        tmp.replace(out)  # atomic: an interrupted unpack never leaves a truncated file behind
    return unpack_root, ("unpacked into " if unpacked else "unpacked earlier into ") + str(target)


def _unpack_root(raw_dir: Path, label: str) -> Path:
    """Where a .gz copy is unpacked: data/ for the system copy (as always), and for any other
    folder a subfolder of data/ keyed by the files' path, size and time, so that two copies
    never mix and a changed file is unpacked afresh; nothing is written beside the user's files."""
    if label == "system copy":
        return DATA_CACHE
    stamp = []
    for name in FASHION_MNIST_FILES:
        path = raw_dir / name if (raw_dir / name).is_file() else raw_dir / f"{name}.gz"
        info = path.stat()
        stamp.append(f"{path.resolve()}:{info.st_size}:{info.st_mtime_ns}")
    return DATA_CACHE / "fashion-mnist-unpacked" / hashlib.sha1("\n".join(stamp).encode()).hexdigest()[:12]


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
    for label, base in candidates:
        raw = _fashion_mnist_raw_dir(base)
        if raw is not None:
            unpack_root = _unpack_root(raw, label) if base != DATA_CACHE else DATA_CACHE
            try:
                root, how = _torchvision_root(raw, unpack_root)
            except OSError as err:
                raise DataNotFoundError(f"Found Fashion-MNIST in {raw} but could not unpack it into {unpack_root}: "
                                        f"{err}") from None
            print(f"data: Fashion-MNIST from {raw} ({label}; {how})")
            return root
        if label == "--data-dir":  # the user named this folder: look nowhere else, download nothing into it
            raise DataNotFoundError(
                f"no Fashion-MNIST files in {base}: expected {', '.join(FASHION_MNIST_FILES)} (plain or .gz), "
                "directly in it or in FashionMNIST/raw/. Leave --data-dir away to use a system copy or to "
                "download into data/.")

    download_root = DATA_CACHE  # an explicit --data-dir never gets here: it was looked at, or refused
    from torchvision.datasets import FashionMNIST

    download_error = try_download(FashionMNIST, download_root)
    if download_error is None:
        print(f"data: Fashion-MNIST downloaded into {download_root}")
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
