"""Fashion-MNIST v1: the smallest complete training loop.

The whole data set goes into tensors, a small CNN (two convolutions) learns with
cross-entropy and Adam, and after every epoch the loss and accuracy on the
training and the test set are recorded and drawn. Before training, look at one
batch as the model gets it; a loss that turns NaN or explodes stops the run with
a diagnosis instead of training on garbage.

    python train.py               # full run on the real Fashion-MNIST
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

from shared.data import DataNotFoundError, fashion_mnist_root  # noqa: E402
from shared.runs import (  # noqa: E402
    RunFolderError, existing_dir, make_run_dir, run_mode,
    save_checkpoint, stop_cleanly, write_json,
)

from debug_tools import (  # noqa: E402
    inspect_batch,
    print_check_summary,
    rng_untouched,
)
from metrics import evaluate  # noqa: E402
from visualization import (  # noqa: E402
    plot_batch,
    plot_training_curves,
)

# ---------------------------------------------------------------------------
# Configuration: every constant can be overridden on the command line.
# ---------------------------------------------------------------------------
SEED = 42  # one seed for Python, NumPy and PyTorch: the same run twice gives the same numbers
EPOCHS = 15  # the test loss is lowest around epochs 9-12; the last epochs already overfit (FAZIT.md)
BATCH_SIZE = 128  # small enough for many updates per epoch, large enough to be fast
LEARNING_RATE = 1e-3  # Adam's default; a safe first choice before any tuning
DEVICE = "auto"  # cuda, then mps, then cpu
DATA_DIR = None  # None: look in $DATA_DIR, data/, the Debian package, then download (shared/data.py)
OUT_DIR = VERSION_DIR / "outputs"  # every run: a new dated folder in here; outputs/latest: the newest
# A loss above this (10x the 2.30 of a model that guesses: the right class gets probability
# < e^-25) stops training as diverged, like NaN does: a far too high learning rate often
# explodes the loss to 1e29 and beyond without ever making it NaN.
DIVERGED_LOSS = 25.0

# --quick: a few hundred samples and one epoch, so every code path runs in seconds on a CPU.
QUICK_TRAIN_SIZE = 512
QUICK_TEST_SIZE = 256
QUICK_EPOCHS = 1

NUM_CLASSES = 10
VERSION = f"fashionmnist/{VERSION_DIR.name}"
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
    """A DataLoader for data that already sits in memory: one index per batch, no per-sample work.

    Shuffling uses its own seeded generator, so the batch order is reproducible;
    a check that draws a batch puts it back where it found it (rng_untouched),
    so it does not change the order training sees.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0):
        self.images, self.labels, self.batch_size, self.shuffle = images, labels, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.images.device)
        for start in range(0, n, self.batch_size):
            batch = order[start:start + self.batch_size]
            yield self.images[batch], self.labels[batch]


def to_tensor(images_uint8: torch.Tensor) -> torch.Tensor:
    """What transforms.ToTensor() does to each image, done once for the whole set:
    uint8 (N, 28, 28) in [0, 255] -> float32 (N, 1, 28, 28) in [0, 1]."""
    return images_uint8.unsqueeze(1).float().div(255.0)


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


@dataclass
class Data:
    train_loader: TensorLoader
    test_loader: TensorLoader
    classes: list[str]


