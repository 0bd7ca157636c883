"""Fashion-MNIST v15-speed: the same training, far faster. Measure first, then one change at a time.

v12-step4's ResNet, data split, regularisers, checks and training step; new is how fast they
run. A profiler step (debug_tools.profile_training, --profile) drives the run's own epoch for a
few steps and says what limits it: the data, the host (launch overhead and host syncs), or the
arithmetic. Then the changes, each a flag and a row of speed_table.py: the data as uint8 on the
device with augmentation drawn there too, no host sync per batch (the losses are summed on the
device and read once per epoch), channels_last, bf16 autocast, a larger batch with its learning
rate scaled and warmed up, torch.compile (optional), and fewer, better epochs (one-cycle).

    python train.py               # full run on the real Fashion-MNIST
    python train.py --cpu-fast    # the preset for two CPU cores, aimed at >= 92.5% in <= 3 minutes (FAZIT.md)
    python train.py --quick       # every code path in seconds, on a small subset
    python train.py --preflight   # only the checks (and the profile); exit code 1 if one fails
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
from dataclasses import dataclass, field
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
    save_checkpoint, stop_cleanly, write_json,
)

from debug_tools import (  # noqa: E402
    PredictionDynamicsTracker,
    data_report,
    human_baseline_test,
    overfit_one_batch,
    print_check_summary,
    print_profile,
    profile_training,
    print_data_report,
    rng_untouched,
    smoothing_floor,
    filter_statistics,
    test_input_independent_baseline,
    verify_batch_independence,
    verify_augmentation,
    verify_decreasing_loss,
    verify_gradient_flow,
    verify_loss_at_init,
    verify_lr_schedule,
    verify_optimizer_config,
    verify_step_gradient,
    verify_train_eval_modes,
    visualize_input_before_net,
)
from metrics import compare_train_test_metrics, compute_detailed_metrics, evaluate, print_detailed_metrics  # noqa: E402
from visualization import (  # noqa: E402
    plot_batch_level_loss,
    plot_class_means,
    plot_confusion_matrix,
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
# Fewer, better epochs: v12 trained 40 epochs at Adam 3e-4 and underfit (its FAZIT). A one-cycle
# schedule with a 10x higher peak gets further in fewer passes (v6: 94.9% in 30 epochs at 3e-3).
EPOCHS = 16
# A larger batch: 4x fewer steps, so 4x fewer kernel launches and Python round trips per epoch, the
# cost that dominates a 0.7M-parameter net on a GPU. The learning rate is scaled with it (below).
BATCH_SIZE = 512
# v6's peak 3e-3 at batch 128, scaled for batch 512 less than linearly (Adam: roughly sqrt(4) = 2x,
# held back to 4e-3 because the warm-up is short); the GPU default is a plan until FAZIT measures it.
LEARNING_RATE = 4e-3
# onecycle: linear warm-up from lr/25 over WARMUP_FRACTION of the steps, then cosine to 0 (a large
# batch at a high LR needs the warm-up: the first steps' gradients are the largest); cosine, constant: v12's.
LR_SCHEDULE = "onecycle"
WARMUP_FRACTION = 0.2  # share of all steps spent warming up (onecycle only)
CHANNELS = 32  # the ResNet's first stage; 64 and 128 follow: 696,042 parameters
# Step 4's regularisers, as v12 keeps them (v12-step4/regularize.py measures each).
CROP_PADDING = 2  # random crop from the image padded by this many black pixels: shifts of up to 2 pixels; 0: off
FLIP_PROBABILITY = 0.5  # horizontal flip: a mirrored shirt is still a shirt (upside down it is not); 0: off
# Random erasing (Zhong et al. 2020): with this probability a random rectangle of 2-40% of the
# image is filled with noise, so the net cannot rely on any one part of a garment; 0: off.
ERASE_PROBABILITY = 0.5
WEIGHT_DECAY = 5e-2  # AdamW's decoupled weight decay: each step shrinks every weight by lr x this; 0: plain Adam
# The true class's target is 1 - 0.1 + 0.01, every other class's 0.01: the net is not pushed to
# ever larger logits, and no loss is ever 0 (the floor is 0.50 for 10 classes; the checks know it).
LABEL_SMOOTHING = 0.1
DROPOUT = 0.0  # before the classifier; 0: off (the recipe: "where it helps"; v12's regularize.py measures it)
# Early stopping: stop after this many epochs without a better validation accuracy; 0: never.
# The best epoch's weights are tested either way; a cosine schedule cut short ends at a high LR.
PATIENCE = 0
TRAIN_FRACTION = 1.0  # share of the training split used (v12's learning curve); speed_table.py times on a share
# The step's forward pass in bfloat16 autocast. None: on CUDA only (v12's rule). On a CPU with
# AMX or AVX512-BF16 (Sapphire Rapids and later) bf16 is ~1.8x faster too (--bf16 turns it on).
BF16 = None
# Speed: each of these is a row of speed_table.py; switched off, the loop is v12's.
UINT8_DATA = True  # the sets stay uint8 on the device (4x less memory traffic), float per batch
DEVICE_AUGMENT = True  # augmentation draws its random numbers on the device: no host-to-device copy per batch
# No host sync per batch: the loss and accuracy are summed on the device and read once per epoch
# (v12 read loss.item() and the accuracy every batch: the host waited for the GPU each step).
# The price: a NaN loss is seen at the end of its epoch, not before it reaches the weights.
SYNC_FREE = True
CHANNELS_LAST = True  # the batch in channels_last, the layout cuDNN's and oneDNN's fast convolutions want
COMPILE = False  # torch.compile the training forward (compile time reported apart); off: not everywhere supported
# --compile's mode. "reduce-overhead" records the compiled step's kernels once as CUDA graphs and
# replays them: one launch instead of hundreds per step, the fix the profile names for an
# overhead-bound GPU loop (CUDA only; elsewhere it compiles as "default"). "max-autotune" also
# searches kernel configurations: minutes of compilation.
COMPILE_MODE = "default"
# The stem's stride: 1 keeps 28x28 through stage 1 (v12); 2 halves the image first, ~4x fewer
# multiply-adds. On two CPU cores the arithmetic is the limit (the profile says so): --cpu-fast uses 2.
STEM_STRIDE = 1
TARGET_ACCURACY = 0.94  # validation accuracy whose first epoch is recorded as time_to_target_s
VAL_SIZE = 5000  # held out of the 60,000 training images to pick the best epoch; the test set stays untouched
DEVICE = "auto"  # cuda, then mps, then cpu
DATA_DIR = None  # None: look in $DATA_DIR, data/, the Debian package, then download (shared/data.py)
OUT_DIR = VERSION_DIR / "outputs"  # every run: a new dated folder in here; outputs/latest: the newest
LOSS_AT_INIT_TOLERANCE = 0.3  # |loss - ln(10)| allowed at init; beyond it the init (or the loss) is wrong
# A loss above this (10x the 2.30 at init: the right class gets probability < e^-25) stops
# training as diverged, like NaN does: a huge learning rate often explodes the loss to 1e29
# and beyond without ever making it NaN, and such a run only wastes the remaining epochs.
DIVERGED_LOSS = 25.0

# Debug flags: switch single steps off (or use --no-human-baseline etc.) when iterating fast.
RUN_HUMAN_BASELINE = True  # step 1: 16 test images and the human reference accuracy (83.5%)
RUN_INPUT_INDEPENDENT_BASELINE = True  # step 2: a model on zeroed inputs must be clearly worse than the real one
RUN_OVERFIT_TEST = True  # step 3: 8 images must be memorised (100% accuracy, loss ~0)
RUN_BATCH_INDEPENDENCE_TEST = True  # step 9: backprop proves sample i's output depends on input i only
RUN_PROFILE = True  # v15's tool: profile a few steps of the run's own epoch, verdict data/overhead/compute-bound
PROFILE_STEPS = 6  # steps profiled per batch size (after 2 warm-up steps): enough to average out one slow step

# Check budgets: small next to v12's training (40 epochs = ~17,200 steps), big enough to be decisive.
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
QUICK_PROFILE_STEPS = 3
QUICK_BATCH_SIZE = 128

# --cpu-fast: the preset for two CPU cores, where the profile says compute-bound, so the lever is
# fewer multiply-adds per image and cheaper ones (FAZIT.md has the runs and what was tried).
# Short training underfits: lighter regularisation than v12's (crop 1, no erasing, weight decay 5e-3).
CPU_FAST = {"device": "cpu", "stem_stride": 2, "bf16": True, "epochs": 7, "batch_size": 256, "lr": 3e-3,
            "crop_padding": 1, "erase_probability": 0.0, "weight_decay": 5e-3, "target_accuracy": 0.925}

NUM_CLASSES = 10
MODEL_FILE = "best_model_v15.pth"


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
    """Images of shape (N, 1, 28, 28), plus labels and class names. `images` as stored: uint8 in
    [0, 255] (v15: a quarter of float32's memory and memory traffic) or float in [0, 1] (v12);
    indexing the set gives float images in [0, 1] either way."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return as_float(self.images[index]), self.labels[index]


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [0, 1] (what to_tensor does once in v12, here per batch on
    the device: one fused kernel); float images pass through unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """transforms.RandomCrop(28, padding) for a whole batch: pad every image with black, then cut
    out 28x28 at a random offset per image, by gathering rows and columns in one indexing step."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    # drawn where the generator lives: on the device (v15), or on the CPU and copied over (v12)
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=generator.device).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=generator.device).to(images.device)
    rows = dy + torch.arange(height, device=images.device).view(1, height, 1)  # (n, height, 1)
    cols = dx + torch.arange(width, device=images.device).view(1, 1, width)  # (n, 1, width)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # the indexing puts channels last


def random_flip(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """transforms.RandomHorizontalFlip(probability) for a whole batch: each image mirrored left-right or not."""
    flip = (torch.rand(len(images), generator=generator, device=generator.device) < probability).to(images.device)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_erasing(images: torch.Tensor, probability: float, generator: torch.Generator,
                   area=(0.02, 0.4), aspect=(0.3, 3.3)) -> torch.Tensor:
    """transforms.RandomErasing(probability, scale=area, ratio=aspect, value="random") for a whole
    batch: in each chosen image one rectangle of 2-40% of its area, of aspect ratio 0.3-3.3, is
    replaced by uniform noise in [0, 1] (the pixel range, so the batch stays in [0, 1])."""
    n, _, height, width = images.shape
    at = generator.device  # every draw where the generator lives: no copy per batch when that is the device
    chosen = torch.rand(n, generator=generator, device=at) < probability
    target_area = height * width * torch.empty(n, device=at).uniform_(*area, generator=generator)
    log_ratio = torch.empty(n, device=at).uniform_(math.log(aspect[0]), math.log(aspect[1]), generator=generator)
    box_h = (target_area * log_ratio.exp()).sqrt().round().clamp(1, height).long()
    box_w = (target_area / log_ratio.exp()).sqrt().round().clamp(1, width).long()
    top = (torch.rand(n, generator=generator, device=at) * (height - box_h + 1)).long()
    left = (torch.rand(n, generator=generator, device=at) * (width - box_w + 1)).long()
    noise = torch.rand(images.shape, generator=generator, device=at).to(images.device)
    rows = torch.arange(height, device=at).view(1, height, 1)
    cols = torch.arange(width, device=at).view(1, 1, width)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + box_h).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + box_w).view(n, 1, 1)) & chosen.view(n, 1, 1))
    return torch.where(inside.unsqueeze(1).to(images.device), noise, images)


@dataclass
class Augmentation:
    """What transforms.Compose([RandomCrop(28, padding), RandomHorizontalFlip(p), RandomErasing(p)])
    does to each training image, done for a whole batch on the device. Every random number is
    drawn from the loader's generator: on the device with --device-augment (v15: no copy per
    batch; the same seed gives the same batches on the same device), on the CPU otherwise (v12:
    the same batches on every device, at the price of a host-to-device copy per draw). Only the training loader has one; validation and test see the images as
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
    `generator_device`: where the generator draws (v15: the data's device; v12: the CPU).
    `channels_last`: the layout of the batches it yields.
    """

    def __init__(self, dataset: FashionMNISTTensors, batch_size: int, shuffle: bool = False, seed: int = 0,
                 augment: Augmentation | None = None, generator_device="cpu", channels_last: bool = True):
        self.dataset, self.batch_size, self.shuffle, self.augment = dataset, batch_size, shuffle, augment
        self.generator = torch.Generator(device=generator_device).manual_seed(seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        at = self.generator.device
        order = torch.randperm(n, generator=self.generator, device=at) if self.shuffle else torch.arange(n)
        order = order.to(self.dataset.images.device)
        for start in range(0, n, self.batch_size):
            batch = order[start:start + self.batch_size]
            images = as_float(self.dataset.images[batch])  # uint8 -> float here, for this batch only
            if self.augment is not None:
                images = self.augment(images, self.generator)
            yield images.contiguous(memory_format=self.memory_format), self.dataset.labels[batch]


def to_tensor(images_uint8: torch.Tensor) -> torch.Tensor:
    """What transforms.ToTensor() does to each image, done once for the whole set:
    uint8 (N, 28, 28) in [0, 255] -> float32 (N, 1, 28, 28) in [0, 1]. No augmentation."""
    return images_uint8.unsqueeze(1).float().div(255.0)


def load_raw_data(data_dir):
    """The original train and test splits as uint8 tensors, read by torchvision."""
    from torchvision.datasets import FashionMNIST

    root = fashion_mnist_root(data_dir)
    try:
        train = FashionMNIST(str(root), train=True, download=False)
        test = FashionMNIST(str(root), train=False, download=False)
    except (RuntimeError, ValueError, OSError) as err:
        raise DataNotFoundError(f"the Fashion-MNIST files in {root / 'FashionMNIST' / 'raw'} are unreadable "
                                f"({err}); delete them and run again to unpack or download a fresh copy") from None
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
    """The three splits as tensors on the device, ready for training."""
    train_idx, val_idx, test_idx = split_indices(len(train_labels), len(test_labels), cfg)

    def make(images, labels, idx):
        stored = images[idx].unsqueeze(1) if cfg.uint8_data else to_tensor(images[idx])  # (N, 1, 28, 28)
        return FashionMNISTTensors(stored.to(device), labels[idx].to(device), classes)

    return (make(train_images, train_labels, train_idx), make(train_images, train_labels, val_idx),
            make(test_images, test_labels, test_idx))


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
    `stem_stride` 2 (--cpu-fast): the stem halves the image (32x14x14, then 7x7 and 4x4), the same
    parameters for ~4x fewer multiply-adds: a pixel spared where the arithmetic is the limit.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, channels: int = CHANNELS, dropout: float = DROPOUT,
                 stem_stride: int = STEM_STRIDE):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, stride=stem_stride, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU())
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
    """bf16 autocast (convolutions and matmuls in bfloat16, the loss in float32) on CUDA and, when
    asked for, on the CPU; a no-op elsewhere. bfloat16 has float32's range, so unlike float16 it
    needs no loss scaling. start_run resolves --bf16's default: on CUDA only."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16) and device.type in ("cuda", "cpu"))


def lr_factor(step: int, total_steps: int, schedule: str, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """The learning rate at `step` as a share of --lr. onecycle: linear from 1/25 to 1 over the
    warm-up, then cosine to 0; cosine: from 1 to 0 (v12); constant: 1."""
    if schedule == "constant":
        return 1.0
    warmup = round(warmup_fraction * total_steps) if schedule == "onecycle" else 0
    if step < warmup:
        return 1 / 25 + (1 - 1 / 25) * step / warmup
    decay_steps = max(1, total_steps - warmup - 1)  # the last step at factor 0: the schedule's end
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay_steps) / decay_steps))


