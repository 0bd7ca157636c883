"""Benchmark of fashionmnist/v10-step2: seconds per training epoch and the time of all checks.

    python fashionmnist/benchmark.py                 # CPU, and CUDA where present
    python fashionmnist/benchmark.py --devices cpu --threads 2

Prints figures; it is not a test. The checks' share is measured against a
full default run estimated as EPOCHS x (one epoch) + checks.
"""
from __future__ import annotations

import argparse
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
    visualize_input_before_net,
)
from metrics import compute_detailed_metrics  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark(device: torch.device, raw, out: Path) -> None:
    cfg = train.parse_args(["--device", str(device.type)])
    train.set_seed(cfg.seed)
    train_set, val_set, test_set = train.split_data(*raw, cfg, device)
    train_loader = train.TensorLoader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed)
    test_loader = train.TensorLoader(test_set, 1024)
    model = train.MyNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def one_epoch():
        train.train_one_epoch(model, train_loader, optimizer, scheduler, device, 1, 1, 0, [])
        sync()

    if device.type == "cuda":
        one_epoch()  # warm-up: CUDA context and kernel selection are not part of an epoch
    epoch_s = timed(one_epoch)
    checks = {
        "input_independent_baseline": lambda: test_input_independent_baseline(
            train_loader, test_loader, device, model_fn=train.MyNN, steps=cfg.baseline_steps),
        "input_before_net": lambda: visualize_input_before_net(train_loader, out_dir=out),
        "loss_at_init": lambda: verify_loss_at_init(train.MyNN().to(device), train_loader, device),
        "gradient_flow": lambda: verify_gradient_flow(model, train_loader, device),
        "overfit_one_batch": lambda: overfit_one_batch(train.MyNN, device, train_set, steps=cfg.overfit_steps,
                                                       out_dir=out),
        "detailed_metrics_train_and_test": lambda: (compute_detailed_metrics(model, train_loader, device),
                                                    compute_detailed_metrics(model, test_loader, device)),
        "batch_independence": lambda: verify_batch_independence(model, device, test_loader),
    }
    times = {name: timed(fn) for name, fn in checks.items()}
    total_checks = sum(times.values())
    full_run = cfg.epochs * epoch_s + total_checks
    name = train.device_name(device)
    print(f"\n{name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"batch size {cfg.batch_size}, {len(train_set)} training images")
    print(f"  seconds per training epoch: {epoch_s:.2f}")
    for check, seconds in times.items():
        print(f"  {check:<34}{seconds:8.2f} s")
    print(f"  all checks: {total_checks:.2f} s = {100 * total_checks / full_run:.1f}% of an estimated full "
          f"default run ({cfg.epochs} epochs + checks = {full_run:.0f} s)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("/tmp/fashionmnist-benchmark"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = train.load_raw_data(args.data_dir)
    for device in args.devices:
        benchmark(torch.device(device), raw, args.out)


if __name__ == "__main__":
    main()
