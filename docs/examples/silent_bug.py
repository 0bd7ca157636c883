"""The silent bug of seed 003: a forward pass that uses the wrong tensor, trains "fine", and
wastes most of the network. The gradient-flow check of fashionmnist/v10-step2 names the dead layers.

A small U-Net-style classifier for 28x28 images (two steps down, two up, then a
1x1 head, global average pooling and a linear classifier). The buggy forward feeds
the head with `x1`, the output of the first convolution, instead of `x1_up`, the
output of the whole down/up path; the down and up blocks are still computed and
then thrown away. Both versions are trained with the same seed, data and steps on
Fashion-MNIST. The buggy one learns too (its loss falls, its accuracy is far above
chance), so nothing looks wrong, until `verify_gradient_flow` (one backward pass
of the loss) lists every parameter that gets no gradient.

What the fix is worth differs from seed to seed by points, so `--seeds` trains
both models for each seed and ends with the mean and spread. The run is
deterministic on the CPU: the same seed, thread count and machine give the same
numbers bit for bit (another CPU may pick other kernels and round differently;
the output's `CPU:` line names what its numbers hold for).

    python docs/examples/silent_bug.py                        # seed 0 (five seeds: 3 min 42 s on 2 CPU cores)
    python docs/examples/silent_bug.py --seeds 0 1 2 3 4      # mean and spread over five seeds
    python docs/examples/silent_bug.py --steps 100 --train-size 2000
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]
V10 = REPO_ROOT / "fashionmnist" / "v10-step2"
OUT_DIR = Path(__file__).resolve().parent / "outputs"
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (data location only)


def block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class Up(nn.Module):
    """Upsample the deeper tensor to the skip tensor's size, concatenate, convolve."""

    def __init__(self, c_skip: int, c_deep: int, c_out: int):
        super().__init__()
        self.conv = block(c_skip + c_deep, c_out)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = F.interpolate(deep, size=skip.shape[-2:], mode="nearest")
        return self.conv(torch.cat([skip, deep], dim=1))


class UNetClassifier(nn.Module):
    """28x28 -> conv1 (16 channels, stride 2: 14x14) -> down1 (32, 7x7) -> down2 (64, 3x3)
    -> up1 (32, 7x7) -> up2 (16, 14x14) -> head (32, then 64 at 7x7) -> global average pool -> linear (10)."""

    def __init__(self, buggy: bool):
        super().__init__()
        self.buggy = buggy
        self.conv1 = block(1, 16, stride=2)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), block(16, 32))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), block(32, 64))
        self.up1 = Up(32, 64, 32)
        self.up2 = Up(16, 32, 16)
        self.head = nn.Sequential(block(16, 32), nn.MaxPool2d(2), block(32, 64))
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x2_up = self.up1(x2, x3)
        x1_up = self.up2(x1, x2_up)
        if self.buggy:
            y = self.head(x1)  # the bug: should be x1_up; down1, down2, up1 and up2 are computed for nothing
        else:
            y = self.head(x1_up)
        return self.classifier(F.adaptive_avg_pool2d(y, 1).flatten(1))


def load_gradient_flow_check():
    """verify_gradient_flow from fashionmnist/v10-step2/debug_tools.py, the very check a run uses."""
    sys.path.insert(0, str(V10))  # debug_tools imports its version's visualization.py
    try:
        spec = importlib.util.spec_from_file_location("v10_debug_tools", V10 / "debug_tools.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it is being executed
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(V10))
    return module.verify_gradient_flow


def load_data(data_dir):
    """Fashion-MNIST's training file: images in [0, 1], (60000, 1, 28, 28), and labels."""
    from torchvision.datasets import FashionMNIST

    from shared.data import fashion_mnist_root

    root = fashion_mnist_root(data_dir)
    data = FashionMNIST(str(root), train=True, download=False)
    return data.data.unsqueeze(1).float().div(255.0), data.targets


def split(images, labels, train_size: int, val_size: int, seed: int):
    """A seeded draw of training and validation images (disjoint) from the training file."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[val_size:val_size + train_size], order[:val_size]
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    model.eval()
    correct = sum((model(images[i:i + 500]).argmax(1) == labels[i:i + 500]).sum().item()
                  for i in range(0, len(labels), 500))
    model.train()
    return correct / len(labels)


def train(model, train_x, train_y, val_x, val_y, steps: int, batch_size: int, lr: float, seed: int,
          eval_every: int) -> dict:
    """Plain Adam training; the curve a learner would look at: training loss and validation accuracy."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses, curve = [], []
    order = torch.randperm(len(train_y), generator=generator)
    position = 0
    for step in range(1, steps + 1):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(train_y), generator=generator), 0
        batch = order[position:position + batch_size]
        position += batch_size
        loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            curve.append({"step": step, "val_accuracy": accuracy(model, val_x, val_y)})
    return {"losses": losses, "curve": curve}


