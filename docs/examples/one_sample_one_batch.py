"""One sample, then one batch, then more: can this training code memorise what it is shown?

Seed 003's first rule: train on one sample until the model matches it completely,
then on one batch; if it cannot, fix that before anything else. This script runs
the check that does it in fashionmnist/v10-step2, `overfit_one_batch`, with the
version's own model, loss, optimizer and training step, on 1, then 8, then 64
training images, and prints how many steps each took.

    python docs/examples/one_sample_one_batch.py                                 # fashionmnist/v10-step2
    python docs/examples/one_sample_one_batch.py --code exercises/find-the-bugs  # the exercise: it fails

`--code` takes any folder with v10-step2's layout (train.py with MyNN, loss_fn,
make_optimizer, training_step; debug_tools.py with overfit_one_batch). Exit code 1
when a size is not memorised.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSION_MODULES = ("train", "debug_tools", "metrics", "visualization")


def load_code(folder: Path):
    """train.py and debug_tools.py of `folder`, imported fresh (no other version's modules)."""
    for name in VERSION_MODULES:
        sys.modules.pop(name, None)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("train"), importlib.import_module("debug_tools")
    finally:
        sys.path.remove(str(folder))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--code", type=Path, default=REPO_ROOT / "fashionmnist" / "v10-step2",
                   help="folder whose train.py is tested (relative to the repository root or absolute)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64], help="numbers of training images")
    p.add_argument("--steps", type=int, default=300, help="most training steps per size")
    p.add_argument("--max-loss", type=float, default=0.05, help="'memorised': 100%% accuracy and a loss at most this")
    p.add_argument("--seed", type=int, default=42, help="seed of the model's init")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if min(args.sizes) < 1 or args.steps < 1 or args.threads < 1:
        p.error("--sizes, --steps and --threads must be >= 1")
    if not args.code.is_absolute():
        args.code = REPO_ROOT / args.code
    if not (args.code / "train.py").is_file() or not (args.code / "debug_tools.py").is_file():
        p.error(f"--code {args.code}: no train.py and debug_tools.py there")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train, debug_tools = load_code(args.code)
    cfg = train.parse_args(["--quick", "--device", "cpu", *(["--data-dir", str(args.data_dir)] if args.data_dir
                                                            else [])])
    try:
        raw = train.load_raw_data(cfg.data_dir)
    except train.DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    train_set, _, _ = train.split_data(*raw, cfg, torch.device("cpu"))
    train.set_seed(args.seed)
    model = train.MyNN(dropout=cfg.dropout)
    make_optimizer = functools.partial(train.make_optimizer, cfg=cfg)
    step = functools.partial(train.training_step, diverged_loss=cfg.diverged_loss)
    print(f"code: {args.code.relative_to(REPO_ROOT) if args.code.is_relative_to(REPO_ROOT) else args.code} "
          f"(lr {cfg.lr:g}, {cfg.lr_schedule} schedule)")
    print(f"{'images':>7}  {'verdict':<7} {'steps':>6}  {'loss':>8}  {'accuracy':>8}")
    results = {"code": str(args.code), "sizes": {}}
    with tempfile.TemporaryDirectory() as plots:
        for size in args.sizes:
            check = debug_tools.overfit_one_batch(
                model, train_set.images[:size], train_set.labels[:size], make_optimizer=make_optimizer,
                training_step=step, loss_fn=train.loss_fn, steps=args.steps, max_loss=args.max_loss, out_dir=plots)
            results["sizes"][size] = {"passed": check.passed, "steps": check.details["steps_needed"],
                                      "loss": check.value, "accuracy": check.details["accuracy"], "hint": check.hint}
            print(f"{size:>7}  {'PASS' if check.passed else 'FAIL':<7} {check.details['steps_needed']:>6}  "
                  f"{check.value:>8.4f}  {check.details['accuracy']:>8.0%}")
            if not check.passed:
                print(f"         hint: {check.hint}")
    results["all_passed"] = all(r["passed"] for r in results["sizes"].values())
    print("Every size memorised: the model, loss, optimizer and step can learn. Next: the full preflight and a run."
          if results["all_passed"] else "Fix this before training on the full data: a step that cannot memorise "
          "one batch cannot learn a data set.")
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["all_passed"] else 1)