def make_optimizer(model: nn.Module, cfg, total_steps: int):
    """AdamW with the configured learning rate and weight decay, and the schedule it follows
    step by step over `total_steps` (lr_factor). On CUDA the fused AdamW: one kernel for all
    parameters instead of a few per tensor, the same update."""
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, total_steps=total_steps, schedule=cfg.lr_schedule,
                                     warmup_fraction=cfg.warmup_fraction))


def previous_gradient_norm(model: nn.Module) -> float:
    """Norm of the gradients still held from the last backward pass (nan before the first).

    Read only when the loss turns non-finite: the guard runs before zero_grad, so the
    previous step's gradients are still there, and measuring every step would cost
    ~7% of a CPU epoch for a number that is only needed in the diagnosis."""
    grads = [p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]
    return torch.cat(grads).norm().item() if grads else float("nan")


def diverged_message(loss_value: float, diverged_loss: float, optimizer, model) -> str:
    verdict = "is not finite" if not math.isfinite(loss_value) else f"is above --diverged-loss {diverged_loss:g}"
    return (f"loss {loss_value:.3g} {verdict}; learning rate {optimizer.param_groups[0]['lr']:g}; gradient norm "
            f"of the previous step {previous_gradient_norm(model):.3g}. Usual causes: learning rate too high, "
            f"inputs not scaled to [0, 1], log of 0.")


