"""Find the operation that made a NaN, with torch.autograd.detect_anomaly, and measure what it costs.

The bug: a "safe" square root, torch.where(h > 0, torch.sqrt(h), 0). Its forward
pass is finite: where() throws away the NaNs of sqrt(negative). But autograd
differentiates *both* branches of where(): the untaken branch's gradient is
0 / sqrt(negative) = NaN, and the first optimizer.step() writes it into every
weight before the where(). From then on those weights are NaN, and the where()
swallows the NaN activations too (NaN > 0 is False): the logits are the same for
every image, and the loss does not turn NaN, it just stops falling. No guard on
the loss fires; the cause sits in a backward op of step 1.

detect_anomaly checks the output of every backward operation and raises at the
first one that returns NaN, naming it (SqrtBackward0) and printing the line of the
forward pass that created it. It records a traceback for every forward operation,
which is why it is slow: the script measures by how much, on this machine.

    python docs/examples/detect_anomaly.py                 # the hunt, then the timing
    python docs/examples/detect_anomaly.py --steps 50 --batch-sizes 16 128 512
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import traceback
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

class RootCompress(nn.Module):
    """Compress large activations with a square root; 0 where the activation is not positive."""

    def __init__(self, fixed: bool = False):
        super().__init__()
        self.fixed = fixed

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.fixed:
            # Both branches of where() are differentiated: keep the untaken one finite.
            return torch.where(h > 0, torch.sqrt(h.clamp(min=1e-12)), torch.zeros_like(h))
        return torch.where(h > 0, torch.sqrt(h), torch.zeros_like(h))  # the bug: sqrt of negatives


class SmallNet(nn.Module):
    """Conv 1->16 -> MaxPool -> Conv 16->32 -> MaxPool -> Linear 1568->64 -> RootCompress -> Linear 64->10."""

    def __init__(self, fixed: bool = False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.hidden = nn.Linear(32 * 7 * 7, 64)
        self.compress = RootCompress(fixed)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.compress(self.hidden(self.features(x))))


def make_batch(batch_size: int, seed: int = 0):
    """A fixed batch of Fashion-MNIST-shaped inputs in [0, 1] with random labels: where a NaN is
    made does not depend on what the images show."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch_size,),
                                                                                 generator=generator)


def step(model, optimizer, images, labels) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def without_anomaly_mode(steps: int = 5, seed: int = 0) -> dict:
    """What you see without the tool: finite losses that stop falling, NaN weights, constant logits."""
    torch.manual_seed(seed)
    model = SmallNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = make_batch(64, seed)
    losses = [step(model, optimizer, images, labels) for _ in range(steps)]
    nan_parameters = [name for name, p in model.named_parameters() if torch.isnan(p).any()]
    with torch.no_grad():
        logits = model(images)
    return {"losses": losses, "all_losses_finite": all(map(math.isfinite, losses)),
            "parameters_with_nan": nan_parameters,
            "logits_same_for_every_image": bool((logits == logits[:1]).all())}


