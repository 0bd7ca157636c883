"""Fashion-MNIST v14-step6: recipe step 6, squeeze out the juice.

v13's model, data, regularisers, checks and training step, unchanged; new is the ensemble. The run
trains K members, each exactly a v13 run's model with a seed of its own (member k: --seed + 1000 k),
one after the other, each into members/member-K/ with its checkpoint and its softmax outputs on
validation, on the images as they are and mirrored (flip TTA); --resume goes on after the last
finished member. Then, on validation only, a table of ensembles of the first 1, 2, 3, 5 members
with and without TTA decides the size and whether to flip; only then is the test set read, once,
for that choice (results.json's `events` record the order, and a check holds the run to it).
New checks: members that are one model, a TTA view that is not flipped exactly once, a test set
read before the choice, the ensemble's gain over its members' mean, calibration before and after.

    python train.py               # 5 members, 40 epochs each, on the real Fashion-MNIST (GPU work)
    python train.py --quick       # a two-member ensemble on a small subset: every code path in seconds
    python train.py --preflight   # only the checks; exit code 1 if one fails
    python train.py --resume --out DIR   # go on with the members DIR does not hold yet
    python train.py --only-member K --out PART   # member K alone (processes side by side), for DIR/members/
    python train.py --help        # every constant below can be overridden
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

VERSION_DIR = Path(__file__).resolve().parent
REPO_ROOT = VERSION_DIR.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (data location, run folders)

from shared.data import DataNotFoundError, fashion_mnist_root  # noqa: E402
from shared.runs import (  # noqa: E402
    RunFolderError, existing_dir, make_run_dir, run_mode,
    save_checkpoint, stop_cleanly, write_json, write_text,
)

import shared.data  # noqa: E402  (its unpacking of the files is plumbing, not a look at the test set)
from debug_tools import (  # noqa: E402
    PredictionDynamicsTracker,
    calibration,
    data_report,
    ensemble_gain,
    human_baseline_test,
    overfit_one_batch,
    pairwise_disagreement,
    print_check_summary,
    print_data_report,
    rng_untouched,
    smoothing_floor,
    state_digest,
    filter_statistics,
    test_input_independent_baseline,
    verify_batch_independence,
    verify_augmentation,
    verify_decreasing_loss,
    verify_gradient_flow,
    verify_loss_at_init,
    verify_lr_schedule,
    verify_members_differ,
    verify_optimizer_config,
    verify_step_gradient,
    verify_test_read_after_choice,
    verify_test_set_untouched,
    verify_train_eval_modes,
    verify_tta_flip,
    visualize_input_before_net,
    watch_file_reads,
)
from metrics import compare_train_test_metrics, compute_detailed_metrics, evaluate, print_detailed_metrics  # noqa: E402
from visualization import (  # noqa: E402
    plot_batch_level_loss,
    plot_calibration,
    plot_class_means,
    plot_confusion_matrix,
    plot_ensemble,
    plot_first_layer_filters,
    plot_lr_schedule,
    plot_misclassifications,
    plot_pixel_histogram,
    plot_samples_per_class,
    plot_train_vs_test,
    plot_training_curves,
    read_history,
    write_report,
)

# ---------------------------------------------------------------------------
# Configuration: every constant can be overridden on the command line.
# ---------------------------------------------------------------------------
SEED = 42  # one seed for Python, NumPy, PyTorch and CUDA: a bug you can reproduce is a bug you can fix
# Augmented images are new images every epoch: the model needs more passes than v11's 15 to fit
# them, and the cosine schedule's low-learning-rate tail is where most of the accuracy is won.
EPOCHS = 40
BATCH_SIZE = 128  # small enough for many updates per epoch, large enough to be fast on a CPU
# Step 5's choice (v13-step5/FAZIT.md): search trial 20, the best of 3 configurations over seeds 0-2
# on validation, 95.61% ± 0.18 against 94.25% ± 0.28 for v12's defaults; v12's "safe" 3e-4 underfit.
LEARNING_RATE = 3.6e-3
LR_SCHEDULE = "cosine"  # decay to 0 over the run, so the last epochs take small steps; or "constant"
CHANNELS = 48  # the ResNet's first stage; 96 and 192 follow: 1,563,226 parameters (v12's 32: 696,042)
# Step 4's regularisers, in the recipe's order of value (v12's regularize.py measures each).
CROP_PADDING = 2  # random crop from the image padded by this many black pixels: shifts of up to 2 pixels; 0: off
FLIP_PROBABILITY = 0.5  # horizontal flip: a mirrored shirt is still a shirt (upside down it is not); 0: off
# Random erasing (Zhong et al. 2020): with this probability a random rectangle of 2-40% of the
# image is filled with noise, so the net cannot rely on any one part of a garment; 0: off.
ERASE_PROBABILITY = 0.0725  # the search's choice (v12: 0.5)
WEIGHT_DECAY = 1.98e-3  # AdamW's decoupled weight decay: each step shrinks every weight by lr x this; 0: plain Adam
# The true class's target is 1 - 0.13 + 0.013, every other class's 0.013: the net is not pushed to
# ever larger logits, and no loss is ever 0 (the floor is 0.62 for 10 classes; the checks know it).
LABEL_SMOOTHING = 0.13
DROPOUT = 0.0  # before the classifier; 0: off (the recipe: "where it helps"; v12's regularize.py measures it)
# Early stopping: stop after this many epochs without a better validation accuracy; 0: never.
# The best epoch's weights are tested either way; a cosine schedule cut short ends at a high LR.
PATIENCE = 0
TRAIN_FRACTION = 1.0  # share of the training split used: v12's learning_curve.py runs 0.1, 0.25, 0.5, 1.0
BF16 = True  # on CUDA: the step's forward pass in bfloat16 autocast (faster); no effect on CPU or MPS
# Step 5 tunes on validation: a search trial runs with --no-test, and its test files are never
# opened. Tuned on the test set, the test accuracy is one more number fitted to it, not a measurement.
READ_TEST_SET = True
VAL_SIZE = 5000  # held out of the 60,000 training images to pick the best epoch; the test set stays untouched
DEVICE = "auto"  # cuda, then mps, then cpu
DATA_DIR = None  # None: look in $DATA_DIR, data/, the Debian package, then download (shared/data.py)
OUT_DIR = VERSION_DIR / "outputs"  # every run: a new dated folder in here; outputs/latest: the newest
LOSS_AT_INIT_TOLERANCE = 0.3  # |loss - ln(10)| allowed at init; beyond it the init (or the loss) is wrong
# A loss above this (10x the 2.30 at init: the right class gets probability < e^-25) stops
# training as diverged, like NaN does: a huge learning rate often explodes the loss to 1e29
# and beyond without ever making it NaN, and such a run only wastes the remaining epochs.
DIVERGED_LOSS = 25.0
# Step 6: the ensemble. Members differ only by their seed (init, batch order, augmentation); they share
# the data split (--seed's), so their validation outputs are on the same images and can be averaged.
MEMBERS = 5  # members trained; the ensembles measured are the first K of them for each K in ENSEMBLE_SIZES
ENSEMBLE_SIZES = (1, 2, 3, 5)  # the table's sizes (K <= MEMBERS); 1 is the single model it is measured against
# Member k trains with seed + 1000 k: member 0 is v13's run of --seed, and the ensembles of --seed
# 0, 1 and 2 get disjoint members as long as the stride is larger than the seeds.
MEMBER_SEED_STRIDE = 1000
CALIBRATION_BINS = 15  # equal-width confidence bins of the reliability diagram and the ECE (v7's, Guo et al.'s)

# Debug flags: switch single steps off (or use --no-human-baseline etc.) when iterating fast.
RUN_HUMAN_BASELINE = True  # step 1: 16 test images and the human reference accuracy (83.5%)
RUN_INPUT_INDEPENDENT_BASELINE = True  # step 2: a model on zeroed inputs must be clearly worse than the real one
RUN_OVERFIT_TEST = True  # step 3: 8 images must be memorised (100% accuracy, loss ~0)
RUN_BATCH_INDEPENDENCE_TEST = True  # step 9: backprop proves sample i's output depends on input i only

# Check budgets: small next to training (40 epochs = ~17,200 steps), big enough to be decisive.
BASELINE_STEPS = 300  # steps for each of the two models of the input-independent baseline
OVERFIT_STEPS = 300  # a correct ResNet memorises 8 images in well under 300 Adam steps
OVERFIT_MAX_LOSS = 0.05  # "loss near zero": softmax-before-loss bugs plateau at ~1.46
MAX_TRAIN_TEST_GAP = 0.05  # train - test accuracy above 5 points is strong overfitting
# Step 3's capacity check has done its job in v11: with augmentation and label smoothing the
# training loss cannot reach 0 any more. What step 4 must show is the gap closing (check above).
FIXED_BATCH_SIZE = 16  # validation images whose predictions are tracked every epoch (step 8)

# --quick: a few hundred samples and one epoch, so every code path runs in seconds on a CPU.
QUICK_TRAIN_SIZE = 512
QUICK_VAL_SIZE = 256
QUICK_TEST_SIZE = 512
QUICK_EPOCHS = 1
QUICK_BASELINE_STEPS = 40
QUICK_MEMBERS = 2  # --quick: a two-member ensemble, so every ensemble code path (and every pair check) runs

NUM_CLASSES = 10
MODEL_FILE = "best_model_v14.pth"  # each member's best epoch, in its own folder members/member-K/
PROBABILITIES_FILE = "val_probabilities.pt"  # a member's softmax outputs on validation: plain and flipped
TEST_PROBABILITIES_FILE = "test_probabilities.pt"  # written once, after the choice, in the run folder


# ---------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    """Seed every random number generator and make cuDNN deterministic.

    Same seed, same machine: the same numbers, bit for bit. Without it you cannot
    tell whether a change helped or the dice rolled differently.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS matmuls
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was requested but no CUDA GPU is available (try --device cpu)")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RunError("--device mps was requested but MPS is not available (try --device cpu)")
    return torch.device(requested)


