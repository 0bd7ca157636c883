"""Benchmark of fashionmnist/v10-step2: seconds per training epoch and the time of all checks.

    python fashionmnist/benchmark.py                 # CPU, and CUDA where present
    python fashionmnist/benchmark.py --devices cpu --threads 2

Prints figures; it is not a test. The checks' share is measured against a
full default run estimated as EPOCHS x (one epoch) + checks. Each device's
figures are also written to <--out>/benchmark_<device>.json, the record that
README numbers are copied from.
"""
from __future__ import annotations

import argparse
import datetime
import functools
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("/tmp/fashionmnist-benchmark"))
    p.add_argument("--measured-epochs", type=int, default=3, help="epochs timed; their median is reported")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        raw = train.load_raw_data(args.data_dir)
    except train.DataNotFoundError as err:
        sys.exit(f"error: {err}")  # where it looked and how to get the data; exit code 1
    command = " ".join(["python fashionmnist/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    for device in args.devices:
        benchmark(torch.device(device), raw, args.out, command, args.measured_epochs)


if __name__ == "__main__":
    main()