def training_step(model, images, labels, optimizer, scheduler, diverged_loss: float = DIVERGED_LOSS,
                  label_smoothing: float = 0.0, bf16: bool = False, sync_free: bool = SYNC_FREE, forward=None):
    """One update of the weights: forward (in bf16 autocast when `bf16`), the label-smoothed
    loss, backward, optimizer step, schedule step. `forward`: the compiled model (--compile),
    which shares the weights of `model`; None: `model` itself.

    Returns the batch's loss and its logits, detached. `sync_free` True: the loss stays a tensor
    on the device (reading it is the caller's choice, and a read is a host sync). False (v12's
    guard): the loss is read here, every step, returned as a float, and one that is not finite or above `diverged_loss` raises
    TrainingDiverged before it can reach the weights. True: train_one_epoch reads the epoch's
    worst loss once at its end and raises then (the checkpoint on disk is the last good epoch's).
    """
    with mixed_precision(images.device, bf16):
        logits = (model if forward is None else forward)(images)  # `or` would ask a compiled module its len()
        loss = loss_fn(logits, labels, label_smoothing)
    if not sync_free:
        loss_value = loss.item()
        if not math.isfinite(loss_value) or loss_value > diverged_loss:
            raise TrainingDiverged(diverged_message(loss_value, diverged_loss, optimizer, model))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return (loss.detach() if sync_free else loss_value), logits.detach()