class RunError(Exception):
    """A problem the user can fix (bad flag value, unwritable folder); printed without a traceback."""


# ---------------------------------------------------------------------------
# Data: the whole data set lives in tensors on the device
# ---------------------------------------------------------------------------
class FashionMNISTTensors(torch.utils.data.Dataset):
    """Images as float tensors in [0, 1], shape (N, 1, 28, 28), plus labels and class names."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """transforms.RandomCrop(28, padding) for a whole batch: pad every image with black, then cut
    out 28x28 at a random offset per image, by gathering rows and columns in one indexing step."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator).to(images.device)
    rows = dy + torch.arange(height, device=images.device).view(1, height, 1)  # (n, height, 1)
    cols = dx + torch.arange(width, device=images.device).view(1, 1, width)  # (n, 1, width)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # the indexing puts channels last


def random_flip(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """transforms.RandomHorizontalFlip(probability) for a whole batch: each image mirrored left-right or not."""
    flip = (torch.rand(len(images), generator=generator) < probability).to(images.device)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_erasing(images: torch.Tensor, probability: float, generator: torch.Generator,
                   area=(0.02, 0.4), aspect=(0.3, 3.3)) -> torch.Tensor:
    """transforms.RandomErasing(probability, scale=area, ratio=aspect, value="random") for a whole
    batch: in each chosen image one rectangle of 2-40% of its area, of aspect ratio 0.3-3.3, is
    replaced by uniform noise in [0, 1] (the pixel range, so the batch stays in [0, 1])."""
    n, _, height, width = images.shape
    chosen = torch.rand(n, generator=generator) < probability
    target_area = height * width * torch.empty(n).uniform_(*area, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(aspect[0]), math.log(aspect[1]), generator=generator)
    box_h = (target_area * log_ratio.exp()).sqrt().round().clamp(1, height).long()
    box_w = (target_area / log_ratio.exp()).sqrt().round().clamp(1, width).long()
    top = (torch.rand(n, generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - box_w + 1)).long()
    noise = torch.rand(images.shape, generator=generator).to(images.device)
    rows, cols = torch.arange(height).view(1, height, 1), torch.arange(width).view(1, 1, width)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + box_h).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + box_w).view(n, 1, 1)) & chosen.view(n, 1, 1))
    return torch.where(inside.unsqueeze(1).to(images.device), noise, images)


@dataclass
class Augmentation:
    """What transforms.Compose([RandomCrop(28, padding), RandomHorizontalFlip(p), RandomErasing(p)])
    does to each training image, done for a whole batch on the device. Every random number is
    drawn on the CPU from the loader's generator: the same seed gives the same augmented batches
    on every device. Only the training loader has one; validation and test see the images as
    they are (the augmentation check holds that)."""
    crop_padding: int = CROP_PADDING
    flip_probability: float = FLIP_PROBABILITY
    erase_probability: float = ERASE_PROBABILITY

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_padding > 0:
            images = random_crop(images, self.crop_padding, generator)
        if self.flip_probability > 0:
            images = random_flip(images, self.flip_probability, generator)
        if self.erase_probability > 0:
            images = random_erasing(images, self.erase_probability, generator)
        return images

    def changed_share(self) -> float:
        """The share of images this changes: all but those that draw the centred crop, no flip and
        no erasing (~99% with the defaults; 0 with everything off)."""
        unchanged_crop = 1 / (2 * self.crop_padding + 1) ** 2
        return 1 - unchanged_crop * (1 - self.flip_probability) * (1 - self.erase_probability)


class TensorLoader:
    """A DataLoader for data that already sits in memory: one index per batch, no per-sample work.

    Shuffling and augmentation use the loader's own seeded generator, so the batch order and
    the augmented images are reproducible; the checks put it back where they found it
    (rng_untouched), so they do not change what training sees. `augment`: the training
    loader's Augmentation; None (validation, test) yields the stored images unchanged.
    """

    def __init__(self, dataset: FashionMNISTTensors, batch_size: int, shuffle: bool = False, seed: int = 0,
                 augment: Augmentation | None = None):
        self.dataset, self.batch_size, self.shuffle, self.augment = dataset, batch_size, shuffle, augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.dataset.images.device)
        for start in range(0, n, self.batch_size):
            batch = order[start:start + self.batch_size]
            images = self.dataset.images[batch]
            if self.augment is not None:
                images = self.augment(images, self.generator)
            yield images.contiguous(memory_format=torch.channels_last), self.dataset.labels[batch]


# The files of Fashion-MNIST's test split (plain or .gz): a --no-test run must open neither.
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class TestSetRead(RuntimeError):
    """Something touched the test set in a --no-test run; the message says what."""


class TestSetGuard:
    """What stands in a --no-test run where the test images, labels, set and loader would be.

    Any use (its length, an index, iterating it, an attribute such as .images) is recorded in
    `touches` and raises TestSetRead: a search that decides on test accuracy by accident, because a
    line in the analysis evaluates the test loader, stops with a clear message instead of
    quietly tuning on the test set. The record survives an `except Exception: pass` around the
    touch, and the check test_set_untouched reads it."""

    def __init__(self, what: str):
        object.__setattr__(self, "what", what)
        object.__setattr__(self, "touches", [])

    def _refuse(self, how: str):
        self.touches.append(f"{self.what}: {how}")
        raise TestSetRead(f"the {self.what} was used ({how}) in a --no-test run: a search scores on validation "
                          "only. Guard that line with `if cfg.test:`, or run without --no-test.")

    def __getattr__(self, name):
        if name.startswith("__"):  # copy, pickle and friends probe for optional hooks: not a use
            raise AttributeError(name)
        self._refuse(f".{name}")

    def __len__(self):
        self._refuse("len()")

    def __iter__(self):
        self._refuse("iterated")

    def __getitem__(self, index):
        self._refuse("indexed")


def to_tensor(images_uint8: torch.Tensor) -> torch.Tensor:
    """What transforms.ToTensor() does to each image, done once for the whole set:
    uint8 (N, 28, 28) in [0, 255] -> float32 (N, 1, 28, 28) in [0, 1]. No augmentation."""
    return images_uint8.unsqueeze(1).float().div(255.0)


def load_raw_data(data_dir, read_test: bool = True):
    """The original train and test splits as uint8 tensors, read by torchvision. Without
    `read_test` the test files are not opened: guards stand where the test tensors would be."""
    from torchvision.datasets import FashionMNIST

    root = fashion_mnist_root(data_dir)
    try:
        train = FashionMNIST(str(root), train=True, download=False)
        test = FashionMNIST(str(root), train=False, download=False) if read_test else None
    except (RuntimeError, ValueError, OSError) as err:
        raise DataNotFoundError(f"the Fashion-MNIST files in {root / 'FashionMNIST' / 'raw'} are unreadable "
                                f"({err}); delete them and run again to unpack or download a fresh copy") from None
    if test is None:
        return train.data, train.targets, TestSetGuard("test images"), TestSetGuard("test labels"), list(train.classes)
    return train.data, train.targets, test.data, test.targets, list(train.classes)


def split_indices(num_train: int, num_test: int, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the train / validation split (a fixed permutation of the 60,000 training
    images) and of the test images used; --quick takes small subsets of each."""
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(cfg.seed))
    val_size = QUICK_VAL_SIZE if cfg.quick else cfg.val_size
    val_idx, train_idx = order[:val_size], order[val_size:]
    test_idx = torch.arange(num_test)
    if cfg.quick:
        train_idx, test_idx = train_idx[:QUICK_TRAIN_SIZE], test_idx[:QUICK_TEST_SIZE]
    # The learning curve's subsets: the first share of an already random order, nested (the 10%
    # lie inside the 25%), and validation is the same images for every share.
    train_idx = train_idx[:max(1, round(cfg.train_fraction * len(train_idx)))]
    return train_idx, val_idx, test_idx


def split_data(train_images, train_labels, test_images, test_labels, classes, cfg, device):
    """The three splits as tensors on the device, ready for training (--no-test: a guard for the test set)."""
    train_idx, val_idx, test_idx = split_indices(len(train_labels), len(test_labels) if cfg.test else 0, cfg)

    def make(images, labels, idx):
        return FashionMNISTTensors(to_tensor(images[idx]).to(device), labels[idx].to(device), classes)

    return (make(train_images, train_labels, train_idx), make(train_images, train_labels, val_idx),
            make(test_images, test_labels, test_idx) if cfg.test else TestSetGuard("test set"))


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """The residual block of ResNet-18/34 (He et al. 2016): two 3x3 Conv-BN, the input added back,
    then ReLU. When the block halves the image (stride 2) or changes the channels, the shortcut
    is a 1x1 Conv-BN that does the same to the input, so the two can be added."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()  # the identity: the input itself
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))  # the skip: the gradient reaches x through "+" unchanged


