"""Imagenette v2: normalisation statistics from normalize.py, RandomResizedCrop and flip.

v1 learns slowly and would start to memorise its 3,217 training images if it ran
longer. v2 changes what the net sees, not the net: every batch is normalised per
channel with the mean and std of the training images (normalize.py computes them
once and caches them), so the inputs are centred with unit spread; and every
training batch is cut by a random resized crop and flipped at random (batched, on
the device), so the net never sees the same picture twice and can train longer. Validation and
test images are only normalised. New checks: a normalised batch has mean ~0 and
std ~1 per channel, the statistics are the training split's, training batches are
augmented, and evaluation is deterministic and unaugmented; augmented_batch.png
shows what augmentation does.

    python train.py               # full run on the real Imagenette (160 px)
    python train.py --quick       # every code path in seconds, on a small subset
    python train.py --preflight   # only the checks; exit code 1 if one fails
    python train.py --help        # every constant below can be overridden
"""
from __future__ import annotations

import argparse
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

from shared.data import DataNotFoundError  # noqa: E402
from shared.runs import (  # noqa: E402
    RunFolderError, existing_dir, make_run_dir, run_mode,
    save_checkpoint, stop_cleanly, write_json,
)
from shared.imagenette import load_imagenette  # noqa: E402

from debug_tools import (  # noqa: E402
    class_balance,
    inspect_batch,
    print_check_summary,
    rng_untouched,
    verify_eval_unaugmented,
    verify_normalisation_stats,
    verify_normalised_batch,
    verify_train_augmented,
)
from metrics import evaluate  # noqa: E402
from normalize import training_set_statistics  # noqa: E402
from visualization import (  # noqa: E402
    plot_augmented_batch,
    plot_batch,
    plot_class_balance,
    plot_training_curves,
    read_history,
)

# ---------------------------------------------------------------------------
# Configuration: every constant can be overridden on the command line.
# ---------------------------------------------------------------------------
SEED = 42  # one seed for Python, NumPy and PyTorch: the same run twice gives the same numbers
EPOCHS = 40  # v1 was still improving at 20; augmentation makes longer training safe
BATCH_SIZE = 64  # ~50 updates per epoch on 3,217 images; small enough for CPUs
LEARNING_RATE = 1e-3  # Adam's default; a safe first choice before any tuning
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
# A loss above this (10x the 2.30 of a model that guesses: the right class gets probability
# < e^-25) stops training as diverged, like NaN does: a far too high learning rate often
# explodes the loss to 1e29 and beyond without ever making it NaN.
DIVERGED_LOSS = 25.0

# --quick: a few images per class at 64 px and one epoch, so every code path runs in seconds on
# a CPU (a 160 px image costs a CPU about as much as six 64 px ones).
QUICK_PER_CLASS = {"train": 16, "val": 4, "test": 8}
QUICK_IMAGE_SIZE = 64
QUICK_EPOCHS = 1