def dead_blocks(parameter_names: list[str]) -> list[str]:
    """'down1.1.0.weight' -> 'down1': the top-level blocks the names belong to, in order."""
    blocks = []
    for name in parameter_names:
        top = name.split(".")[0]
        if top not in blocks:
            blocks.append(top)
    return blocks


def machine_line(threads: int) -> str:
    """What the numbers are bit for bit reproducible on: the same CPU, kernels and thread count.
    Another CPU model, vector instruction set (torch picks kernels by it) or thread count sums in
    another order and gives other numbers; docs/debugging.md quotes this line beside its numbers."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"CPU: {cpu}, {torch.backends.cpu.get_cpu_capability()} kernels, {threads} thread"
            f"{'s' if threads > 1 else ''}, torch {torch.__version__}")


def last_loss(run: dict) -> float:
    """The training loss a learner reads off the curve: the mean of the last 20 steps."""
    return sum(run["losses"][-20:]) / len(run["losses"][-20:])


def seed_line(seed: int, runs: dict) -> str:
    """One seed's result in one line; docs/debugging.md quotes these lines verbatim."""
    buggy, fixed = runs["buggy: head(x1)"], runs["fixed: head(x1_up)"]
    gap = 100 * (fixed["curve"][-1]["val_accuracy"] - buggy["curve"][-1]["val_accuracy"])
    return (f"seed {seed}: validation accuracy buggy {buggy['curve'][-1]['val_accuracy']:.2%}, fixed "
            f"{fixed['curve'][-1]['val_accuracy']:.2%}, the fix is worth {gap:+.2f} points; training loss "
            f"buggy {last_loss(buggy):.3f}, fixed {last_loss(fixed):.3f}")


def summarize(per_seed: list[dict]) -> dict:
    """Mean and sample standard deviation (n - 1) over the seeds, in percent and points."""
    columns = {
        "buggy_accuracy": [100 * s["runs"]["buggy: head(x1)"]["curve"][-1]["val_accuracy"] for s in per_seed],
        "fixed_accuracy": [100 * s["runs"]["fixed: head(x1_up)"]["curve"][-1]["val_accuracy"] for s in per_seed],
    }
    columns["gap_points"] = [f - b for b, f in zip(columns["buggy_accuracy"], columns["fixed_accuracy"])]
    return {name: {"values": values, "mean": statistics.mean(values),
                   "std": statistics.stdev(values) if len(values) > 1 else None}
            for name, values in columns.items()}


def summary_line(seeds: list[int], summary: dict) -> str:
    """The mean ± std line of several seeds; docs/debugging.md quotes it verbatim."""
    b, f, g = summary["buggy_accuracy"], summary["fixed_accuracy"], summary["gap_points"]
    return (f"seeds {', '.join(map(str, seeds))} (mean ± std): validation accuracy buggy {b['mean']:.2f}% ± "
            f"{b['std']:.2f}, fixed {f['mean']:.2f}% ± {f['std']:.2f}, the fix is worth {g['mean']:+.2f} ± "
            f"{g['std']:.2f} points")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    first = results["per_seed"][0]  # the curves of the first seed
    dead = max(run["dead_parameters"] / run["parameters"] for run in first["runs"].values())
    for label, run in first["runs"].items():
        losses = run["losses"]
        window = max(1, len(losses) // 30)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax_loss.plot(range(1, len(losses) + 1), smooth, label=label)
        ax_acc.plot([p["step"] for p in run["curve"]], [p["val_accuracy"] for p in run["curve"]], marker="o",
                    label=label)
    ax_loss.set(xlabel="step", ylabel="training loss (moving mean)",
               title=f"Both curves look like training (seed {first['seed']})")
    ax_acc.set(xlabel="step", ylabel="validation accuracy",
               title=f"Nothing here says that {dead:.0%} of the weights are dead")
    ax_acc.axhline(0.1, color="grey", linestyle=":", label="chance")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST files "
                   "(default: $DATA_DIR, data/, the Debian package; see shared/data.py)")
    p.add_argument("--train-size", type=int, default=10000, help="training images")
    p.add_argument("--val-size", type=int, default=2000, help="validation images")
    p.add_argument("--steps", type=int, default=400, help="training steps of each model")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0], metavar="SEED",
                   help="seeds of the init, the split and the batch order; both models are trained for each, "
                        "and with several seeds a mean ± std line closes the output")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validation measurements")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (another count can round "
                   "differently: the numbers are bit for bit the same only at the same count)")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="where silent_bug.png and silent_bug.json go")
    args = p.parse_args(argv)
    if min(args.train_size, args.val_size, args.steps, args.batch_size, args.eval_every, args.threads) < 1:
        p.error("sizes, --steps, --batch-size, --eval-every and --threads must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must differ: {args.seeds}")
    return args