class ResNet(nn.Module):
    """"Don't be a hero": the simplest proven architecture for 28x28 images, v6's small ResNet
    (696,042 parameters at CHANNELS = 32), initialised as v9-step1 taught.

    Input 1x28x28 -> stem Conv 1->32, BN, ReLU (32x28x28) -> stage 1: 2 blocks, 32 (32x28x28)
    -> stage 2: 2 blocks, 64, the first with stride 2 (64x14x14) -> stage 3: 2 blocks, 128, stride 2
    (128x7x7) -> global average pool (128) -> dropout -> FC 10 (logits). No max-pool in the stem: a 28x28
    image has no pixels to spare. The pool is a plain mean over height and width:
    nn.AdaptiveAvgPool2d computes the same, but its CUDA backward is not deterministic.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, channels: int = CHANNELS, dropout: float = DROPOUT):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(c, c), BasicBlock(c, c))
        self.layer2 = nn.Sequential(BasicBlock(c, 2 * c, stride=2), BasicBlock(2 * c, 2 * c))
        self.layer3 = nn.Sequential(BasicBlock(2 * c, 4 * c, stride=2), BasicBlock(4 * c, 4 * c))
        self.dropout = nn.Dropout(dropout)  # p = 0 passes everything: the same network as v11's
        self.fc = nn.Linear(4 * c, num_classes)
        self._initialize_weights()
        # channels_last lets BatchNorm vectorise over channels on a CPU, and is the layout GPU
        # convolutions prefer.
        self.to(memory_format=torch.channels_last)

    def _initialize_weights(self) -> None:
        """Init well: He/Kaiming for the convolutions (each followed by ReLU or added before one),
        BatchNorm as identity, and a tiny last layer with zero bias, so that the model starts
        out maximally unsure (loss = ln 10) instead of confidently wrong."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.layer3(self.layer2(self.layer1(self.stem(x)))).mean(dim=(2, 3))))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------
# Training: the loss, the optimizer and one step, each defined once. train_one_epoch
# and every check that trains or computes a loss use exactly these, so an edit here
# is what --preflight sees.
# ---------------------------------------------------------------------------
class TrainingDiverged(FloatingPointError):
    """The loss became NaN, infinite or exploded; the message holds the diagnosis."""


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on raw logits: it applies log-softmax itself, so no softmax goes before it.
    With label smoothing the targets are 1 - s + s/10 and s/10: the run trains with --label-smoothing,
    the evaluation (metrics.py) reports plain cross-entropy."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def mixed_precision(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA (convolutions and matmuls in bfloat16, the loss in float32), a no-op
    elsewhere. bfloat16 has float32's range, so unlike float16 it needs no loss scaling."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def make_optimizer(model: nn.Module, cfg, total_steps: int):
    """AdamW with the configured learning rate and weight decay, and the schedule it follows
    step by step (cosine: from --lr down to 0 over `total_steps`; constant: --lr throughout)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_factor(step: int) -> float:
        if cfg.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def previous_gradient_norm(model: nn.Module) -> float:
    """Norm of the gradients still held from the last backward pass (nan before the first).

    Read only when the loss turns non-finite: the guard runs before zero_grad, so the
    previous step's gradients are still there, and measuring every step would cost
    ~7% of a CPU epoch for a number that is only needed in the diagnosis."""
    grads = [p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]
    return torch.cat(grads).norm().item() if grads else float("nan")


def training_step(model, images, labels, optimizer, scheduler, diverged_loss: float = DIVERGED_LOSS,
                  label_smoothing: float = 0.0, bf16: bool = False):
    """One update of the weights: forward (in bf16 autocast on CUDA when `bf16`), the label-smoothed
    loss, backward, optimizer step, schedule step.

    Returns the batch's loss (a float) and its logits. A loss that is not finite or
    above `diverged_loss` raises TrainingDiverged before it can reach the weights,
    so the checkpoint and history on disk stay the last good state.
    """
    with mixed_precision(images.device, bf16):
        logits = model(images)
        loss = loss_fn(logits, labels, label_smoothing)
    loss_value = loss.item()
    if not math.isfinite(loss_value) or loss_value > diverged_loss:
        verdict = "is not finite" if not math.isfinite(loss_value) else f"is above --diverged-loss {diverged_loss:g}"
        raise TrainingDiverged(
            f"loss {loss_value:.3g} {verdict}; learning rate {optimizer.param_groups[0]['lr']:g}; gradient norm "
            f"of the previous step {previous_gradient_norm(model):.3g}. Usual causes: learning rate too high, "
            f"inputs not scaled to [0, 1], log of 0.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss_value, logits.detach()


def train_one_epoch(model, loader, optimizer, scheduler, epoch: int, epochs: int, global_step: int,
                    batch_losses: list[float], step=training_step):
    """One pass over the training data with `step` (training_step with the run's loss settings);
    appends every batch's loss to `batch_losses` (step 4). Returns (mean loss, accuracy, global step)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    progress = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True)
    for images, labels in progress:
        try:
            loss_value, logits = step(model, images, labels, optimizer, scheduler)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"at step {global_step} (epoch {epoch}): {err}") from None
        global_step += 1
        batch_losses.append(loss_value)
        total_loss += loss_value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        # refresh=False: the bar redraws at its own pace, not on every step
        progress.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
    return total_loss / seen, correct / seen, global_step


