"""Imagenette v7: ResNet18, ResNet34 or ResNet50 against v6a's DeeperCNN (seed 002; see ../PLAN.md).

v7a, v7b and v7c are one program: v6a's recipe with a ResNet in place of DeeperCNN, and
ARCHITECTURE (resnet18, resnet34, resnet50) the only line in which they differ
(`diff -ru v7a v7b`). The networks are in ../models/resnet.py, written out for reading;
their state_dict has torchvision's names and shapes, and the init is v6a's (Kaiming, final
layer std 0.01, bias 0), so check_initialization expects ln 10 again.

The seed's changes against v6a: batch size 64 (ResNet gets BatchNorm statistics from
more images per step), dropout 0 (BatchNorm regularises), weight decay 1e-4, lr 1e-3. Kept:
AdamW + OneCycle stepped per batch, MixUp 0.2, label smoothing 0.1, up to 100 epochs with
early stopping after 20, the best epoch by validation is the one tested.

New in v7, all off or at the seed's value by default, so that `python train.py` is the
seed's plan:
- bf16 autocast and channels_last on a CUDA GPU (--amp, --channels-last): the same
  network, two to three times the images per second on an H100; float32 on the CPU.
- the levers ../FAZIT.md measures, each a flag that keeps the parameter count:
  --no-maxpool (the stem for 160 px images), --optimizer sgd (Nesterov momentum),
  --weight-decay, --crop-scale-min (stronger augmentation) and --epochs.
- the gradient-flow check and the gradient norms name a ResNet's blocks, and each
  block's shortcut projection (layer2.0.downsample) separately: a projection that gets
  no gradient, or a block that gets almost none, fails the check.

    python train.py               # full run on the real Imagenette (160 px)
    python train.py --quick       # every code path in seconds, on a small subset
    python train.py --preflight   # only the checks; exit code 1 if one fails
    python train.py --help        # every constant below can be overridden
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
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
REPO_ROOT = VERSION_DIR.parents[2]  # imagenette/v7/v7a: one folder deeper than v1-v5
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (data location, run folders)
if str(VERSION_DIR.parent) not in sys.path:
    sys.path.append(str(VERSION_DIR.parent))  # for models/ (the three ResNets, shared by v7a/b/c)

from shared.data import DataNotFoundError  # noqa: E402
from shared.runs import (  # noqa: E402
    RunFolderError, existing_dir, make_run_dir, run_mode,
    save_checkpoint, stop_cleanly, write_json,
)
from shared.imagenette import load_imagenette  # noqa: E402

from debug_tools import (  # noqa: E402
    activation_statistics,
    check_initialization,
    class_balance,
    expected_loss_at_init,
    initialization_verdict,
    verify_gradient_flow,
    inspect_batch,
    print_check_summary,
    overfit_one_batch,
    rng_untouched,
    smoothing_floor,
    test_input_independent_baseline,
    verify_batch_independence,
    verify_eval_unaugmented,
    verify_loss_at_init,
    verify_lr_schedule,
    verify_normalisation_stats,
    verify_normalised_batch,
    verify_step_gradient,
    verify_train_augmented,
    verify_train_eval_modes,
)
from metrics import evaluate  # noqa: E402
from models.resnet import ARCHITECTURES  # noqa: E402
from normalize import training_set_statistics  # noqa: E402
from visualization import (  # noqa: E402
    plot_activation_statistics,
    plot_augmented_batch,
    plot_batch,
    plot_class_balance,
    plot_gradient_flow,
    plot_gradient_norms,
    plot_lr_schedule,
    plot_training_curves,
    read_history,
)

# ---------------------------------------------------------------------------
# Configuration: every constant can be overridden on the command line.
# ---------------------------------------------------------------------------
SEED = 42  # one seed for Python, NumPy and PyTorch: the same run twice gives the same numbers
EPOCHS = 100  # the seeds' budget; early stopping ends it sooner if validation stops improving
ARCHITECTURE = "resnet50"  # v7c: ResNet50 (23.5M parameters); v7a resnet18, v7b resnet34
BATCH_SIZE = 64  # seed 002: ResNet's BatchNorm gets its statistics from more images; ~50 steps per epoch
PATIENCE = 20  # epochs without a new best validation accuracy before stopping (the seeds' value)
DROPOUT = 0.0  # seed 002: none (BatchNorm in every block regularises); the sweep tries 0.05 and 0.1
MIXUP_ALPHA = 0.2  # lam ~ Beta(0.2, 0.2): most images stay nearly whole, some are real blends; 0: off
# Weakest / median block ||grad|| / ||w|| at init: 0.30 (ResNet18), 0.25 (34), 0.23 (50) at 160 px;
# a vanishing block sits orders of magnitude lower, and a block or shortcut projection cut out of
# the graph has no gradient at all (debug_tools.verify_gradient_flow).
MIN_GRADIENT_RATIO = 1e-2
# The final layer's initialisation: v6a's, the side of the A/B that starts at ln 10.
FINAL_WEIGHT_STD = 0.01  # small weights, so every logit starts near 0 (uniform predictions)
FINAL_BIAS_STD = 0.0  # bias 0, no class favoured at the start
INIT_CHECK_BATCHES = 10  # training batches check_initialization averages over (320 images)
TARGET_VAL_ACCURACY = 0.80  # the seed's convergence mark: the first epoch at 80% validation accuracy
WANDB = False  # Weights & Biases is optional: off unless --wandb (pip install -r requirements-wandb.txt)
WANDB_PROJECT = "imagenette-training"  # the seed's project name
LEARNING_RATE = 1e-3  # OneCycle's peak; it starts at 1/25 of it and ends ~1e4 times lower
WEIGHT_DECAY = 1e-4  # seed 002 (v6a: 2e-4). Under AdamW the weights shrink by lr x decay per step:
# 1e-7 at the peak, next to nothing; SGD's L2 decay of 5e-4 is a different, much stronger thing.
OPTIMIZER = "adamw"  # the seed's; "sgd": SGD with Nesterov momentum (a lever in ../FAZIT.md)
MAXPOOL = True  # the standard ResNet stem; --no-maxpool keeps 4x the positions (80x80 into layer1)
AMP = True  # bf16 autocast for the training step on a CUDA GPU (ignored elsewhere); no loss scaling needed
CHANNELS_LAST = True  # on a CUDA GPU: the memory layout tensor cores want for convolutions
WARMUP_FRACTION = 0.3  # share of the steps spent rising to the peak (OneCycleLR's pct_start default)
LABEL_SMOOTHING = 0.1  # 0.9 of the target on the right class, 0.1 spread evenly over all ten
LOSS_AT_INIT_TOLERANCE = 0.3  # |loss at init - ln 10|: a default-initialised net lands within ~0.1
DEVICE = "auto"  # cuda, then mps, then cpu
DATA_DIR = None  # None: look in $DATA_DIR, data/, then download (shared/imagenette.py)
OUT_DIR = VERSION_DIR / "outputs"  # every run: a new dated folder in here; outputs/latest: the newest
TRAIN_FRACTION = 0.4  # the seeds train on a stratified 40% of train/: a small-data regime on purpose
VAL_FRACTION = 0.15  # of that subset, held out for decisions: 568 images, standard error ~2 points
SUBSET_SEED = 0  # fixed apart from --seed: every run and version sees the same images
IMAGE_SIZE = 160  # shorter side resized to this, centre crop; the cache holds this size
# RandomResizedCrop's smallest crop, as a share of the image area. torchvision's default 0.08
# cuts out parts too small to show the object on 160 px images and a 3,217-image training set;
# 0.35 keeps the object in view most of the time (augmented_batch.png shows the draws).
CROP_SCALE_MIN = 0.35
FLIP_PROBABILITY = 0.5  # left-right mirror: none of the ten classes changes its meaning when mirrored
NORMALISED_TOLERANCE = 0.15  # allowed |mean| and |std - 1| per channel of normalised training batches
# More than half of one layer's ReLU units silent on a whole batch: the layer has lost most of its
# width. With BatchNorm before every ReLU hardly a unit is dead (FAZIT.md), so this only catches the
# real thing: unnormalised inputs, a huge learning rate, a large negative BatchNorm shift.
MAX_DEAD_FRACTION = 0.5
# A loss above this (10x the 2.30 of a model that guesses: the right class gets probability
# < e^-25) stops training as diverged, like NaN does: a far too high learning rate often
# explodes the loss to 1e29 and beyond without ever making it NaN.
DIVERGED_LOSS = 25.0
# The battery of fashionmnist/v10-step2, driving this run's own training step, loss and optimizer
# on copies of the model (with step_gradient, batch independence and train/eval modes, always on).
RUN_INPUT_INDEPENDENT_BASELINE = True  # a model trained on zeroed inputs must be clearly worse than the real one
RUN_OVERFIT_TEST = True  # one training image per class must be memorised: 100% and the loss at its floor
RUN_BATCH_INDEPENDENCE_TEST = True  # output i must depend on input i only (backprop, eval mode)
# Steps of each of the two baseline models, and the validation accuracy the real one must gain over
# the zero-input one (~10%). Imagenette learns slower than Fashion-MNIST: in 150 steps ResNet18
# reaches 56-57% (seeds 0-2), ResNet50 49% on the H200; with images shuffled apart from their
# labels, 9% (runs/2026-12-05-h200-imagenette-preflight).
BASELINE_STEPS = 150
BASELINE_MIN_GAP = 0.10
OVERFIT_STEPS = 300  # most steps on the ten images; a correct ResNet needs 30-50 (H200 record)
# step_gradient compares the step's gradient with a fresh backward pass: ~1e-7 apart in float32;
# under bf16 autocast the two passes round differently: 0.009-0.021 apart on the H200 (v7a seeds
# 0-2, v7b, v7c; runs/2026-12-05-h200-imagenette-preflight), while a bug reads ~1.
STEP_GRADIENT_TOLERANCE_BF16 = 0.1
# 'Memorised': the loss at most label smoothing's floor (0.50 for 0.1) plus this; a softmax before
# the loss plateaus near 1.55 instead. The floor is approached slowly (v6b: 0.553 after 300 steps
# on the --quick subset), so the margin is 0.1, not Fashion-MNIST's 0.05 over a floor of 0.
OVERFIT_MARGIN = 0.1

# --quick: a few images per class at 64 px and one epoch, so every code path runs in seconds on
# a CPU (a 160 px image costs a CPU about as much as six 64 px ones).
QUICK_PER_CLASS = {"train": 16, "val": 4, "test": 8}
QUICK_IMAGE_SIZE = 64
QUICK_EPOCHS = 1
QUICK_BASELINE_STEPS = 60
# --quick leaves the input-independent baseline off unless asked for: 160 real images at 64 px show
# no learned signal on validation within a CPU minute (v6a: real 17.5% vs zero 10% after 150 steps),
# so it would fail on correct code.
QUICK_INPUT_INDEPENDENT_BASELINE = False

NUM_CLASSES = 10
VERSION = f"imagenette/v7/{VERSION_DIR.name}"
MODEL_FILE = "final_model.pth"
BEST_MODEL_FILE = "best_model.pth"
RESUME_FILE = "resume.pth"  # everything a run needs to go on after its last finished epoch (--resume)


# ---------------------------------------------------------------------------
# Reproducibility and device
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
class TensorLoader:
    """A DataLoader for images that already sit in memory as uint8: one index per batch.

    Shuffling uses its own seeded generator, so the batch order is reproducible;
    a check that draws a batch puts it back where it found it (rng_untouched),
    so it does not change the order training sees. Each batch is turned into
    float by `transform(images, generator)` on the device, batched: there is no
    per-image Python or PIL work in the training loop.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, transform=None):
        self.images, self.labels, self.batch_size, self.shuffle = images, labels, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.transform = transform or to_float

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.images.device)
        for start in range(0, n, self.batch_size):
            batch = order[start:start + self.batch_size]
            yield self.transform(self.images[batch], self.generator), self.labels[batch]


