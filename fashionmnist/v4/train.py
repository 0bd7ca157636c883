"""Fashion-MNIST v4: a deeper CNN with BatchNorm and Dropout.

Same data, normalisation, augmentation and training as v3; the model grows from
two convolutions to six, in three blocks. BatchNorm after every convolution keeps
each layer's inputs at a stable scale, so the deeper net trains as easily as the
small one; Dropout after every block and in the classifier fights the overfitting
that the extra capacity invites. Both layers behave differently in training and
in evaluation, so model.train() and model.eval() now matter. New checks: the
activation statistics of every layer on one batch (mean, std, dead ReLUs), before
and after training, and the train/eval mode switch.

    python train.py               # full run on the real Fashion-MNIST
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
REPO_ROOT = VERSION_DIR.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (data location, run folders)

from shared.data import DataNotFoundError, fashion_mnist_root  # noqa: E402
from shared.runs import (  # noqa: E402
    RunFolderError, existing_dir, make_run_dir, run_mode,
    save_checkpoint, stop_cleanly, write_json,
)

from debug_tools import (  # noqa: E402
    activation_statistics,
    inspect_batch,
    print_check_summary,
    rng_untouched,
    standard_error,
    verify_eval_deterministic,
    verify_normalisation_stats,
    verify_normalised_batch,
    verify_splits_disjoint,
    verify_train_augmented,
    verify_train_eval_modes,
)
from metrics import evaluate  # noqa: E402
from visualization import (  # noqa: E402
    plot_activation_statistics,
    plot_batch,
    plot_training_curves,
)

# ---------------------------------------------------------------------------
# Configuration: every constant can be overridden on the command line.
# ---------------------------------------------------------------------------
SEED = 42  # one seed for Python, NumPy and PyTorch: the same run twice gives the same numbers
EPOCHS = 30  # an upper bound: early stopping ends the run when validation accuracy stops improving
BATCH_SIZE = 128  # small enough for many updates per epoch, large enough to be fast
LEARNING_RATE = 1e-3  # Adam's default; a safe first choice before any tuning
VAL_SIZE = 5000  # held out of the 60,000 training images to pick the best epoch; the test set stays untouched
SPLIT_SEED = 0  # fixes which images are held out, the same for every --seed, so runs are judged on the same images
PATIENCE = 8  # stop after this many epochs without a new best validation accuracy (it is noisy); 0: never
CROP_PADDING = 2  # random crop from the image padded by this many black pixels: shifts of up to 2 pixels; 0: off
FLIP_PROBABILITY = 0.5  # horizontal flip: a mirrored shirt is still a shirt (upside down it is not); 0: off
NORMALISED_TOLERANCE = 0.15  # allowed |mean| and |std - 1| of a normalised batch; one batch varies by ~0.03
DROPOUT = 0.4  # in the classifier, before the last layer: the 1152 -> 256 layer holds half the parameters
CONV_DROPOUT = 0.1  # after every conv block: less, because convolutions share their weights and overfit less
MAX_DEAD_FRACTION = 0.5  # a layer with more dead ReLU units than this has lost most of its width
DEVICE = "auto"  # cuda, then mps, then cpu
DATA_DIR = None  # None: look in $DATA_DIR, data/, the Debian package, then download (shared/data.py)
OUT_DIR = VERSION_DIR / "outputs"  # every run: a new dated folder in here; outputs/latest: the newest
# A loss above this (10x the 2.30 of a model that guesses: the right class gets probability
# < e^-25) stops training as diverged, like NaN does: a far too high learning rate often
# explodes the loss to 1e29 and beyond without ever making it NaN.
DIVERGED_LOSS = 25.0

# --quick: a few hundred samples and one epoch, so every code path runs in seconds on a CPU.
QUICK_TRAIN_SIZE = 512
QUICK_VAL_SIZE = 256
QUICK_TEST_SIZE = 256
QUICK_EPOCHS = 1

NUM_CLASSES = 10
VERSION = f"fashionmnist/{VERSION_DIR.name}"
MODEL_FILE = "best_model.pth"


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
    """A DataLoader for data that already sits in memory: one index per batch, no per-sample work.

    Shuffling uses its own seeded generator, so the batch order is reproducible;
    a check that draws a batch puts it back where it found it (rng_untouched),
    so it does not change the order training sees.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, transform=None):
        self.images, self.labels, self.batch_size, self.shuffle = images, labels, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.transform = transform  # called on every batch with the loader's generator (see Transform)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.images.device)
        for start in range(0, n, self.batch_size):
            batch = order[start:start + self.batch_size]
            images = self.images[batch]
            if self.transform is not None:
                images = self.transform(images, self.generator)
            yield images, self.labels[batch]


