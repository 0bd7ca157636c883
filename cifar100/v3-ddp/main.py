"""CIFAR-100 with ResNet18 on one or several GPUs (DistributedDataParallel).

    python main.py --dataset cifar100 --device cuda --batch_size 512 --num_epochs 120
    torchrun --nproc_per_node=2 main.py --dataset cifar100 --device cuda --batch_size 512 --num_epochs 120

Under torchrun, every process trains on its own shard of each epoch with
--batch_size / N images per step; DDP averages the gradients, so one step
sees the same global batch as a single process. Rank 0 alone prints and
writes the files below. With N=1 (or without torchrun) it behaves as v2.

Each run writes into a new folder of its own, outputs/<date>_<time>-<mode>/ beside
this file (outputs/latest names the newest), or exactly into --out DIR:
history.jsonl (one line per epoch), results.json, curves.png and best_model.pth, and the
diagnostics of seed 004 into $DIAGNOSTICS_DIR, else <out>/diagnostics/:
train_diagnostics.jsonl and val_diagnostics.jsonl, one JSON object per epoch.
Analyse them with `python -m scripts.analyze_diagnostics` (../v2-diagnostics/DIAGNOSTICS.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from scripts.data import DataNotFoundError, load_cifar100, subset
from scripts.plots import plot_history
from scripts.train_utils import SCHEDULERS, ResNet18, build_datasets, define_loss_and_optimizer, evaluate, train_one_epoch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # shared/runs.py: the run folder, atomic writes, Ctrl-C
from shared.runs import (RunFolderError, existing_dir, make_run_dir, run_mode, save_checkpoint, stop_cleanly,  # noqa: E402
                         write_json, write_text)

# ---- configuration: every constant has a command-line flag of the same name ----
VERSION = Path(__file__).resolve().parent.name
DATASET = "cifar100"  # the only choice; the flag exists because the seed's command passes it
DEVICE = "auto"  # auto = cuda if available, then mps, then cpu
BATCH_SIZE = 512  # global: split evenly over the processes
NUM_EPOCHS = 120
LR = 0.1  # SGD with Nesterov momentum; 0.1 is the classic CIFAR ResNet value
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
LABEL_SMOOTHING = 0.1
RANDAUGMENT_MAGNITUDE = 11  # out of 30; 9-11 is typical for CIFAR
GRAD_CLIP = 1.0  # max total gradient norm
SCHEDULER = "cosine"  # cosine, onecycle or plateau (v1's ReduceLROnPlateau)
PATIENCE = 3  # --scheduler plateau: epochs without val-loss improvement before LR / 10
VAL_FRACTION = 0.1  # of the training images, carved out with a fixed seed
WIDTH = 64  # channels of the first ResNet stage (64 = ResNet18); tests use 8 for speed
SEED = 0
AMP = True  # autocast to float16 on GPUs plus GradScaler (the scaler runs on every device)
NUM_WORKERS = None  # per process; None: one per CPU core (up to 12) shared by the processes, 0 with --quick
SYNC_BN = False  # SyncBatchNorm: batch statistics over the global batch instead of each GPU's share
OUTPUTS = Path(__file__).resolve().parent / "outputs"  # every run a new dated folder in here; outputs/latest: the newest
OUT = None  # None: a new folder under OUTPUTS; --out DIR: exactly DIR
# The diagnostics files of seed 004 and their keys (../v2-diagnostics/DIAGNOSTICS.md explains each).
TRAIN_DIAGNOSTICS = ("epoch", "loss", "accuracy", "learning_rate", "mean_grad_norm", "min_grad_norm", "max_grad_norm",
                     "weight_update_norm", "grad_update_norm", "decay_update_norm", "loss_scale", "num_batches")
VAL_DIAGNOSTICS = ("epoch", "loss", "accuracy", "learning_rate", "num_batches")
# --quick: every code path and output; about 20 s on 2 idle CPU cores, 7 s with --width 8 (../README.md)
QUICK_TRAIN, QUICK_TEST, QUICK_EPOCHS, QUICK_BATCH = 320, 100, 2, 32


class UsageError(Exception):
    """A configuration that cannot run; the message says why."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["cifar100"], default=DATASET)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=DEVICE)
    p.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    p.add_argument("--num_epochs", type=int, default=NUM_EPOCHS)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--momentum", type=float, default=MOMENTUM)
    p.add_argument("--weight_decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--label_smoothing", type=float, default=LABEL_SMOOTHING)
    p.add_argument("--randaugment_magnitude", type=int, default=RANDAUGMENT_MAGNITUDE)
    p.add_argument("--grad_clip", type=float, default=GRAD_CLIP)
    p.add_argument("--scheduler", choices=SCHEDULERS, default=SCHEDULER)
    p.add_argument("--patience", type=int, default=PATIENCE)
    p.add_argument("--val_fraction", type=float, default=VAL_FRACTION)
    p.add_argument("--width", type=int, default=WIDTH)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=AMP)
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS)
    p.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=SYNC_BN)
    p.add_argument("--data-dir", dest="data_dir", type=existing_dir, default=None,
                   help="image folder with train/<class>/ and test/<class>/")
    p.add_argument("--out", type=Path, default=OUT,
                   help="exactly this folder (default: a new dated folder under outputs/, outputs/latest names it)")
    p.add_argument("--overwrite", action="store_true", help="let --out reuse a folder that already holds a run's results")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_TRAIN} training images, {QUICK_EPOCHS} epochs, batch {QUICK_BATCH}")
    args = p.parse_args(argv)
    for name in ("batch_size", "num_epochs", "width"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error("--lr must be a positive number")
    if not 0 < args.val_fraction < 1:
        p.error("--val_fraction must lie between 0 and 1")
    if args.quick:
        args.num_epochs, args.batch_size = min(args.num_epochs, QUICK_EPOCHS), min(args.batch_size, QUICK_BATCH)
    if args.num_workers is None:
        args.num_workers = 0 if args.quick else min(12, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return args


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the variables torchrun sets; (0, 1, 0) without torchrun."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, world_size, int(os.environ.get("LOCAL_RANK", 0))


def init_process_group(device: torch.device) -> None:
    # NCCL between GPUs; gloo on CPUs, so the tests can run two processes without a GPU.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


class ShardSampler(Sampler):
    """Indices rank, rank + N, rank + 2N, ...: every evaluation image exactly once over all ranks.

    DistributedSampler would pad the last shard with repeated images, which
    would count some of them twice in the validation and test accuracy.
    """

    def __init__(self, num_samples: int, rank: int, world_size: int):
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def sync_buffers(net: nn.Module) -> None:
    """Copy rank 0's BatchNorm running statistics to every rank before evaluating.

    Each rank updated them on its own shard in the last training step, so they
    differ slightly; rank 0's are the ones the checkpoint saves. Evaluation
    runs on the unwrapped module: DDP's forward is a collective operation and
    would hang when the ranks' evaluation shards have different batch counts.
    """
    if dist.is_initialized():
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is visible (try --device cpu).")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was requested but MPS is not available (try --device cpu).")
    if name == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"process {local_rank} has no GPU: torchrun started more processes than the {torch.cuda.device_count()} GPUs.")
        torch.cuda.set_device(local_rank)  # one GPU per process
        return torch.device("cuda", local_rank)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_out_dir(args) -> Path:
    """This run's own folder, made before anything slow runs: a new dated one under outputs/ (outputs/latest
    points to it), or exactly --out, refused when it cannot be written or holds another run's results."""
    resume = getattr(args, "resume", None)  # None: this version has no --resume
    if resume and args.out is None and not (OUTPUTS / "latest").exists():
        raise UsageError(f"--resume without --out goes on with the newest run, {OUTPUTS / 'latest'}, and there is "
                         "none yet. Start without --resume, or name the run's folder with --out.")
    try:
        return make_run_dir(OUTPUTS, run_mode(quick=args.quick), args.out, resume=resume, overwrite=args.overwrite)
    except RunFolderError as err:
        raise UsageError(str(err)) from None