def load_data(cfg, device) -> Data:
    """The training and test images as float tensors on the device, in loaders.

    v1 measures the test set after every epoch, and that is not honest: whatever we
    decide by looking at it (when to stop, which run was best) tunes the model to the
    test set. v2 holds out a validation split for that. --quick takes the first few
    hundred images of each file.
    """
    train_images, train_labels, test_images, test_labels, classes = load_raw_data(cfg.data_dir)
    if cfg.quick:
        train_images, train_labels = train_images[:QUICK_TRAIN_SIZE], train_labels[:QUICK_TRAIN_SIZE]
        test_images, test_labels = test_images[:QUICK_TEST_SIZE], test_labels[:QUICK_TEST_SIZE]
    return Data(
        TensorLoader(to_tensor(train_images).to(device), train_labels.to(device), cfg.batch_size, shuffle=True,
                     seed=cfg.seed),
        TensorLoader(to_tensor(test_images).to(device), test_labels.to(device), 1024),
        classes,
    )


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Two conv layers and two FC layers, 421,642 parameters, PyTorch's default init.

    Input 1x28x28 -> Conv 1->32 (3x3, ReLU, MaxPool) -> Conv 32->64 (3x3, ReLU, MaxPool)
    -> Flatten 64x7x7=3136 -> FC 128 (ReLU) -> FC 10 (logits: no softmax, the loss applies it).
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32x14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64x7x7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes),
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
    p.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="training images per step")
    p.add_argument("--lr", type=float, default=LEARNING_RATE, help="Adam's learning rate")
    p.add_argument("--diverged-loss", type=float, default=DIVERGED_LOSS,
                   help="a batch loss above this stops training, like NaN does (inf: only NaN stops)")
    args = p.parse_args(argv)
    if not args.diverged_loss > 0:
        p.error("--diverged-loss must be > 0 (inf switches the explosion stop off; NaN always stops)")
    if args.epochs < 1 or args.batch_size < 1 or not math.isfinite(args.lr) or args.lr <= 0:
        p.error("--epochs and --batch-size must be >= 1, --lr a number > 0")
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


def checks_before_training(run: Run, data: Data) -> dict:
    """Look at one training batch before training on it. Inside rng_untouched: drawing the
    batch advances the loader's shuffle, and the check must not change what training sees."""
    print("\n--- Checks before training ---")
    started = time.perf_counter()
    checks = {}
    with rng_untouched(run.device, data.train_loader.generator):
        images, labels = next(iter(data.train_loader))
        checks["first_batch"] = inspect_batch(images, labels, NUM_CLASSES)
        plot_batch(images, labels, data.classes, run.out / "first_batch.png")
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
    """Train for the configured epochs, measuring the test set after each; the model after
    every epoch overwrites the checkpoint. Ctrl-C or a diverged loss keep the history and
    the last good checkpoint, and exit 130 or 1."""
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
            test_loss, test_acc = evaluate(model, data.test_loader, run.device)
            if not test_loss <= cfg.diverged_loss:  # NaN too: the weights blew up within the epoch; do not keep them
                raise TrainingDiverged(f"after epoch {epoch}: test loss {test_loss:.3g} is not finite or above "
                                       f"--diverged-loss {cfg.diverged_loss:g}. Lower --lr.")
            record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                      "test_loss": test_loss, "test_accuracy": test_acc,
                      "seconds": time.perf_counter() - epoch_started}
            with open(history_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint({"model_state": model.state_dict(), "epoch": epoch, "test_accuracy": test_acc},
                            out / MODEL_FILE)
            tqdm.write(f"epoch {epoch:>3}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.2%}  "
                       f"test loss {test_loss:.4f} acc {test_acc:.2%}  {record['seconds']:.1f}s")
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
    run.results.update(train_time_s=time.perf_counter() - train_started, epochs_done=epoch,
                       train_loss=train_loss, train_accuracy=train_acc, test_loss=test_loss, test_accuracy=test_acc)
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
          f"test accuracy {results['test_accuracy']:.2%}, test loss {results['test_loss']:.4f}  "
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

        model = SmallCNN().to(run.device)
        optimizer = make_optimizer(model, cfg)
        run.results["num_parameters"] = count_parameters(model)
        print(f"\nSmallCNN: {run.results['num_parameters']:,} trainable parameters")
        checks = checks_before_training(run, data)
        if cfg.preflight:
            return finish_preflight(run, checks)

        train(run, data, model, optimizer)
        finish(run, checks)
        print_summary(run, checks)
        return run.results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
