"""Helpers shared by the Fashion-MNIST tests (v9-step1, v10-step2).

Real Fashion-MNIST is used wherever it is installed (shared/data.py finds it);
elsewhere the tests run on a small generated stand-in written in torchvision's raw
idx layout (`<root>/FashionMNIST/raw/*-ubyte`). The stand-in is learnable: every
class has its own shape at its own place, so accuracy checks keep their meaning.
Set FMNIST_TESTS_GENERATED=1 to force the generated data even where the real
files exist (to test the fallback).
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

V9 = "fashionmnist/v9-step1"
V10 = "fashionmnist/v10-step2"
NUM_PARAMETERS = 429_450  # MyNN: conv 320 + 18,496, BN 64 + 128, FC 401,536 + 8,256 + 650
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
GENERATED_TRAIN, GENERATED_TEST = 800, 256  # quick mode takes 256 validation + 512 training images

CHECK_KEYS = {"name", "passed", "value", "threshold", "criterion", "hint", "details", "seconds", "expected"}
RESULT_KEYS = {"version", "status", "command", "date", "config", "seed", "device", "torch_version", "checks",
               "checks_time_s", "all_checks_passed", "num_parameters", "data_report", "exit_code",
               "best_epoch", "best_val_accuracy", "test_loss", "test_accuracy", "wall_time_s", "train_time_s"}


# ---------------------------------------------------------------------------
# Generated data in torchvision's raw layout
# ---------------------------------------------------------------------------
def _class_templates(rng: np.random.Generator) -> np.ndarray:
    """One 28x28 template per class: a common faint "garment" plus a bright block at the
    class's own place (a 3x4 grid, 10 of 12 cells), so classes differ clearly."""
    templates = np.zeros((10, 28, 28), dtype=np.float32)
    templates[:, 4:24, 6:22] = 0.25
    for k in range(10):
        top, left = 1 + 9 * (k // 4), 1 + 7 * (k % 4)
        templates[k, top:top + 8, left:left + 6] = rng.uniform(0.75, 1.0)
    return templates


def generated_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (count, 28, 28) and balanced, shuffled int64 labels."""
    templates = _class_templates(np.random.default_rng(1234))  # the same classes in train and test
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 10)
    images = np.empty((count, 28, 28), dtype=np.float32)
    for i, label in enumerate(labels):
        shifted = np.roll(templates[label], rng.integers(-2, 3, size=2), axis=(0, 1))
        image = shifted * rng.uniform(0.7, 1.0) + rng.normal(0.0, 0.08, (28, 28)) * (shifted > 0)
        images[i] = image + rng.uniform(0.0, 0.12, (28, 28)) * (rng.random((28, 28)) < 0.3)
    return np.clip(images * 255, 0, 255).astype(np.uint8), labels.astype(np.int64)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format of the original files: magic (0, 0, dtype 0x08=uint8, ndim), big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_generated_fashion_mnist(root: Path, n_train: int = GENERATED_TRAIN, n_test: int = GENERATED_TEST) -> Path:
    """Write `root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte` and return root."""
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = generated_images(count, seed)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)


def real_fashion_mnist_root() -> Path | None:
    """The folder with the real data, or None; never downloads (DATA_OFFLINE for the look-up)."""
    if os.environ.get("FMNIST_TESTS_GENERATED", "").strip() in {"1", "true", "yes"}:
        return None
    from shared.data import DataNotFoundError, fashion_mnist_root

    saved = os.environ.get("DATA_OFFLINE")
    os.environ["DATA_OFFLINE"] = "1"
    try:
        return fashion_mnist_root()
    except DataNotFoundError:
        return None
    finally:
        if saved is None:
            del os.environ["DATA_OFFLINE"]
        else:
            os.environ["DATA_OFFLINE"] = saved


def data_dir_for_tests(tmp_path_factory) -> tuple[Path, bool]:
    """(folder for --data-dir, True if it is the real Fashion-MNIST)."""
    real = real_fashion_mnist_root()
    if real is not None:
        return real, True
    return write_generated_fashion_mnist(tmp_path_factory.mktemp("generated_fmnist")), False


@pytest.fixture(scope="module")
def fmnist_data(tmp_path_factory) -> tuple[Path, bool]:
    return data_dir_for_tests(tmp_path_factory)


@pytest.fixture(scope="module")
def generated_data(tmp_path_factory) -> Path:
    """Always the generated set: for runs that must be small whatever is installed."""
    return write_generated_fashion_mnist(tmp_path_factory.mktemp("generated_fmnist"))


# ---------------------------------------------------------------------------
# Loading a version for a whole module, and cleaning up after it
# ---------------------------------------------------------------------------
class VersionContext:
    """`with VersionContext(V10) as train:` imports the version, restores sys.path on exit."""

    def __init__(self, folder: str):
        self.folder = folder

    def __enter__(self):
        from conftest import load_version

        self.saved_path = list(sys.path)
        return load_version(self.folder)

    def __exit__(self, *exc):
        from conftest import _forget_version_modules

        _forget_version_modules()
        sys.path[:] = self.saved_path
        return False


def quick_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["--quick", "--device", "cpu", "--out", str(out), "--data-dir", str(data_dir), *extra]


# ---------------------------------------------------------------------------
# Checking outputs
# ---------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def assert_png_has_content(path: Path, min_size: tuple[int, int] = (200, 200)) -> np.ndarray:
    """A readable PNG of a plausible size that is not one flat colour."""
    import matplotlib.image as mpimg

    assert path.is_file(), f"{path.name} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4), f"{path.name}: shape {image.shape}"
    assert image.shape[0] >= min_size[0] and image.shape[1] >= min_size[1], f"{path.name}: {image.shape}"
    rgb = image[..., :3]
    assert rgb.std() > 0.02, f"{path.name} is (almost) blank"
    packed = (rgb.reshape(-1, 3) * 255).round().astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    colours = np.unique(packed)
    assert len(colours) > 10, f"{path.name} has only {len(colours)} colours"
    # not only white: something is drawn over a good part of the picture
    assert (rgb.mean(axis=2) < 0.9).mean() > 0.01, f"{path.name} is nearly all white"
    return image


def assert_check_dict(check: dict, name: str) -> None:
    assert set(check) == CHECK_KEYS, check.keys()
    assert check["name"] == name
    assert isinstance(check["passed"], bool)
    assert check["value"] is not None and check["threshold"] is not None
    assert isinstance(check["hint"], str) and len(check["hint"]) > 20
    assert isinstance(check["criterion"], str) and check["criterion"]
    assert check["seconds"] >= 0


def assert_finite(*values: float) -> None:
    for value in values:
        assert isinstance(value, (int, float)) and math.isfinite(value), value


def load_checkpoint_into(train, path: Path):
    """The checkpoint loads with weights_only=True into the version's MyNN; returns (model, checkpoint)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = train.MyNN()
    model.load_state_dict(checkpoint["model_state"])  # strict: every key and shape must match
    return model, checkpoint


# ---------------------------------------------------------------------------
# Planted bugs: each is the bug one check exists to catch
# ---------------------------------------------------------------------------
def planted_models(train):
    """Subclasses of the version's MyNN, each with one bug."""
    import torch.nn as nn
    import torch.nn.functional as F

    class LastLayerStd1(train.MyNN):
        """Init bug: the last layer drawn with std 1.0 instead of 0.01 (confidently wrong at init)."""

        def _initialize_weights(self):
            super()._initialize_weights()
            nn.init.normal_(self.classifier[-1].weight, std=1.0)

    class ZeroesItsInput(train.MyNN):
        """The forward pass throws the image away."""

        def forward(self, x):
            return super().forward(x * 0)

    class SoftmaxBeforeLoss(train.MyNN):
        """Returns probabilities, which CrossEntropyLoss then softmaxes again."""

        def forward(self, x):
            return F.softmax(super().forward(x), dim=1)

    class MixesSamples(train.MyNN):
        """A transpose + reshape across the batch dimension before the classifier."""

        def forward(self, x):
            h = self.conv2(self.conv1(x))
            return self.classifier(h.transpose(0, 1).reshape(x.shape[0], -1))

    class DiscardsConv2(train.MyNN):
        """conv2 is computed, but the wrong tensor goes on (as in seed 003)."""

        def forward(self, x):
            h1 = self.conv1(x)
            _h2 = self.conv2(h1)  # noqa: F841  computed and dropped
            return self.classifier(F.max_pool2d(h1, 2).repeat(1, 2, 1, 1))

    return {"last_layer_std_1": LastLayerStd1, "zeroes_input": ZeroesItsInput, "softmax": SoftmaxBeforeLoss,
            "mixes_samples": MixesSamples, "discards_conv2": DiscardsConv2}