def to_float(images_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """What transforms.ToTensor() does to each image, done for a whole batch at once:
    uint8 (B, 3, H, W) in [0, 255] -> float32 in [0, 1]. (The generator is for the random
    augmentation that v2 adds here; v1 draws nothing.)"""
    return images_uint8.float().div(255.0)


def random_resized_crop_and_flip(images: torch.Tensor, scale_min: float, flip_probability: float,
                                 generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop(size, scale=(scale_min, 1)) and RandomHorizontalFlip(p) for a whole batch.

    Each image gets its own crop (area share in [scale_min, 1], aspect ratio in [3/4, 4/3],
    anywhere inside the image), resized back to the full size by bilinear sampling, and is
    mirrored with probability p. Crop and flip are one affine map per image, so the whole
    batch is one `grid_sample` call on the device: no per-image Python, no PIL. The random
    numbers are drawn on the CPU from `generator` (reproducible on every device). Unlike
    torchvision, a crop that would stick out of the image is shrunk to fit instead of redrawn.
    """
    n = len(images)
    area = torch.empty(n).uniform_(scale_min, 1.0, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # share of the image width
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    # Centre of the crop in grid_sample's coordinates ([-1, 1] spans the image): anywhere the crop fits.
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    mirror = torch.where(torch.rand(n, generator=generator) < flip_probability, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Transform:
    """What Compose([RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize(mean, std)]) does
    to each image, done for a whole uint8 batch on the device. augment=False (validation, test)
    only converts and normalises, so every evaluation sees the same inputs."""

    def __init__(self, mean: list[float], std: list[float], augment: bool, crop_scale_min: float = CROP_SCALE_MIN,
                 flip_probability: float = FLIP_PROBABILITY):
        self.mean, self.std, self.augment = list(mean), list(std), augment
        self.crop_scale_min, self.flip_probability = crop_scale_min, flip_probability

    def __call__(self, images_uint8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images = to_float(images_uint8)
        if self.augment and (self.crop_scale_min < 1 or self.flip_probability > 0):
            images = random_resized_crop_and_flip(images, self.crop_scale_min, self.flip_probability, generator)
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def output_range(self) -> tuple[float, float]:
        """Where pixels in [0, 1] can end up after normalisation (over the three channels)."""
        return (min((0.0 - m) / s for m, s in zip(self.mean, self.std)),
                max((1.0 - m) / s for m, s in zip(self.mean, self.std)))


@dataclass
class Data:
    train_loader: TensorLoader
    val_loader: TensorLoader
    test_loader: TensorLoader
    classes: list[str]
    info: dict  # where the images came from, split sizes, fingerprint, cache hits
    normalisation: dict  # the training split's channel mean and std, the only ones the loaders use


def load_data(cfg, device) -> Data:
    """The training subset, its validation split and the test set as uint8 tensors on the device.

    The validation split is for looking at during training (and, from v5 on, for
    picking the best epoch); the test set is measured once, after training, so
    that no decision is tuned to it. --quick takes a few images per class. Each
    loader's Transform turns its batches into normalised floats (and, for training,
    augments them), with the training split's statistics from normalize.py.
    """
    data = load_imagenette(cfg.data_dir, train_fraction=cfg.train_fraction, val_fraction=cfg.val_fraction,
                           subset_seed=cfg.subset_seed, size=cfg.image_size,
                           per_class=QUICK_PER_CLASS if cfg.quick else None)
    train_images = data.train_images.to(device)
    stats = training_set_statistics(train_images, data.info["train_content_key"])  # training split only
    train_transform = Transform(stats["mean"], stats["std"], augment=True, crop_scale_min=cfg.crop_scale_min,
                                flip_probability=cfg.flip_probability)
    eval_transform = Transform(stats["mean"], stats["std"], augment=False)
    return Data(
        TensorLoader(train_images, data.train_labels.to(device), cfg.batch_size, shuffle=True, seed=cfg.seed,
                     transform=train_transform),
        TensorLoader(data.val_images.to(device), data.val_labels.to(device), 256, transform=eval_transform),
        TensorLoader(data.test_images.to(device), data.test_labels.to(device), 256, transform=eval_transform),
        data.classes,
        data.info,
        stats,
    )


def report_on_data(run, data: Data) -> None:
    info = data.info
    run.results["data"] = info
    print(f"\nImagenette from {info['root']} ({info['found_via']}): a stratified {info['train_fraction']:.0%} of "
          f"{info['train_folder_images']:,} train/ images (subset seed {info['subset_seed']}, fingerprint "
          f"{info['subset_fingerprint']})\n  -> {info['train_images']:,} training, {info['val_images']:,} validation"
          f" ({info['val_fraction']:.0%} of the subset), {info['test_images']:,} test images (val/ folder), "
          f"{info['image_size']} px" + (", decoded images read from the cache" if all(info['from_cache'].values())
                                          else ""))
    stats = data.normalisation
    run.results["normalisation"] = stats
    print(f"Normalisation (training split, {'cached' if stats['from_cache'] else 'computed'} by normalize.py): "
          f"mean [{', '.join(f'{m:.4f}' for m in stats['mean'])}], "
          f"std [{', '.join(f'{v:.4f}' for v in stats['std'])}]")


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------
def build_model(cfg) -> nn.Module:
    """The network ARCHITECTURE names, from ../models/resnet.py, with v6a's initialisation."""
    constructor, _ = ARCHITECTURES[cfg.arch]
    return constructor(NUM_CLASSES, maxpool=cfg.maxpool, dropout=cfg.dropout, final_weight_std=cfg.final_weight_std,
                       final_bias_std=cfg.final_bias_std)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------
# Training: the loss, the optimizer and one step, each defined once. train_one_epoch
# and every check that trains or computes a loss use exactly these.
# ---------------------------------------------------------------------------
class TrainingDiverged(FloatingPointError):
    """The loss became NaN, infinite or exploded; the message holds the diagnosis."""


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = LABEL_SMOOTHING) -> torch.Tensor:
    """Cross-entropy on raw logits with label smoothing: it applies log-softmax itself, so no
    softmax goes before it. The smoothed target is (1 - eps) one-hot + eps/10 on every class.
    `labels` may be class indices or soft targets (MixUp's blends, rows summing to 1): PyTorch
    smooths those the same way, (1 - eps) target + eps/10."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def make_optimizer(model: nn.Module, cfg, total_steps: int):
    """AdamW (or, with --optimizer sgd, SGD with Nesterov momentum) and the OneCycle schedule it
    follows over `total_steps` optimizer steps (batches).

    Weight decay goes to the conv and linear weights only: decaying BatchNorm's scale
    and shift or a bias pulls them towards 0 for no gain in regularisation (they do
    not set the function's complexity), so those sit in a group with decay 0.
    OneCycle: from --lr/25 up to --lr over the first --warmup-fraction of the steps,
    then down to --lr/25/1e4 (PyTorch's defaults). It is planned in batches, so it
    must be stepped after every batch, and it refuses a step past its end. OneCycle also
    cycles the momentum, opposite to the learning rate, between 0.95 and 0.85: AdamW's beta1,
    or SGD's momentum (so SGD has no momentum flag: the schedule sets it). SGD's weight
    decay is L2 (added to the gradient, then scaled by the learning rate): at lr 0.1 and
    5e-4 a weight shrinks by 5e-5 per step, 500 times AdamW's 1e-7 at lr 1e-3 and 1e-4.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps,
                                                    pct_start=cfg.warmup_fraction)
    return optimizer, scheduler


def training_step(model, images, labels, optimizer, scheduler, diverged_loss: float = DIVERGED_LOSS,
                  label_smoothing: float = LABEL_SMOOTHING, amp: bool = False):
    """One update of the weights: forward, loss, backward, optimizer step, schedule step.
    The schedule is stepped here, after every batch, because it was planned in batches.
    amp: the forward pass under bf16 autocast on a CUDA GPU (convolutions and matmuls in
    bfloat16, the loss and the weights in float32). bf16 has float32's range, so, unlike
    float16, it needs no loss scaling: the gradients cannot underflow.

    Returns the batch's loss (a float) and its logits. A loss that is not finite or
    above `diverged_loss` raises TrainingDiverged before it can reach the weights,
    so the checkpoint and history on disk stay the last good state.
    """
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp and images.device.type == "cuda"):
        logits = model(images)
    loss = loss_fn(logits.float(), labels, label_smoothing)
    loss_value = loss.item()
    if not math.isfinite(loss_value) or loss_value > diverged_loss:
        verdict = "is not finite" if not math.isfinite(loss_value) else f"is above --diverged-loss {diverged_loss:g}"
        raise TrainingDiverged(
            f"loss {loss_value:.3g} {verdict}; learning rate {optimizer.param_groups[0]['lr']:g}. "
            f"Usual causes: learning rate too high, inputs not scaled to [0, 1], log of 0.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss_value, logits.detach()


@dataclass
class MixedBatch:
    images: torch.Tensor  # lam x image + (1 - lam) x its partner's image
    targets: torch.Tensor  # the same blend of the two one-hot labels: (N, classes), each row sums to 1
    lam: torch.Tensor  # (N,) blend weight of each image's own label, >= 0.5
    partner: torch.Tensor  # (N,) index of the image each one is blended with


def mix_batch(images: torch.Tensor, labels: torch.Tensor, alpha: float = MIXUP_ALPHA,
              num_classes: int = NUM_CLASSES) -> MixedBatch:
    """MixUp (Zhang et al. 2018) for a whole batch on the device: every image is blended with a
    partner from the same batch (a random permutation), with its own weight lam ~ Beta(alpha, alpha),
    and the one-hot labels with the same weight (loss_fn then smooths these soft targets). lam is
    folded to >= 0.5, so the image's own label stays the larger part and training accuracy can
    still be counted against it. alpha 0: no mixing. Draws from PyTorch's global generator
    (seeded by set_seed), so runs repeat bit for bit."""
    targets = F.one_hot(labels, num_classes).float()
    n = len(labels)
    if alpha <= 0:
        return MixedBatch(images, targets, torch.ones(n, device=images.device), torch.arange(n, device=images.device))
    lam = torch.distributions.Beta(alpha, alpha).sample((n,))
    lam = torch.maximum(lam, 1 - lam).to(images.device)
    partner = torch.randperm(n).to(images.device)
    mixed_images = lam.view(-1, 1, 1, 1) * images + (1 - lam.view(-1, 1, 1, 1)) * images[partner]
    mixed_targets = lam.view(-1, 1) * targets + (1 - lam.view(-1, 1)) * targets[partner]
    return MixedBatch(mixed_images, mixed_targets, lam, partner)


class GradientNorms:
    """The gradient norm of every layer group (stem, layer1 ... layer4, fc) after every step,
    averaged over the epoch: what seed 001's "early gradients" hypothesis is about.

    Read after training_step returns (the gradients of the step just taken are still there:
    the next step zeroes them). Summed on the device and read once per epoch, so it costs no
    synchronisation per step."""

    def __init__(self, model: nn.Module):
        self.groups: dict[str, list] = {}
        for name, p in model.named_parameters():
            parts = name.split(".")
            group = parts[0] if parts[0].startswith("layer") or parts[0] == "fc" else "stem"
            self.groups.setdefault(group, []).append(p)
        self.sums, self.steps = None, 0

    @torch.no_grad()
    def after_step(self) -> None:
        norms = torch.stack([torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])) for params in
            self.groups.values()])
        self.sums = norms if self.sums is None else self.sums + norms
        self.steps += 1

    def epoch_summary(self) -> dict:
        """{"grad_norm": mean total norm, "grad_norm_per_group": {group: mean norm}}; then reset."""
        if self.sums is None:
            return {}
        means = (self.sums / self.steps).tolist()
        total = (self.sums.pow(2).sum().sqrt() / self.steps).item()  # norm of the mean group norms
        self.sums, self.steps = None, 0
        return {"grad_norm": total, "grad_norm_per_group": dict(zip(self.groups, means))}


