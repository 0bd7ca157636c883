"""Verify that training and validation apply different transforms (seed 004).

    python -m scripts.check_transforms --data-dir DIR
    python -m scripts.check_transforms --data-dir DIR --code ../v1-baseline   # fails: v1 has the bug

Builds the datasets exactly as scripts/train_utils.build_datasets does (of
this version, or of the version folder given with --code) on a few hundred
images and checks:
  separate       train and validation are different dataset instances with
                 different transform objects (v1 split one instance, so the
                 validation images went through RandAugment)
  deterministic  reading the same validation image twice gives the same tensor
                 (a random transform would make every evaluation different)
  augmented      reading the same training image twice gives different tensors
                 (catches the opposite mistake: augmentation lost on both)
Exit code: 0 all pass, 1 a check failed, 2 the data could not be found.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

THIS_VERSION = Path(__file__).resolve().parents[1]
NUM_IMAGES = 512  # enough to build the split; the checks read NUM_SAMPLES of them
NUM_SAMPLES = 8  # with RandAugment + crop + flip, 8 identical re-reads by chance are practically impossible


@dataclass
class Verdict:
    name: str
    passed: bool
    value: str
    expected: str
    hint: str


def _base(ds):
    """The dataset under any Subset wrappers (what holds the transform)."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def check_transforms(train_ds, val_ds, num_samples: int = NUM_SAMPLES) -> list[Verdict]:
    train_base, val_base = _base(train_ds), _base(val_ds)
    shared = train_base is val_base or train_base.transform is val_base.transform
    n = min(num_samples, len(val_ds), len(train_ds))
    val_same = sum(torch.equal(val_ds[i][0], val_ds[i][0]) for i in range(n))
    train_same = sum(torch.equal(train_ds[i][0], train_ds[i][0]) for i in range(n))
    return [
        Verdict("separate", not shared, "shared" if shared else "separate instances", "separate instances",
                "build one dataset instance per split (train transform / eval transform) over the same index split"),
        Verdict("deterministic", val_same == n, f"{val_same}/{n} re-reads identical", f"{n}/{n}",
                "the validation transform must not be random: no crop, flip or RandAugment"),
        Verdict("augmented", train_same < n, f"{train_same}/{n} re-reads identical", f"fewer than {n}",
                "the training transform should be random (crop, flip, RandAugment)"),
    ]


def load_code(code_dir: Path):
    """Import scripts.data and scripts.train_utils of a version folder (ours by default) in place of any already loaded."""
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]
    sys.path.insert(0, str(code_dir.resolve()))
    return importlib.import_module("scripts.data"), importlib.import_module("scripts.train_utils")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", dest="data_dir", default=None)
    p.add_argument("--code", type=Path, default=THIS_VERSION, help="version folder whose build_datasets to check")
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--randaugment_magnitude", type=int, default=11)
    args = p.parse_args(argv)
    if not (args.code / "scripts" / "train_utils.py").is_file():
        p.error(f"--code {args.code} has no scripts/train_utils.py")
    data_module, train_utils = load_code(args.code)
    try:
        data = data_module.subset(data_module.load_cifar100(args.data_dir), NUM_IMAGES, NUM_SAMPLES)
    except data_module.DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    train_ds, val_ds, _ = train_utils.build_datasets(data, args.val_fraction, args.randaugment_magnitude)
    verdicts = check_transforms(train_ds, val_ds)
    print(f"transform check of {args.code.resolve().name} on {data.source}")
    for v in verdicts:
        print(f"  {'PASS' if v.passed else 'FAIL'}  {v.name:<14} {v.value:<28} expected {v.expected}"
              + ("" if v.passed else f"\n        -> {v.hint}"))
    failed = [v.name for v in verdicts if not v.passed]
    print("transforms are separated correctly" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
