"""Training throughput (images/second) on N processes, for the scaling table in README.md.

    torchrun --standalone --nproc_per_node=1 -m scripts.benchmark_throughput --out results/bench_1gpu.json
    torchrun --standalone --nproc_per_node=2 -m scripts.benchmark_throughput --out results/bench_2gpu.json \
        --baseline results/bench_1gpu.json

Times `train_one_epoch`, the very step training uses (AMP, unscale, clip,
DDP's gradient all-reduce), on one fixed batch of random images that already
lies on the device: the figure measures the model and the all-reduce, not the
data pipeline (a training run's results.json has its own images_per_second,
which includes that). --batch_size is global as in main.py, so N processes
split the same batch (strong scaling); pass N times the batch for weak scaling.
With --baseline (the JSON of a 1-process run) it adds the speedup and the
scaling efficiency = throughput_N / (N x throughput_1).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this version's main.py and scripts/, however started

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from main import UsageError, device_name, init_process_group, pick_device, setup_distributed  # noqa: E402
from scripts.train_utils import ResNet18, define_loss_and_optimizer, train_one_epoch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=512, help="global, split over the processes")
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotuning, NCCL set-up)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--num_classes", type=int, default=100)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--out", type=Path, default=None, help="JSON file for the figures (rank 0 writes it)")
    p.add_argument("--baseline", type=Path, default=None, help="JSON of a 1-process run, for speedup and efficiency")
    args = p.parse_args(argv)
    if min(args.batch_size, args.steps, args.width) < 1 or args.warmup < 0:
        p.error("--batch_size, --steps and --width must be at least 1, --warmup at least 0")
    if args.baseline is not None and not args.baseline.is_file():
        p.error(f"--baseline {args.baseline} does not exist (run the 1-process benchmark with --out first)")
    return args


def benchmark(args) -> dict:
    rank, world_size, local_rank = setup_distributed()
    if args.batch_size % world_size:
        raise UsageError(f"--batch_size {args.batch_size} does not split evenly over {world_size} processes.")
    device = pick_device(args.device, local_rank)
    if world_size > 1:
        init_process_group(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.manual_seed(rank)
    per_process = args.batch_size // world_size
    batch = (torch.randn(per_process, 3, 32, 32, device=device), torch.randint(0, args.num_classes, (per_process,), device=device))

    net = ResNet18(num_classes=args.num_classes, width=args.width)
    if args.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(device)
    model = DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None) if world_size > 1 else net
    criterion, optimizer, _ = define_loss_and_optimizer(model, 0.1, 0.9, 5e-4, 0.1, 3, "cosine", 1, args.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp)
    use_autocast = args.amp and device.type == "cuda"
    step = dict(model=model, criterion=criterion, optimizer=optimizer, scaler=scaler, device=device,
                use_autocast=use_autocast, grad_clip=1.0)
    if args.warmup:
        train_one_epoch(loader=[batch] * args.warmup, desc="warm-up", **step)
    stats = train_one_epoch(loader=[batch] * args.steps, desc="timed", **step)
    result = {
        "images_per_second": stats["images"] / stats["seconds"],
        "images_per_second_per_process": stats["images"] / stats["seconds"] / world_size,
        "world_size": world_size, "global_batch_size": args.batch_size, "batch_size_per_process": per_process,
        "steps": args.steps, "warmup_steps": args.warmup, "seconds": stats["seconds"], "images": stats["images"],
        "width": args.width, "num_classes": args.num_classes, "amp": use_autocast, "grad_scaler": args.amp, "sync_bn": args.sync_bn,
        "device": str(device), "device_name": device_name(device), "backend": dist.get_backend() if world_size > 1 else None,
        "torch_version": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.baseline is not None:
        base = json.loads(args.baseline.read_text())["images_per_second"]
        result.update(baseline_file=str(args.baseline), baseline_images_per_second=base,
                      speedup=result["images_per_second"] / base,
                      scaling_efficiency=result["images_per_second"] / (world_size * base))
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = benchmark(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if setup_distributed()[0] == 0:
        print(json.dumps(result, indent=2))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