# ---------------------------------------------------------------------------
# Command line and run records
# ---------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows the module docstring as written, and every flag's default."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny subset and 1 epoch: every code path in seconds")
    p.add_argument("--preflight", action="store_true", help="run only the checks; exit code 1 if one fails")
    p.add_argument("--out", type=Path, default=None,
                   help="exactly this folder; without it, a new dated folder under outputs/")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out reuse a folder that already holds a run's results")
    p.add_argument("--resume", action="store_true",
                   help="go on with the run in --out (default: outputs/latest): finished members are kept")
    p.add_argument("--data-dir", type=existing_dir, default=DATA_DIR, help="folder with the Fashion-MNIST files")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=DEVICE, help="auto: cuda, mps, cpu")
    p.add_argument("--seed", type=int, default=SEED, help="one seed for every random number generator")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="training images per step")
    p.add_argument("--lr", type=float, default=LEARNING_RATE, help="AdamW's learning rate at the first step")
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default=LR_SCHEDULE,
                   help="cosine decays the learning rate to 0 over the run, stepped per batch")
    p.add_argument("--channels", type=int, default=CHANNELS, help="the ResNet's first-stage channels (x2, x4 later)")
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY, help="AdamW's decoupled weight decay")
    p.add_argument("--crop-padding", type=int, default=CROP_PADDING, help="random crop's padding in pixels; 0: off")
    p.add_argument("--flip-probability", type=float, default=FLIP_PROBABILITY, help="horizontal flip; 0: off")
    p.add_argument("--erase-probability", type=float, default=ERASE_PROBABILITY, help="random erasing; 0: off")
    p.add_argument("--label-smoothing", type=float, default=LABEL_SMOOTHING, help="share of the target spread "
                   "over all classes; 0: plain cross-entropy")
    p.add_argument("--dropout", type=float, default=DROPOUT, help="dropout before the classifier; 0: off")
    p.add_argument("--patience", type=int, default=PATIENCE,
                   help="stop after this many epochs without a better validation accuracy; 0: never")
    p.add_argument("--train-fraction", type=float, default=TRAIN_FRACTION,
                   help="share of the training split to train on (the learning curve's x axis)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=BF16,
                   help="on CUDA, the training step's forward pass in bfloat16 autocast")
    p.add_argument("--test", action=argparse.BooleanOptionalAction, default=READ_TEST_SET,
                   help="evaluate the test set once at the end; --no-test (a search trial): never read it")
    p.add_argument("--val-size", type=int, default=VAL_SIZE, help="training images held out for validation")
    p.add_argument("--loss-at-init-tolerance", type=float, default=LOSS_AT_INIT_TOLERANCE,
                   help="|loss at init - ln(10)| allowed")
    p.add_argument("--diverged-loss", type=float, default=DIVERGED_LOSS,
                   help="a batch loss above this stops training, like NaN does (inf: only NaN stops)")
    p.add_argument("--human-baseline", action=argparse.BooleanOptionalAction, default=RUN_HUMAN_BASELINE,
                   help="step 1: show 16 test images and the human reference accuracy")
    p.add_argument("--input-independent-baseline", action=argparse.BooleanOptionalAction,
                   default=RUN_INPUT_INDEPENDENT_BASELINE, help="step 2: the real model must beat a zero-input one")
    p.add_argument("--overfit-test", action=argparse.BooleanOptionalAction, default=RUN_OVERFIT_TEST,
                   help="step 3: the training step must memorise 8 images")
    p.add_argument("--batch-independence-test", action=argparse.BooleanOptionalAction,
                   default=RUN_BATCH_INDEPENDENCE_TEST, help="step 9: output i must depend on input i only")
    p.add_argument("--baseline-steps", type=int, default=BASELINE_STEPS, help="training steps of each baseline model")
    p.add_argument("--overfit-steps", type=int, default=OVERFIT_STEPS, help="most training steps on the 8 images")
    p.add_argument("--overfit-max-loss", type=float, default=OVERFIT_MAX_LOSS, help="'memorised': loss at most this")
    p.add_argument("--max-train-test-gap", type=float, default=MAX_TRAIN_TEST_GAP,
                   help="train - test accuracy above this is strong overfitting")
    p.add_argument("--members", type=int, default=MEMBERS,
                   help="members of the ensemble, trained one after another")
    p.add_argument("--only-member", type=int, default=None, metavar="K",
                   help="train member K alone (into OUT/members/member-K) and stop: members side by side in "
                   "processes of their own; moved into one folder, its --resume run keeps them")
    p.add_argument("--sizes", type=int, nargs="+", default=list(ENSEMBLE_SIZES),
                   help="ensemble sizes measured on validation (the first K members; sizes > --members skipped)")
    p.add_argument("--member-seed-stride", type=int, default=MEMBER_SEED_STRIDE,
                   help="member k's seed is --seed + this x k")
    p.add_argument("--calibration-bins", type=int, default=CALIBRATION_BINS,
                   help="confidence bins of the reliability diagram and the ECE")
    args = p.parse_args(argv)
    if args.members < 1 or min(args.sizes) < 1 or args.member_seed_stride < 1 or args.calibration_bins < 1:
        p.error("--members, --sizes, --member-seed-stride and --calibration-bins must be >= 1")
    if not args.diverged_loss > 0:
        p.error("--diverged-loss must be > 0 (inf switches the explosion stop off; NaN always stops)")
    if args.baseline_steps < 1 or args.overfit_steps < 1:
        p.error("--baseline-steps and --overfit-steps must be >= 1")
    if (args.epochs < 1 or args.batch_size < 1 or args.val_size < 1 or not math.isfinite(args.lr) or args.lr <= 0
            or args.channels < 1 or not args.weight_decay >= 0):
        p.error("--epochs, --batch-size, --val-size and --channels must be >= 1, --lr a number > 0, "
                "--weight-decay >= 0")
    if args.crop_padding < 0 or args.patience < 0 or not 0 < args.train_fraction <= 1:
        p.error("--crop-padding and --patience must be >= 0, --train-fraction in (0, 1]")
    for name in ("flip_probability", "erase_probability", "dropout"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    if not 0 <= args.label_smoothing < 1:
        p.error("--label-smoothing must be in [0, 1)")
    if args.quick:
        args.epochs = min(args.epochs, QUICK_EPOCHS)
        args.baseline_steps = min(args.baseline_steps, QUICK_BASELINE_STEPS)
        args.members = min(args.members, QUICK_MEMBERS)
    if args.only_member is not None and not 0 <= args.only_member < args.members:  # after --quick's 2 members
        p.error(f"--only-member must be in 0..{args.members - 1} (--members {args.members})")
    return args


def prepare_out_dir(cfg) -> Path:
    """This run's own folder: a new dated one under outputs/ (outputs/latest points to it), or
    exactly --out. Fails at the start, not after an hour of training, if results cannot be
    written or would overwrite another run's."""
    try:
        return make_run_dir(OUT_DIR, run_mode(cfg.quick, cfg.preflight), cfg.out,
                            resume=getattr(cfg, "resume", None), overwrite=cfg.overwrite)
    except RunFolderError as err:
        raise RunError(str(err)) from None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


# ---------------------------------------------------------------------------
# The phases of a run, in the order main() calls them
# ---------------------------------------------------------------------------
@dataclass
class Run:
    """What every phase needs: the config, where outputs go, the device, and the results so far."""
    cfg: argparse.Namespace
    out: Path
    device: torch.device
    results: dict
    started: float = field(default_factory=time.perf_counter)

    def save(self, **updates) -> None:
        self.results.update(updates, wall_time_s=time.perf_counter() - self.started)
        write_json(self.out / "results.json", self.results)


@dataclass
class Data:
    train_set: FashionMNISTTensors
    val_set: FashionMNISTTensors
    test_set: FashionMNISTTensors
    train_loader: TensorLoader
    val_loader: TensorLoader
    test_loader: TensorLoader


def start_run(cfg, argv) -> Run:
    """Output folder, device and seed, and the header of results.json; exit 2 on a bad --out or --device."""
    try:
        out = prepare_out_dir(cfg)
        refuse_a_second_test_read(cfg, out)
        device = pick_device(cfg.device)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    set_seed(cfg.seed)
    results = {
        "version": "fashionmnist/v14-step6",
        "status": "running",
        "command": " ".join(["python train.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "seed": cfg.seed,
        "device": device_name(device),
        "torch_version": torch.__version__,
        "checks": {},
        "events": [],  # what happened, in order: members trained -> choice made -> test read
    }
    print("=" * 78)
    print(f"Fashion-MNIST v14-step6 | device {results['device']} | torch {torch.__version__} | seed {cfg.seed}")
    seeds = ", ".join(str(member_seed(cfg.seed, k, cfg.member_seed_stride)) for k in range(cfg.members))
    print(f"ensemble of {cfg.members} members (seeds {seeds}), sizes {cfg.sizes} on validation, with and without "
          "flip TTA" + (" | resuming" if cfg.resume else ""))
    print(f"epochs {cfg.epochs}, batch size {cfg.batch_size}, lr {cfg.lr} ({cfg.lr_schedule}), channels {cfg.channels}"
          + (" | QUICK MODE" if cfg.quick else ""))
    print(f"regularisers: crop padding {cfg.crop_padding}, flip {cfg.flip_probability}, erasing "
          f"{cfg.erase_probability}, weight decay {cfg.weight_decay}, label smoothing {cfg.label_smoothing}, "
          f"dropout {cfg.dropout}, patience {cfg.patience or 'off'}"
          + (f" | training on {cfg.train_fraction:.0%} of the split" if cfg.train_fraction < 1 else ""))
    print("=" * 78)
    return Run(cfg, out, device, results)


def load_data(run: Run):
    """The raw uint8 data and the three splits as tensors on the device; exit 2 when data is missing."""
    cfg = run.cfg
    try:
        raw = load_raw_data(cfg.data_dir, read_test=cfg.test)  # --no-test: the test files stay closed
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    train_set, val_set, test_set = split_data(*raw, cfg, run.device)
    augmentation = Augmentation(cfg.crop_padding, cfg.flip_probability, cfg.erase_probability)
    train_loader = TensorLoader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augmentation)
    # Validation and test: no augment, ever. They measure the model on the images as they are.
    data = Data(train_set, val_set, test_set, train_loader, TensorLoader(val_set, 1024), TensorLoader(test_set, 1024))
    print(f"Split: {len(train_set)} train, {len(val_set)} validation, "
          + (f"{len(test_set)} test" if cfg.test else "the test set not read (--no-test)"))
    return raw, data


def report_on_data(run: Run, raw) -> None:
    """Recipe step 1, become one with the data: numbers and plots of the images this run uses."""
    print("\n--- Data report ---")
    train_images, train_labels, test_images, test_labels, classes = raw
    train_idx, _, test_idx = split_indices(len(train_labels), len(test_labels) if run.cfg.test else 0, run.cfg)
    train_images, train_labels = train_images[train_idx], train_labels[train_idx]
    if run.cfg.test:
        test_images, test_labels = test_images[test_idx], test_labels[test_idx]
    else:  # --no-test: the report covers the training split; its test counts are those of no image
        test_images, test_labels = train_images[:0], train_labels[:0]
    report = data_report(train_images, train_labels, test_images, test_labels, classes)
    print_data_report(report)
    run.results["data_report"] = report
    plot_samples_per_class(train_images, train_labels, classes, run.out / "data_samples.png")
    plot_class_means(train_images, train_labels, classes, run.out / "class_means.png")
    plot_pixel_histogram(train_images, run.out / "pixel_histogram.png")


def unaugmented_images(raw, cfg) -> dict:
    """Each split's images straight from the files, in the order of the split: what the loaders
    must yield for validation and test, and what the training loader's augmentation starts from."""
    train_images, train_labels, test_images, test_labels, _ = raw
    train_idx, val_idx, test_idx = split_indices(len(train_labels), len(test_labels) if cfg.test else 0, cfg)
    originals = {"training": (to_tensor(train_images[train_idx]), train_labels[train_idx]),
                 "validation": (to_tensor(train_images[val_idx]), train_labels[val_idx])}
    if cfg.test:  # --no-test: there is no test split to compare with
        originals["test"] = (to_tensor(test_images[test_idx]), test_labels[test_idx])
    return originals


def checks_before_training(run: Run, raw, data: Data, model, optimizer, scheduler) -> dict:
    """Every check before training, each driving this run's own loss_fn, optimizer and
    training_step on copies of the model. Inside rng_untouched: running or skipping a check
    changes neither the model nor the random numbers training will draw."""
    cfg, device, out = run.cfg, run.device, run.out
    print("\n--- Checks before training ---")
    started = time.perf_counter()
    new_optimizer = functools.partial(make_optimizer, cfg=cfg)  # a check lays the schedule over its own steps
    step = functools.partial(training_step, diverged_loss=cfg.diverged_loss, label_smoothing=cfg.label_smoothing,
                             bf16=cfg.bf16)
    loss = functools.partial(loss_fn, label_smoothing=cfg.label_smoothing)  # the loss the run trains on
    probe_images, probe_labels = data.train_set.images[:64], data.train_set.labels[:64]
    checks = {}
    run.results["baselines"] = {}
    with rng_untouched(device, data.train_loader.generator):
        if cfg.human_baseline and cfg.test:  # its 16 images are test images
            run.results["baselines"] = human_baseline_test(data.test_set, num_samples=16, out_dir=out, seed=cfg.seed)
        if cfg.input_independent_baseline:
            checks["input_independent_baseline"] = test_input_independent_baseline(
                model, data.train_loader, data.val_loader, make_optimizer=new_optimizer, training_step=step,
                steps=cfg.baseline_steps)
        checks["input_before_net"] = visualize_input_before_net(data.train_loader, out_dir=out)
        # Step 4's new check: the training batch is augmented as configured, and validation and test
        # are the images from the files, untouched (seed 004's bug: a shared transform).
        configured = Augmentation(cfg.crop_padding, cfg.flip_probability, cfg.erase_probability)
        evaluated = {"validation": data.val_loader, **({"test": data.test_loader} if cfg.test else {})}
        checks["augmentation"] = verify_augmentation(
            data.train_loader, evaluated, unaugmented_images(raw, cfg), expected_changed=configured.changed_share(),
            out_dir=out)
        # Label smoothing leaves the loss of a maximally unsure model at ln(10): the same check as v11.
        checks["loss_at_init"] = verify_loss_at_init(model, data.train_loader, loss, NUM_CLASSES,
                                                     cfg.loss_at_init_tolerance)
        checks["optimizer_config"] = verify_optimizer_config(model, optimizer, lr=cfg.lr,
                                                             weight_decay=cfg.weight_decay)
        # Step 3's "don't trust learning-rate decay defaults": the run's own scheduler stepped through
        # every step of the run, drawn, and the run's own train_one_epoch stepping it once per batch.
        one_epoch = functools.partial(train_one_epoch, epoch=1, epochs=1, global_step=0, batch_losses=[],
                                      step=step)
        probe_batches = [(probe_images[i:i + 16], probe_labels[i:i + 16]) for i in range(0, 64, 16)]
        checks["lr_schedule"] = verify_lr_schedule(
            model, optimizer, scheduler, epochs=cfg.epochs, steps_per_epoch=len(data.train_loader),
            make_optimizer=new_optimizer, train_one_epoch=one_epoch, batches=probe_batches)
        plot_lr_schedule(checks["lr_schedule"].details, out / "lr_schedule.png")
        checks["gradient_flow"] = verify_gradient_flow(model, probe_images, probe_labels, loss)
        # The fresh gradient is computed in the step's own precision (bf16 autocast on CUDA), so the
        # comparison is like with like; float32 against bf16 would differ by ~1e-2 on correct code.
        checks["step_gradient"] = verify_step_gradient(
            model, probe_images, probe_labels, make_optimizer=new_optimizer, training_step=step, loss_fn=loss,
            forward_context=functools.partial(mixed_precision, device, cfg.bf16))
        if cfg.overfit_test:
            # Label smoothing puts a floor under the loss (0.50 at 0.1): "memorised" is near that floor.
            checks["overfit_one_batch"] = overfit_one_batch(
                model, data.train_set.images[:8], data.train_set.labels[:8], make_optimizer=new_optimizer,
                training_step=step, loss_fn=loss, steps=cfg.overfit_steps,
                max_loss=smoothing_floor(cfg.label_smoothing, NUM_CLASSES) + cfg.overfit_max_loss, out_dir=out)
        if cfg.batch_independence_test:
            checks["batch_independence"] = verify_batch_independence(model, data.val_set.images[:8])
        few = TensorLoader(FashionMNISTTensors(probe_images[:32], probe_labels[:32], data.train_set.classes), 16)

        def own_epoch(probe):  # this run's epoch, on two batches, with its own optimizer and schedule
            probe_optimizer, probe_scheduler = new_optimizer(probe, total_steps=len(few))
            train_one_epoch(probe, few, probe_optimizer, probe_scheduler, 0, 0, 0, [], step)
        checks["train_eval_modes"] = verify_train_eval_modes(model, train_epoch=own_epoch,
                                                             evaluate=lambda probe: evaluate(probe, few, device))
    for check in checks.values():
        print(check.report())
    run.results["checks_time_s"] = time.perf_counter() - started
    record_checks(run, checks)  # in results.json even if training later diverges or is interrupted
    return checks


def record_checks(run: Run, checks: dict) -> None:
    run.results["checks"] = {name: c.to_dict() for name, c in checks.items()}
    run.results["all_checks_passed"] = all(c.passed for c in checks.values())


def finish_preflight(run: Run, checks: dict) -> dict:
    """--preflight stops here: the verdicts, and exit code 1 if one check failed."""
    print_check_summary(checks)
    record_checks(run, checks)
    run.save(status="preflight", exit_code=0 if run.results["all_checks_passed"] else 1)
    return run.results


def train(run: Run, data: Data, model, optimizer, scheduler) -> None:
    """Recipe step 2's monitoring while training: every batch's loss (step 4) and the predictions
    on a fixed validation batch (step 8). The best epoch by validation accuracy is saved; with
    --patience, training stops after that many epochs without a better one (early stopping).
    Ctrl-C or a diverged loss keep the history and best checkpoint, and exit 130 or 1."""
    cfg, out = run.cfg, run.out
    step = functools.partial(training_step, diverged_loss=cfg.diverged_loss, label_smoothing=cfg.label_smoothing,
                             bf16=cfg.bf16)
    print("\n--- Training ---")
    history_path = out / "history.jsonl"
    history_path.write_text("")
    best_val_acc, best_epoch, global_step, epoch = -1.0, 0, 0, 0
    batch_losses: list[float] = []
    tracker = PredictionDynamicsTracker(data.val_set.images[:FIXED_BATCH_SIZE],
                                        data.val_set.labels[:FIXED_BATCH_SIZE], run.device)
    tracker.update(model, 0)
    train_started = time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            first_batch = len(batch_losses)
            train_loss, train_acc, global_step = train_one_epoch(
                model, data.train_loader, optimizer, scheduler, epoch, cfg.epochs, global_step, batch_losses, step)
            val_loss, val_acc = evaluate(model, data.val_loader, run.device)
            if not val_loss <= cfg.diverged_loss:  # NaN too: the weights blew up within the epoch; not a "best"
                raise TrainingDiverged(f"after epoch {epoch} (step {global_step}): validation loss {val_loss:.3g} "
                                       f"is not finite or above --diverged-loss {cfg.diverged_loss:g}; "
                                       f"learning rate {optimizer.param_groups[0]['lr']:g}. Lower --lr.")
            tracker.update(model, epoch)
            record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                      "val_loss": val_loss, "val_accuracy": val_acc, "learning_rate": scheduler.get_last_lr()[0],
                      "seconds": time.perf_counter() - epoch_started, "batch_losses": batch_losses[first_batch:]}
            with open(history_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            improved = val_acc > best_val_acc
            if improved:
                best_val_acc, best_epoch = val_acc, epoch
                save_checkpoint({"model_state": model.state_dict(), "epoch": epoch, "val_accuracy": val_acc},
                                out / MODEL_FILE)
            tqdm.write(f"epoch {epoch:>3}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.2%}  "
                       f"val loss {val_loss:.4f} acc {val_acc:.2%}  {record['seconds']:.1f}s"
                       + ("  *best*" if improved else ""))
            if cfg.patience and epoch - best_epoch >= cfg.patience:
                run.results["stopped_early"] = epoch
                tqdm.write(f"Early stopping: no better validation accuracy for {cfg.patience} epochs "
                           f"(best epoch {best_epoch}).")
                break
    except (KeyboardInterrupt, TrainingDiverged) as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        run.save(status="interrupted" if interrupted else "diverged", error=None if interrupted else str(err),
                 best_epoch=best_epoch, best_val_accuracy=best_val_acc, exit_code=130 if interrupted else 1)
        if epoch > 1:
            plot_training_curves(history_path, out / "training_curves.png")
        print(f"\n{'Interrupted' if interrupted else 'Training diverged ' + str(err)}\n"
              f"Kept: {history_path} (epochs done: {epoch - 1}), {out / 'results.json'}"
              + (f", {out / MODEL_FILE} (best epoch {best_epoch})" if best_epoch else ""), file=sys.stderr)
        raise SystemExit(run.results["exit_code"]) from None
    run.results.update(train_time_s=time.perf_counter() - train_started, best_epoch=best_epoch,
                       best_val_accuracy=best_val_acc, epochs_run=epoch)
    plot_training_curves(history_path, out / "training_curves.png")
    history_losses = [loss for h in read_history(history_path) for loss in h["batch_losses"]]
    plot_batch_level_loss(history_losses, out / "batch_level_loss.png", batches_per_epoch=len(data.train_loader))
    tracker.plot(out / "prediction_dynamics.png")
    run.results["prediction_dynamics"] = tracker.to_dict()


def analyse(run: Run, data: Data, model, checks: dict, filters_at_init: torch.Tensor) -> None:
    """The best model, evaluated once on the test set (steps 5 and 6), and the checks after training.
    --no-test (a search trial): no test evaluation, no train - test gap, no plots of test mistakes;
    the run's score is its best validation accuracy."""
    out, device, cfg = run.out, run.device, run.cfg
    print("\n--- Post-training analysis ---")
    started = time.perf_counter()
    checkpoint = torch.load(out / MODEL_FILE, map_location=device, weights_only=True)
    model.load_state_dict(checkpoint["model_state"])
    history_losses = [loss for h in read_history(out / "history.jsonl") for loss in h["batch_losses"]]
    checks["training_loss_decreases"] = verify_decreasing_loss(history_losses)
    train_metrics = compute_detailed_metrics(model, TensorLoader(data.train_set, 1024), device, NUM_CLASSES)
    classes = data.train_set.classes
    print_detailed_metrics(train_metrics, "Train", classes)
    if cfg.test:
        test_metrics = compute_detailed_metrics(model, data.test_loader, device, NUM_CLASSES)
        print_detailed_metrics(test_metrics, "Test", classes)
        # v11's expected failure is step 4's goal: the regularised model's gap must be small for real.
        checks["train_test_gap"] = compare_train_test_metrics(train_metrics, test_metrics, cfg.max_train_test_gap)
    # The recipe: smooth first-layer filters are a good sign, noise-like ones a warning (too little
    # training, a learning rate too high, no regularisation). Drawn next to their state at init.
    filters = model.stem[0].weight.detach()
    run.results["first_layer_filters"] = {"at_init": filter_statistics(filters_at_init),
                                          "trained": filter_statistics(filters)}
    plot_first_layer_filters(filters_at_init, filters, run.results["first_layer_filters"],
                             out / "first_layer_filters.png")
    if cfg.test:
        plot_confusion_matrix(test_metrics["confusion_matrix"], classes, out / "confusion_matrix.png")
        plot_train_vs_test(train_metrics, test_metrics, classes, out / "train_vs_test_comparison.png")
        plot_misclassifications(data.test_set.images, test_metrics["most_confident_mistakes"], classes,
                                out / "misclassifications.png")
        run.results.update(test_loss=test_metrics["loss"], test_accuracy=test_metrics["accuracy"],
                           test_metrics=test_metrics)
    if cfg.batch_independence_test:
        checks["batch_independence_after_training"] = verify_batch_independence(
            model, data.val_set.images[:8], name="batch_independence_after_training")
    for name in ("training_loss_decreases", "train_test_gap", "batch_independence_after_training"):
        if name in checks:
            print(checks[name].report())
    record_checks(run, checks)
    run.results["checks_time_s"] += time.perf_counter() - started
    run.results.update(status="completed", exit_code=0, train_metrics=train_metrics)
    run.results["outputs"] = sorted({p.name for p in out.iterdir() if p.is_file()} | {"results.json", "REPORT.md"})


def check_test_set(run: Run, raw, data: Data, checks: dict, test_file_reads: list[str]) -> None:
    """Step 5's check, last: did this run read the test set? results.json's `test_read` says it for
    every run (True for a normal one: it reads the test files to evaluate once, at the end);
    a --no-test run must not have, and the check test_set_untouched holds it to that: no test
    file opened (the run watched every open()), no guard touched, no test number recorded."""
    guards = [part for part in (raw[2], raw[3], data.test_set) if isinstance(part, TestSetGuard)]
    touches = [touch for guard in guards for touch in guard.touches]
    run.results["test_read"] = bool(test_file_reads or touches)
    run.results["test_files_opened"] = test_file_reads
    if not run.cfg.test:
        checks["test_set_untouched"] = verify_test_set_untouched(test_file_reads, touches, run.results)
        print(checks["test_set_untouched"].report())
    record_checks(run, checks)


# ---------------------------------------------------------------------------
# Step 6: the ensemble. K members, each exactly a v13 run's model with a seed of its own, their
# softmax outputs averaged, flip TTA; the choice on validation, then the test set, once.
# ---------------------------------------------------------------------------
def member_seed(seed: int, member: int, stride: int = MEMBER_SEED_STRIDE) -> int:
    """Member k's seed: its init, batch order and augmentation. Member 0 is --seed's own run."""
    return seed + stride * member


def no_test(cfg) -> argparse.Namespace:
    """The run as every phase before the choice sees it: v13's --no-test mode, the test files closed."""
    return argparse.Namespace(**{**vars(cfg), "test": False})


def member_config(cfg, member: int) -> argparse.Namespace:
    """Member k's configuration: the ensemble's, with the member's seed and the test set closed."""
    seed = member_seed(cfg.seed, member, cfg.member_seed_stride)
    return argparse.Namespace(**{**vars(no_test(cfg)), "seed": seed, "member": member})


def flip_view(images: torch.Tensor) -> torch.Tensor:
    """TTA's second view: every image mirrored left-right (N x C x H x W: dim 3 is the width), as the
    training augmentation's flip does. Up-down (dim 2) would show the net garments it never saw."""
    return images.flip(3)


@torch.no_grad()
def member_probabilities(model, images: torch.Tensor, device, batch_size: int = 1024) -> dict:
    """A member's softmax outputs in eval mode and float32, on the images as they are ("plain") and on
    their mirror images ("flipped"), on the CPU in the images' order: what an ensemble averages."""
    model.eval()
    plain, flipped = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        plain.append(F.softmax(model(batch).float(), dim=1).cpu())
        flipped.append(F.softmax(model(flip_view(batch)).float(), dim=1).cpu())
    return {"plain": torch.cat(plain), "flipped": torch.cat(flipped)}


def member_view(member: dict, tta: bool) -> torch.Tensor:
    """One member's prediction: its plain outputs, or with TTA the mean over the image and its mirror."""
    return (member["plain"] + member["flipped"]) / 2 if tta else member["plain"]


def ensemble_probabilities(members: list[dict], size: int, tta: bool) -> torch.Tensor:
    """The ensemble of the first `size` members: the mean of their softmax outputs. Probabilities, not
    logits: each member votes with its confidence, and a member's huge logit cannot outvote the rest.
    The first K, not the best K on validation: the members are exchangeable (only their seed
    differs), and picking the luckiest subset would fit one more choice to the validation images."""
    return torch.stack([member_view(m, tta) for m in members[:size]]).mean(0)


def probability_metrics(probabilities: torch.Tensor, labels: torch.Tensor, bins: int) -> dict:
    """Accuracy (with its standard error), cross-entropy of the averaged probabilities, and calibration."""
    labels = labels.cpu()
    confidence, predicted = probabilities.max(1)
    accuracy = (predicted == labels).double().mean().item()
    nll = -probabilities[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean().item()
    top = probabilities.topk(5, dim=1).indices
    top3 = (top[:, :3] == labels[:, None]).any(1).double().mean().item()
    top5 = (top == labels[:, None]).any(1).double().mean().item()
    return {"num_samples": len(labels), "accuracy": accuracy,
            "accuracy_std_error": (accuracy * (1 - accuracy) / len(labels)) ** 0.5, "loss": nll,
            "top3_accuracy": top3, "top5_accuracy": top5,
            "calibration": calibration(confidence, predicted == labels, bins)}


def record_event(run: Run, event: str, **details) -> None:
    """results.json's `events`: what happened, in order, with the time. The order is the evidence that
    the test set was read after the choice (test_read_after_choice)."""
    run.results["events"].append({"event": event, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  **details})
    run.save()


def refuse_a_second_test_read(cfg, out: Path) -> None:
    """--resume on a run that has read the test set already is refused: its choice is final, and a
    second choice after seeing the test accuracy would make that accuracy a tuned number."""
    previous = out / "results.json"
    if cfg.resume and previous.exists() and json.loads(previous.read_text()).get("test_read"):
        raise RunError(f"{out} has read the test set already (its results.json says test_read true); its choice "
                       "is final. Start a new run for new members.")


# The settings that make a member what it is: a member trained with others is not resumed into this run.
MEMBER_SETTINGS = ("seed", "epochs", "batch_size", "lr", "lr_schedule", "channels", "weight_decay", "crop_padding",
                   "flip_probability", "erase_probability", "label_smoothing", "dropout", "patience",
                   "train_fraction", "bf16", "val_size", "quick")


def finished_member(folder: Path, mcfg) -> bool:
    """Has this member been trained to the end (--resume keeps it)? Exit 2 if it was trained with other settings."""
    results_path = folder / "results.json"
    if not results_path.exists():
        return False
    results = json.loads(results_path.read_text())
    differing = [name for name in MEMBER_SETTINGS if results["config"].get(name) != getattr(mcfg, name)]
    if differing:
        print(f"error: {folder} was trained with other settings ({', '.join(differing)}); --resume goes on with "
              "the same command only. Use a new --out.", file=sys.stderr)
        raise SystemExit(2)
    return results.get("status") == "completed" and (folder / PROBABILITIES_FILE).exists()


def train_member(run: Run, data: Data, k: int, folder: Path) -> None:
    """Member k: a v13 run in members/member-K/ (v13's train() and analyse(), as in --no-test: its test set
    stays closed), with its own seed for init, batch order and augmentation, on the ensemble's split.
    Then its softmax outputs on validation, plain and flipped, saved next to its checkpoint."""
    mcfg = member_config(run.cfg, k)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\n=== Member {k + 1}/{run.cfg.members} (seed {mcfg.seed}) -> {folder} ===")
    set_seed(mcfg.seed)
    model = ResNet(channels=mcfg.channels, dropout=mcfg.dropout).to(run.device)
    optimizer, scheduler = make_optimizer(model, mcfg, total_steps=mcfg.epochs * len(data.train_loader))
    loader = TensorLoader(data.train_set, mcfg.batch_size, shuffle=True, seed=mcfg.seed,
                          augment=data.train_loader.augment)
    member = Run(mcfg, folder, run.device, {
        "version": run.results["version"], "member": k, "status": "running", "command": run.results["command"],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(mcfg).items()},
        "seed": mcfg.seed, "device": run.results["device"], "torch_version": torch.__version__, "checks": {},
        "checks_time_s": 0.0, "baselines": {}, "num_parameters": count_parameters(model)})
    filters_at_init = model.stem[0].weight.detach().clone()
    member_data = replace(data, train_loader=loader)
    train(member, member_data, model, optimizer, scheduler)
    analyse(member, member_data, model, {}, filters_at_init)  # loads the best epoch's weights
    save_checkpoint({**member_probabilities(model, data.val_set.images, run.device),
                     "labels": data.val_set.labels.cpu()}, folder / PROBABILITIES_FILE)
    member.results["outputs"] = sorted(set(member.results["outputs"]) | {PROBABILITIES_FILE})
    member.save()
    write_report(member.results, folder / "REPORT.md")


def load_member(folder: Path) -> dict:
    """A finished member from its folder: its record, weights' digest and validation outputs."""
    results = json.loads((folder / "results.json").read_text())
    state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)["model_state"]
    probabilities = torch.load(folder / PROBABILITIES_FILE, weights_only=True)
    return {"member": results["member"], "seed": results["seed"], "folder": folder, "state": state,
            "digest": state_digest(state), "best_epoch": results["best_epoch"],
            "best_val_accuracy": results["best_val_accuracy"], "train_time_s": results["train_time_s"],
            "all_checks_passed": results["all_checks_passed"], "train_metrics": results["train_metrics"],
            "failed_checks": [name for name, c in results["checks"].items() if not c["passed"]], **probabilities}


def train_members(run: Run, data: Data) -> list[dict]:
    """Every member, one after another; with --resume the finished ones are kept (a 5-member run on a
    GPU can outlast one session: run the same command with --resume until all are there). Ctrl-C or
    a diverged member: its folder keeps its history and best checkpoint, the earlier members stay."""
    cfg, members = run.cfg, []
    if cfg.overwrite:  # an earlier run's test outputs in this folder are not this run's: they go
        (run.out / TEST_PROBABILITIES_FILE).unlink(missing_ok=True)
    for k in range(cfg.members) if cfg.only_member is None else [cfg.only_member]:
        folder = run.out / "members" / f"member-{k}"
        kept = cfg.resume and finished_member(folder, member_config(cfg, k))
        if kept:
            print(f"member {k}: finished already ({folder}), kept")
        else:
            try:
                train_member(run, data, k, folder)
            except SystemExit as stop:
                run.results["status"] = "interrupted" if stop.code == 130 else "diverged"
                run.results["members_finished"] = k
                raise
        members.append({**load_member(folder), "kept": bool(kept)})
        if not torch.equal(members[-1]["labels"], data.val_set.labels.cpu()):  # averaging needs the same images
            print(f"error: {folder} holds outputs on other validation images (another --seed or --val-size); "
                  "use a new --out", file=sys.stderr)
            raise SystemExit(2)
    lines = [json.dumps({"member": m["member"], **record}) for m in members
             for record in read_history(m["folder"] / "history.jsonl")]
    write_text(run.out / "history.jsonl", "\n".join(lines) + "\n")  # every member's epochs, member by member
    record_event(run, "members_trained", members=[m["member"] for m in members],
                 seeds=[m["seed"] for m in members])
    return members


def initial_members(cfg, device, images: torch.Tensor) -> tuple[list, list]:
    """The members as they start (each built after set_seed of its own seed), and their outputs on
    `images`: enough for --preflight to see that every member gets a seed of its own."""
    probabilities, digests = [], []
    with rng_untouched(device):
        for k in range(cfg.members):
            set_seed(member_seed(cfg.seed, k, cfg.member_seed_stride))
            model = ResNet(channels=cfg.channels, dropout=cfg.dropout).to(device)
            probabilities.append(member_probabilities(model, images, device)["plain"])
            digests.append(state_digest(model.state_dict()))
    return probabilities, digests


def check_the_recipe(run: Run, raw, data: Data, test_file_reads: list[str]) -> dict:
    """v13's checks before training, once for the ensemble, on member 0's model: the members share the
    code the checks test (data, model, loss, step, optimizer, schedule) and differ only by their seed,
    so K repetitions would cost K times the time and say nothing new. Then step 6's checks that need
    no trained member: the members' seeds, the TTA view, and no test file read so far."""
    cfg = run.cfg
    model = ResNet(channels=cfg.channels, dropout=cfg.dropout).to(run.device)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps=cfg.epochs * len(data.train_loader))
    run.results["num_parameters"] = count_parameters(model)
    print(f"\nResNet: {run.results['num_parameters']:,} trainable parameters per member")
    checks = checks_before_training(run, raw, data, model, optimizer, scheduler)
    started = time.perf_counter()
    probe = data.val_set.images[:64]
    if cfg.members > 1:
        probabilities, digests = initial_members(cfg, run.device, probe)
        checks["members_differ_init"] = verify_members_differ(probabilities, digests, stage="init")
    checks["tta_flip"] = verify_tta_flip(flip_view, probe.cpu())
    checks["test_read_after_choice"] = verify_test_read_after_choice(run.results["events"], test_file_reads, [])
    for name in ("members_differ_init", "tta_flip", "test_read_after_choice"):
        if name in checks:
            print(checks[name].report())
    run.results["checks_time_s"] += time.perf_counter() - started
    record_checks(run, checks)
    return checks