def train_one_epoch(model, loader, optimizer, scheduler, epoch: int, epochs: int, global_step: int,
                    batch_losses: list[float], step=training_step, sync_free: bool = SYNC_FREE,
                    diverged_loss: float = DIVERGED_LOSS):
    """One pass over the training data with `step` (training_step with the run's loss settings);
    appends every batch's loss to `batch_losses` (step 4). Returns (mean loss, accuracy, global step).

    `sync_free` (v15): the losses, the worst loss and the correct predictions stay on the device
    and are read once, after the last batch: the host queues the next step while the GPU runs this
    one. A non-finite or exploded loss raises TrainingDiverged then. False (v12): every batch's
    loss and accuracy are read at once, and the bar shows the running loss."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    losses, counts, sizes = [], [], []
    progress = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True)
    for images, labels in progress:
        try:
            loss, logits = step(model, images, labels, optimizer, scheduler)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"at step {global_step} (epoch {epoch}): {err}") from None
        global_step += 1
        if sync_free:
            losses.append(loss)
            counts.append((logits.argmax(1) == labels).sum())
            sizes.append(len(labels))
            seen += len(labels)
            continue
        loss_value = float(loss)  # v12's step returns a float: the read happened in the step
        batch_losses.append(loss_value)
        total_loss += loss_value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        # refresh=False: the bar redraws at its own pace, not on every step
        progress.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
    if sync_free and losses:
        epoch_losses = torch.stack(losses).float().cpu()  # the epoch's one host sync
        correct = int(torch.stack(counts).sum())
        worst = epoch_losses.nan_to_num(nan=math.inf).max().item()
        if not worst <= diverged_loss:
            first = int((~(epoch_losses <= diverged_loss)).nonzero()[0])
            raise TrainingDiverged(f"at step {global_step - len(losses) + first} (epoch {epoch}), read at the "
                                   f"epoch's end: {diverged_message(epoch_losses[first].item(), diverged_loss, optimizer, model)}")
        batch_losses.extend(epoch_losses.tolist())
        total_loss = sum(v * n for v, n in zip(epoch_losses.tolist(), sizes))
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
    p.add_argument("--cpu-fast", action="store_true",
                   help="the two-CPU-core preset (flags given explicitly still win): " +
                   " ".join(f"--{k.replace('_', '-')} {v}" for k, v in CPU_FAST.items()))
    p.add_argument("--out", type=Path, default=None,
                   help="exactly this folder; without it, a new dated folder under outputs/")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out reuse a folder that already holds a run's results")
    p.add_argument("--data-dir", type=existing_dir, default=DATA_DIR, help="folder with the Fashion-MNIST files")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=DEVICE, help="auto: cuda, mps, cpu")
    p.add_argument("--seed", type=int, default=SEED, help="one seed for every random number generator")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="training images per step")
    p.add_argument("--lr", type=float, default=LEARNING_RATE, help="AdamW's learning rate at the first step")
    p.add_argument("--lr-schedule", choices=["onecycle", "cosine", "constant"], default=LR_SCHEDULE,
                   help="onecycle: warm up, then cosine to 0; cosine: from --lr to 0; stepped per batch")
    p.add_argument("--warmup-fraction", type=float, default=WARMUP_FRACTION,
                   help="onecycle: share of the steps spent warming up from lr/25 to lr")
    p.add_argument("--stem-stride", type=int, choices=[1, 2], default=STEM_STRIDE,
                   help="2: the stem halves the image, ~4x fewer multiply-adds (--cpu-fast)")
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
                   help="the training step's forward pass in bfloat16 autocast (None: on CUDA only)")
    p.add_argument("--uint8-data", action=argparse.BooleanOptionalAction, default=UINT8_DATA,
                   help="keep the images uint8 on the device, float per batch")
    p.add_argument("--device-augment", action=argparse.BooleanOptionalAction, default=DEVICE_AUGMENT,
                   help="draw the shuffle and augmentation random numbers on the device")
    p.add_argument("--sync-free", action=argparse.BooleanOptionalAction, default=SYNC_FREE,
                   help="no host sync per batch: losses summed on the device, read once per epoch")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=CHANNELS_LAST,
                   help="batches in the channels_last layout")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=COMPILE,
                   help="torch.compile the training forward; compile time reported apart")
    p.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune"], default=COMPILE_MODE,
                   help="torch.compile's mode with --compile; reduce-overhead: CUDA graphs")
    p.add_argument("--target-accuracy", type=float, default=TARGET_ACCURACY,
                   help="validation accuracy whose first epoch gives time_to_target_s")
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
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=RUN_PROFILE,
                   help="profile the run's own epoch for a few steps: data-, overhead- or compute-bound")
    p.add_argument("--profile-steps", type=int, default=PROFILE_STEPS, help="steps profiled per batch size")
    p.add_argument("--baseline-steps", type=int, default=BASELINE_STEPS, help="training steps of each baseline model")
    p.add_argument("--overfit-steps", type=int, default=OVERFIT_STEPS, help="most training steps on the 8 images")
    p.add_argument("--overfit-max-loss", type=float, default=OVERFIT_MAX_LOSS, help="'memorised': loss at most this")
    p.add_argument("--max-train-test-gap", type=float, default=MAX_TRAIN_TEST_GAP,
                   help="train - test accuracy above this is strong overfitting")
    args = p.parse_args(argv)
    if args.cpu_fast:  # the preset fills in what the command line left at its default
        given = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
        for name, value in CPU_FAST.items():
            if not {f"--{name.replace('_', '-')}", f"--no-{name.replace('_', '-')}"} & given:
                setattr(args, name, value)
    if not args.diverged_loss > 0:
        p.error("--diverged-loss must be > 0 (inf switches the explosion stop off; NaN always stops)")
    if args.baseline_steps < 1 or args.overfit_steps < 1 or args.profile_steps < 1:
        p.error("--baseline-steps, --overfit-steps and --profile-steps must be >= 1")
    if not 0 <= args.warmup_fraction < 1 or not 0 < args.target_accuracy <= 1:
        p.error("--warmup-fraction must be in [0, 1), --target-accuracy in (0, 1]")
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
    if args.compile_mode != "default" and not args.compile:
        p.error(f"--compile-mode {args.compile_mode} needs --compile")
    if args.quick:
        args.epochs = min(args.epochs, QUICK_EPOCHS)
        args.baseline_steps = min(args.baseline_steps, QUICK_BASELINE_STEPS)
        args.profile_steps = min(args.profile_steps, QUICK_PROFILE_STEPS)
        args.batch_size = min(args.batch_size, QUICK_BATCH_SIZE)  # 4 steps per epoch, as in v12's --quick
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
        device = pick_device(cfg.device)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    set_seed(cfg.seed)
    if cfg.bf16 is None:  # v12's rule: bf16 where it is known to pay, on CUDA
        cfg.bf16 = device.type == "cuda"
    results = {
        "version": "fashionmnist/v15-speed",
        "status": "running",
        "command": " ".join(["python train.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "seed": cfg.seed,
        "device": device_name(device),
        "torch_version": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "checks": {},
    }
    print("=" * 78)
    print(f"Fashion-MNIST v15-speed | device {results['device']} | torch {torch.__version__} | seed {cfg.seed}"
          + (f" | {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""))
    print(f"epochs {cfg.epochs}, batch size {cfg.batch_size}, lr {cfg.lr} ({cfg.lr_schedule}), channels {cfg.channels}"
          + (" | QUICK MODE" if cfg.quick else ""))
    print(f"regularisers: crop padding {cfg.crop_padding}, flip {cfg.flip_probability}, erasing "
          f"{cfg.erase_probability}, weight decay {cfg.weight_decay}, label smoothing {cfg.label_smoothing}, "
          f"dropout {cfg.dropout}, patience {cfg.patience or 'off'}"
          + (f" | training on {cfg.train_fraction:.0%} of the split" if cfg.train_fraction < 1 else ""))
    print(f"speed: uint8 data {cfg.uint8_data}, device augment {cfg.device_augment}, sync-free {cfg.sync_free}, "
          f"channels_last {cfg.channels_last}, bf16 {cfg.bf16}, compile {cfg.compile}"
          + (f" ({cfg.compile_mode})" if cfg.compile else "") + f", stem stride {cfg.stem_stride}"
          + (" | CPU-FAST PRESET" if cfg.cpu_fast else ""))
    print("=" * 78)
    return Run(cfg, out, device, results)


def load_data(run: Run):
    """The raw uint8 data and the three splits as tensors on the device; exit 2 when data is missing."""
    cfg = run.cfg
    try:
        raw = load_raw_data(cfg.data_dir)
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    train_set, val_set, test_set = split_data(*raw, cfg, run.device)
    augmentation = Augmentation(cfg.crop_padding, cfg.flip_probability, cfg.erase_probability)
    train_loader = TensorLoader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augmentation,
                                generator_device=run.device if cfg.device_augment else "cpu",
                                channels_last=cfg.channels_last)
    # Validation and test: no augment, ever. They measure the model on the images as they are.
    data = Data(train_set, val_set, test_set, train_loader, TensorLoader(val_set, 1024, channels_last=cfg.channels_last),
                TensorLoader(test_set, 1024, channels_last=cfg.channels_last))
    print(f"Split: {len(train_set)} train, {len(val_set)} validation, {len(test_set)} test")
    return raw, data


def report_on_data(run: Run, raw) -> None:
    """Recipe step 1, become one with the data: numbers and plots of the images this run uses."""
    print("\n--- Data report ---")
    train_images, train_labels, test_images, test_labels, classes = raw
    train_idx, _, test_idx = split_indices(len(train_labels), len(test_labels), run.cfg)
    train_images, train_labels = train_images[train_idx], train_labels[train_idx]
    report = data_report(train_images, train_labels, test_images[test_idx], test_labels[test_idx], classes)
    print_data_report(report)
    run.results["data_report"] = report
    plot_samples_per_class(train_images, train_labels, classes, run.out / "data_samples.png")
    plot_class_means(train_images, train_labels, classes, run.out / "class_means.png")
    plot_pixel_histogram(train_images, run.out / "pixel_histogram.png")


def unaugmented_images(raw, cfg) -> dict:
    """Each split's images straight from the files, in the order of the split: what the loaders
    must yield for validation and test, and what the training loader's augmentation starts from."""
    train_images, train_labels, test_images, test_labels, _ = raw
    train_idx, val_idx, test_idx = split_indices(len(train_labels), len(test_labels), cfg)
    return {"training": (to_tensor(train_images[train_idx]), train_labels[train_idx]),
            "validation": (to_tensor(train_images[val_idx]), train_labels[val_idx]),
            "test": (to_tensor(test_images[test_idx]), test_labels[test_idx])}