def train_one_epoch(model, loader, optimizer, scheduler, epoch: int = 0, epochs: int = 0,
                    diverged_loss: float = DIVERGED_LOSS, label_smoothing: float = LABEL_SMOOTHING,
                    mixup_alpha: float = MIXUP_ALPHA, gradient_norms: GradientNorms | None = None,
                    amp: bool = False):
    """One pass over the training data with `training_step`, on mixed batches with soft targets.
    Returns (mean loss, accuracy); the accuracy counts a prediction right when it is the image's
    own label (the larger part of its blend). `gradient_norms` records every step's gradients."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    progress = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True)
    for step, (images, labels) in enumerate(progress):
        batch = mix_batch(images, labels, mixup_alpha)
        try:
            loss_value, logits = training_step(model, batch.images, batch.targets, optimizer, scheduler,
                                               diverged_loss, label_smoothing, amp)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"at step {step} of epoch {epoch}: {err}") from None
        if gradient_norms is not None:
            gradient_norms.after_step()
        total_loss += loss_value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        # refresh=False: the bar redraws at its own pace, not on every step
        progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
    return total_loss / seen, correct / seen


# ---------------------------------------------------------------------------
# Command line and run records
# ---------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows the module docstring as written, and every flag's default."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny subset and 1 epoch: every code path in seconds")
    p.add_argument("--preflight", action="store_true", help="run only the checks; exit code 1 if one fails")
    p.add_argument("--resume", action="store_true",
                   help="go on from --out's resume.pth (written after every epoch) with the same flags")
    p.add_argument("--out", type=Path, default=None,
                   help="exactly this folder; without it, a new dated folder under outputs/")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out reuse a folder that already holds a run's results")
    p.add_argument("--data-dir", type=existing_dir, default=DATA_DIR, help="folder with train/<wnid>/ and val/<wnid>/")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=DEVICE, help="auto: cuda, mps, cpu")
    p.add_argument("--seed", type=int, default=SEED, help="one seed for every random number generator")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the training set")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default=ARCHITECTURE, help="the network")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="training images per step")
    p.add_argument("--lr", type=float, default=LEARNING_RATE, help="OneCycle's peak learning rate")
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY, help="decay on conv/linear weights")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default=OPTIMIZER,
                   help="AdamW, or SGD with Nesterov momentum (OneCycle cycles the momentum of both)")
    p.add_argument("--maxpool", action=argparse.BooleanOptionalAction, default=MAXPOOL,
                   help="the stem's 3x3 max-pool (--no-maxpool: 4x the positions into layer1)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=AMP,
                   help="bf16 autocast for the training step on a CUDA GPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=CHANNELS_LAST,
                   help="channels_last memory layout on a CUDA GPU")
    p.add_argument("--warmup-fraction", type=float, default=WARMUP_FRACTION, help="share of steps rising to --lr")
    p.add_argument("--label-smoothing", type=float, default=LABEL_SMOOTHING, help="share of the target spread evenly")
    p.add_argument("--loss-at-init-tolerance", type=float, default=LOSS_AT_INIT_TOLERANCE,
                   help="allowed |loss at init - ln 10|")
    p.add_argument("--patience", type=int, default=PATIENCE,
                   help="epochs without a new best validation accuracy before stopping")
    p.add_argument("--dropout", type=float, default=DROPOUT, help="dropout before the classifier")
    p.add_argument("--mixup-alpha", type=float, default=MIXUP_ALPHA, help="MixUp's Beta(alpha, alpha); 0: off")
    p.add_argument("--min-gradient-ratio", type=float, default=MIN_GRADIENT_RATIO,
                   help="smallest allowed ratio of the weakest to the median block's ||grad||/||w||")
    p.add_argument("--final-weight-std", type=float, default=FINAL_WEIGHT_STD, help="std of the final layer's weights")
    p.add_argument("--final-bias-std", type=float, default=FINAL_BIAS_STD, help="std of its bias (0: zero)")
    p.add_argument("--init-check-batches", type=int, default=INIT_CHECK_BATCHES,
                   help="training batches check_initialization averages over")
    p.add_argument("--target-val-accuracy", type=float, default=TARGET_VAL_ACCURACY,
                   help="results.json records the first epoch at this validation accuracy")
    p.add_argument("--wandb", action="store_true", default=WANDB,
                   help="also log to Weights & Biases (needs requirements-wandb.txt; WANDB_MODE=offline works)")
    p.add_argument("--wandb-project", default=WANDB_PROJECT, help="W&B project name")
    p.add_argument("--diverged-loss", type=float, default=DIVERGED_LOSS,
                   help="a batch loss above this stops training, like NaN does (inf: only NaN stops)")
    p.add_argument("--train-fraction", type=float, default=TRAIN_FRACTION,
                   help="stratified share of train/ to use (1.0 on a folder made by export-subset)")
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION, help="share of the subset held out")
    p.add_argument("--subset-seed", type=int, default=SUBSET_SEED, help="which images form the subset")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="side of the square images, in px")
    p.add_argument("--crop-scale-min", type=float, default=CROP_SCALE_MIN,
                   help="smallest random crop, as a share of the image area (1 and --flip-probability 0: "
                        "no augmentation)")
    p.add_argument("--flip-probability", type=float, default=FLIP_PROBABILITY, help="chance of a left-right flip")
    p.add_argument("--normalised-tolerance", type=float, default=NORMALISED_TOLERANCE,
                   help="allowed |mean| and |std - 1| per channel of normalised training batches")
    p.add_argument("--max-dead-fraction", type=float, default=MAX_DEAD_FRACTION,
                   help="largest allowed share of dead ReLU units in one layer")
    p.add_argument("--input-independent-baseline", action=argparse.BooleanOptionalAction, default=None,
                   help=f"the real model must beat a zero-input one (None: {RUN_INPUT_INDEPENDENT_BASELINE}, "
                        f"under --quick {QUICK_INPUT_INDEPENDENT_BASELINE})")
    p.add_argument("--overfit-test", action=argparse.BooleanOptionalAction, default=RUN_OVERFIT_TEST,
                   help="one training image per class must be memorised")
    p.add_argument("--batch-independence-test", action=argparse.BooleanOptionalAction,
                   default=RUN_BATCH_INDEPENDENCE_TEST, help="output i must depend on input i only")
    p.add_argument("--baseline-steps", type=int, default=BASELINE_STEPS, help="training steps of each baseline model")
    p.add_argument("--baseline-min-gap", type=float, default=BASELINE_MIN_GAP,
                   help="validation accuracy the real model must gain over the zero-input one")
    p.add_argument("--overfit-steps", type=int, default=OVERFIT_STEPS, help="most training steps on the ten images")
    p.add_argument("--overfit-margin", type=float, default=OVERFIT_MARGIN,
                   help="'memorised': loss at most label smoothing's floor plus this")
    p.add_argument("--step-gradient-tolerance-bf16", type=float, default=STEP_GRADIENT_TOLERANCE_BF16,
                   help="step_gradient's tolerance under bf16 autocast (1e-3 in float32)")
    args = p.parse_args(argv)
    if args.baseline_steps < 1 or args.overfit_steps < 1 or not 0 < args.baseline_min_gap <= 1 \
            or not args.overfit_margin > 0:
        p.error("--baseline-steps and --overfit-steps must be >= 1, --baseline-min-gap in (0, 1], "
                "--overfit-margin > 0")
    if not args.diverged_loss > 0:
        p.error("--diverged-loss must be > 0 (inf switches the explosion stop off; NaN always stops)")
    if args.epochs < 1 or args.batch_size < 1 or not math.isfinite(args.lr) or args.lr <= 0:
        p.error("--epochs and --batch-size must be >= 1, --lr a number > 0")
    if not 0 < args.train_fraction <= 1 or not 0 < args.val_fraction < 1 or args.image_size < 32:
        p.error("--train-fraction must be in (0, 1], --val-fraction in (0, 1), --image-size >= 32")
    if not 0 < args.crop_scale_min <= 1 or not 0 <= args.flip_probability <= 1 or not args.normalised_tolerance > 0:
        p.error("--crop-scale-min must be in (0, 1], --flip-probability in [0, 1], --normalised-tolerance > 0")
    if not 0 <= args.max_dead_fraction <= 1:
        p.error("--max-dead-fraction must be in [0, 1]")
    if args.weight_decay < 0 or not 0 < args.warmup_fraction < 1 or not 0 <= args.label_smoothing < 1 \
            or not args.loss_at_init_tolerance > 0:
        p.error("--weight-decay must be >= 0, --warmup-fraction in (0, 1), --label-smoothing in [0, 1), "
                "--loss-at-init-tolerance > 0")
    if args.patience < 1 or not 0 <= args.dropout < 1 or args.mixup_alpha < 0 or not 0 < args.min_gradient_ratio <= 1:
        p.error("--patience must be >= 1, --dropout in [0, 1), --mixup-alpha >= 0, --min-gradient-ratio in (0, 1]")
    if not args.final_weight_std > 0 or args.final_bias_std < 0 or args.init_check_batches < 1 \
            or not 0 < args.target_val_accuracy <= 1:
        p.error("--final-weight-std must be > 0, --final-bias-std >= 0, --init-check-batches >= 1, "
                "--target-val-accuracy in (0, 1]")
    if args.input_independent_baseline is None:
        args.input_independent_baseline = QUICK_INPUT_INDEPENDENT_BASELINE if args.quick \
            else RUN_INPUT_INDEPENDENT_BASELINE
    if args.quick:
        args.epochs = min(args.epochs, QUICK_EPOCHS)
        args.image_size = min(args.image_size, QUICK_IMAGE_SIZE)
        args.baseline_steps = min(args.baseline_steps, QUICK_BASELINE_STEPS)
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
    first_batch: torch.Tensor | None = None  # the batch the activation statistics are measured on
    init: dict | None = None  # check_initialization's numbers: epoch 0 of the history

    def save(self, **updates) -> None:
        self.results.update(updates, wall_time_s=time.perf_counter() - self.started)
        write_json(self.out / "results.json", self.results)


def start_run(cfg, argv) -> Run:
    """Output folder, device and seed, and the header of results.json; exit 2 on a bad --out or --device."""
    try:
        out = prepare_out_dir(cfg)
        device = pick_device(cfg.device)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    set_seed(cfg.seed)
    results = {
        "version": VERSION,
        "status": "running",
        "command": " ".join(["python train.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "seed": cfg.seed,
        "device": device_name(device),
        "torch_version": torch.__version__,
        "checks": {},
    }
    print("=" * 78)
    print(f"{VERSION} | device {results['device']} | torch {torch.__version__} | seed {cfg.seed}")
    print(f"{cfg.arch}, epochs {cfg.epochs}, batch size {cfg.batch_size}, "
          f"{'AdamW' if cfg.optimizer == 'adamw' else 'SGD (Nesterov)'} + OneCycle to lr {cfg.lr} (per batch), weight "
          f"decay {cfg.weight_decay}, label smoothing {cfg.label_smoothing}, MixUp alpha {cfg.mixup_alpha}, "
          f"early stopping after {cfg.patience}" + (" | QUICK MODE" if cfg.quick else ""))
    print("=" * 78)
    return Run(cfg, out, device, results)


def per_class(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the first `count` images of every class, round by round (one of each class,
    then the next of each), so that any slice of NUM_CLASSES of them holds every class."""
    rounds = [[(labels == c).nonzero().flatten()[r] for c in range(NUM_CLASSES)] for r in range(count)]
    return torch.stack([index for one_round in rounds for index in one_round])