def with_anomaly_mode(seed: int = 0) -> dict:
    """The same first step inside detect_anomaly: the backward pass stops at the op that made the NaN."""
    torch.manual_seed(seed)
    model = SmallNet()
    images, labels = make_batch(64, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autograd.detect_anomaly():
                F.cross_entropy(model(images), labels).backward()
        except RuntimeError as err:
            error = str(err)
        else:
            error = None
    # The warning holds the traceback of the forward call that created the failing backward op.
    forward_trace = "\n".join(str(w.message) for w in caught if "Traceback of forward call" in str(w.message))
    op = error.split("'")[1] if error and "'" in error else None
    lines = forward_trace.splitlines()
    in_this_file = [i for i, frame in enumerate(lines)
                    if frame.strip().startswith("File") and "detect_anomaly.py" in frame]
    line = lines[in_this_file[-1]].strip() if in_this_file else None  # the innermost frame of this file
    code = lines[in_this_file[-1] + 1].strip() if in_this_file and in_this_file[-1] + 1 < len(lines) else None
    return {"error": error, "op": op, "forward_frame": line, "forward_code": code,
            "forward_traceback": forward_trace}


def fixed_model_trains(steps: int = 20, seed: int = 0) -> list[float]:
    """The fix: the loss stays finite, also inside detect_anomaly (which would raise otherwise)."""
    torch.manual_seed(seed)
    model = SmallNet(fixed=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = make_batch(64, seed)
    with torch.autograd.detect_anomaly():
        return [step(model, optimizer, images, labels) for _ in range(steps)]


def time_steps(batch_size: int, steps: int, repeats: int, seed: int = 0) -> dict:
    """Seconds per training step of the fixed model, without and with anomaly mode.

    Repeats alternate the two modes, so a neighbour's load on a shared machine hits
    both alike; the median of the repeats is reported. Two warm-up steps per mode.
    """
    torch.manual_seed(seed)
    model = SmallNet(fixed=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # tiny steps: the work per step stays the same
    images, labels = make_batch(batch_size, seed)
    times = {"off": [], "on": []}
    for _ in range(repeats):
        for mode in ("off", "on"):
            context = torch.autograd.detect_anomaly() if mode == "on" else _nothing()
            with context:
                for _ in range(2):
                    step(model, optimizer, images, labels)
                started = time.perf_counter()
                for _ in range(steps):
                    step(model, optimizer, images, labels)
                times[mode].append((time.perf_counter() - started) / steps)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"batch_size": batch_size, "steps": steps, "repeats": repeats, "ms_per_step_off": 1000 * off,
            "ms_per_step_on": 1000 * on, "slowdown": on / off}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 128], help="batch sizes to time")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per repeat and mode")
    p.add_argument("--repeats", type=int, default=5, help="alternating repeats; the median is reported")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steady on a shared CPU)")
    p.add_argument("--no-timing", action="store_true", help="only the hunt, no timing")
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.threads < 1 or min(args.batch_sizes) < 1:
        p.error("--steps, --repeats, --threads and every batch size must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    results = {"torch_version": torch.__version__, "threads": args.threads}

    print("1. Without anomaly mode: five training steps")
    plain = without_anomaly_mode()
    results["without"] = plain
    print("   losses: " + ", ".join(f"{v:.4f}" for v in plain["losses"])
          + f" (all finite: {plain['all_losses_finite']})")
    print(f"   parameters holding NaN: {', '.join(plain['parameters_with_nan']) or 'none'}")
    print(f"   logits the same for every image: {plain['logits_same_for_every_image']}")
    print("   The loss never turned NaN, so no NaN guard fired; the NaN came from a backward pass, somewhere.")

    print("\n2. The same step inside torch.autograd.detect_anomaly()")
    found = with_anomaly_mode()
    results["with"] = {k: v for k, v in found.items() if k != "forward_traceback"}
    print(f"   RuntimeError: {found['error']}")
    print(f"   created in the forward pass at: {found['forward_frame']}")
    print(f"       {found['forward_code']}")

    print("\n3. The fix (keep the untaken branch of where() finite), 20 steps inside detect_anomaly")
    losses = fixed_model_trains()
    results["fixed_losses"] = losses
    print(f"   loss {losses[0]:.4f} -> {losses[-1]:.4f}, all finite: {all(map(math.isfinite, losses))}")

    if not args.no_timing:
        print(f"\n4. What anomaly mode costs: CPU, {args.threads} thread(s), torch {torch.__version__}, "
              f"median of {args.repeats} alternating repeats of {args.steps} steps")
        print(f"   {'batch':>6}  {'ms/step off':>12}  {'ms/step on':>11}  {'slowdown':>8}")
        results["timing"] = []
        for batch_size in args.batch_sizes:
            timing = time_steps(batch_size, args.steps, args.repeats)
            results["timing"].append(timing)
            print(f"   {batch_size:>6}  {timing['ms_per_step_off']:>12.2f}  {timing['ms_per_step_on']:>11.2f}  "
                  f"{timing['slowdown']:>7.2f}x")
        print("   Use it to find a NaN, then take it out again.")
    return results


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        traceback.print_exc(limit=0)
        sys.exit(130)
