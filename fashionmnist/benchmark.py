"""Benchmark of fashionmnist/v10-step2: seconds per training epoch and the time of all checks;
and the training loops of v6, v12-step4 and v15-speed side by side, on the same device in one run.

    python fashionmnist/benchmark.py                 # CPU, and CUDA where present
    python fashionmnist/benchmark.py --devices cpu --threads 2
    python fashionmnist/benchmark.py --loops v15 --loop-images 5000   # only v15's loop, on 5,000 images

Prints figures; it is not a test. The checks' share is measured against a
full default run estimated as EPOCHS x (one epoch) + checks. Each device's
figures are also written to <--out>/benchmark_<device>.json, the record that
README numbers are copied from. The loops (--loops, default all three; --loops none: skip)
run each version's own train_one_epoch with its default configuration; --loop-images times
them on the first N training images and scales the seconds to the full split. Their figures go
to <--out>/loops_<device>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

VERSION_DIR = Path(__file__).resolve().parent / "v10-step2"
sys.path.insert(0, str(VERSION_DIR))

import train  # noqa: E402
from debug_tools import (  # noqa: E402
    overfit_one_batch,
    test_input_independent_baseline,
    verify_batch_independence,
    verify_gradient_flow,
    verify_loss_at_init,
    verify_optimizer_config,
    verify_step_gradient,
    visualize_input_before_net,
)
from metrics import compute_detailed_metrics  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark(device: torch.device, raw, out: Path, command: str, measured_epochs: int) -> None:
    cfg = train.parse_args(["--device", str(device.type)])
    train.set_seed(cfg.seed)
    train_set, val_set, test_set = train.split_data(*raw, cfg, device)
    train_loader = train.TensorLoader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed)
    val_loader, test_loader = train.TensorLoader(val_set, 1024), train.TensorLoader(test_set, 1024)
    model = train.MyNN().to(device)
    optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=cfg.epochs * len(train_loader))
    # the run's own pieces, as checks_before_training hands them to the checks
    own = {"make_optimizer": functools.partial(train.make_optimizer, cfg=cfg), "training_step": train.training_step}
    probe_images, probe_labels = train_set.images[:64], train_set.labels[:64]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def one_epoch():
        train.train_one_epoch(model, train_loader, optimizer, scheduler, 1, 1, 0, [])
        sync()

    if device.type == "cuda":
        one_epoch()  # warm-up: CUDA context and kernel selection are not part of an epoch
    # The median of several epochs: on a shared machine one epoch can be 20% off either way.
    epoch_times = [timed(one_epoch) for _ in range(measured_epochs)]
    epoch_s = statistics.median(epoch_times)
    fresh = train.MyNN().to(device)
    checks = {
        "input_independent_baseline": lambda: test_input_independent_baseline(
            fresh, train_loader, val_loader, steps=cfg.baseline_steps, **own),
        "input_before_net": lambda: visualize_input_before_net(train_loader, out_dir=out),
        "loss_at_init": lambda: verify_loss_at_init(fresh, train_loader, train.loss_fn),
        "optimizer_config": lambda: verify_optimizer_config(model, optimizer, lr=cfg.lr, weight_decay=0.0),
        "gradient_flow": lambda: verify_gradient_flow(fresh, probe_images, probe_labels, train.loss_fn),
        "step_gradient": lambda: verify_step_gradient(fresh, probe_images, probe_labels, loss_fn=train.loss_fn,
                                                      **own),
        "overfit_one_batch": lambda: overfit_one_batch(fresh, train_set.images[:8], train_set.labels[:8],
                                                       loss_fn=train.loss_fn, steps=cfg.overfit_steps, out_dir=out,
                                                       **own),
        "batch_independence (x2: before and after training)": lambda: [
            verify_batch_independence(fresh, val_set.images[:8]) for _ in range(2)],
        "detailed_metrics_train_and_test": lambda: (compute_detailed_metrics(model, train_loader, device),
                                                    compute_detailed_metrics(model, test_loader, device)),
    }
    times = {name: timed(fn) for name, fn in checks.items()}
    total_checks = sum(times.values())
    full_run = cfg.epochs * epoch_s + total_checks
    name = train.device_name(device)
    print(f"\n{name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"batch size {cfg.batch_size}, {len(train_set)} training images")
    print(f"  seconds per training epoch: {epoch_s:.2f} (median of {', '.join(f'{t:.2f}' for t in epoch_times)})")
    for check, seconds in times.items():
        print(f"  {check:<34}{seconds:8.2f} s")
    print(f"  all checks: {total_checks:.2f} s = {100 * total_checks / full_run:.1f}% of an estimated full "
          f"default run ({cfg.epochs} epochs + checks = {full_run:.0f} s)")
    record = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": name, "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size, "training_images": len(train_set), "epochs_in_full_run": cfg.epochs,
        "seconds_per_epoch": round(epoch_s, 2),
        "measured_epoch_seconds": [round(t, 2) for t in epoch_times],
        "check_seconds": {k: round(v, 2) for k, v in times.items()},
        "all_checks_seconds": round(total_checks, 2), "estimated_full_run_seconds": round(full_run, 1),
        "checks_share_percent": round(100 * total_checks / full_run, 1),
    }
    path = out / f"benchmark_{device.type}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"  written: {path}")


# Each version's train.py and its own modules, imported in isolation (the versions share module names).
LOOP_VERSIONS = {"v6": "v6", "v12": "v12-step4", "v15": "v15-speed"}
VERSION_MODULES = ("train", "debug_tools", "metrics", "visualization")


def load_train(folder: str):
    saved_path, saved_modules = list(sys.path), {n: sys.modules.pop(n) for n in VERSION_MODULES if n in sys.modules}
    sys.path[:] = [str(Path(__file__).resolve().parent / folder)] + [p for p in sys.path if p != str(VERSION_DIR)]
    try:
        module = importlib.import_module("train")
    finally:
        for name in VERSION_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path
    return module


def loop_epoch(name: str, device: torch.device, raw, images: int | None, data_dir: Path | None = None):
    """One version's data, model, optimizer and train_one_epoch with its defaults on `device`; returns a
    function that runs one epoch (of the first `images` training images, or all) and the image count.
    v6 loads its own data: it gets --data-dir too, or it would look only in the default places."""
    t = load_train(LOOP_VERSIONS[name])
    cfg = t.parse_args(["--device", device.type, *(["--data-dir", str(data_dir)] if data_dir else [])])
    t.set_seed(cfg.seed)
    if name == "v6":
        data = t.load_data(cfg, device)
        loader = data.train_loader
        if images:
            loader.images, loader.labels = loader.images[:images], loader.labels[:images]
        count = len(loader.labels)
        model = t.ResNet().to(device)
        optimizer, scheduler = t.make_optimizer(model, cfg, total_steps=10 * len(loader))
        return (lambda: t.train_one_epoch(model, loader, optimizer, scheduler, 1, 1)), count
    if name == "v15" and cfg.bf16 is None:
        cfg.bf16 = device.type == "cuda"  # what start_run decides
    train_set, _, _ = t.split_data(*raw, cfg, device)
    if images:
        train_set = t.FashionMNISTTensors(train_set.images[:images], train_set.labels[:images], train_set.classes)
    augmentation = t.Augmentation(cfg.crop_padding, cfg.flip_probability, cfg.erase_probability)
    extra = {}
    if name == "v15":
        extra = {"generator_device": device if cfg.device_augment else "cpu", "channels_last": cfg.channels_last}
    loader = t.TensorLoader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augmentation, **extra)
    model = t.ResNet(channels=cfg.channels, **({"stem_stride": cfg.stem_stride} if name == "v15" else {})).to(device)
    optimizer, scheduler = t.make_optimizer(model, cfg, total_steps=10 * len(loader))
    step = functools.partial(t.training_step, diverged_loss=cfg.diverged_loss, label_smoothing=cfg.label_smoothing,
                             bf16=cfg.bf16, **({"sync_free": cfg.sync_free} if name == "v15" else {}))
    more = {"sync_free": cfg.sync_free} if name == "v15" else {}
    return (lambda: t.train_one_epoch(model, loader, optimizer, scheduler, 1, 1, 0, [], step, **more)), len(train_set)


def benchmark_loops(device: torch.device, raw, out: Path, command: str, measured_epochs: int, names: list[str],
                    images: int | None, data_dir: Path | None = None) -> dict:
    """Seconds per epoch of each version's own loop, the median of `measured_epochs` after one warm-up
    epoch, scaled to the 55,000 training images when --loop-images times fewer."""
    figures = {}
    for name in names:
        epoch, count = loop_epoch(name, device, raw, images, data_dir)

        def one_epoch():
            with contextlib.redirect_stderr(io.StringIO()):  # no progress bars between the figures
                epoch()
            if device.type == "cuda":
                torch.cuda.synchronize()

        one_epoch()  # warm-up: allocation, kernel selection, the first schedule steps
        times = [timed(one_epoch) for _ in range(measured_epochs)]
        scale = 55_000 / count
        figures[name] = {"seconds_per_epoch": round(statistics.median(times) * scale, 3), "images_timed": count,
                         "measured_epoch_seconds": [round(t, 3) for t in times]}
    name = train.device_name(device)
    print(f"\nTraining loops on {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", timed on {images} images and scaled to 55,000" if images else ""))
    for loop, f in figures.items():
        print(f"  {loop:<4} ({LOOP_VERSIONS[loop]}): {f['seconds_per_epoch']:8.2f} s per epoch"
              f"  ({f['seconds_per_epoch'] / figures[names[0]]['seconds_per_epoch']:.2f}x {names[0]}'s time)")
    record = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": name, "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "loops": figures}
    path = out / f"loops_{device.type}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"  written: {path}")
    return record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("/tmp/fashionmnist-benchmark"))
    p.add_argument("--measured-epochs", type=int, default=3, help="epochs timed; their median is reported")
    p.add_argument("--loops", nargs="+", default=list(LOOP_VERSIONS), choices=[*LOOP_VERSIONS, "none"],
                   help="versions whose training loops are timed side by side; none: skip")
    p.add_argument("--loop-images", type=int, default=None, help="time the loops on this many training images")
    p.add_argument("--skip-v10", action="store_true", help="only the loops, not v10-step2's epoch and checks")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        raw = train.load_raw_data(args.data_dir)
    except train.DataNotFoundError as err:
        sys.exit(f"error: {err}")  # where it looked and how to get the data; exit code 1
    command = " ".join(["python fashionmnist/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    loops = [name for name in args.loops if name != "none"]
    for device in args.devices:
        if not args.skip_v10:
            benchmark(torch.device(device), raw, args.out, command, args.measured_epochs)
        if loops:
            benchmark_loops(torch.device(device), raw, args.out, command, args.measured_epochs, loops,
                            args.loop_images, args.data_dir)


if __name__ == "__main__":
    main()