def to_tensor(images_uint8: torch.Tensor) -> torch.Tensor:
    """What transforms.ToTensor() does to each image, done once for the whole set:
    uint8 (N, 28, 28) in [0, 255] -> float32 (N, 1, 28, 28) in [0, 1]."""
    return images_uint8.unsqueeze(1).float().div(255.0)


def normalisation_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std over every pixel of `images` (in float64, so the sum of 43 million pixels
    does not round): the two numbers Normalize(mean, std) needs. Pass the training split only."""
    pixels = images.cpu().double()  # on the CPU: MPS has no float64
    return pixels.mean().item(), pixels.std().item()


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
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()  # the indexing puts channels last


def random_flip(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """transforms.RandomHorizontalFlip(probability) for a whole batch: each image mirrored left-right or not."""
    flip = (torch.rand(len(images), generator=generator) < probability).to(images.device)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


class Transform:
    """What transforms.Compose([RandomCrop(28, padding), RandomHorizontalFlip(p), Normalize(mean, std)])
    does to each image, done for a whole batch on the device. augment=False (validation, test)
    only normalises, so every evaluation sees the same inputs."""

    def __init__(self, mean: float, std: float, augment: bool, crop_padding: int = CROP_PADDING,
                 flip_probability: float = FLIP_PROBABILITY):
        self.mean, self.std, self.augment = mean, std, augment
        self.crop_padding, self.flip_probability = crop_padding, flip_probability

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augment and self.crop_padding > 0:
            images = random_crop(images, self.crop_padding, generator)
        if self.augment and self.flip_probability > 0:
            images = random_flip(images, self.flip_probability, generator)
        return (images - self.mean) / self.std

    def output_range(self) -> tuple[float, float]:
        """Where pixels in [0, 1] end up after normalisation."""
        return (0.0 - self.mean) / self.std, (1.0 - self.mean) / self.std


def load_raw_data(data_dir):
    """The original training and test files as uint8 tensors, read by torchvision."""
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
    """Positions of the training and validation images in the training file (one fixed
    permutation, cut once: no image can land in both) and of the test images in the test
    file. --quick takes small subsets of each."""
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(cfg.split_seed))
    val_size = QUICK_VAL_SIZE if cfg.quick else cfg.val_size
    val_idx, train_idx = order[:val_size], order[val_size:]
    test_idx = torch.arange(num_test)
    if cfg.quick:
        train_idx, test_idx = train_idx[:QUICK_TRAIN_SIZE], test_idx[:QUICK_TEST_SIZE]
    return train_idx, val_idx, test_idx


@dataclass
class Data:
    train_loader: TensorLoader
    val_loader: TensorLoader
    test_loader: TensorLoader
    classes: list[str]
    train_idx: torch.Tensor  # positions in the training file, kept for the split check
    val_idx: torch.Tensor
    train_file: torch.Tensor  # the two files as read from disk (uint8), for the split check
    test_file: torch.Tensor
    mean: float  # the training split's pixel statistics, the only ones the loaders normalise with
    std: float


def load_data(cfg, device) -> Data:
    """The three splits as float tensors on the device, in loaders.

    Validation picks the best epoch and decides when to stop; the test set is
    evaluated once, at the end, so its accuracy stays an honest estimate for new images.
    The images stay in [0, 1]; each loader's Transform normalises (and, for training,
    augments) every batch with the training split's mean and std.
    """
    train_file, train_file_labels, test_file, test_file_labels, classes = load_raw_data(cfg.data_dir)
    train_idx, val_idx, test_idx = split_indices(len(train_file_labels), len(test_file_labels), cfg)
    mean, std = normalisation_stats(to_tensor(train_file[train_idx]))  # training split only: val and test stay unseen
    train_transform = Transform(mean, std, augment=True, crop_padding=cfg.crop_padding,
                                flip_probability=cfg.flip_probability)
    eval_transform = Transform(mean, std, augment=False)

    def loader(images, labels, indices, **kwargs):
        return TensorLoader(to_tensor(images[indices]).to(device), labels[indices].to(device), **kwargs)

    return Data(
        loader(train_file, train_file_labels, train_idx, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
               transform=train_transform),
        loader(train_file, train_file_labels, val_idx, batch_size=1024, transform=eval_transform),
        loader(test_file, test_file_labels, test_idx, batch_size=1024, transform=eval_transform),
        classes, train_idx, val_idx, train_file, test_file, mean, std,
    )


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------
def conv_block(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """Conv-BN-ReLU twice, then MaxPool (halves height and width) and Dropout. The convolutions
    have no bias: BatchNorm right after them subtracts the mean, and its own shift takes its place."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(dropout),
    )