def ensemble_table(run: Run, members: list[dict], data: Data) -> list[dict]:
    """Validation only: the ensemble of the first K members for every K in --sizes that this run has,
    without and with flip TTA: its accuracy, the mean accuracy of those K members alone (the same
    view), the gain, the members' disagreement, cross-entropy and ECE."""
    labels, bins = data.val_set.labels.cpu(), run.cfg.calibration_bins
    sizes = sorted({size for size in run.cfg.sizes if size <= len(members)})
    rows = []
    for size in sizes:
        for tta in (False, True):
            metrics = probability_metrics(ensemble_probabilities(members, size, tta), labels, bins)
            alone = statistics.fmean((member_view(m, tta).argmax(1) == labels).double().mean().item()
                                     for m in members[:size])
            rows.append({"size": size, "tta": tta, "val_accuracy": metrics["accuracy"],
                         "members_mean": alone, "gain": metrics["accuracy"] - alone,
                         "disagreement": pairwise_disagreement([member_view(m, tta) for m in members[:size]]),
                         "val_loss": metrics["loss"], "ece": metrics["calibration"]["ece"]})
    print("\n--- Ensembles on validation (the first K members) ---")
    print(f"  {'K':>2}  {'TTA':<4}{'val acc':>9}{'members':>9}{'gain':>8}{'disagree':>10}{'NLL':>8}{'ECE':>8}")
    for r in rows:
        print(f"  {r['size']:>2}  {'flip' if r['tta'] else '-':<4}{r['val_accuracy']:>9.2%}"
              f"{r['members_mean']:>9.2%}{r['gain']:>+8.2%}{r['disagreement']:>10.2%}{r['val_loss']:>8.4f}{r['ece']:>8.4f}")
    skipped = sorted(set(run.cfg.sizes) - set(sizes))
    keys = ("member", "seed", "best_epoch", "best_val_accuracy", "train_time_s", "all_checks_passed",
            "failed_checks", "kept")
    run.results["members"] = [{**{key: m[key] for key in keys}, "folder": str(m["folder"].relative_to(run.out)),
                               "val_accuracy_tta": (member_view(m, True).argmax(1) == labels).double().mean().item()}
                              for m in members]
    run.results["ensemble"] = {"table": rows, "skipped_sizes": skipped}
    return rows