@dataclass
class Run:
    """The run folder and results.json's dict: what shared.runs.stop_cleanly records a Ctrl-C with."""
    out: Path
    results: dict
    started: float = field(default_factory=time.perf_counter)

    def save(self, **updates) -> None:
        self.results.update(updates, wall_time_s=time.perf_counter() - self.started)
        write_json(self.out / "results.json", self.results, allow_nan=False, default=str)


@contextmanager
def exit_codes():
    """A problem the user can fix ends in one message and an exit code, not a stack trace:
    2 data or usage (no data, an --out holding results, too few images), 1 the loss diverged."""
    try:
        yield
    except (DataNotFoundError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as err:
        print(f"stopped: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def make_loaders(train_ds, val_ds, test_ds, args, device, rank: int, world_size: int):
    # Workers end with every pass over a loader (persistent_workers=False): persistent workers with
    # pinned memory kept a finished GPU run from exiting (pytorch/pytorch#81794). Restarting them
    # costs a fraction of a second per epoch; the images are decoded tensors already.
    common = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda", persistent_workers=False)
    batch_size = args.batch_size // world_size
    # drop_last: a last batch of one image would break BatchNorm, and equal
    # batches make the per-step gradient norms comparable.
    if world_size == 1:
        train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                  generator=torch.Generator().manual_seed(args.seed), **common)
    else:
        # A different shard per rank, reshuffled each epoch by set_epoch() in main().
        train_loader = DataLoader(train_ds, batch_size=batch_size, drop_last=True,
                                  sampler=DistributedSampler(train_ds, world_size, rank, shuffle=True, seed=args.seed), **common)
    if len(train_loader) == 0:
        raise UsageError(f"{len(train_ds)} training images are fewer than one batch of {args.batch_size}; lower --batch_size.")
    val_loader = DataLoader(val_ds, batch_size=batch_size, sampler=ShardSampler(len(val_ds), rank, world_size), **common)
    test_loader = DataLoader(test_ds, batch_size=batch_size, sampler=ShardSampler(len(test_ds), rank, world_size), **common)
    return train_loader, val_loader, test_loader


def main(argv=None) -> dict:
    """Train, validate after every epoch, test the best checkpoint once; returns results.json's dict.
    A problem ends in SystemExit: 2 data or usage, 1 diverged, 130 Ctrl-C (anywhere); what was written
    stays, and results.json says why the run stopped and which files are complete."""
    args = parse_args(argv)
    with exit_codes():
        rank, world_size, local_rank = setup_distributed()
        if args.batch_size % world_size:
            raise UsageError(f"--batch_size {args.batch_size} does not split evenly over {world_size} processes.")
        device = pick_device(args.device, local_rank)
        if args.sync_bn and device.type != "cuda":
            raise UsageError("--sync_bn needs GPUs: SyncBatchNorm does not run on CPU.")
        if world_size > 1:
            init_process_group(device)
        run = Run(share_run_dir(args, rank, world_size), {"version": VERSION, "status": "running",
                                                          "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}})
    # Ctrl-C anywhere: exit 130; rank 0 alone records it in results.json and says so
    with (stop_cleanly(run) if rank == 0 else stop_quietly()), exit_codes():
        return train_and_test(run, args, device, rank, world_size, local_rank)


def share_run_dir(args, rank: int, world_size: int) -> Path:
    """Rank 0 alone makes the run folder and sends its path to the other ranks: each making its own
    would give one dated folder per process (their clocks may tick a second apart)."""
    folder, error = None, None
    if rank == 0:
        try:
            folder = prepare_out_dir(args)
        except UsageError as err:
            error = str(err)
    if world_size > 1:
        message = [folder, error]
        dist.broadcast_object_list(message, src=0)
        folder, error = message
    if error is not None:
        if rank == 0:
            raise UsageError(error)
        raise SystemExit(2)  # rank 0 says why
    return folder


@contextmanager
def stop_quietly():
    """The ranks other than 0 on Ctrl-C: exit 130 as well, without a second message or any file."""
    try:
        yield
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def train_and_test(run: Run, args, device: torch.device, rank: int, world_size: int, local_rank: int) -> dict:
    out, is_main = run.out, rank == 0
    # Each rank its own random stream (augmentations, shuffling); the initial
    # weights still agree, because DDP copies rank 0's to every process.
    seed_everything(args.seed + rank)
    # Autocast to float16 is what makes AMP fast on GPUs. On CPUs without
    # bfloat16 units, autocast is several times *slower* than float32, so it
    # stays off there; GradScaler still scales, unscales and checks the
    # gradients, so the code path whose order matters is the same everywhere.
    use_autocast = args.amp and device.type in ("cuda", "mps")
    # Every batch has the same shape, so cuDNN's one-time search for the fastest
    # convolution algorithms pays off (at the price of bit-exact GPU reruns).
    torch.backends.cudnn.benchmark = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp)

    if is_main:
        print(f"[{VERSION}] loading CIFAR-100 ...", flush=True)
    if world_size > 1 and not is_main:
        dist.barrier()  # rank 0 decodes an image folder once and caches it (scripts/data.py); the others read that
    data = load_cifar100(args.data_dir)
    if world_size > 1 and is_main:
        dist.barrier()
    if args.quick:
        data = subset(data, QUICK_TRAIN, QUICK_TEST, seed=args.seed)
    train_ds, val_ds, test_ds = build_datasets(data, args.val_fraction, args.randaugment_magnitude)
    train_loader, val_loader, test_loader = make_loaders(train_ds, val_ds, test_ds, args, device, rank, world_size)
    if is_main:
        print(f"[{VERSION}] {data.source}: {len(data.classes)} classes, train {len(train_ds)}, val {len(val_ds)}, test {len(test_ds)}; "
              f"{world_size} process(es) on {device.type}, {args.batch_size // world_size} images per process and step")

    net = ResNet18(num_classes=len(data.classes), width=args.width)
    if args.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(device)
    # DDP all-reduces (averages) the gradients during backward(): after it,
    # every rank holds the gradient of the global batch, so the gradient norms
    # and weight updates measured in train_one_epoch are the same on all ranks.
    model = DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None) if world_size > 1 else net
    criterion, optimizer, scheduler = define_loss_and_optimizer(
        model, args.lr, args.momentum, args.weight_decay, args.label_smoothing, args.patience,
        args.scheduler, args.num_epochs, len(train_loader))
    diagnostics = diagnostics_dir(out) if is_main else None

    history: list[dict] = []
    history_path, checkpoint_path = out / "history.jsonl", out / "best_model.pth"
    if is_main:
        write_text(history_path, "")
        for name in ("train_diagnostics.jsonl", "val_diagnostics.jsonl"):
            write_text(diagnostics / name, "")
        for stale in (checkpoint_path, out / "curves.png"):  # --overwrite: none of an earlier run's
            stale.unlink(missing_ok=True)  # never test a stale checkpoint or show its curves
    results = run.results
    results.update({
        "seed": args.seed, "torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
        "python_version": platform.python_version(), "device": str(device), "device_name": device_name(device),
        "amp": {"autocast_float16": use_autocast, "grad_scaler": args.amp},
        "world_size": world_size, "batch_size_per_process": args.batch_size // world_size,
        "backend": dist.get_backend() if world_size > 1 else None,
        "data": {"source": data.source, "num_classes": len(data.classes), "train": len(train_ds), "val": len(val_ds), "test": len(test_ds)},
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "history_file": str(history_path), "curves_png": str(out / "curves.png"), "diagnostics_dir": str(diagnostics),
    })
    best_val = -1.0
    try:
        for epoch in range(1, args.num_epochs + 1):
            if world_size > 1:
                train_loader.sampler.set_epoch(epoch)  # without it every epoch repeats the same shuffle
            train = train_one_epoch(model, train_loader, criterion, optimizer, scaler, device, use_autocast, args.grad_clip,
                                    desc=f"epoch {epoch}/{args.num_epochs}",
                                    batch_scheduler=scheduler if args.scheduler == "onecycle" else None)
            sync_buffers(net)
            val = evaluate(net, val_loader, criterion, device, use_autocast, desc="val")
            record = {"epoch": epoch, **{k: train[k] for k in ("loss", "accuracy", "learning_rate", "mean_grad_norm",
                                                               "min_grad_norm", "max_grad_norm", "weight_update_norm",
                                                               "grad_update_norm", "decay_update_norm", "loss_scale",
                                                               "num_batches")},
                      "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                      "epoch_time_s": train["seconds"], "images_per_second": train["images"] / train["seconds"]}
            history.append(record)
            if is_main:
                append_line(history_path, record)
                write_diagnostics(diagnostics, record, val)
            if not (math.isfinite(train["loss"]) and math.isfinite(val["loss"])):
                raise TrainingDiverged(
                    f"the loss became {train['loss']} (val {val['loss']}) in epoch {epoch}. Gradient norms this epoch: "
                    f"mean {record['mean_grad_norm']}, max {record['max_grad_norm']}. Lower --lr, check the data for "
                    f"NaN/inf, or run with --no-amp to rule out float16 overflow. The best checkpoint so far is kept.")
            if args.scheduler == "plateau":
                scheduler.step(val["loss"])
            elif args.scheduler == "cosine":
                scheduler.step()
            if is_main:
                print(f"[{VERSION}] epoch {epoch:3d}  loss {train['loss']:.4f}  acc {train['accuracy']:5.2f}%  "
                      f"val_loss {val['loss']:.4f}  val_acc {val['accuracy']:5.2f}%  lr {train['learning_rate']:.2e}  "
                      f"grad_norm {record['mean_grad_norm'] or math.nan:.3g}  {record['images_per_second']:.0f} img/s", flush=True)
            if val["accuracy"] > best_val:
                best_val = val["accuracy"]
                if is_main:
                    save_checkpoint(net.state_dict(), checkpoint_path)
                results.update(best_val_accuracy=best_val, best_epoch=epoch)

        if world_size > 1:
            dist.barrier()  # rank 0 has finished writing the checkpoint
        net.load_state_dict(torch.load(checkpoint_path, map_location=device, weights_only=True))
        test = evaluate(net, test_loader, criterion, device, use_autocast, desc="test")
    except (KeyboardInterrupt, TrainingDiverged) as stop:
        results["status"] = "interrupted" if isinstance(stop, KeyboardInterrupt) else "diverged"
        if is_main:
            finish(run, history)
        raise
    results.update(status="completed", test_loss=test["loss"], test_accuracy=test["accuracy"], test_images=test["images"])
    if not is_main:
        return results
    finish(run, history)
    print(f"[{VERSION}] best val_acc {best_val:.2f}% (epoch {results['best_epoch']}), test_acc {test['accuracy']:.2f}% "
          f"with the best checkpoint")
    return results


def diagnostics_dir(out: Path) -> Path:
    """$DIAGNOSTICS_DIR if set (seed 004), else <out>/diagnostics, so that one --out folder holds the whole run."""
    folder = Path(os.environ["DIAGNOSTICS_DIR"]) if os.environ.get("DIAGNOSTICS_DIR") else out / "diagnostics"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"Cannot write into the diagnostics folder {folder}: {err}") from None
    return folder


def write_diagnostics(folder: Path, record: dict, val: dict) -> None:
    """Append this epoch to train_diagnostics.jsonl and val_diagnostics.jsonl."""
    val = {**val, "epoch": record["epoch"], "learning_rate": record["learning_rate"]}
    append_line(folder / "train_diagnostics.jsonl", {k: record[k] for k in TRAIN_DIAGNOSTICS})
    append_line(folder / "val_diagnostics.jsonl", {k: val[k] for k in VAL_DIAGNOSTICS})


def finite_or_none(record: dict) -> dict:
    """NaN/inf become None (null), because NaN is not JSON and jq rejects it."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def json_line(record: dict) -> str:
    return json.dumps(finite_or_none(record)) + "\n"


def append_line(path: Path, record: dict) -> None:
    """One more JSON line, atomically: the file is written whole again, so a Ctrl-C never leaves half a line."""
    write_text(path, (path.read_text() if path.is_file() else "") + json_line(record))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def finish(run: Run, history: list[dict]) -> None:
    """Final numbers, timing and the curves; called on success, Ctrl-C and divergence alike."""
    train_seconds = sum(r["epoch_time_s"] for r in history)
    run.results.update(
        epochs_completed=len(history),
        final=finite_or_none({k: history[-1][k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}) if history else None,
        train_time_s=train_seconds,
        images_per_second=sum(r["num_batches"] for r in history) * run.results["config"]["batch_size"] / train_seconds if history else None,
    )
    if history:
        plot_history(history, run.out / "curves.png", f"{VERSION}: {run.results['status']} after {len(history)} epochs")
    run.save()


def cli(argv=None) -> int:
    """main() with exit codes: 0 done, 1 diverged, 2 data/usage problem, 130 Ctrl-C."""
    try:
        main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