class DeepCNN(nn.Module):
    """Three conv blocks (six conv layers) and two FC layers, 584,874 parameters, PyTorch's default init.

    Input 1x28x28 -> block 1->32 (32x14x14) -> block 32->64 (64x7x7) -> block 64->128 (128x3x3)
    -> Flatten 1152 -> FC 256 (BN, ReLU, Dropout) -> FC 10 (logits: no softmax, the loss applies it).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = DROPOUT, conv_dropout: float = CONV_DROPOUT):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(1, 32, conv_dropout), conv_block(32, 64, conv_dropout), conv_block(64, 128, conv_dropout),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 3 * 3, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------
# Training: the loss, the optimizer and one step, each defined once. train_one_epoch
# and every check that trains or computes a loss use exactly these.
# ---------------------------------------------------------------------------
class TrainingDiverged(FloatingPointError):
    """The loss became NaN, infinite or exploded; the message holds the diagnosis."""


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on raw logits: it applies log-softmax itself, so no softmax goes before it."""
    return F.cross_entropy(logits, labels)


def make_optimizer(model: nn.Module, cfg):
    """Adam with the configured learning rate, constant over the run (schedules come in v5)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def training_step(model, images, labels, optimizer, diverged_loss: float = DIVERGED_LOSS):
    """One update of the weights: forward, loss, backward, optimizer step.

    Returns the batch's loss (a float) and its logits. A loss that is not finite or
    above `diverged_loss` raises TrainingDiverged before it can reach the weights,
    so the checkpoint and history on disk stay the last good state.
    """
    logits = model(images)
    loss = loss_fn(logits, labels)
    loss_value = loss.item()
    if not math.isfinite(loss_value) or loss_value > diverged_loss:
        verdict = "is not finite" if not math.isfinite(loss_value) else f"is above --diverged-loss {diverged_loss:g}"
        raise TrainingDiverged(
            f"loss {loss_value:.3g} {verdict}; learning rate {optimizer.param_groups[0]['lr']:g}. "
            f"Usual causes: learning rate too high, inputs not scaled to [0, 1], log of 0.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss_value, logits.detach()


def train_one_epoch(model, loader, optimizer, epoch: int, epochs: int, diverged_loss: float = DIVERGED_LOSS):
    """One pass over the training data with `training_step`. Returns (mean loss, accuracy)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    progress = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True)
    for step, (images, labels) in enumerate(progress):
        try:
            loss_value, logits = training_step(model, images, labels, optimizer, diverged_loss)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"at step {step} of epoch {epoch}: {err}") from None
        total_loss += loss_value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        # refresh=False: the bar redraws at its own pace, not on every step
        progress.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
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
    p.add_argument("--out", type=Path, default=None,
                   help="exactly this folder; without it, a new dated folder under outputs/")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out reuse a folder that already holds a run's results")
    p.add_argument("--data-dir", type=existing_dir, default=DATA_DIR, help="folder with the Fashion-MNIST files")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=DEVICE, help="auto: cuda, mps, cpu")
    p.add_argument("--seed", type=int, default=SEED, help="one seed for every random number generator")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="most passes over the training split")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="training images per step")
    p.add_argument("--lr", type=float, default=LEARNING_RATE, help="Adam's learning rate")
    p.add_argument("--val-size", type=int, default=VAL_SIZE, help="training images held out for validation")
    p.add_argument("--split-seed", type=int, default=SPLIT_SEED, help="which images are held out for validation")
    p.add_argument("--patience", type=int, default=PATIENCE,
                   help="epochs without a new best validation accuracy before stopping; 0: never stop early")
    p.add_argument("--crop-padding", type=int, default=CROP_PADDING,
                   help="random crop: black border added before cutting 28x28 at a random offset; 0: off")
    p.add_argument("--flip-probability", type=float, default=FLIP_PROBABILITY,
                   help="chance of a horizontal flip per training image; 0: off")
    p.add_argument("--normalised-tolerance", type=float, default=NORMALISED_TOLERANCE,
                   help="allowed |mean| and |std - 1| of a normalised training batch")
    p.add_argument("--dropout", type=float, default=DROPOUT, help="dropout before the last layer, against overfitting")
    p.add_argument("--conv-dropout", type=float, default=CONV_DROPOUT,
                   help="dropout after every conv block (shared weights overfit less)")
    p.add_argument("--max-dead-fraction", type=float, default=MAX_DEAD_FRACTION,
                   help="largest fraction of dead ReLU units allowed in one layer")
    p.add_argument("--diverged-loss", type=float, default=DIVERGED_LOSS,
                   help="a batch loss above this stops training, like NaN does (inf: only NaN stops)")
    args = p.parse_args(argv)
    if not args.diverged_loss > 0:
        p.error("--diverged-loss must be > 0 (inf switches the explosion stop off; NaN always stops)")
    if args.epochs < 1 or args.batch_size < 1 or not math.isfinite(args.lr) or args.lr <= 0:
        p.error("--epochs and --batch-size must be >= 1, --lr a number > 0")
    if not 1 <= args.val_size < 60000 or args.patience < 0:
        p.error("--val-size must be between 1 and 59,999 (the training file has 60,000 images), --patience >= 0")
    if not 0 <= args.crop_padding <= 14 or not 0 <= args.flip_probability <= 1 or not args.normalised_tolerance > 0:
        p.error("--crop-padding must be between 0 and 14, --flip-probability between 0 and 1, "
                "--normalised-tolerance > 0")
    if not 0 <= args.dropout < 1 or not 0 <= args.conv_dropout < 1 or not 0 < args.max_dead_fraction <= 1:
        p.error("--dropout and --conv-dropout must be in [0, 1), --max-dead-fraction in (0, 1]")
    if args.quick:
        args.epochs = min(args.epochs, QUICK_EPOCHS)
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
    print(f"epochs {cfg.epochs}, batch size {cfg.batch_size}, lr {cfg.lr}" + (" | QUICK MODE" if cfg.quick else ""))
    print("=" * 78)
    return Run(cfg, out, device, results)