def member_model(run: Run, member: dict):
    model = ResNet(channels=run.cfg.channels, dropout=run.cfg.dropout).to(run.device)
    model.load_state_dict(member["state"])
    return model


def check_the_ensemble(run: Run, members: list[dict], data: Data, checks: dict) -> None:
    """After training, before the choice: are the members different models, is the recorded TTA view the
    mirror image, and does the largest ensemble beat its members' mean (no TTA: the ensemble's own lever)?"""
    started = time.perf_counter()
    if len(members) > 1:
        checks["members_differ_trained"] = verify_members_differ([m["plain"] for m in members],
                                                                 [m["digest"] for m in members], stage="trained")
    probe = data.val_set.images[:16].cpu()

    def outputs(k, images):
        return member_probabilities(member_model(run, members[k]), images, run.device)["plain"]

    checks["tta_flip"] = verify_tta_flip(flip_view, probe, recorded=[(probe, m["flipped"][:16]) for m in members],
                                         model_outputs=outputs)
    largest = max((r for r in run.results["ensemble"]["table"] if not r["tta"]), key=lambda r: r["size"])
    labels = data.val_set.labels.cpu()
    if largest["size"] > 1:  # one member (--members 1, a "leave it training" run) is no ensemble to judge
        checks["ensemble_gain"] = ensemble_gain(
            largest["val_accuracy"], [(m["plain"].argmax(1) == labels).double().mean().item()
                                      for m in members[:largest["size"]]], largest["disagreement"])
    for name in ("members_differ_trained", "tta_flip", "ensemble_gain"):
        if name in checks:
            print(checks[name].report())
    run.results["checks_time_s"] += time.perf_counter() - started
    record_checks(run, checks)