def battery_checks(run: Run, data: Data, model, run_loss) -> dict:
    """fashionmnist/v10-step2's checks, each driving this run's own training_step, make_optimizer,
    loss_fn, train_one_epoch and evaluate on copies of the model: the gradient optimizer.step()
    gets, memorising one image per class, the input-independent baseline, batch independence and
    the train/eval modes. Called inside rng_untouched."""
    cfg, checks = run.cfg, {}
    new_optimizer = functools.partial(make_optimizer, cfg=cfg)  # a check lays the schedule over its own steps
    step = functools.partial(training_step, diverged_loss=cfg.diverged_loss, label_smoothing=cfg.label_smoothing,
                             amp=cfg.amp)
    autocast = cfg.amp and run.device.type == "cuda"  # the fresh pass under the step's bf16 autocast too
    chosen = per_class(data.train_loader.labels, 2)  # 20 training images, every class twice
    images, labels = data.train_loader.images[chosen], data.train_loader.labels[chosen]
    plain = data.val_loader.transform(images, None)  # un-augmented and normalised, as evaluation sees them
    checks["step_gradient"] = verify_step_gradient(model, plain, labels, make_optimizer=new_optimizer,
                                                   training_step=step, loss_fn=run_loss, autocast=autocast,
                                                   tolerance=cfg.step_gradient_tolerance_bf16 if autocast else 1e-3)
    if cfg.overfit_test:
        checks["overfit_one_batch"] = overfit_one_batch(
            model, plain[:NUM_CLASSES], labels[:NUM_CLASSES], make_optimizer=new_optimizer, training_step=step,
            loss_fn=run_loss, steps=cfg.overfit_steps,
            max_loss=smoothing_floor(NUM_CLASSES, cfg.label_smoothing) + cfg.overfit_margin, out_dir=run.out)
    if cfg.input_independent_baseline:
        checks["input_independent_baseline"] = test_input_independent_baseline(
            model, data.train_loader, data.val_loader, make_optimizer=new_optimizer, training_step=step,
            steps=cfg.baseline_steps, min_gap=cfg.baseline_min_gap)
    if cfg.batch_independence_test:
        checks["batch_independence"] = verify_batch_independence(model, plain[:8])
    few_train = TensorLoader(images, labels, NUM_CLASSES, transform=data.train_loader.transform)
    few_eval = TensorLoader(images, labels, NUM_CLASSES, transform=data.val_loader.transform)

    def own_epoch(probe):  # this run's epoch (MixUp, augmentation), on two batches, with its own optimizer
        probe_optimizer, probe_scheduler = new_optimizer(probe, total_steps=len(few_train))
        train_one_epoch(probe, few_train, probe_optimizer, probe_scheduler, diverged_loss=cfg.diverged_loss,
                        label_smoothing=cfg.label_smoothing, mixup_alpha=cfg.mixup_alpha, amp=cfg.amp)
    checks["train_eval_modes"] = verify_train_eval_modes(
        model, train_epoch=own_epoch, evaluate=lambda probe: evaluate(probe, few_eval, run.device))
    return checks


