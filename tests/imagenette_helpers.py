"""Helpers shared by the Imagenette tests (shared/imagenette.py and imagenette/v1).

The real Imagenette (about 100 MB) is not available in CI, so the tests run on a
small generated stand-in in fast.ai's layout: ``train/<wnid>/*.JPEG`` and
``val/<wnid>/*.JPEG`` with the ten real WordNet ids. The images are JPEGs that are
not square (72 x 96 px), so the resize + centre-crop path runs, and every
``greyscale_every``-th one is a greyscale JPEG, so the greyscale -> RGB path runs.
They are learnable: each class has its own background colour, its own stripe
direction and period and its own bright square, plus noise, so a small CNN gets
far above chance within a few epochs.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shared.imagenette as imagenette
from fmnist_helpers import VersionContext

V1 = "imagenette/v1"
WNIDS = sorted(imagenette.WNID_TO_NAME)  # label order: the sorted class folders
CLASS_NAMES = [imagenette.WNID_TO_NAME[w] for w in WNIDS]
TRAIN_PER_CLASS, VAL_PER_CLASS = 60, 8  # 40% of 60 = 24 per class: 4 validation + 20 training >= the quick caps
IMAGE_SIZE = (72, 96)  # (height, width): not square on purpose

# One background colour per class (far apart, also in brightness, so that greyscale
# images keep some of the difference), written in label order.
COLOURS = [(200, 40, 40), (40, 170, 40), (40, 40, 200), (210, 210, 40), (190, 40, 190),
           (40, 190, 190), (120, 60, 20), (240, 150, 60), (90, 90, 90), (20, 20, 20)]


def _class_image(label: int, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3): the class's colour, its stripes and its square, with noise and a small shift."""
    height, width = size
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = np.array(COLOURS[label], dtype=np.float32) * rng.uniform(0.85, 1.15)
    rows, cols = np.mgrid[0:height, 0:width]
    period = 6 + 2 * (label % 3)
    stripes = ((rows if label % 2 else cols) + rng.integers(0, period)) % period < period // 2
    image[stripes] = image[stripes] * 0.45 + 255 * 0.4
    # a bright square at the class's own place (a 2 x 5 grid over the image), shifted a little
    top = (label // 5) * height // 2 + height // 8 + rng.integers(-3, 4)
    left = (label % 5) * width // 5 + width // 20 + rng.integers(-2, 3)
    side = min(height // 3, width // 6)
    image[max(top, 0):top + side, max(left, 0):left + side] = 250
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_imagenette_folder(root, train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS,
                           size: tuple[int, int] = IMAGE_SIZE, greyscale_every: int = 7, seed: int = 0) -> Path:
    """Write ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (fast.ai's layout) and return root.

    Every `greyscale_every`-th image (counted over the whole folder) is saved as a
    greyscale ("L") JPEG. File names follow Imagenette's (``n01440764_0003.JPEG``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    written = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                picture = Image.fromarray(_class_image(label, rng, size))
                written += 1
                if greyscale_every and written % greyscale_every == 0:
                    picture = picture.convert("L")
                picture.save(folder / f"{wnid}_{i:04d}.JPEG", quality=90)
    return root


def add_corrupt_image(root, wnid: str = WNIDS[0]) -> Path:
    """A truncated JPEG (its first 200 bytes, then garbage) in ``train/<wnid>/``; returns its path.

    Its name sorts before every other file of the class, so it is the first image of
    that class: with --train-fraction 1.0 it lands in the training or the validation
    split and is within the --quick caps either way."""
    buffer = io.BytesIO()
    Image.fromarray(_class_image(0, np.random.default_rng(1), IMAGE_SIZE)).save(buffer, format="JPEG")
    path = Path(root) / "train" / wnid / "000_truncated.JPEG"
    path.write_bytes(buffer.getvalue()[:200] + b"\x00garbage" * 8)
    return path


def image_modes(paths) -> list[str]:
    """The PIL mode ("RGB" or "L") each file was saved in."""
    modes = []
    for path in paths:
        with Image.open(path) as picture:
            modes.append(picture.mode)
    return modes


@pytest.fixture(scope="module")
def imagenette_folder(tmp_path_factory) -> Path:
    """The generated stand-in, shared by a test module: do not change it (copy it first)."""
    return make_imagenette_folder(tmp_path_factory.mktemp("imagenette"))


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory):
    """Import this into a test module and every test in it runs with the decoded-image cache in
    a temporary folder, DATA_OFFLINE=1 and no DATA_DIR: nothing is written into the
    repository's data/ and nothing is downloaded. Yields the cache folder."""
    cache = tmp_path_factory.mktemp("imagenette_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imagenette, "CACHE_DIR", cache)
        patch.setenv("DATA_OFFLINE", "1")
        patch.delenv("DATA_DIR", raising=False)
        yield cache


def quick_args(data_dir, out, *extra) -> list[str]:
    return ["--quick", "--device", "cpu", "--data-dir", str(data_dir), "--out", str(out), *extra]


def quick_run(version: str, data_dir, out, *extra) -> tuple[dict, str]:
    """`python train.py --quick --device cpu` of `version`, in-process; returns (results, stdout)."""
    return run_version(version, quick_args(data_dir, out, *extra))


def run_version(version: str, argv: list[str]) -> tuple[dict, str]:
    """main(argv) of `version` in-process with stdout captured; returns (results, stdout)."""
    stdout = io.StringIO()
    with VersionContext(version) as train, contextlib.redirect_stdout(stdout):
        results = train.main(argv)
    return results, stdout.getvalue()


def run_main_exit(train, argv: list[str]) -> tuple[int, str]:
    """main(argv) that must end with SystemExit; returns (exit code, what it wrote to stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        train.main(argv)
    return exit_info.value.code, stderr.getvalue()