def choose(run: Run, rows: list[dict], members: list[dict], data: Data, test_file_reads: list[str]) -> dict:
    """The decision, on validation: the ensemble size and TTA with the best validation accuracy; a tie
    goes to fewer members, then to no TTA (the cheaper model at test time). What the run has seen of
    the test set at this moment is recorded with it: nothing, if the order is right."""
    chosen = max(rows, key=lambda r: (r["val_accuracy"], -r["size"], not r["tta"]))
    best = max(members, key=lambda m: (m["best_val_accuracy"], -m["member"]))
    choice = {"size": chosen["size"], "tta": chosen["tta"], "val_accuracy": chosen["val_accuracy"],
              "best_member": best["member"], "rule": "best validation accuracy; ties: fewer members, then no TTA"}
    run.results["choice"] = choice
    run.results["best_val_accuracy"] = chosen["val_accuracy"]
    run.results["before_choice"] = {"test_files_opened": list(test_file_reads), "test_probability_files": [
        str(p.relative_to(run.out)) for p in run.out.rglob("test_prob*")]}
    labels, bins = data.val_set.labels.cpu(), run.cfg.calibration_bins
    run.results["calibration"] = {"validation": {
        "best_member": probability_metrics(best["plain"], labels, bins)["calibration"],
        "ensemble": probability_metrics(ensemble_probabilities(members, chosen["size"], chosen["tta"]), labels,
                                        bins)["calibration"]}}
    record_event(run, "choice_made", on="validation", size=choice["size"], tta=choice["tta"])
    print(f"\nChosen on validation: the first {choice['size']} member(s), "
          f"{'with' if choice['tta'] else 'without'} flip TTA: {choice['val_accuracy']:.2%}")
    return choice