def checks_before_training(run: Run, data: Data, model) -> dict:
    """Look at one training batch (normalised and augmented, as the model gets it) before
    training on it; make sure the three splits share no image, the statistics are the training
    split's, and only training batches are augmented; measure every layer's activations and
    the train/eval switch with the run's own evaluate, train_one_epoch and make_optimizer.
    Inside rng_untouched: drawing batches advances the loader's shuffle and augmentation,
    Dropout draws masks, and no check may change what training sees."""
    print("\n--- Checks before training ---")
    started = time.perf_counter()
    checks = {}
    with rng_untouched(run.device, data.train_loader.generator, data.val_loader.generator):
        images, labels = next(iter(data.train_loader))
        checks["first_batch"] = inspect_batch(images, labels, NUM_CLASSES,
                                              value_range=data.train_loader.transform.output_range())
        plot_batch(images, labels, data.classes, run.out / "first_batch.png")
        checks["normalised_batch"] = verify_normalised_batch(images, run.cfg.normalised_tolerance)
        checks["normalisation_from_train"] = verify_normalisation_stats(
            {"train": data.train_loader.images, "val": data.val_loader.images, "test": data.test_loader.images},
            {"train": data.train_loader, "val": data.val_loader, "test": data.test_loader})
        checks["train_batches_augmented"] = verify_train_augmented(
            data.train_loader, expected=run.cfg.crop_padding > 0 or run.cfg.flip_probability > 0)
        checks["eval_batches_deterministic"] = verify_eval_deterministic(data.val_loader)
        checks["activations_at_init"] = activation_statistics(model, images, "activations_at_init",
                                                              run.cfg.max_dead_fraction)
        checks["train_eval_modes"] = verify_train_eval_modes(
            model, images[:64], labels[:64], evaluate, run.device,
            train_one_epoch=functools.partial(train_one_epoch, epoch=0, epochs=0, diverged_loss=run.cfg.diverged_loss),
            make_optimizer=functools.partial(make_optimizer, cfg=run.cfg))
    checks["splits_disjoint"] = verify_splits_disjoint(
        data.train_idx, data.val_idx,
        {"train": data.train_loader.images, "val": data.val_loader.images, "test": data.test_loader.images},
        data.train_file, data.test_file)
    print(f"Split: {len(data.train_loader.labels)} train, {len(data.val_loader.labels)} validation, "
          f"{len(data.test_loader.labels)} test")
    batch = checks["first_batch"].details
    print(f"First batch: images {batch['shape']} {batch['dtype']} in [{batch['min']:.3f}, {batch['max']:.3f}] "
          f"(mean {batch['mean']:.3f}), labels in [{batch['label_min']}, {batch['label_max']}] "
          f"({batch['distinct_labels']} classes); picture: first_batch.png")
    for check in checks.values():
        print(check.report())
    run.results["checks_time_s"] = time.perf_counter() - started
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