NUM_CLASSES = 10
VERSION = f"imagenette/{VERSION_DIR.name}"
MODEL_FILE = "final_model.pth"


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
class BasicCNN(nn.Module):
    """Four conv layers and one linear layer, 390,986 parameters, PyTorch's default init.

    Input 3x160x160 -> 4 x [Conv 3x3 (padding 1), ReLU, MaxPool 2] with 32, 64, 128, 256
    channels -> 256x10x10 -> global average pool -> Linear 256 -> 10 (logits: no softmax,
    the loss applies it). The average pool keeps the linear layer small whatever the
    image size; a Flatten of 256x10x10 would need 256,000 weights per class.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers, channels = [], 3
        for width in (32, 64, 128, 256):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

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
    p.add_argument("--data-dir", type=existing_dir, default=DATA_DIR, help="folder with train/<wnid>/ and val/<wnid>/")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=DEVICE, help="auto: cuda, mps, cpu")
    p.add_argument("--seed", type=int, default=SEED, help="one seed for every random number generator")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="training images per step")
    p.add_argument("--lr", type=float, default=LEARNING_RATE, help="Adam's learning rate")
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
    args = p.parse_args(argv)
    if not args.diverged_loss > 0:
        p.error("--diverged-loss must be > 0 (inf switches the explosion stop off; NaN always stops)")
    if args.epochs < 1 or args.batch_size < 1 or not math.isfinite(args.lr) or args.lr <= 0:
        p.error("--epochs and --batch-size must be >= 1, --lr a number > 0")
    if not 0 < args.train_fraction <= 1 or not 0 < args.val_fraction < 1 or args.image_size < 32:
        p.error("--train-fraction must be in (0, 1], --val-fraction in (0, 1), --image-size >= 32")
    if not 0 < args.crop_scale_min <= 1 or not 0 <= args.flip_probability <= 1 or not args.normalised_tolerance > 0:
        p.error("--crop-scale-min must be in (0, 1], --flip-probability in [0, 1], --normalised-tolerance > 0")
    if args.quick:
        args.epochs = min(args.epochs, QUICK_EPOCHS)
        args.image_size = min(args.image_size, QUICK_IMAGE_SIZE)
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


def checks_before_training(run: Run, data: Data) -> dict:
    """Look at one training batch (augmented and normalised, as the model gets it) before
    training on it, and at the class mix of every split; make sure the statistics are the
    training split's, training batches are augmented and evaluation batches are not. Inside
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
    """Train for the configured epochs, measuring the validation split after each; the model
    after every epoch overwrites the checkpoint. The test set is measured once, at the end.
    Ctrl-C or a diverged loss keep the history and the last good checkpoint, and exit 130 or 1."""
    cfg, out = run.cfg, run.out
    print("\n--- Training ---")
    history_path = out / "history.jsonl"
    history_path.write_text("")
    epoch = 0
    train_started = time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            train_loss, train_acc = train_one_epoch(model, data.train_loader, optimizer, epoch, cfg.epochs,
                                                    cfg.diverged_loss)
            train_seconds = time.perf_counter() - epoch_started
            val_loss, val_acc = evaluate(model, data.val_loader, run.device)
            if not val_loss <= cfg.diverged_loss:  # NaN too: the weights blew up within the epoch; do not keep them
                raise TrainingDiverged(f"after epoch {epoch}: validation loss {val_loss:.3g} is not finite or above "
                                       f"--diverged-loss {cfg.diverged_loss:g}. Lower --lr.")
            # Images per second of the training pass alone: the number to compare across
            # machines and versions (a GPU that waits for data shows up here first).
            record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                      "val_loss": val_loss, "val_accuracy": val_acc,
                      "seconds": time.perf_counter() - epoch_started, "train_seconds": train_seconds,
                      "images_per_second": len(data.train_loader.labels) / train_seconds}
            with open(history_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint({"model_state": model.state_dict(), "epoch": epoch, "val_accuracy": val_acc,
                             "normalisation": {"mean": data.normalisation["mean"], "std": data.normalisation["std"]}},
                            out / MODEL_FILE)
            tqdm.write(f"epoch {epoch:>3}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.2%}  "
                       f"val loss {val_loss:.4f} acc {val_acc:.2%}  {record['seconds']:.1f}s "
                       f"({record['images_per_second']:,.0f} img/s)")
    except (KeyboardInterrupt, TrainingDiverged) as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        run.save(status="interrupted" if interrupted else "diverged", error=None if interrupted else str(err),
                 epochs_done=epoch - 1, exit_code=130 if interrupted else 1)
        if epoch > 1:
            plot_training_curves(history_path, out / "training_curves.png")
        print(f"\n{'Interrupted' if interrupted else 'Training diverged ' + str(err)}\n"
              f"Kept: {history_path} (epochs done: {epoch - 1}), {out / 'results.json'}"
              + (f", {out / MODEL_FILE} (epoch {epoch - 1})" if epoch > 1 else ""), file=sys.stderr)
        raise SystemExit(run.results["exit_code"]) from None
    train_time = time.perf_counter() - train_started
    test_loss, test_acc = evaluate(model, data.test_loader, run.device)  # once, after every decision is made
    history = read_history(history_path)
    run.results.update(train_time_s=train_time, epochs_done=epoch, train_loss=train_loss, train_accuracy=train_acc,
                       val_loss=val_loss, val_accuracy=val_acc, test_loss=test_loss, test_accuracy=test_acc,
                       # 3,925 test images: about 0.6 points of standard error at 83%; differences
                       # smaller than that between two single runs are noise, not a result.
                       test_accuracy_se=math.sqrt(test_acc * (1 - test_acc) / len(data.test_loader.labels)),
                       seconds_per_epoch=sum(h["seconds"] for h in history) / len(history),
                       images_per_second=sum(h["images_per_second"] for h in history) / len(history))
    plot_training_curves(history_path, out / "training_curves.png")


def finish(run: Run, checks: dict) -> None:
    record_checks(run, checks)
    run.results.update(status="completed", exit_code=0)
    run.results["outputs"] = sorted({p.name for p in run.out.iterdir() if p.is_file()} | {"results.json"})
    run.save()


def print_summary(run: Run, checks: dict) -> None:
    results = run.results
    print_check_summary(checks)
    print("\n" + "=" * 78)
    print(f"After {results['epochs_done']} epochs: train accuracy {results['train_accuracy']:.2%}, "
          f"validation {results['val_accuracy']:.2%}, test accuracy {results['test_accuracy']:.2%} "
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

        model = BasicCNN().to(run.device)
        optimizer = make_optimizer(model, cfg)
        run.results["num_parameters"] = count_parameters(model)
        print(f"\nBasicCNN: {run.results['num_parameters']:,} trainable parameters")
        checks = checks_before_training(run, data)
        if cfg.preflight:
            return finish_preflight(run, checks)

        train(run, data, model, optimizer)
        finish(run, checks)
        print_summary(run, checks)
        return run.results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
