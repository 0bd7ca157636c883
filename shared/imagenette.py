"""Find Imagenette (160 px) and load it as uint8 tensors, decoding every image once.

Where the data are looked for, in the order CONVENTIONS.md gives:

    1. an explicit directory (``--data-dir``)
    2. the ``DATA_DIR`` environment variable
    3. the repository's ``data/`` cache (git-ignored)
    4. a download into ``data/`` by ``torchvision.datasets.Imagenette(size="160px")``

In each place, the folder itself or its ``imagenette2-160/`` subfolder must hold
``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (fast.ai's layout, which is
also what torchvision downloads). The official ``val/`` is our **test set**.

What a run trains on (``load_imagenette``):

* a stratified subset of ``train/`` (40% in the seeds), drawn with a fixed
  ``subset_seed`` so that every run and every version sees the same images;
* a validation split carved from that subset, stratified too; the rest trains;
* every image decoded once (greyscale becomes RGB), resized so that its shorter
  side is ``size`` and centre-cropped to ``size`` x ``size``, and kept as uint8
  (N, 3, size, size). The decoded images are cached in ``data/imagenette-cache/``;
  the cache key covers every file's path, size and modification time, so a
  changed, added or removed file invalidates it.

A corrupt or unreadable image stops the run with ``CorruptImageError``, whose
message names the file (train.py prints it and exits with code 2).

``python -m shared.imagenette export-subset DEST`` copies the 40% subset and
``val/`` into DEST (about 41 MB at 160 px): a run on DEST with
``--train-fraction 1.0`` trains on exactly the same images (the fingerprint in
results.json proves it). That is how the runs in runs/ travelled to the GPU.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

if __package__ in (None, ""):  # python shared/imagenette.py: make `shared` importable
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from shared.data import DATA_CACHE, DataNotFoundError, offline  # noqa: E402

# Readable names of the ten WordNet ids (the first name torchvision gives each).
WNID_TO_NAME = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
CACHE_DIR = DATA_CACHE / "imagenette-cache"
DEFAULT_CACHE = "default"  # cache_dir= this: CACHE_DIR as it is at call time (tests point it elsewhere)
CACHE_FORMAT = 1  # bump when the way images are decoded or resized changes: old caches are then ignored


class CorruptImageError(DataNotFoundError):
    """An image file could not be read or decoded; the message names it."""


@dataclass(frozen=True)
class ImagenetteSource:
    root: Path  # the folder that holds train/ and val/
    found_via: str  # "--data-dir", "DATA_DIR", "repository cache" or "download"


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _layout_problem(root: Path) -> str | None:
    """Why `root` is not a usable train/ + val/ image folder, or None if it is."""
    if not root.is_dir():
        return "does not exist"
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        return "no train/ and val/ folders"
    train_classes, val_classes = _class_dirs(root / "train"), _class_dirs(root / "val")
    if not train_classes:
        return "train/ has no class folders"
    if train_classes != val_classes:
        # A label is the alphabetical index of the class folder: a class missing on
        # one side would shift every later label on that side.
        only = sorted(set(train_classes) ^ set(val_classes))
        return f"train/ and val/ hold different class folders (e.g. {only[:3]})"
    return None


def find_imagenette(data_dir: str | os.PathLike | None = None) -> ImagenetteSource:
    """Return where Imagenette lies, downloading it into ``data/`` as a last resort."""
    if data_dir is not None:
        if not Path(data_dir).expanduser().is_dir():  # never create a mistyped folder by downloading into it
            raise DataNotFoundError(f"no such folder: {data_dir}")
        candidates = [("--data-dir", Path(data_dir).expanduser())]
    else:
        candidates = [("DATA_DIR", Path(os.environ["DATA_DIR"]).expanduser())] if os.environ.get("DATA_DIR") else []
        candidates.append(("repository cache", DATA_CACHE))
    looked = []
    for label, base in candidates:
        for root in (base, base / "imagenette2-160"):
            problem = _layout_problem(root)
            if problem is None:
                print(f"data: Imagenette from {root} ({label})")
                return ImagenetteSource(root, label)
            looked.append(f"  - {label}: {root} ({problem})")

    download_root = DATA_CACHE
    if data_dir is not None:  # the user named this folder: download nothing into it
        download_error = "not tried: --data-dir names the folder to use; leave it away to download into data/"
    elif offline():
        download_error = "skipped because DATA_OFFLINE is set"
    else:
        try:
            from torchvision.datasets import Imagenette

            for split in ("train", "val"):
                Imagenette(str(download_root), split=split, size="160px", download=True)
            download_error = None
        except Exception as err:  # no network, a proxy, a full disk: one line instead of a traceback
            download_error = f"failed ({type(err).__name__}: {err})"
    if download_error is None and _layout_problem(download_root / "imagenette2-160") is None:
        print(f"data: Imagenette downloaded into {download_root / 'imagenette2-160'}")
        return ImagenetteSource(download_root / "imagenette2-160", "download")
    raise DataNotFoundError(
        "Imagenette was not found. Looked in:\n"
        + "\n".join(looked)
        + f"\n  - download into {download_root}: {download_error or 'no imagenette2-160/ afterwards'}\n"
        "Get it in one of these ways:\n"
        "  - run once with network access: torchvision downloads imagenette2-160 into data/ (about 100 MB)\n"
        "  - download https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz, unpack it and pass\n"
        "    --data-dir FOLDER (or set DATA_DIR), where FOLDER holds train/<wnid>/ and val/<wnid>/"
    )


def list_split(root: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """Every image of ``root/split`` in sorted order, its label and the class folders (wnids).

    Sorted paths make the order, and so every subset drawn from it, the same on
    every machine and file system.
    """
    wnids = _class_dirs(root / split)
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        files = sorted(p for p in (root / split / wnid).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels, wnids


def class_names(wnids: list[str]) -> list[str]:
    """Readable names for plots and tables; a folder we do not know keeps its own name."""
    return [WNID_TO_NAME.get(w, w) for w in wnids]


def stratified_subset(labels: list[int], fraction: float, seed: int) -> list[int]:
    """Indices of a class-stratified random `fraction` of `labels`, in ascending order.

    Every class keeps round(fraction * its count) images (at least one), so the
    subset has the class balance of the whole. The same labels, fraction and seed
    give the same indices on every machine (torch's CPU generator).
    """
    if fraction >= 1.0:
        return list(range(len(labels)))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        keep = max(1, round(fraction * len(members)))
        order = torch.randperm(len(members), generator=generator)[:keep]
        chosen.extend(members[i] for i in order.tolist())
    return sorted(chosen)


def fingerprint(paths: list[Path], root: Path) -> str:
    """A short hash of the relative paths: equal fingerprints, the same images (in the same order)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\n")
    return digest.hexdigest()[:16]


def _cache_key(paths: list[Path], size: int) -> str:
    """Changes when any file is added, removed, renamed, rewritten or touched, or the size changes."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT} size {size}\n".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def decode_image(path: Path, size: int) -> torch.Tensor:
    """One image file -> uint8 (3, size, size): RGB, shorter side resized to `size`, centre crop.

    Decoded by Pillow, as torchvision's ImageFolder does (torchvision's own decoders are
    deprecated since 0.29; on these JPEGs both give the same pixels, via libjpeg-turbo).
    """
    import numpy as np
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as opened:
            rgb = opened.convert("RGB")  # greyscale, CMYK and RGBA become 3-channel RGB; reads the whole file
        image = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
    except Exception as err:  # truncated JPEG, not an image at all, unreadable file
        raise CorruptImageError(
            f"cannot decode image {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}. "
            "Delete or replace this file (or unpack the data set again), then rerun.") from None
    if image.shape[-2:] != (size, size):
        image = TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
    return image


def decode_images(paths: list[Path], size: int, *, cache_dir: Path | str | None = DEFAULT_CACHE, name: str = "images",
                  show_progress: bool = True) -> tuple[torch.Tensor, bool]:
    """All `paths` as one uint8 tensor (N, 3, size, size); returns (images, came_from_cache).

    The first run decodes (a few seconds per thousand images) and writes the
    cache; later runs read it back in well under a second. A cache that cannot be
    written (read-only checkout) costs only the decoding time, never the run.
    """
    from tqdm import tqdm

    cache_file = None
    cache_dir = CACHE_DIR if cache_dir == DEFAULT_CACHE else cache_dir  # None: no cache at all
    if cache_dir is not None and paths:
        key = _cache_key(paths, size)
        # Which files (not their content): a cache of the same files with older content can go;
        # the caches of other subsets, seeds and folders stay.
        which = hashlib.sha256("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:12]
        prefix = f"{name}-{len(paths)}-{size}px-{which}"
        cache_file = Path(cache_dir) / f"{prefix}-{key}.pt"
        if cache_file.is_file():
            try:
                cached = torch.load(cache_file, weights_only=True)
                if cached["key"] == key and cached["images"].shape == (len(paths), 3, size, size):
                    return cached["images"], True
            except Exception:
                pass  # a broken cache file is rebuilt below
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)

    def decode_into(index: int) -> None:
        images[index] = decode_image(paths[index], size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # the decoder releases the GIL
        for _ in tqdm(pool.map(decode_into, range(len(paths))), total=len(paths), desc=f"decoding {name}",
                      leave=False, disable=not show_progress, dynamic_ncols=True):
            pass
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            for stale in cache_file.parent.glob(f"{prefix}-*.pt"):
                stale.unlink()  # the same files with older content: that cache can never be valid again
            tmp = cache_file.with_suffix(f".{os.getpid()}.partial")  # parallel runs may write at once
            torch.save({"key": key, "images": images}, tmp)
            tmp.replace(cache_file)
        except OSError as err:
            print(f"note: could not write the image cache {cache_file} ({err.strerror or err}); "
                  "the next run decodes again", file=sys.stderr)
    return images, False


@dataclass
class ImagenetteData:
    train_images: torch.Tensor  # uint8 (N, 3, size, size)
    train_labels: torch.Tensor  # int64 (N,)
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor  # the official val/ folder
    test_labels: torch.Tensor
    classes: list[str]  # readable names, in label order
    wnids: list[str]
    info: dict = field(default_factory=dict)  # where from, sizes, fingerprints, cache hits: for results.json


def _cap_per_class(indices: list[int], labels: list[int], per_class: int | None) -> list[int]:
    """The first `per_class` indices of each class (for --quick), keeping the order."""
    if per_class is None:
        return indices
    taken: dict[int, int] = {}
    kept = []
    for i in indices:
        if taken.get(labels[i], 0) < per_class:
            taken[labels[i]] = taken.get(labels[i], 0) + 1
            kept.append(i)
    return kept


def load_imagenette(data_dir=None, *, train_fraction: float = 0.4, val_fraction: float = 0.15, subset_seed: int = 0,
                    size: int = 160, per_class: dict | None = None, cache_dir: Path | str | None = DEFAULT_CACHE,
                    show_progress: bool = True) -> ImagenetteData:
    """The training subset, its validation split and the test set, decoded and ready.

    `per_class` ({"train": 16, "val": 4, "test": 8}) caps the images per class of
    each split after the subset is drawn: --quick uses it to run in seconds.
    """
    source = find_imagenette(data_dir)
    train_paths, train_labels, wnids = list_split(source.root, "train")
    test_paths, test_labels, test_wnids = list_split(source.root, "val")
    if not train_paths or not test_paths:
        raise DataNotFoundError(f"{source.root} holds no images (*.JPEG, *.jpg, *.png) in train/ or val/")
    subset = stratified_subset(train_labels, train_fraction, subset_seed)
    subset_labels = [train_labels[i] for i in subset]
    held_out = set(stratified_subset(subset_labels, val_fraction, subset_seed + 1))  # positions within subset
    train_idx = [subset[j] for j in range(len(subset)) if j not in held_out]
    val_idx = [subset[j] for j in sorted(held_out)]
    test_idx = list(range(len(test_paths)))
    per_class = per_class or {}
    train_idx = _cap_per_class(train_idx, train_labels, per_class.get("train"))
    val_idx = _cap_per_class(val_idx, train_labels, per_class.get("val"))
    test_idx = _cap_per_class(test_idx, test_labels, per_class.get("test"))

    def decode(paths, idx, labels, name):
        images, cached = decode_images([paths[i] for i in idx], size, cache_dir=cache_dir, name=name,
                                       show_progress=show_progress)
        return images, torch.tensor([labels[i] for i in idx], dtype=torch.long), cached

    tr_images, tr_labels, tr_cached = decode(train_paths, train_idx, train_labels, "train")
    va_images, va_labels, va_cached = decode(train_paths, val_idx, train_labels, "val")
    te_images, te_labels, te_cached = decode(test_paths, test_idx, test_labels, "test")
    info = {
        "root": str(source.root),
        "found_via": source.found_via,
        "train_folder_images": len(train_paths),
        "train_folder_class_counts": [train_labels.count(c) for c in range(len(wnids))],
        "train_fraction": train_fraction,
        "val_fraction": val_fraction,
        "subset_seed": subset_seed,
        "subset_images": len(subset),
        "subset_fingerprint": fingerprint([train_paths[i] for i in subset], source.root),
        # changes with any training image's path, size or time: what normalize.py's cached statistics are keyed on
        "train_content_key": _cache_key([train_paths[i] for i in train_idx], size),
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "test_images": len(test_idx),
        "image_size": size,
        "from_cache": {"train": tr_cached, "val": va_cached, "test": te_cached},
    }
    return ImagenetteData(tr_images, tr_labels, va_images, va_labels, te_images, te_labels,
                          class_names(wnids), wnids, info)


def export_subset(data_dir, dest: Path, *, train_fraction: float = 0.4, subset_seed: int = 0) -> dict:
    """Copy the training subset and val/ into `dest` (new or empty), in the same layout."""
    if dest.exists() and any(dest.iterdir()):
        # Files already there would join the subset: a run with --train-fraction 1.0 would train on them.
        raise DataNotFoundError(f"{dest} is not empty; export into a new folder")
    source = find_imagenette(data_dir)
    train_paths, train_labels, _ = list_split(source.root, "train")
    subset = [train_paths[i] for i in stratified_subset(train_labels, train_fraction, subset_seed)]
    test_paths, _, _ = list_split(source.root, "val")
    for path in subset + test_paths:
        target = dest / path.relative_to(source.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)  # copy2 keeps the modification time: the cache key stays meaningful
    return {"subset_images": len(subset), "test_images": len(test_paths),
            "subset_fingerprint": fingerprint(subset, source.root)}


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Imagenette helpers (see the module docstring).")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export-subset", help="copy the training subset and val/ into DEST")
    export.add_argument("dest", type=Path)
    export.add_argument("--data-dir", type=Path, default=None)
    export.add_argument("--train-fraction", type=float, default=0.4)
    export.add_argument("--subset-seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = export_subset(args.data_dir, args.dest, train_fraction=args.train_fraction,
                                subset_seed=args.subset_seed)
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"copied {summary['subset_images']} training and {summary['test_images']} test images into {args.dest} "
          f"(subset fingerprint {summary['subset_fingerprint']}); train there with --train-fraction 1.0")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