def checks_before_training(run: Run, data: Data, model, optimizer, scheduler) -> dict:
    """Look at one training batch (augmented and normalised, as the model gets it) before
    training on it, and at the class mix of every split; make sure the statistics are the
    training split's, training batches are augmented and evaluation batches are not; measure
    every ReLU layer's activations on that batch; the loss at init with the run's own loss,
    the run's own schedule, planned and stepped, and fashionmnist/v10-step2's battery on the
    run's own step (battery_checks). Inside
    rng_untouched: drawing batches advances the loader's shuffle and augmentation, and no
    check may change what training sees."""
    print("\n--- Checks before training ---")
    started = time.perf_counter()
    checks = {}
    cfg = run.cfg
    with rng_untouched(run.device, data.train_loader.generator):
        images, labels = next(iter(data.train_loader))
        checks["first_batch"] = inspect_batch(images, labels, NUM_CLASSES,
                                              value_range=data.train_loader.transform.output_range(),
                                              image_shape=(3, cfg.image_size, cfg.image_size), normalised=True)
        plot_batch(images, labels, data.classes, run.out / "first_batch.png")
        checks["activations_at_init"] = activation_statistics(model, images, "activations_at_init",
                                                              cfg.max_dead_fraction)
        mixed = mix_batch(images, labels, cfg.mixup_alpha)  # as the first training step gets it
        run_loss = functools.partial(loss_fn, label_smoothing=cfg.label_smoothing)
        checks["loss_at_init"] = verify_loss_at_init(
            model, mixed.images, mixed.targets, loss_fn=run_loss,
            expected=expected_loss_at_init(NUM_CLASSES, cfg.label_smoothing), num_classes=NUM_CLASSES,
            label_smoothing=cfg.label_smoothing, tolerance=cfg.loss_at_init_tolerance)
        checks["gradient_flow"] = verify_gradient_flow(model, mixed.images, mixed.targets, run_loss,
                                                       cfg.min_gradient_ratio)
        # Seed 001's sanity check, over several training batches: with v6a's init, ln 10.
        run.init = check_initialization(model, data.train_loader, run_loss, run.device, NUM_CLASSES,
                                        max_batches=cfg.init_check_batches, tolerance=cfg.loss_at_init_tolerance)
        checks["initialization"] = initialization_verdict(run.init)
        plot_gradient_flow(checks["gradient_flow"].details, run.out / "gradient_flow.png")
        checks["lr_schedule"] = verify_lr_schedule(
            model, optimizer, scheduler, epochs=cfg.epochs, steps_per_epoch=len(data.train_loader),
            make_optimizer=functools.partial(make_optimizer, cfg=cfg),
            train_one_epoch=functools.partial(train_one_epoch, diverged_loss=cfg.diverged_loss,
                                              label_smoothing=cfg.label_smoothing, mixup_alpha=cfg.mixup_alpha,
                                              amp=cfg.amp),
            batches=[(images[:8], labels[:8])] * 3)
        plot_lr_schedule(checks["lr_schedule"].details, run.out / "lr_schedule.png")
        checks.update(battery_checks(run, data, model, run_loss))
        checks["normalised_batch"] = verify_normalised_batch(data.train_loader, cfg.normalised_tolerance)
        checks["normalisation_from_train"] = verify_normalisation_stats(
            {"train": data.train_loader.images, "val": data.val_loader.images, "test": data.test_loader.images},
            {"train": data.train_loader, "val": data.val_loader, "test": data.test_loader})
        checks["train_batches_augmented"] = verify_train_augmented(
            data.train_loader, expected=cfg.crop_scale_min < 1 or cfg.flip_probability > 0)
        shown = torch.linspace(0, len(data.train_loader.labels) - 1, 8).long()  # spread over the classes
        sample = data.train_loader.images[shown.to(run.device)]
        draws = [data.train_loader.transform(sample, data.train_loader.generator) for _ in range(3)]
        plot_augmented_batch(data.val_loader.transform(sample, None), draws,
                             data.train_loader.labels[shown.to(run.device)], data.classes, data.normalisation,
                             run.out / "augmented_batch.png")
    checks["eval_deterministic_unaugmented"] = verify_eval_unaugmented(data.val_loader)
    checks["class_balance"] = class_balance(
        {"train": data.train_loader.labels, "val": data.val_loader.labels, "test": data.test_loader.labels},
        data.info["train_folder_class_counts"], NUM_CLASSES)
    plot_class_balance(checks["class_balance"].details, data.classes, run.out / "class_balance.png")
    batch = checks["first_batch"].details
    print(f"First batch: images {batch['shape']} {batch['dtype']} in [{batch['min']:.3f}, {batch['max']:.3f}] "
          f"(mean {batch['mean']:.3f}), labels in [{batch['label_min']}, {batch['label_max']}] "
          f"({batch['distinct_labels']} classes); picture: first_batch.png")
    for check in checks.values():
        print(check.report())
    run.results["checks_time_s"] = time.perf_counter() - started
    run.first_batch = images  # measured again after training, for the before/after picture
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