def evaluate_on_test(run: Run, raw, members: list[dict], choice: dict, checks: dict) -> None:
    """The test set, read once, after the choice: the chosen ensemble and (for comparison, not for
    choosing) the best member alone, their accuracy and calibration, and v13's train - test gap of
    the best member. The human baseline's 16 test images are shown here too: before the choice the
    test files stay closed."""
    cfg, out = run.cfg, run.out
    record_event(run, "test_read", size=choice["size"], tta=choice["tta"])
    print("\n--- The test set, read once ---")
    try:
        test_images, test_labels = load_raw_data(cfg.data_dir, read_test=True)[2:4]
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    test_idx = split_indices(len(raw[1]), len(test_labels), cfg)[2]
    test_set = FashionMNISTTensors(to_tensor(test_images[test_idx]), test_labels[test_idx], raw[4])
    if cfg.human_baseline:
        run.results["baselines"] = human_baseline_test(test_set, num_samples=16, out_dir=out, seed=cfg.seed)
    needed = sorted(set(range(choice["size"])) | {choice["best_member"]})
    outputs = {k: member_probabilities(member_model(run, members[k]), test_set.images, run.device) for k in needed}
    save_checkpoint({"labels": test_set.labels, **{f"member-{k}": v for k, v in outputs.items()}},
                    out / TEST_PROBABILITIES_FILE)
    bins = cfg.calibration_bins
    ensemble = probability_metrics(ensemble_probabilities([outputs[k] for k in range(choice["size"])],
                                                          choice["size"], choice["tta"]), test_set.labels, bins)
    best = probability_metrics(outputs[choice["best_member"]]["plain"], test_set.labels, bins)
    run.results["calibration"]["test"] = {"best_member": best["calibration"], "ensemble": ensemble["calibration"]}
    best_member = members[choice["best_member"]]
    best_test = compute_detailed_metrics(member_model(run, best_member), TensorLoader(test_set, 1024), run.device,
                                         NUM_CLASSES)
    checks["train_test_gap"] = compare_train_test_metrics(best_member["train_metrics"], best_test,
                                                          cfg.max_train_test_gap)
    print(checks["train_test_gap"].report())
    run.results.update(test_metrics={k: v for k, v in ensemble.items() if k != "calibration"},
                       test_accuracy=ensemble["accuracy"], test_loss=ensemble["loss"],
                       best_member_test_accuracy=best["accuracy"])
    print(f"Test: ensemble {ensemble['accuracy']:.2%} +- {ensemble['accuracy_std_error']:.2%} (ECE "
          f"{ensemble['calibration']['ece']:.4f}); best member alone {best['accuracy']:.2%} (ECE "
          f"{best['calibration']['ece']:.4f})")


def check_the_order(run: Run, checks: dict) -> None:
    """Last: the events of results.json in order, and what the run had seen of the test set at the choice."""
    checks["test_read_after_choice"] = verify_test_read_after_choice(
        run.results["events"], *run.results["before_choice"].values())
    print(checks["test_read_after_choice"].report())
    record_checks(run, checks)


def finish(run: Run) -> None:
    """The plots of step 6, drawn from results.json's numbers, the outputs list and REPORT.md."""
    plot_ensemble(run.results["ensemble"]["table"], run.out / "ensemble.png")
    plot_calibration(run.results["calibration"], run.out / "calibration.png")
    run.results.update(status="completed", exit_code=0)
    files = {p.name for p in run.out.iterdir() if p.is_file()}
    run.results["outputs"] = sorted(files | {"results.json", "REPORT.md"})
    run.save()
    write_report(run.results, run.out / "REPORT.md")


def finish_one_member(run: Run, member: dict) -> dict:
    """--only-member K: the member is trained; the ensemble is the business of the run that keeps it."""
    run.results.update(status="member trained", exit_code=0, only_member=member["member"],
                       best_val_accuracy=member["best_val_accuracy"])
    run.save()
    print(f"member {member['member']} trained ({member['folder']}): move it into the ensemble's "
          f"members/ folder; `python train.py --resume --out THAT_FOLDER` keeps it and trains the rest")
    return run.results


def print_summary(run: Run, checks: dict) -> None:
    results, out = run.results, run.out
    print_check_summary(checks)
    # The table holds this run's checks; each member's own (v13's, printed after its training) are in its
    # results.json. Without this line a member's FAIL scrolls by and the run ends in "all passed".
    failed_in_members = [f"member {m['member'] + 1}/{len(results['members'])} (seed {m['seed']}): "
                         f"{', '.join(m['failed_checks'])}" for m in results["members"] if m["failed_checks"]]
    print("members' own checks (members/member-K/results.json): "
          + (f"FAILED in {'; '.join(failed_in_members)}" if failed_in_members
             else f"all passed in {len(results['members'])} members"))
    # --quick trains one epoch of a few batches: the checks that judge a whole run cannot pass there.
    failed = {name for name in checks if not checks[name].passed} | {
        name for m in results["members"] for name in m["failed_checks"]}
    judged_on_full_runs = [name for name in ("training_loss_decreases", "capacity", "train_test_gap")
                           if name in failed]
    if run.cfg.quick and judged_on_full_runs:
        print(f"(--quick: {', '.join(judged_on_full_runs)} judge a full run; after a few steps on a small subset "
              "they are expected to fail. A full run must pass them.)")
    choice = results["choice"]
    print("\n" + "=" * 78)
    print(f"{len(results['members'])} members; chosen on validation: the first {choice['size']}, "
          f"{'with' if choice['tta'] else 'without'} flip TTA: validation accuracy {choice['val_accuracy']:.2%}")
    if not run.cfg.test:
        print(f"--no-test: the test set was not read (test_read {str(results['test_read']).lower()}); "
              f"wall time {results['wall_time_s']:.0f}s")
    else:
        test = results["test_metrics"]
        print(f"Test accuracy {test['accuracy']:.2%} +- {test['accuracy_std_error']:.2%} (best member alone "
              f"{results['best_member_test_accuracy']:.2%}), read once, after the choice (wall time "
              f"{results['wall_time_s']:.0f}s, of which checks {results['checks_time_s']:.0f}s)")
    print(f"Outputs in {out}: {', '.join(results['outputs'])}")
    print(f"Read {out / 'REPORT.md'} for every plot and number of this run.")


# ---------------------------------------------------------------------------
# Main: the lesson's table of contents
# ---------------------------------------------------------------------------
def main(argv=None) -> dict:
    """Run everything; return the results dict (also written to results.json).

    Problems the user can fix end with a one-line message and SystemExit:
    2 for missing data, bad flags or an unwritable folder, 1 for a diverged
    run, 130 for Ctrl-C. What was written before stays on disk.
    """
    cfg = parse_args(argv)
    run = start_run(cfg, argv)
    # Every open() of a test file in this run is recorded (shared/data.py's one-time unpacking of
    # the files copies bytes and looks at none: it is not a read); the order check judges the list.
    with stop_cleanly(run), watch_file_reads(TEST_FILES, ignore_callers=[shared.data.__file__]) as test_file_reads:
        try:
            # Until the choice the run is a --no-test run (v13's mode): guards where the test set would be.
            before_choice = Run(no_test(cfg), run.out, run.device, run.results, run.started)
            raw, data = load_data(before_choice)
            report_on_data(before_choice, raw)
            checks = check_the_recipe(before_choice, raw, data, test_file_reads)
            if cfg.preflight:
                check_test_set(run, raw, data, checks, test_file_reads)
                return finish_preflight(run, checks)

            members = train_members(run, data)
            if cfg.only_member is not None:
                return finish_one_member(run, members[0])
            table = ensemble_table(run, members, data)
            check_the_ensemble(run, members, data, checks)
            choice = choose(run, table, members, data, test_file_reads)
            if cfg.test:
                evaluate_on_test(run, raw, members, choice, checks)
            check_the_order(run, checks)
            check_test_set(run, raw, data, checks, test_file_reads)
            finish(run)
        except TestSetRead as err:
            run.save(status="failed", error=str(err), test_read=True, test_files_opened=test_file_reads,
                     exit_code=1)
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        print_summary(run, checks)
        return run.results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