def checks_before_training(run: Run, raw, data: Data, model, optimizer, scheduler) -> dict:
    """Every check before training, each driving this run's own loss_fn, optimizer and
    training_step on copies of the model. Inside rng_untouched: running or skipping a check
    changes neither the model nor the random numbers training will draw."""
    cfg, device, out = run.cfg, run.device, run.out
    print("\n--- Checks before training ---")
    started = time.perf_counter()
    new_optimizer = functools.partial(make_optimizer, cfg=cfg)  # a check lays the schedule over its own steps
    step = functools.partial(training_step, diverged_loss=cfg.diverged_loss, label_smoothing=cfg.label_smoothing,
                             bf16=cfg.bf16, sync_free=cfg.sync_free)
    epoch_of = functools.partial(train_one_epoch, step=step, sync_free=cfg.sync_free, diverged_loss=cfg.diverged_loss)
    loss = functools.partial(loss_fn, label_smoothing=cfg.label_smoothing)  # the loss the run trains on
    probe_images, probe_labels = data.train_set[:64]
    checks = {}
    run.results["baselines"] = {}
    with rng_untouched(device, data.train_loader.generator):
        if cfg.human_baseline:
            run.results["baselines"] = human_baseline_test(data.test_set, num_samples=16, out_dir=out, seed=cfg.seed)
        if cfg.input_independent_baseline:
            checks["input_independent_baseline"] = test_input_independent_baseline(
                model, data.train_loader, data.val_loader, make_optimizer=new_optimizer, training_step=step,
                steps=cfg.baseline_steps)
        checks["input_before_net"] = visualize_input_before_net(data.train_loader, out_dir=out)
        # Step 4's new check: the training batch is augmented as configured, and validation and test
        # are the images from the files, untouched (seed 004's bug: a shared transform).
        configured = Augmentation(cfg.crop_padding, cfg.flip_probability, cfg.erase_probability)
        checks["augmentation"] = verify_augmentation(
            data.train_loader, {"validation": data.val_loader, "test": data.test_loader},
            unaugmented_images(raw, cfg), expected_changed=configured.changed_share(), out_dir=out)
        # Label smoothing leaves the loss of a maximally unsure model at ln(10): the same check as v11.
        checks["loss_at_init"] = verify_loss_at_init(model, data.train_loader, loss, NUM_CLASSES,
                                                     cfg.loss_at_init_tolerance)
        # The first step's learning rate: --lr, or its 1/25 where the one-cycle warm-up starts.
        first_lr = cfg.lr * lr_factor(0, cfg.epochs * len(data.train_loader), cfg.lr_schedule, cfg.warmup_fraction)
        checks["optimizer_config"] = verify_optimizer_config(model, optimizer, lr=first_lr,
                                                             weight_decay=cfg.weight_decay)
        # Step 3's "don't trust learning-rate decay defaults": the run's own scheduler stepped through
        # every step of the run, drawn, and the run's own train_one_epoch stepping it once per batch.
        one_epoch = functools.partial(epoch_of, epoch=1, epochs=1, global_step=0, batch_losses=[])
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
                model, *data.train_set[:8], make_optimizer=new_optimizer,
                training_step=step, loss_fn=loss, steps=cfg.overfit_steps,
                max_loss=smoothing_floor(cfg.label_smoothing, NUM_CLASSES) + cfg.overfit_max_loss, out_dir=out)
        if cfg.batch_independence_test:
            checks["batch_independence"] = verify_batch_independence(model, data.val_set[:8][0])
        few = TensorLoader(FashionMNISTTensors(probe_images[:32], probe_labels[:32], data.train_set.classes), 16)

        def own_epoch(probe):  # this run's epoch, on two batches, with its own optimizer and schedule
            probe_optimizer, probe_scheduler = new_optimizer(probe, total_steps=len(few))
            epoch_of(probe, few, probe_optimizer, probe_scheduler, 0, 0, 0, [])
        checks["train_eval_modes"] = verify_train_eval_modes(model, train_epoch=own_epoch,
                                                             evaluate=lambda probe: evaluate(probe, few, device))
        if cfg.profile:
            # v15's tool: a few steps of this run's own epoch under torch.profiler, at the run's batch size
            # and a quarter of it: data-, overhead- or compute-bound, and host syncs per step.
            def make_loader(batch_size):
                return TensorLoader(data.train_set, batch_size, shuffle=True, seed=cfg.seed,
                                    augment=data.train_loader.augment, generator_device=data.train_loader.generator.device,
                                    channels_last=cfg.channels_last)
            checks["profile"] = profile_training(model, make_loader, batch_size=cfg.batch_size,
                                                 make_optimizer=new_optimizer, train_one_epoch=epoch_of,
                                                 steps=cfg.profile_steps)
            print_profile(checks["profile"])
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
    # --compile: the training forward is compiled (it shares the weights with `model`); the checks,
    # evaluation and checkpoint use the model itself. Compiling happens in the first steps.
    forward = compile_model(model, cfg.compile_mode) if cfg.compile else None
    step = functools.partial(training_step, diverged_loss=cfg.diverged_loss, label_smoothing=cfg.label_smoothing,
                             bf16=cfg.bf16, sync_free=cfg.sync_free, forward=forward)
    print("\n--- Training ---")
    history_path = out / "history.jsonl"
    history_path.write_text("")
    best_val_acc, best_epoch, global_step, epoch = -1.0, 0, 0, 0
    batch_losses: list[float] = []
    tracker = PredictionDynamicsTracker(*data.val_set[:FIXED_BATCH_SIZE], run.device)
    tracker.update(model, 0)
    train_started = time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            first_batch = len(batch_losses)
            train_loss, train_acc, global_step = train_one_epoch(
                model, data.train_loader, optimizer, scheduler, epoch, cfg.epochs, global_step, batch_losses, step,
                sync_free=cfg.sync_free, diverged_loss=cfg.diverged_loss)
            train_seconds = time.perf_counter() - epoch_started  # the epoch's training alone, without validation
            val_loss, val_acc = evaluate(model, data.val_loader, run.device)
            if not val_loss <= cfg.diverged_loss:  # NaN too: the weights blew up within the epoch; not a "best"
                raise TrainingDiverged(f"after epoch {epoch} (step {global_step}): validation loss {val_loss:.3g} "
                                       f"is not finite or above --diverged-loss {cfg.diverged_loss:g}; "
                                       f"learning rate {optimizer.param_groups[0]['lr']:g}. Lower --lr.")
            tracker.update(model, epoch)
            record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                      "val_loss": val_loss, "val_accuracy": val_acc, "learning_rate": scheduler.get_last_lr()[0],
                      "seconds": time.perf_counter() - epoch_started, "train_seconds": train_seconds,
                      "since_start_s": time.perf_counter() - train_started, "batch_losses": batch_losses[first_batch:]}
            if val_acc >= cfg.target_accuracy and "time_to_target_s" not in run.results:
                run.results.update(time_to_target_s=record["since_start_s"], epoch_of_target=epoch)
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
    run.results.update(epoch_timing(read_history(history_path)))
    plot_training_curves(history_path, out / "training_curves.png")
    history_losses = [loss for h in read_history(history_path) for loss in h["batch_losses"]]
    plot_batch_level_loss(history_losses, out / "batch_level_loss.png", batches_per_epoch=len(data.train_loader))
    tracker.plot(out / "prediction_dynamics.png")
    run.results["prediction_dynamics"] = tracker.to_dict()