def train(run: Run, data: Data, model, optimizer) -> None:
    """Train until --epochs or until validation accuracy has not improved for --patience epochs;
    the best epoch by validation accuracy is saved. The test set is not looked at. Ctrl-C or a
    diverged loss keep the history and the best checkpoint, and exit 130 or 1."""
    cfg, out = run.cfg, run.out
    print("\n--- Training ---")
    history_path = out / "history.jsonl"
    history_path.write_text("")
    best_val_acc, best_epoch, epoch, stopped_early = -1.0, 0, 0, False
    train_started = time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            train_loss, train_acc = train_one_epoch(model, data.train_loader, optimizer, epoch, cfg.epochs,
                                                    cfg.diverged_loss)
            val_loss, val_acc = evaluate(model, data.val_loader, run.device)
            if not val_loss <= cfg.diverged_loss:  # NaN too: the weights blew up within the epoch; not a "best"
                raise TrainingDiverged(f"after epoch {epoch}: validation loss {val_loss:.3g} is not finite or above "
                                       f"--diverged-loss {cfg.diverged_loss:g}. Lower --lr.")
            record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                      "val_loss": val_loss, "val_accuracy": val_acc,
                      "seconds": time.perf_counter() - epoch_started}
            with open(history_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            improved = val_acc > best_val_acc
            if improved:
                best_val_acc, best_epoch = val_acc, epoch
                save_checkpoint({"model_state": model.state_dict(), "epoch": epoch, "val_accuracy": val_acc,
                                 "normalisation": {"mean": data.mean, "std": data.std}}, out / MODEL_FILE)
            tqdm.write(f"epoch {epoch:>3}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.2%}  "
                       f"val loss {val_loss:.4f} acc {val_acc:.2%}  {record['seconds']:.1f}s"
                       + ("  *best*" if improved else ""))
            if cfg.patience and epoch - best_epoch >= cfg.patience:
                stopped_early = epoch < cfg.epochs
                tqdm.write(f"Early stopping: no new best validation accuracy for {cfg.patience} epochs "
                           f"(best: epoch {best_epoch}, {best_val_acc:.2%})")
                break
    except (KeyboardInterrupt, TrainingDiverged) as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        run.save(status="interrupted" if interrupted else "diverged", error=None if interrupted else str(err),
                 epochs_done=epoch - 1, best_epoch=best_epoch, best_val_accuracy=best_val_acc,
                 exit_code=130 if interrupted else 1)
        if epoch > 1:
            plot_training_curves(history_path, out / "training_curves.png")
        print(f"\n{'Interrupted' if interrupted else 'Training diverged ' + str(err)}\n"
              f"Kept: {history_path} (epochs done: {epoch - 1}), {out / 'results.json'}"
              + (f", {out / MODEL_FILE} (best epoch {best_epoch})" if best_epoch else ""), file=sys.stderr)
        raise SystemExit(run.results["exit_code"]) from None
    run.results.update(train_time_s=time.perf_counter() - train_started, epochs_done=epoch,
                       stopped_early=stopped_early, best_epoch=best_epoch, best_val_accuracy=best_val_acc)
    plot_training_curves(history_path, out / "training_curves.png")


def finish(run: Run, data: Data, model, checks: dict) -> None:
    """The best model, evaluated once on the test set, with the standard error of that number;
    its activations on the same training batch as before training, drawn next to those at init."""
    checkpoint = torch.load(run.out / MODEL_FILE, map_location=run.device, weights_only=True)
    model.load_state_dict(checkpoint["model_state"])
    test_loss, test_acc = evaluate(model, data.test_loader, run.device)
    started = time.perf_counter()
    with rng_untouched(run.device, data.train_loader.generator):
        data.train_loader.generator.manual_seed(run.cfg.seed)  # the first batch of the run, as at init
        images, _ = next(iter(data.train_loader))
        checks["activations_after_training"] = activation_statistics(model, images, "activations_after_training",
                                                                     run.cfg.max_dead_fraction)
    print(checks["activations_after_training"].report())
    plot_activation_statistics({"at init": checks["activations_at_init"].details["layers"],
                                "after training": checks["activations_after_training"].details["layers"]},
                               run.out / "activation_statistics.png")
    run.results["checks_time_s"] += time.perf_counter() - started
    record_checks(run, checks)
    run.results.update(status="completed", exit_code=0, test_loss=test_loss, test_accuracy=test_acc,
                       test_accuracy_std_error=standard_error(test_acc, len(data.test_loader.labels)),
                       test_size=len(data.test_loader.labels))
    run.results["outputs"] = sorted({p.name for p in run.out.iterdir() if p.is_file()} | {"results.json"})
    run.save()


def print_summary(run: Run, checks: dict) -> None:
    results = run.results
    print_check_summary(checks)
    print("\n" + "=" * 78)
    print(f"Best epoch {results['best_epoch']} of {results['epochs_done']}: validation accuracy "
          f"{results['best_val_accuracy']:.2%}" + ("  (stopped early)" if results["stopped_early"] else ""))
    print(f"Test accuracy {results['test_accuracy']:.2%} +- {results['test_accuracy_std_error']:.2%} (one standard "
          f"error over {results['test_size']:,} test images), test loss {results['test_loss']:.4f}  "
          f"(wall time {results['wall_time_s']:.0f}s)")
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
    run = start_run(cfg, argv)
    with stop_cleanly(run):  # Ctrl-C anywhere: exit 130, results.json says interrupted
        try:
            data = load_data(cfg, run.device)
        except DataNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

        model = DeepCNN(dropout=cfg.dropout, conv_dropout=cfg.conv_dropout).to(run.device)
        optimizer = make_optimizer(model, cfg)
        run.results["num_parameters"] = count_parameters(model)
        print(f"\nDeepCNN: {run.results['num_parameters']:,} trainable parameters")
        checks = checks_before_training(run, data, model)
        if cfg.preflight:
            plot_activation_statistics({"at init": checks["activations_at_init"].details["layers"]},
                                       run.out / "activation_statistics.png")
            return finish_preflight(run, checks)

        train(run, data, model, optimizer)
        finish(run, data, model, checks)
        print_summary(run, checks)
        return run.results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