def train_both(args, seed: int, data, verify_gradient_flow) -> dict:
    """The buggy and the fixed model, same seed, same data, same batches; then the gradient-flow check."""
    train_x, train_y, val_x, val_y = split(*data, args.train_size, args.val_size, seed)
    print(f"\nFashion-MNIST: {len(train_y)} training, {len(val_y)} validation images; {args.steps} Adam steps of "
          f"{args.batch_size} per model, seed {seed}")
    runs = {}
    for label, buggy in (("buggy: head(x1)", True), ("fixed: head(x1_up)", False)):
        torch.manual_seed(seed)
        model = UNetClassifier(buggy=buggy)
        started = time.perf_counter()
        run = train(model, train_x, train_y, val_x, val_y, args.steps, args.batch_size, args.lr, seed,
                    args.eval_every)
        run["seconds"] = time.perf_counter() - started
        check = verify_gradient_flow(model, train_x[:64], train_y[:64], F.cross_entropy)
        without = check.details["without_gradient"]
        total = sum(p.numel() for p in model.parameters())
        dead = sum(p.numel() for name, p in model.named_parameters() if name in without)
        run.update(gradient_flow_passed=check.passed, without_gradient=without, dead_blocks=dead_blocks(without),
                   parameters=total, dead_parameters=dead)
        runs[label] = run
        print(f"\n{label}: training loss {run['losses'][0]:.3f} -> {last_loss(run):.3f} (mean of the last 20 "
              f"steps), validation accuracy " + ", ".join(f"{p['val_accuracy']:.1%}" for p in run["curve"])
              + f" ({run['seconds']:.0f} s)")
        print("  " + check.report().replace("\n", "\n  "))
        if without:
            print(f"  dead blocks: {', '.join(run['dead_blocks'])}: {dead:,} of {total:,} parameters "
                  f"({dead / total:.0%}) never get a gradient")
    print("\n" + seed_line(seed, runs))
    return {"seed": seed, "runs": runs}


def main(argv=None) -> dict:
    args = parse_args(argv)
    # Same seed, same machine, CPU: the same numbers bit for bit. The generators above fix the data,
    # the init and the batches; one thread fixes the order of the sums; deterministic algorithms make
    # PyTorch refuse (raise) instead of silently running a kernel that rounds differently run to run.
    # Restored at the end, for whoever calls main() in-process (the tests).
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return run_seeds(args, argv)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def run_seeds(args, argv) -> dict:
    from shared.data import DataNotFoundError

    try:
        data = load_data(args.data_dir)
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    verify_gradient_flow = load_gradient_flow_check()
    results = {"command": " ".join(["python docs/examples/silent_bug.py", *(sys.argv[1:] if argv is None else argv)]),
               "torch_version": torch.__version__, "device": "cpu", "threads": args.threads,
               "train_size": args.train_size, "val_size": args.val_size, "steps": args.steps,
               "machine": machine_line(args.threads), "seeds": args.seeds, "per_seed": []}
    print(results["machine"])
    for seed in args.seeds:
        results["per_seed"].append(train_both(args, seed, data, verify_gradient_flow))
    results["summary"] = summarize(results["per_seed"])
    gap = results["summary"]["gap_points"]
    if len(args.seeds) > 1:
        print("\n" + summary_line(args.seeds, results["summary"]))
    over = f" (mean of {len(args.seeds)} seeds)" if len(args.seeds) > 1 else f" (seed {args.seeds[0]})"
    print(f"\nAfter {args.steps} steps the fix is worth {gap['mean']:+.2f} points of validation accuracy{over}; "
          f"the buggy model looked like it trained, and only the gradient-flow check said why it is worse.")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "silent_bug.png")
    (args.out / "silent_bug.json").write_text(json.dumps(results, indent=1))
    print(f"Plot and numbers: {args.out / 'silent_bug.png'}, {args.out / 'silent_bug.json'}")
    return results


if __name__ == "__main__":
    main()