def start_wandb(cfg, run: Run, model):
    """A W&B run with the config, and wandb.watch for gradient histograms; None without --wandb.
    WANDB_MODE=offline writes to outputs/wandb for a later `wandb sync`; WANDB_BASE_URL points at
    a self-hosted server (the seed's local W&B); both are W&B's own environment variables."""
    if not cfg.wandb:
        return None
    import wandb  # present: main() checked it before anything was written

    wandb_run = wandb.init(project=cfg.wandb_project, config=run.results["config"], dir=str(run.out),
                           name=f"{VERSION_DIR.name}-seed{cfg.seed}", tags=[VERSION])
    wandb_run.summary.update({"num_params": run.results["num_parameters"], "architecture": cfg.arch,
                              "version": VERSION_DIR.name})  # seed 002's additions to v6a's metrics
    wandb.watch(model, log="gradients", log_freq=100)
    return wandb_run


# Flags that do not change the run (channels_last: the same numbers in another memory layout).
RESUME_MAY_DIFFER = {"resume", "out", "device", "wandb", "wandb_project", "channels_last"}


def save_resume_state(out: Path, data: Data, model, optimizer, scheduler, epoch: int, best_epoch: int,
                      best_val_acc: float, config: dict) -> None:
    """After every epoch: the weights, the optimizer and schedule, and every random number
    generator, so that --resume goes on exactly where this epoch ended (a run longer than one
    sitting, or one cut short by a time limit, gives the same numbers as one in one go)."""
    numpy_state = np.random.get_state()
    state = {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
             "scheduler_state": scheduler.state_dict(), "epoch": epoch, "best_epoch": best_epoch,
             "best_val_accuracy": best_val_acc, "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "numpy_rng": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
             "python_rng": list(random.getstate()), "loader_rng": data.train_loader.generator.get_state(),
             "config": {k: v for k, v in config.items() if k not in RESUME_MAY_DIFFER}}
    tmp = out / f"{RESUME_FILE}.partial"
    torch.save(state, tmp)
    tmp.replace(out / RESUME_FILE)  # atomic: a run killed while saving keeps the previous epoch's state