def compile_model(model, mode: str = COMPILE_MODE):
    """torch.compile for the training forward. Where torch.compile itself is refused the run says so
    and trains uncompiled; compilation happens at the first step, and an error there (no C++
    toolchain for the CPU, a GPU too old for Triton) stops the run with its message: drop --compile."""
    try:
        return torch.compile(model, mode=mode)
    except Exception as err:  # noqa: BLE001 - any compiler problem: train without it
        print(f"--compile unavailable here ({type(err).__name__}: {err}); training uncompiled", file=sys.stderr)
        return None


def epoch_timing(history: list[dict]) -> dict:
    """Seconds per epoch as a speed claim needs them: the median of the training parts of the epochs
    after the first (the first holds warm-up and, with --compile, the compilation), and the first
    epoch's excess over that median (compile_s, an estimate of the compile time)."""
    seconds = [h["train_seconds"] for h in history]
    later = seconds[1:] or seconds
    median = statistics.median(later)
    return {"seconds_per_epoch": median, "epoch_train_seconds": seconds, "compile_s": max(0.0, seconds[0] - median)}


def analyse(run: Run, data: Data, model, checks: dict, filters_at_init: torch.Tensor) -> None:
    """The best model, evaluated once on the test set (steps 5 and 6), and the checks after training."""
    out, device = run.out, run.device
    print("\n--- Post-training analysis ---")
    started = time.perf_counter()
    checkpoint = torch.load(out / MODEL_FILE, map_location=device, weights_only=True)
    model.load_state_dict(checkpoint["model_state"])
    history_losses = [loss for h in read_history(out / "history.jsonl") for loss in h["batch_losses"]]
    checks["training_loss_decreases"] = verify_decreasing_loss(history_losses)
    train_metrics = compute_detailed_metrics(model, TensorLoader(data.train_set, 1024), device, NUM_CLASSES)
    test_metrics = compute_detailed_metrics(model, data.test_loader, device, NUM_CLASSES)
    classes = data.test_set.classes
    print_detailed_metrics(train_metrics, "Train", classes)
    print_detailed_metrics(test_metrics, "Test", classes)
    # v11's expected failure is step 4's goal: the regularised model's gap must be small for real.
    checks["train_test_gap"] = compare_train_test_metrics(train_metrics, test_metrics, run.cfg.max_train_test_gap)
    # The recipe: smooth first-layer filters are a good sign, noise-like ones a warning (too little
    # training, a learning rate too high, no regularisation). Drawn next to their state at init.
    filters = model.stem[0].weight.detach()
    run.results["first_layer_filters"] = {"at_init": filter_statistics(filters_at_init),
                                          "trained": filter_statistics(filters)}
    plot_first_layer_filters(filters_at_init, filters, run.results["first_layer_filters"],
                             out / "first_layer_filters.png")
    plot_confusion_matrix(test_metrics["confusion_matrix"], classes, out / "confusion_matrix.png")
    plot_train_vs_test(train_metrics, test_metrics, classes, out / "train_vs_test_comparison.png")
    plot_misclassifications(as_float(data.test_set.images), test_metrics["most_confident_mistakes"], classes,
                            out / "misclassifications.png")
    if run.cfg.batch_independence_test:
        checks["batch_independence_after_training"] = verify_batch_independence(
            model, data.val_set[:8][0], name="batch_independence_after_training")
    for name in ("training_loss_decreases", "train_test_gap", "batch_independence_after_training"):
        if name in checks:
            print(checks[name].report())
    record_checks(run, checks)
    run.results["checks_time_s"] += time.perf_counter() - started
    run.results.update(status="completed", exit_code=0, test_loss=test_metrics["loss"],
                       test_accuracy=test_metrics["accuracy"], train_metrics=train_metrics, test_metrics=test_metrics)
    run.results["outputs"] = sorted({p.name for p in out.iterdir() if p.is_file()} | {"results.json", "REPORT.md"})
    run.save()
    write_report(run.results, out / "REPORT.md")