def resume(run: Run, data: Data, model, optimizer, scheduler, history_path: Path) -> tuple[int, int, float]:
    """Load resume.pth into the model, optimizer, schedule and generators; cut the history to the
    epochs it holds. Returns (epoch done, best epoch, best validation accuracy)."""
    # On the CPU: the generator states must stay CPU tensors; load_state_dict moves the rest.
    state = torch.load(run.out / RESUME_FILE, map_location="cpu", weights_only=True)
    config = {k: v for k, v in run.results["config"].items() if k not in RESUME_MAY_DIFFER}
    changed = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
    if changed:  # another --epochs changes the schedule's length, another --seed the run: not a resume
        print("error: --resume needs the flags of the interrupted run; these differ (saved -> now): "
              + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
              + ". Start again without --resume, or use another --out.", file=sys.stderr)
        run.save(status="resume refused", exit_code=2)
        raise SystemExit(2)
    model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    scheduler.load_state_dict(state["scheduler_state"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    name, keys, *rest = state["numpy_rng"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    data.train_loader.generator.set_state(state["loader_rng"])
    kept = [line for line in history_path.read_text().splitlines() if json.loads(line)["epoch"] <= state["epoch"]]
    history_path.write_text("".join(line + "\n" for line in kept))
    run.results["resumed_after_epoch"] = state["epoch"]
    print(f"Resuming after epoch {state['epoch']} (best so far: epoch {state['best_epoch']}, "
          f"{state['best_val_accuracy']:.2%})")
    return state["epoch"], state["best_epoch"], state["best_val_accuracy"]


def epoch_zero(run: Run, data: Data, model) -> dict:
    """The history's epoch 0: the training loss and accuracy at init (check_initialization's, with
    the run's own loss) and the validation loss and accuracy at init (plain cross-entropy, as
    `evaluate` measures it later, but in train mode: at init BatchNorm's running statistics are
    still 0 and 1, so eval mode would measure a network that training never sees)."""
    with rng_untouched(run.device, data.train_loader.generator):
        val = check_initialization(model, data.val_loader, F.cross_entropy, run.device, NUM_CLASSES)
    return {"epoch": 0, "train_loss": run.init["init_loss"], "train_accuracy": run.init["init_accuracy"],
            "val_loss": val["init_loss"], "val_accuracy": val["init_accuracy"]}


def train(run: Run, data: Data, model, optimizer, scheduler, wandb_run=None) -> None:
    """Train until --epochs or until validation accuracy has not improved for --patience epochs;
    the best epoch's weights (by validation accuracy) go to best_model.pth and are the ones the
    test set measures, once, at the end. Ctrl-C or a diverged loss keep the history, the last
    good checkpoint and the best model, and exit 130 or 1. Every epoch's record holds the mean
    gradient norm per layer group; the records go to W&B too, under the seed's metric names."""
    cfg, out = run.cfg, run.out
    print("\n--- Training ---")
    history_path = out / "history.jsonl"
    epoch, best_epoch, best_val_acc, stopped_early = 0, 0, -1.0, False
    if cfg.resume and (out / RESUME_FILE).is_file():
        epoch, best_epoch, best_val_acc = resume(run, data, model, optimizer, scheduler, history_path)
    else:
        start = epoch_zero(run, data, model)
        history_path.write_text(json.dumps(start) + "\n")
        if wandb_run is not None:
            wandb_run.log({"init/loss": start["train_loss"], "init/accuracy": start["train_accuracy"]}, step=0)
    first_epoch = epoch + 1
    gradient_norms = GradientNorms(model)
    train_started = time.perf_counter()
    try:
        for epoch in range(first_epoch, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            train_loss, train_acc = train_one_epoch(model, data.train_loader, optimizer, scheduler, epoch, cfg.epochs,
                                                    cfg.diverged_loss, cfg.label_smoothing, cfg.mixup_alpha,
                                                    gradient_norms, cfg.amp)
            train_seconds = time.perf_counter() - epoch_started
            val_loss, val_acc = evaluate(model, data.val_loader, run.device)
            if not val_loss <= cfg.diverged_loss:  # NaN too: the weights blew up within the epoch; do not keep them
                raise TrainingDiverged(f"after epoch {epoch}: validation loss {val_loss:.3g} is not finite or above "
                                       f"--diverged-loss {cfg.diverged_loss:g}. Lower --lr.")
            # Images per second of the training pass alone: the number to compare across
            # machines and versions (a GPU that waits for data shows up here first).
            record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                      "val_loss": val_loss, "val_accuracy": val_acc,
                      "learning_rate": optimizer.param_groups[0]["lr"],  # after the epoch's last step
                      "seconds": time.perf_counter() - epoch_started, "train_seconds": train_seconds,
                      "images_per_second": len(data.train_loader.labels) / train_seconds,
                      **gradient_norms.epoch_summary()}
            with open(history_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if wandb_run is not None:
                wandb_run.log({"train/loss": train_loss, "train/accuracy": train_acc, "val/loss": val_loss,
                               "val/accuracy": val_acc, "learning_rate": record["learning_rate"],
                               "grad_norm": record["grad_norm"], "train_val_gap": train_acc - val_acc,
                               **{f"grad_norm/{g}": n for g, n in record["grad_norm_per_group"].items()}},
                              step=epoch)
            save_checkpoint({"model_state": model.state_dict(), "epoch": epoch, "val_accuracy": val_acc,
                             "normalisation": {"mean": data.normalisation["mean"], "std": data.normalisation["std"]}},
                            out / MODEL_FILE)
            if val_acc > best_val_acc:  # strictly better: ties keep the earlier, shorter-trained epoch
                best_epoch, best_val_acc = epoch, val_acc
                save_checkpoint({"model_state": model.state_dict(), "epoch": epoch, "val_accuracy": val_acc,
                                 "normalisation": {"mean": data.normalisation["mean"],
                                                   "std": data.normalisation["std"]}}, out / BEST_MODEL_FILE)
            save_resume_state(out, data, model, optimizer, scheduler, epoch, best_epoch, best_val_acc,
                              run.results["config"])
            tqdm.write(f"epoch {epoch:>3}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.2%}  "
                       f"val loss {val_loss:.4f} acc {val_acc:.2%}{' *' if best_epoch == epoch else '  '} "
                       f"{record['seconds']:.1f}s ({record['images_per_second']:,.0f} img/s)")
            if epoch - best_epoch >= cfg.patience:
                stopped_early = epoch < cfg.epochs  # patience running out in the last epoch stops nothing
                tqdm.write(f"No new best validation accuracy for {cfg.patience} epochs: stopping after epoch "
                           f"{epoch} (best: epoch {best_epoch}, {best_val_acc:.2%})")
                break
    except (KeyboardInterrupt, TrainingDiverged) as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        run.save(status="interrupted" if interrupted else "diverged", error=None if interrupted else str(err),
                 epochs_done=epoch - 1, exit_code=130 if interrupted else 1)
        if epoch > 1:
            plot_training_curves(history_path, out / "training_curves.png")
        if wandb_run is not None:
            wandb_run.finish(exit_code=run.results["exit_code"])
        print(f"\n{'Interrupted' if interrupted else 'Training diverged ' + str(err)}\n"
              f"Kept: {history_path} (epochs done: {epoch - 1}), {out / 'results.json'}"
              + (f", {out / MODEL_FILE} (epoch {epoch - 1})" if epoch > 1 else ""), file=sys.stderr)
        raise SystemExit(run.results["exit_code"]) from None
    train_time = time.perf_counter() - train_started
    final_state = {k: v.clone() for k, v in model.state_dict().items()}  # analyse() looks at the last epoch
    model.load_state_dict(torch.load(out / BEST_MODEL_FILE, weights_only=True)["model_state"])
    test_loss, test_acc = evaluate(model, data.test_loader, run.device)  # once, after every decision is made
    model.load_state_dict(final_state)
    history = read_history(history_path)[1:]  # without epoch 0 (init)
    best = history[best_epoch - 1]
    # The seed's convergence mark: the first epoch at --target-val-accuracy (None: never reached).
    reached = [h["epoch"] for h in history if h["val_accuracy"] >= cfg.target_val_accuracy]
    run.results.update(init=run.init, epoch_to_target=reached[0] if reached else None,
                       target_val_accuracy=cfg.target_val_accuracy)
    run.results.update(train_time_s=train_time, epochs_done=epoch, stopped_early=stopped_early,
                       best_epoch=best_epoch, best_val_accuracy=best_val_acc,
                       train_loss=best["train_loss"], train_accuracy=best["train_accuracy"],
                       val_loss=best["val_loss"], val_accuracy=best_val_acc,
                       # seed 002's overfitting measure; train accuracy counts MixUp batches against the
                       # image's own label, so a negative gap is normal while MixUp is on
                       train_val_gap=best["train_accuracy"] - best_val_acc,
                       test_loss=test_loss, test_accuracy=test_acc,
                       # 3,925 test images: about 0.6 points of standard error at 83%; differences
                       # smaller than that between two single runs are noise, not a result.
                       test_accuracy_se=math.sqrt(test_acc * (1 - test_acc) / len(data.test_loader.labels)),
                       seconds_per_epoch=sum(h["seconds"] for h in history) / len(history),
                       images_per_second=sum(h["images_per_second"] for h in history) / len(history))
    plot_training_curves(history_path, out / "training_curves.png")
    plot_gradient_norms(history_path, out / "gradient_norms.png")


def analyse(run: Run, model, checks: dict) -> None:
    """After training: the activations on the same training batch as before training, drawn
    next to those at init. Dead units that appear only now point at the learning rate."""
    with rng_untouched(run.device):
        checks["activations_after_training"] = activation_statistics(
            model, run.first_batch, "activations_after_training", run.cfg.max_dead_fraction)
    print(checks["activations_after_training"].report())
    plot_activation_statistics({"at init": checks["activations_at_init"].details["layers"],
                                "after training": checks["activations_after_training"].details["layers"]},
                               run.out / "activation_statistics.png")


def finish(run: Run, checks: dict) -> None:
    record_checks(run, checks)
    run.results.update(status="completed", exit_code=0)
    run.results["outputs"] = sorted({p.name for p in run.out.iterdir() if p.is_file()} | {"results.json"})
    run.save()


def print_summary(run: Run, checks: dict) -> None:
    results = run.results
    print_check_summary(checks)
    print("\n" + "=" * 78)
    print(f"{results['epochs_done']} epochs{' (stopped early)' if results['stopped_early'] else ''}; best epoch "
          f"{results['best_epoch']}: train accuracy {results['train_accuracy']:.2%} "
          f"({'on MixUp batches' if run.cfg.mixup_alpha else 'on augmented batches'}), validation "
          f"{results['val_accuracy']:.2%}, test accuracy {results['test_accuracy']:.2%} "
          f"(test loss {results['test_loss']:.4f}, {results['test_accuracy_se']:.2%} standard error)")
    print(f"{results['seconds_per_epoch']:.1f} s per epoch, {results['images_per_second']:,.0f} training images "
          f"per second, wall time {results['wall_time_s']:.0f}s")
    print(f"Outputs in {run.out}: {', '.join(results['outputs'])}")


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
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            print("error: --wandb needs the wandb package: pip install wandb (or, from the repository root, "
                  "pip install -r requirements-wandb.txt)", file=sys.stderr)
            raise SystemExit(2) from None
    run = start_run(cfg, argv)
    with stop_cleanly(run):  # Ctrl-C anywhere: exit 130, results.json says interrupted
        try:
            data = load_data(cfg, run.device)
        except DataNotFoundError as err:  # missing data, or a corrupt image (the message names the file)
            run.save(status="no data", error=str(err), exit_code=2)
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            run.save(status="interrupted", exit_code=130)
            print("\nInterrupted while loading the data; images decoded so far are not cached.", file=sys.stderr)
            raise SystemExit(130) from None
        report_on_data(run, data)

        model = build_model(cfg).to(run.device)
        if cfg.channels_last and run.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)  # same weights, NHWC layout for the tensor cores
        optimizer, scheduler = make_optimizer(model, cfg, total_steps=cfg.epochs * len(data.train_loader))
        run.results["num_parameters"] = count_parameters(model)
        run.results["architecture"] = cfg.arch
        print(f"\n{cfg.arch}: {run.results['num_parameters']:,} trainable parameters (seed 002: "
              f"{ARCHITECTURES[cfg.arch][1]:,}); stem {'with' if cfg.maxpool else 'without'} max-pool"
              + (f"; bf16 autocast: {cfg.amp}, channels_last: {cfg.channels_last}" if run.device.type == "cuda" else ""))
        checks = checks_before_training(run, data, model, optimizer, scheduler)
        if cfg.preflight:
            plot_activation_statistics({"at init": checks["activations_at_init"].details["layers"]},
                                       run.out / "activation_statistics.png")
            return finish_preflight(run, checks)

        wandb_run = start_wandb(cfg, run, model)
        train(run, data, model, optimizer, scheduler, wandb_run)
        analyse(run, model, checks)
        finish(run, checks)
        print_summary(run, checks)
        if wandb_run is not None:
            wandb_run.log({"test/accuracy": run.results["test_accuracy"], "test/loss": run.results["test_loss"]})
            wandb_run.summary.update({"test/accuracy": run.results["test_accuracy"],
                                      "epoch_to_target": run.results["epoch_to_target"]})
            wandb_run.finish()
        return run.results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