def print_summary(run: Run, checks: dict) -> None:
    results, out = run.results, run.out
    print_check_summary(checks)
    # --quick trains one epoch of a few batches: the checks that judge a whole run cannot pass there.
    judged_on_full_runs = [name for name in ("training_loss_decreases", "capacity", "train_test_gap")
                           if name in checks and not checks[name].passed]
    if run.cfg.quick and judged_on_full_runs:
        print(f"(--quick: {', '.join(judged_on_full_runs)} judge a full run; after a few steps on a small subset "
              "they are expected to fail. A full run must pass them.)")
    print("\n" + "=" * 78)
    print(f"Best epoch {results['best_epoch']}: validation accuracy {results['best_val_accuracy']:.2%}")
    test = results["test_metrics"]
    print(f"Test accuracy {test['accuracy']:.2%} +- {test['accuracy_std_error']:.2%}, test loss {test['loss']:.4f}  "
          f"(wall time {results['wall_time_s']:.0f}s, of which checks and analysis {results['checks_time_s']:.0f}s)")
    if "input_independent_baseline" in checks:
        zero_input = checks["input_independent_baseline"].details["zero_input"]
        print(f"Improvement over the input-independent baseline: {test['accuracy'] - zero_input:+.2%} "
              f"(zero-input model {zero_input:.2%} on validation)")
    if results["baselines"]:
        human = results["baselines"]["human_accuracy"]
        print(f"Compared with humans ({human:.1%}): {test['accuracy'] - human:+.2%}")
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
    with stop_cleanly(run):  # Ctrl-C anywhere: exit 130, results.json says interrupted
        raw, data = load_data(run)
        report_on_data(run, raw)

        model = ResNet(channels=cfg.channels, dropout=cfg.dropout, stem_stride=cfg.stem_stride).to(run.device)
        optimizer, scheduler = make_optimizer(model, cfg, total_steps=cfg.epochs * len(data.train_loader))
        run.results["num_parameters"] = count_parameters(model)
        print(f"\nResNet: {run.results['num_parameters']:,} trainable parameters")
        checks = checks_before_training(run, raw, data, model, optimizer, scheduler)
        if cfg.preflight:
            return finish_preflight(run, checks)

        filters_at_init = model.stem[0].weight.detach().clone()
        train(run, data, model, optimizer, scheduler)
        analyse(run, data, model, checks, filters_at_init)
        print_summary(run, checks)
        return run.results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
